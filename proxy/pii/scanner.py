"""One tenant's view of the shared engine, and the fail-closed, cached way to run it.

The engine is shared by every tenant of the process; what differs per tenant (entity
list, threshold, deny-lists, custom regexes, allow-list) is passed per call. A batch of
texts is analysed in one executor job so a request costs one thread hop, however many
message parts it has.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.errors import ServiceUnavailable
from proxy.pii.cache import ScanCache, Span, Spans

if TYPE_CHECKING:  # Presidio loads when the engine is built, not when this is imported
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer


@dataclass(frozen=True, eq=False)
class Scanner:
    engine: AnalyzerEngine
    entities: tuple[str, ...]
    threshold: float
    extra: tuple[EntityRecognizer, ...] = ()
    allow: tuple[str, ...] = ()
    # Identifies everything above that changes a result; scopes the cache key.
    fingerprint: str = ""
    timeout_s: float = 5.0

    def analyze(self, text: str) -> Spans:
        """Synchronous; runs on a worker thread."""
        if not text.strip():
            return ()
        results = self.engine.analyze(
            unescape_whitespace(text), language="en", entities=list(self.entities),
            score_threshold=self.threshold, ad_hoc_recognizers=list(self.extra) or None,
            allow_list=list(self.allow) or None,
        )
        return merge_overlaps(Span(r.start, r.end, r.entity_type, r.score) for r in results)

    def analyze_batch(self, texts: Sequence[str]) -> list[Spans]:
        return [self.analyze(t) for t in texts]

    async def scan(self, texts: Sequence[str], cache: ScanCache, executor: Executor
                   ) -> list[Spans]:
        """Spans for every text; only texts not seen before are analysed.

        Fails closed: an analyzer exception or a timeout raises ``ServiceUnavailable``,
        so the caller never gets to forward the raw text.
        """
        found: list[Spans | None] = []
        missing: dict[bytes, list[int]] = {}
        for i, text in enumerate(texts):
            key = cache.key(self.fingerprint, text)
            spans = cache.get(key)
            found.append(spans)
            if spans is None:
                missing.setdefault(key, []).append(i)  # the same text twice: scan once
        if missing:
            keys = list(missing)
            batch = [texts[missing[k][0]] for k in keys]
            loop = asyncio.get_running_loop()
            try:
                results = await asyncio.wait_for(
                    loop.run_in_executor(executor, self.analyze_batch, batch), self.timeout_s
                )
            except TimeoutError:
                raise ServiceUnavailable(
                    f"PII scan did not finish within {self.timeout_s:g}s; the request was not "
                    "forwarded (the pii policy fails closed)"
                ) from None
            except Exception as e:  # any analyzer failure: refuse, never forward raw text
                raise ServiceUnavailable(
                    f"PII scan failed ({type(e).__name__}); the request was not forwarded "
                    "(the pii policy fails closed)"
                ) from e
            for key, spans in zip(keys, results, strict=True):
                cache.put(key, spans)
                for i in missing[key]:
                    found[i] = spans
        return [s if s is not None else () for s in found]


def unescape_whitespace(text: str) -> str:
    """Text as the recognizers should see it, with the same length (so spans apply to
    the original): JSON-escaped ``\\n``, ``\\t``, ``\\r`` (tool results that carry
    serialised JSON, logs) become two spaces, so "\\n555 0100" still starts a word."""
    if "\\" not in text:
        return text
    for seq in ("\\n", "\\t", "\\r"):
        text = text.replace(seq, "  ")
    return text


def merge_overlaps(spans: Iterable[Span]) -> Spans:
    """Non-overlapping spans, left to right. Overlaps merge into their union: redacting
    the union leaks nothing of either. The type is that of a validated or vendor-format
    finding (score >= 0.9: a checksum passed, a key prefix matched) over a model's
    guess, then of the longer span, the more specific one ("12 Harrison Street" over
    the LOCATION "Harrison" inside it, an e-mail address over the URL of its domain)."""
    ordered = sorted(spans, key=lambda s: (s.start, -s.end))
    out: list[Span] = []
    for s in ordered:
        if out and s.start < out[-1].end:
            last = out[-1]
            winner = max(last, s, key=lambda x: (x.score >= 0.9, x.end - x.start, x.score))
            out[-1] = Span(last.start, max(last.end, s.end), winner.entity, winner.score)
        else:
            out.append(s)
    return tuple(out)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
