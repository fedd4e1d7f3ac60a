"""Counting tokens when a provider reports none, offline.

tiktoken's encodings are loaded from the copies litellm ships in
``litellm_core_utils/tokenizers`` (``TIKTOKEN_CACHE_DIR`` points there; litellm is
located, never imported), so nothing is fetched at run time. OpenAI models get their own
encoding; every other model is counted with ``cl100k_base``, an approximation that is
good to ~10-20 % for Llama/Mistral/Claude-style vocabularies — which is why such counts
are marked ``Usage.estimated``.

Loading an encoding takes 0.1-0.3 s once per process; ``warm()`` does it off the event
loop. Counting is microseconds per hundred tokens.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("warden.tokens")

DEFAULT_ENCODING = "cl100k_base"
# OpenAI's chat format adds a few tokens per message and three to prime the reply
# (the formula in OpenAI's cookbook); close enough for other chat templates too.
PER_MESSAGE = 3
REPLY_PRIMING = 3


class Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


def tokenizer_dir() -> Path | None:
    """litellm's bundled tiktoken files, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def encoding_name(model: str) -> str:
    import tiktoken.model

    name = model.rsplit("/", 1)[-1]
    try:
        return tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return DEFAULT_ENCODING


class TokenCounter:
    """Per-process tiktoken encodings, loaded on first use (or ``warm()``)."""

    def __init__(self) -> None:
        self._encodings: dict[str, Encoding] = {}
        self._lock = threading.Lock()
        self.fallback = False  # no tokenizer files: counts are len(text) / 4

    def _encoding(self, name: str) -> Encoding | None:
        found = self._encodings.get(name)
        if found is not None or self.fallback:
            return found
        with self._lock:
            if name in self._encodings:
                return self._encodings[name]
            directory = tokenizer_dir()
            if directory is not None:
                # Only ever pointed at litellm's copies: never a download.
                os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(directory))
            try:
                import tiktoken

                enc: Encoding = tiktoken.get_encoding(name)
            except Exception as e:  # missing files, no network: degrade, never fail
                log.warning("tokenizer %s unavailable (%s); estimating 4 chars/token", name, e)
                self.fallback = True
                return None
            self._encodings[name] = enc
            return enc

    def warm(self, models: Iterable[str] = ()) -> None:
        for name in {DEFAULT_ENCODING, *(encoding_name(m) for m in models)}:
            self._encoding(name)

    def count(self, text: str, model: str = "") -> int:
        if not text:
            return 0
        enc = self._encoding(encoding_name(model) if model else DEFAULT_ENCODING)
        if enc is None:
            return max(1, len(text) // 4)
        return len(enc.encode_ordinary(text))

    def count_messages(self, messages: Any, model: str = "") -> int:
        """Prompt tokens of a chat ``messages`` list as the provider would count it."""
        if not isinstance(messages, list):
            return 0
        total = REPLY_PRIMING
        for message in messages:
            total += PER_MESSAGE + self.count(" ".join(message_texts(message)), model)
        return total

    def count_input(self, value: Any, model: str = "") -> int:
        """Tokens of an embeddings ``input`` (a string, strings, or token arrays)."""
        if isinstance(value, str):
            return self.count(value, model)
        if isinstance(value, list):
            if value and all(isinstance(v, int) for v in value):
                return len(value)  # already tokens
            return sum(self.count_input(v, model) for v in value)
        return 0


def message_texts(message: Any) -> list[str]:
    """Every text of one chat message the provider tokenizes: content parts, name,
    tool-call names and arguments."""
    if not isinstance(message, dict):
        return []
    out: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        out.extend(p["text"] for p in content
                   if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(message.get("name"), str):
        out.append(message["name"])
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return out
