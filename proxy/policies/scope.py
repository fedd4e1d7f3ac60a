"""Scope (D1): is this request within what the tenant's deployment may be used for?

Checks, cheapest first, each refusing with ``PermissionDenied`` (403) whose message
names the field, the offending value (short, user-controlled values are cut to a few
dozen characters, message text is never echoed) and what is allowed::

    scope:
      models: [gpt-4o-mini]            # requested model names (beyond the routing table)
      max_tokens: 1024                 # cap on max_tokens and max_completion_tokens
      max_messages: 200
      max_input_tokens: 32000          # estimated: UTF-8 bytes / 4, see estimate_tokens
      tools: [search, fetch_page]      # tool / function names; [] allows none
      response_formats: [text, json_schema]   # a request without one counts as "text"
      topics:
        deny: [medical advice, "c++"]  # whole words/phrases, case-insensitive
        allow: [invoice, billing]      # at least one must appear (when non-empty)
        roles: [user]                  # whose messages the topic lists read

A key that is absent does not restrict. Everything but ``models`` applies to chat
completions only. Tools are checked in ``tools``, legacy ``functions``, ``tool_choice``
and ``function_call``, so a tool outside the list never reaches the provider.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NoReturn

from pydantic import Field, field_validator

from proxy.config import Frozen
from proxy.context import RequestContext
from proxy.errors import PermissionDenied
from proxy.pipeline import Policy
from proxy.services import Services

ResponseFormat = Literal["text", "json_object", "json_schema"]
_ECHO_MAX = 48  # longest user-controlled value repeated in a refusal


class TopicsConfig(Frozen):
    allow: list[str] = Field(
        default_factory=list,
        description="If non-empty, one of these words/phrases must occur in the read text.",
    )
    deny: list[str] = Field(
        default_factory=list, description="None of these words/phrases may occur."
    )
    roles: list[str] = Field(
        default_factory=lambda: ["user"],
        min_length=1,
        description="Roles whose messages are read (user, system, assistant, tool, ...).",
    )

    @field_validator("allow", "deny")
    @classmethod
    def _keywords(cls, words: list[str]) -> list[str]:
        for w in words:
            if not w.strip():
                raise ValueError("a topic keyword must not be empty")
        return words


class ScopeConfig(Frozen):
    """The ``scope:`` section of a tenant's policy file."""

    models: list[str] | None = Field(
        None, description="Model names the tenant may request (within its routing table)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Largest max_tokens / max_completion_tokens a request may ask."
    )
    max_messages: int | None = Field(None, ge=1, description="Most messages in one request.")
    max_input_tokens: int | None = Field(
        None, ge=1, description="Largest estimated prompt size (messages and tool schemas)."
    )
    tools: list[str] | None = Field(
        None, description="Tool/function names a request may declare or force; [] = none."
    )
    response_formats: list[ResponseFormat] | None = Field(
        None, min_length=1, description="Allowed response_format types (absent = text)."
    )
    topics: TopicsConfig | None = None


def _short(value: object) -> str:
    """A user-controlled value, cut so a refusal never carries a payload back."""
    text = repr(value).replace("\\n", " ")
    return text if len(text) <= _ECHO_MAX else text[:_ECHO_MAX] + "..."


def _listing(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


class KeywordMatcher:
    """Whole-word, case-insensitive search for a list of words and phrases.

    Text and keywords are compared casefolded (Unicode's caseless matching: the long s
    folds to "s", the sharp s to "ss"), so odd capitals do not slip past a deny list.
    A substring test on each keyword's first word skips the regex for the common case
    of no hit; the regex then checks word boundaries, with lookarounds instead of
    ``\\b`` so keywords that begin or end with a non-word character ("c++", ".net")
    still match, and any run of whitespace between the words of a phrase.
    """

    __slots__ = ("_by_folded", "_needles", "_pattern")

    def __init__(self, words: list[str]) -> None:
        folded = [" ".join(w.casefold().split()) for w in words]
        self._by_folded = dict(zip(folded, words, strict=True))
        self._needles = tuple({f.split(" ")[0] for f in folded})
        alts = sorted((r"\s+".join(re.escape(p) for p in f.split(" ")) for f in folded),
                      key=len, reverse=True)
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)")

    def search(self, text: str) -> str | None:
        """The configured keyword found in ``text``, or None."""
        folded = text.casefold()
        if not any(n in folded for n in self._needles):
            return None
        hit = self._pattern.search(folded)
        if hit is None:
            return None
        return self._by_folded.get(" ".join(hit.group(0).split()), hit.group(0))


