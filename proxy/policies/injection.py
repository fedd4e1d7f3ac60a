"""Prompt-injection screening (the ``injection:`` section of a tenant's policy file).

Every message of a screened role (by default user messages and tool/function results,
which is where indirect injection arrives) is judged by the layered detector in
``proxy.injection``. Verdicts are cached by content hash, so the history AutoGen resends
on every turn costs nothing after its first judgement. What happens above the
threshold is the tenant's choice:

- ``block``: refuse with ``content_filter``, naming the message index and the signals,
  never the text (an error body is often logged and shown; echoing the payload would
  deliver it a second time).
- ``flag``: forward unchanged; ``x-warden-flags: prompt_injection`` on the response.
- ``spotlight``: forward with tool results wrapped as untrusted data plus a system
  note (see ``proxy.injection.spotlight``), and flag.

Optionally a canary token is planted in the system prompt; a reply that contains it
(plain or streamed) is refused under ``block`` or redacted and flagged otherwise.
Fail closed: a detector error refuses the request (503) rather than forward unscreened.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from pydantic import Field

from proxy.config import Frozen
from proxy.context import RequestContext, StateKey
from proxy.errors import ContentFiltered, ServiceUnavailable
from proxy.injection.canary import LeakScanner, new_token, plant, redact
from proxy.injection.classifier import load_classifier
from proxy.injection.detector import Detector, Verdict, VerdictCache
from proxy.injection.spotlight import spotlight
from proxy.pipeline import Chunk, Policy
from proxy.services import Services
from proxy.validate import content_text

log = logging.getLogger("warden.injection")

Role = Literal["user", "tool", "function", "system", "developer", "assistant"]
# Below this many characters to judge, the executor hop costs more than the work.
INLINE_CHARS = 2_000


class InjectionConfig(Frozen):
    roles: tuple[Role, ...] = Field(
        ("user", "tool", "function"), min_length=1,
        description="Message roles to screen. Tool/function results carry indirect injection.",
    )
    action: Literal["block", "flag", "spotlight"] = Field(
        "block", description="What to do above the threshold.")
    threshold: float | None = Field(
        None, gt=0, lt=1,
        description="Score at or above which a message counts as an injection. Unset: the "
        "detector's per-role defaults, chosen on validation data at <= 2 % FPR.",
    )
    classifier: Literal["builtin", "stackone", "none"] = Field(
        "builtin", description="ML layer: the shipped model, stackone-defender's MiniLM "
        "(needs the 'stackone' extra), or none (rules only).")
    canary: bool = Field(False, description="Plant a canary token in the system prompt and "
                         "refuse/flag replies that contain it (prompt leakage).")


class InjectionMetrics:
    """Counters on the app's registry (bounded labels: tenant, action, kind, source)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.detections = Counter(
            "warden_injection_detections", "Prompt injections and prompt leaks detected.",
            ["tenant", "action", "kind"], registry=registry)
        self.judgements = Counter(
            "warden_injection_judgements", "Screened messages by where the verdict came "
            "from (cache: judged on an earlier turn).", ["source"], registry=registry)


# Per streamed reply: one scanner per (choice index, field) that can carry text.
_Scanners = dict[tuple[int, str], LeakScanner]
_CANARY = StateKey[bool]("injection.canary_planted")
_SCANNERS = StateKey[_Scanners]("injection.canary_scanners")


def _scoring_role(role: str) -> str:
    return "tool" if role in ("tool", "function") else "user"


