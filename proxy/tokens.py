"""Counting a request's tokens before it is sent, offline.

tiktoken with the encodings litellm ships in its package (``cl100k_base``,
``o200k_base``), found without importing litellm; nothing is ever downloaded. An
encoding loads lazily, once, in a worker thread (~0.5 s), so the first request does not
block the event loop. Per-text counts are cached by content: AutoGen resends the whole
history each turn, and only new messages should cost anything.

The count is an estimate of what the provider will bill as prompt tokens: exact in
spirit for OpenAI models (the cookbook's per-message overheads), the ``cl100k_base``
count times ``FOREIGN_MARGIN`` for other vendors' models (their tokenizers differ; the
margin keeps the reservation on the safe side), and UTF-8 bytes / 3 when no encoding
can be loaded. Budgets settle to the provider's reported usage anyway; the estimate
only has to bound the reservation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import json
import logging
import os
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from proxy.context import RequestContext, StateKey

log = logging.getLogger("warden.tokens")

FOREIGN_MARGIN = 1.25
IMAGE_TOKENS = 1105  # a high-detail image at OpenAI's largest tile count
DEFAULT_MAX_OUTPUT = 4096  # when neither the request nor the price map says
_PER_MESSAGE, _PER_NAME, _PRIMING, _PER_TOOL_CALL = 3, 1, 3, 5
_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
_CACHE_SIZE = 8192


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


def tokenizer_dir() -> Path | None:
    """litellm's bundled tiktoken files, located without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"


@functools.lru_cache(maxsize=256)
def encoding_for(model: str) -> tuple[str, float]:
    """(encoding name, margin) for a model name, with or without a provider prefix.
    Cached: tiktoken's lookup walks its prefix table, and a deployment's model name is
    the same on every request."""
    import tiktoken.model

    try:
        return tiktoken.model.encoding_name_for_model(model.rsplit("/", 1)[-1]), 1.0
    except KeyError:
        return "cl100k_base", FOREIGN_MARGIN


def _load(name: str) -> _Encoding | None:
    folder = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or tokenizer_dir() or "")
    cached = folder / hashlib.sha1(_URL.format(name).encode()).hexdigest()
    if not cached.is_file():  # tiktoken would try to download it: never
        log.warning("tiktoken encoding %s not found in %s; estimating tokens from bytes",
                    name, folder)
        return None
    # tiktoken reads its cache from this variable; litellm sets it the same way.
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(folder))
    import tiktoken

    return tiktoken.get_encoding(name)


