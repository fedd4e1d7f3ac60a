"""Counting tokens when a provider reports none, offline.

tiktoken's encodings are loaded from the copies litellm ships in
``litellm_core_utils/tokenizers`` (``TIKTOKEN_CACHE_DIR`` is set there; litellm is
located, never imported), so nothing is fetched at run time: only the two encodings
litellm bundles are ever asked for. OpenAI models get their own (``o200k_base`` or
``cl100k_base``); every other model is counted with ``cl100k_base``, an approximation
that is good to ~10-20 % for Llama/Mistral/Claude-style vocabularies — which is why such
counts are marked ``Usage.estimated``. Without the files, counts fall back to
4 characters per token.

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
SHIPPED = frozenset({"cl100k_base", "o200k_base"})  # the files litellm bundles
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
    """The encoding to count ``model`` with: its own when it is one litellm ships a copy
    of, else ``cl100k_base`` (tiktoken would download any other)."""
    import tiktoken.model

    name = model.rsplit("/", 1)[-1]
    try:
        found = tiktoken.model.encoding_name_for_model(name)
    except KeyError:
        return DEFAULT_ENCODING
    return found if found in SHIPPED else DEFAULT_ENCODING


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
            try:
                if directory is None:
                    raise FileNotFoundError("litellm's tokenizer files are not installed")
                # Always litellm's copies: tiktoken downloads what its cache lacks, and
                # Warden never downloads at run time.
                os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
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