class InjectionPolicy(Policy):
    name = "injection"

    def __init__(self, config: InjectionConfig, detector: Detector, cache: VerdictCache,
                 executor: Executor, metrics: InjectionMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.detector = detector
        self.cache = cache
        self.executor = executor
        # One token per policy build: stable across requests (provider prompt caches
        # stay warm), new on every reload.
        self.canary = new_token() if config.canary else None
        # Per request these are looked up once per message: resolve them once here
        # (labels() takes a lock and builds a key on every call).
        self._from_cache = metrics.judgements.labels("cache")
        self._from_detector = metrics.judgements.labels("detector")
        # The tenant's threshold, else the detector's per-role default.
        self._thresholds = {
            role: config.threshold if config.threshold is not None
            else detector.threshold(role) for role in ("user", "tool")}

    async def judge(self, items: list[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for (scoring role, text) pairs: cached ones at once, the rest in one
        batch (inline when small, else on the executor)."""
        keys = [self.cache.key(self.detector.version, r, t) for r, t in items]
        found = [self.cache.get(k) for k in keys]
        todo = {k: item for k, item, v in zip(keys, items, found, strict=True) if v is None}
        self._from_cache.inc(len(keys) - len(todo))
        if todo:
            self._from_detector.inc(len(todo))
        if todo:
            batch = list(todo.items())
            size = sum(len(t) for _, (_, t) in batch)
            try:
                if size <= INLINE_CHARS:
                    fresh = self._judge_batch(batch)
                else:
                    loop = asyncio.get_running_loop()
                    fresh = await loop.run_in_executor(self.executor, self._judge_batch, batch)
            except Exception as e:  # fail closed: never forward what was not screened
                log.exception("injection detector failed")
                raise ServiceUnavailable("injection screening is unavailable; request not "
                                         "forwarded") from e
            for key, verdict in fresh.items():
                self.cache.put(key, verdict)
            found = [v if v is not None else fresh[k] for k, v in zip(keys, found, strict=True)]
        return [v for v in found if v is not None]

    def _judge_batch(self, batch: list[tuple[bytes, tuple[str, str]]]) -> dict[bytes, Verdict]:
        return {key: self.detector.judge(text, role) for key, (role, text) in batch}

    async def on_request(self, ctx: RequestContext) -> None:
        messages = ctx.body.get("messages")
        if ctx.operation != "chat" or not isinstance(messages, list):
            return
        roles = self.config.roles
        screened = [(i, m["role"], content_text(m.get("content"))) for i, m in enumerate(messages)
                    if type(m) is dict and m.get("role") in roles]
        screened = [(i, role, text) for i, role, text in screened
                    if text and not text.isspace()]
        verdicts = await self.judge([(_scoring_role(r), t) for _, r, t in screened])
        thresholds = self._thresholds
        hits = [(i, role, v) for (i, role, _), v in zip(screened, verdicts, strict=True)
                if v.score >= thresholds[_scoring_role(role)]]
        if hits:
            self._act(ctx, messages, hits)
        if self.canary is not None and plant(messages, self.canary):
            ctx.set(_CANARY, True)

    def _act(self, ctx: RequestContext, messages: list[Any],
             hits: list[tuple[int, str, Verdict]]) -> None:
        i, role, top = max(hits, key=lambda h: h[2].score)
        self.metrics.detections.labels(ctx.tenant_name, self.config.action,
                                       "prompt_injection").inc()
        signals = ", ".join(top.reasons[:4]) or "classifier"
        ctx.decide(self.name, self.config.action, "prompt_injection", index=i, role=role,
                   score=round(top.score, 3), layer=top.layer, messages=[h[0] for h in hits])
        log.info("prompt injection in messages[%d] (role %s, score %.3f, %s): %s",
                 i, role, top.score, signals, self.config.action)
        if self.config.action == "block":
            raise ContentFiltered(
                f"Request refused by the gateway: messages[{i}] (role '{role}') looks like a "
                f"prompt injection (score {top.score:.2f}; signals: {signals}).",
                param=f"messages[{i}]",
            )
        ctx.flag("prompt_injection")
        if self.config.action == "spotlight":
            spotlight(messages, extra=[h[0] for h in hits])

    # --- canary: replies ---------------------------------------------------------

    def _leaked(self, ctx: RequestContext) -> None:
        ctx.decide(self.name, self.config.action, "prompt_leak")
        self.metrics.detections.labels(ctx.tenant_name, self.config.action, "prompt_leak").inc()
        log.warning("canary token in reply: system prompt leaked (%s)", self.config.action)
        if self.config.action == "block":
            raise ContentFiltered("Reply withheld by the gateway: it contained the system "
                                  "prompt's canary token (prompt leakage).")
        ctx.flag("prompt_leak")

    async def on_response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        token = self.canary
        if token is None or not ctx.get(_CANARY):
            return
        found = False
        for choice in body.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            if isinstance(message.get("content"), str) and token in message["content"]:
                found = True
                message["content"] = redact(message["content"], token)
            for call in message.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str) \
                        and token in fn["arguments"]:
                    found = True
                    fn["arguments"] = redact(fn["arguments"], token)
        if found:
            self._leaked(ctx)

    def on_chunk(self, ctx: RequestContext, chunk: Chunk) -> list[Chunk]:
        token = self.canary
        if token is None or not ctx.get(_CANARY):
            return [chunk]
        scanners = ctx.get(_SCANNERS)
        if scanners is None:
            scanners = {}
            ctx.set(_SCANNERS, scanners)
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                self._scan_delta(ctx, scanners, token, choice)
        return [chunk]

    def _scan_delta(self, ctx: RequestContext, scanners: _Scanners, token: str,
                    choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        delta = choice["delta"]
        finishing = choice.get("finish_reason") is not None
        fields: list[tuple[str, dict[str, Any], str]] = []
        if isinstance(delta.get("content"), str) or finishing:
            fields.append(("content", delta, "content"))
        for call in delta.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                fields.append((f"tool{call.get('index', 0)}", fn, "arguments"))
        for key, holder, attr in fields:
            scanner = scanners.setdefault((index, key), LeakScanner(token))
            safe, hit = scanner.feed(holder.get(attr) or "")
            if hit:
                # Raised from a chunk hook, the refusal becomes the stream's final error
                # event (before the head: a plain 400). The marker itself, and anything
                # held back as its possible start, was never sent.
                self._leaked(ctx)  # flag mode: the scanner already redacted the marker
            if finishing and key == "content":
                safe += scanner.flush()
            if safe or attr in holder:
                holder[attr] = safe
        if finishing:  # release text still held back in this choice's tool-call arguments
            for (idx, key), scanner in scanners.items():
                held = scanner.flush() if idx == index and key.startswith("tool") else ""
                if held:
                    delta.setdefault("tool_calls", []).append(
                        {"index": int(key[4:]), "function": {"arguments": held}})

    async def on_stream_end(self, ctx: RequestContext) -> list[Chunk]:
        """A stream that ended without a finish_reason chunk: release what is held."""
        scanners = ctx.get(_SCANNERS) or {}
        tail = [{"index": idx, "delta": {"content": held}, "finish_reason": None}
                for (idx, key), s in scanners.items()
                if key == "content" and (held := s.flush())]
        return [{"object": "chat.completion.chunk", "choices": tail}] if tail else []


def build(config: InjectionConfig, services: Services) -> InjectionPolicy:
    name = config.classifier

    def make() -> Detector:
        try:
            classifier = None if name == "none" else load_classifier(name)
        except ImportError as e:
            raise ValueError(f"injection.classifier {name!r} needs an extra that is not "
                             f"installed: {e}") from None
        return Detector(classifier)

    detector = services.shared(f"injection.detector.{name}", make)
    cache = services.shared("injection.verdicts", VerdictCache)
    metrics = services.shared("injection.metrics",
                              lambda: InjectionMetrics(services.metrics.registry))
    return InjectionPolicy(config, detector, cache, services.executor, metrics)
