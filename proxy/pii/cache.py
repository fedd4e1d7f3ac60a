"""Content-hash LRU of scan results.

AutoGen resends the whole conversation on every call, so without this a conversation of
n turns costs O(n^2) scans. Entries hold only spans (offsets, entity type, score) keyed
by a digest of the scanned text: no text is kept. The digest is keyed with a random
per-process salt so the cache's keys cannot be used to confirm a guessed value (a
phone number has few enough candidates to enumerate against a plain hash).

Accessed only from the event loop thread (look-ups before the executor hop, inserts
after), so it needs no lock.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import NamedTuple


class Span(NamedTuple):
    start: int
    end: int
    entity: str
    score: float


Spans = tuple[Span, ...]


class ScanCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._salt = os.urandom(16)
        self._entries: OrderedDict[bytes, Spans] = OrderedDict()
        # Keyed hash state after salt and scope, per scope: copying it is cheaper than
        # keying a new hash for every message of every request.
        self._bases: dict[str, hashlib.blake2b] = {}
        self.hits = 0
        self.misses = 0

    def key(self, scope: str, text: str) -> bytes:
        """``scope`` is the scanner's fingerprint: another entity list is another result."""
        base = self._bases.get(scope)
        if base is None:
            base = hashlib.blake2b(key=self._salt, digest_size=16)
            base.update(scope.encode())
            base.update(b"\0")
            if len(self._bases) < 1024:  # one per tenant scanner config; bounded anyway
                self._bases[scope] = base
        h = base.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.digest()

    def get(self, key: bytes) -> Spans | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: bytes, spans: Spans) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = spans
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