def message_text(message: Any) -> str:
    """The readable text of a chat message: string content or its text parts."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def estimate_tokens(messages: list[Any], tools: object) -> int:
    """A cheap prompt-size estimate: UTF-8 bytes / 4 plus OpenAI's per-message framing.

    Close to cl100k/o200k for English prose (about 4 characters a token) and high for
    CJK text (3 bytes a character, about 1 token), i.e. it errs towards refusing. A
    scope limit is a coarse guard, not a bill: exact counts belong to the budget policy.
    """
    size = 0
    for message in messages:
        size += 4 * 4  # ~4 tokens of role/separator framing per message, in bytes
        size += len(message_text(message).encode())
        if isinstance(message, dict):
            for key in ("tool_calls", "function_call", "name"):
                if key in message:
                    size += len(repr(message[key]).encode())
    if tools:
        size += len(repr(tools).encode())
    return (size + 3) // 4 + 3  # every reply is primed with 3 tokens


def _tool_names(body: dict[str, Any]) -> list[tuple[str, object]]:
    """(param path, name) for every tool the request declares or forces. A declaration
    whose name cannot be read yields its raw value, which then fails the allow-list:
    an unreadable tool is refused, not waved through."""
    found: list[tuple[str, object]] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            kind = tool.get("type", "function") if isinstance(tool, dict) else None
            spec = tool.get(kind) if isinstance(tool, dict) and isinstance(kind, str) else None
            name = spec.get("name") if isinstance(spec, dict) else None
            found.append((f"tools[{i}].{kind}.name", name))
    elif tools is not None:
        found.append(("tools", tools))
    functions = body.get("functions")
    if isinstance(functions, list):
        for i, fn in enumerate(functions):
            found.append((f"functions[{i}].name", fn.get("name") if isinstance(fn, dict) else fn))
    elif functions is not None:
        found.append(("functions", functions))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type", "function")
        spec = choice.get(kind) if isinstance(kind, str) else None
        found.append(("tool_choice", spec.get("name") if isinstance(spec, dict) else choice))
    call = body.get("function_call")
    if isinstance(call, dict):
        found.append(("function_call.name", call.get("name")))
    return found


class ScopePolicy(Policy):
    name = "scope"

    def __init__(self, config: ScopeConfig) -> None:
        self.config = config
        self._tools = frozenset(config.tools) if config.tools is not None else None
        topics = config.topics
        self._deny = KeywordMatcher(topics.deny) if topics and topics.deny else None
        self._allow = KeywordMatcher(topics.allow) if topics and topics.allow else None
        self._topic_roles = frozenset(topics.roles) if topics else frozenset()

    def _refuse(self, ctx: RequestContext, reason: str, message: str, param: str) -> NoReturn:
        ctx.decide(self.name, "block", reason)
        raise PermissionDenied(f"scope: {message}", param=param)

    async def on_request(self, ctx: RequestContext) -> None:
        cfg = self.config
        body = ctx.body
        model = ctx.model or body.get("model")
        if cfg.models is not None and model not in cfg.models:
            self._refuse(ctx, "model", f"model {_short(model)} is not allowed for this tenant "
                         f"(allowed: {_listing(cfg.models)})", "model")
        if ctx.operation != "chat":
            return
        self._check_max_tokens(ctx, body)
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        if cfg.max_messages is not None and len(messages) > cfg.max_messages:
            self._refuse(ctx, "max_messages", f"{len(messages)} messages exceed the limit of "
                         f"{cfg.max_messages}", "messages")
        self._check_tools(ctx, body)
        self._check_response_format(ctx, body)
        if cfg.max_input_tokens is not None:
            estimate = estimate_tokens(messages, body.get("tools") or body.get("functions"))
            if estimate > cfg.max_input_tokens:
                self._refuse(ctx, "max_input_tokens", f"the prompt is about {estimate} tokens, "
                             f"more than the limit of {cfg.max_input_tokens}", "messages")
        if self._deny is not None or self._allow is not None:
            self._check_topics(ctx, messages)

    def _check_max_tokens(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        limit = self.config.max_tokens
        if limit is None:
            return
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is None:
                continue
            # bool is an int in Python; a non-number is not ours to judge below the limit.
            if isinstance(value, bool) or not isinstance(value, int | float) or value > limit:
                self._refuse(ctx, key, f"{key}={_short(value)} exceeds the limit of {limit}", key)

    def _check_tools(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        if self._tools is None:
            return
        allowed = sorted(self._tools)
        for param, name in _tool_names(body):
            if not isinstance(name, str) or name not in self._tools:
                self._refuse(ctx, "tool", f"tool {_short(name)} ({param}) is not allowed for "
                             f"this tenant (allowed: {_listing(allowed)})", param)

    def _check_response_format(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        allowed = self.config.response_formats
        if allowed is None:
            return
        fmt = body.get("response_format")
        kind = "text" if fmt is None else fmt.get("type") if isinstance(fmt, dict) else fmt
        if kind not in allowed:
            self._refuse(ctx, "response_format", f"response_format type {_short(kind)} is not "
                         f"allowed (allowed: {_listing(list(allowed))})", "response_format.type")

    def _check_topics(self, ctx: RequestContext, messages: list[Any]) -> None:
        allow_seen = False
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in self._topic_roles:
                continue
            text = message_text(message)
            if self._deny is not None and (keyword := self._deny.search(text)) is not None:
                # The keyword is the tenant's own configuration: safe to name.
                self._refuse(ctx, "topic_denied", f"messages[{i}] mentions the denied topic "
                             f"{keyword!r}", f"messages[{i}].content")
            if self._allow is not None and not allow_seen and self._allow.search(text):
                allow_seen = True
        if self._allow is not None and not allow_seen:
            topics = self.config.topics
            allow = topics.allow if topics else []
            self._refuse(ctx, "topic_not_allowed", "no message mentions an allowed topic "
                         f"(allowed: {_listing(allow)})", "messages")

def build(config: ScopeConfig, services: Services) -> ScopePolicy:
    return ScopePolicy(config)