class TokenCounter:
    """One per process (``services.shared``): loaded encodings and a count cache."""

    def __init__(self) -> None:
        self._encodings: dict[str, _Encoding | None] = {}
        self._loading: dict[str, asyncio.Future[_Encoding | None]] = {}
        # Per encoding: hash(text) -> count. The key is Python's 64-bit string hash, not
        # the text (no prompt is kept in memory here); a collision only skews an estimate.
        self._caches: dict[str, OrderedDict[int, int]] = {}
        self._roles: dict[str, dict[str, int]] = {}  # per encoding: role -> tokens

    async def prepare(self, name: str, executor: Executor | None = None) -> None:
        """Load an encoding off the event loop, once; concurrent callers share it."""
        if name in self._encodings:
            return
        future = self._loading.get(name)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._loading[name] = asyncio.ensure_future(
                loop.run_in_executor(executor, _load, name))
        try:
            self._encodings[name] = await asyncio.shield(future)
        except Exception:  # a broken tiktoken must not break requests: estimate
            log.exception("loading tiktoken encoding %s failed", name)
            self._encodings[name] = None

    def count(self, name: str, text: str) -> int:
        if not text:
            return 0
        cache = self._caches.get(name)
        if cache is None:
            cache = self._caches[name] = OrderedDict()
        key = hash(text)
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
        encoding = self._encodings.get(name)
        if encoding is None:
            n = len(text.encode("utf-8", "replace")) // 3 + 1
        else:
            n = len(encoding.encode_ordinary(text))
        cache[key] = n
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
        return n

    def chat_prompt(self, name: str, body: dict[str, Any]) -> int:
        total = _PRIMING
        count = self.count
        roles = self._roles.setdefault(name, {})
        counts = self._caches.setdefault(name, OrderedDict())
        for m in body.get("messages") or []:
            if type(m) is not dict:
                continue
            content = m.get("content")
            role = str(m.get("role", ""))
            n_role = roles.get(role)
            if n_role is None:
                n_role = count(name, role)
                if len(roles) < 32:  # validated roles are a handful; never unbounded
                    roles[role] = n_role
            total += _PER_MESSAGE + n_role
            if type(content) is str:
                # The hit path of count(), inline: one hash, one lookup per message
                # (a hit here does not refresh its recency; eviction is then FIFO).
                hit = counts.get(hash(content)) if content else 0
                total += hit if hit is not None else count(name, content)
            else:
                total += self._content(name, content)
            if len(m) <= 2 and "role" in m and "content" in m:
                continue  # the common message: nothing else to count
            if isinstance(m.get("name"), str):
                total += _PER_NAME + count(name, m["name"])
            for call in m.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    total += _PER_TOOL_CALL + count(name, str(fn.get("name", "")))
                    total += count(name, str(fn.get("arguments", "")))
            if isinstance(m.get("tool_call_id"), str):
                total += count(name, m["tool_call_id"])
        for extra in ("tools", "functions", "response_format"):
            if body.get(extra):
                total += count(name, json.dumps(body[extra], separators=(",", ":")))
        return total

    def _content(self, name: str, content: Any) -> int:
        if isinstance(content, str):
            return self.count(name, content)
        total = 0
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                total += self.count(name, part["text"])
            elif part.get("type") in ("image_url", "input_image", "image"):
                total += IMAGE_TOKENS
            else:
                total += self.count(name, json.dumps(part, separators=(",", ":")))
        return total

    def embeddings_input(self, name: str, value: Any) -> int:
        if isinstance(value, str):
            return self.count(name, value)
        if isinstance(value, list) and value and isinstance(value[0], int):
            return len(value)  # already token ids
        if isinstance(value, list):
            return sum(self.embeddings_input(name, v) for v in value)
        return 0


def upstream_calls(ctx: RequestContext) -> int:
    """How many provider calls this request may make: two when an output contract may
    ask for one more (``on_failure: retry``; plain replies only, routes.py retries at
    most once), else one. Both calls are billed, so both are in the worst case."""
    output = getattr(ctx.tenant.config, "output", None) if ctx.tenant is not None else None
    if output is None or ctx.stream or ctx.operation != "chat":
        return 1
    override = output.models.get(ctx.model)
    on_failure = getattr(override, "on_failure", None) or output.on_failure
    return 2 if on_failure == "retry" else 1


@dataclass(frozen=True, slots=True)
class Estimate:
    """The worst case of one request: prompt tokens (estimated) and the most output it
    may produce (max_tokens times n), times the provider calls it may make."""

    prompt: int
    max_output: int

    @property
    def total(self) -> int:
        return self.prompt + self.max_output


ESTIMATE: StateKey[Estimate] = StateKey("tokens.estimate")


def requested_max_output(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


async def estimate(ctx: RequestContext, counter: TokenCounter, default_max_output: int,
                   executor: Executor | None = None) -> Estimate:
    """The request's worst case, computed once and kept on the context."""
    found = ctx.get(ESTIMATE)
    if found is not None:
        return found
    model = ctx.deployments[0].model if ctx.deployments else ctx.model
    name, margin = encoding_for(model)
    await counter.prepare(name, executor)
    if ctx.operation == "embeddings":
        prompt = counter.embeddings_input(name, ctx.body.get("input"))
        output = 0
    else:
        prompt = counter.chat_prompt(name, ctx.body)
        n = ctx.body.get("n")
        choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        output = (requested_max_output(ctx.body) or default_max_output) * choices
    calls = upstream_calls(ctx)
    result = Estimate(prompt=int(prompt * margin + 0.999) * calls, max_output=output * calls)
    ctx.set(ESTIMATE, result)
    return result
