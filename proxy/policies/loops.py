"""Runaway-loop breaker: an agent going in circles is refused (or flagged) by name.

AutoGen resends the whole conversation on every turn, so each request shows Warden the
agent's recent history. A loop looks like the agent's *latest* move — its last reply,
its last tool call, or the last tool error it got — having already happened ``repeats``
times in the last ``window`` messages. (Only the latest move counts: a loop the agent
has already left is no reason to stop it now.)

::

    loops:
      repeats: 3       # K: the same thing this many times ...
      window: 20       # ... within the last this-many messages
      action: block    # block: refuse with code content_filter; flag: x-warden-flags loop

Kinds: the same assistant reply (whitespace-insensitive), the same tool call (name and
JSON arguments, key order ignored), the same error from a tool. A block is a
``content_filter`` refusal on purpose: AG2 would route around any other error code, and
its message names the repetition so the human or UserProxyAgent sees why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import Counter
from pydantic import Field

from proxy.config import Frozen
from proxy.context import RequestContext
from proxy.errors import ContentFiltered
from proxy.pipeline import Policy
from proxy.validate import content_text

if TYPE_CHECKING:
    from proxy.services import Services

Kind = Literal["assistant_reply", "tool_call", "tool_error"]
_ERROR = re.compile(r"\b(error|exception|traceback|failed|failure)\b", re.I)
_SHOWN = 80  # characters of the repeated thing quoted in the refusal


class LoopsConfig(Frozen):
    repeats: int = Field(3, ge=2, description="K: how many times the same move is a loop.")
    window: int = Field(20, ge=2, description="How many recent messages to look at.")
    action: Literal["flag", "block"] = Field("block", description="block or flag.")


@dataclass(frozen=True, slots=True)
class Repetition:
    kind: Kind
    what: str  # human-readable, shortened
    count: int


def _norm(text: str) -> str:
    return " ".join(text.split())


def _args(raw: Any) -> str:
    try:
        return json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(raw)


def _moves(messages: list[Any]) -> Iterator[tuple[Kind, str]]:
    """Every move in order, as (kind, comparable key)."""
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "assistant":
            text = _norm(content_text(m.get("content")))
            if text:
                yield "assistant_reply", text
            for call in m.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    yield "tool_call", f"{fn.get('name')}({_args(fn.get('arguments'))})"
        elif role in ("tool", "function"):
            # Successes are moves too: an error followed by a success is a loop left.
            text = _norm(content_text(m.get("content")))
            yield "tool_error", (text if _ERROR.search(text) else "")


def find_loop(messages: list[Any], repeats: int, window: int) -> Repetition | None:
    moves = list(_moves(messages[-window:]))
    found: Repetition | None = None
    for kind in ("tool_call", "tool_error", "assistant_reply"):
        keys = [key for k, key in moves if k == kind]
        if not keys or not keys[-1]:
            continue
        count = keys.count(keys[-1])
        if count >= repeats and (found is None or count > found.count):
            what = keys[-1] if len(keys[-1]) <= _SHOWN else keys[-1][: _SHOWN - 1] + "…"
            found = Repetition(kind, what, count)
    return found


_DESCRIBE = {"assistant_reply": "the same assistant reply", "tool_call": "the same tool call",
             "tool_error": "the same tool error"}


class LoopsPolicy(Policy):
    name = "loops"

    def __init__(self, config: LoopsConfig, detections: Counter) -> None:
        self.config = config
        self.detections = detections

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.operation != "chat":
            return
        messages = ctx.body.get("messages")
        if not isinstance(messages, list):
            return
        loop = find_loop(messages, self.config.repeats, self.config.window)
        if loop is None:
            return
        action = self.config.action
        self.detections.labels(ctx.tenant_name, loop.kind, action).inc()
        ctx.decide(self.name, action, loop.kind, count=loop.count)
        if action == "flag":
            ctx.flag("loop")
            return
        raise ContentFiltered(
            f"Warden stopped a runaway loop: {_DESCRIBE[loop.kind]} occurred {loop.count} "
            f"times in the last {self.config.window} messages: {loop.what!r}. The agent is "
            "repeating itself; change the approach or hand over to a human.")


def build(config: LoopsConfig, services: Services) -> LoopsPolicy:
    detections = services.shared("loops.metrics", lambda: Counter(
        "warden_loop_detections", "Runaway loops detected, by kind and action.",
        ["tenant", "kind", "action"], registry=services.metrics.registry))
    return LoopsPolicy(config, detections)
