"""The detector: normalisation, then rules and the classifier, combined into one score.

``Detector.judge`` is pure CPU work with no I/O and no shared mutable state, so the
policy runs it on the services executor. Scores are calibrated probabilities (rule
scores are measured precisions, the classifier is Platt-scaled per role), so the
combined score is simply the strongest signal: ``max`` keeps a calibrated meaning,
where a sum or a noisy-OR would claim independence the layers do not have.

``VerdictCache`` remembers verdicts by content hash. AutoGen resends the whole history
on every turn; with the cache, a conversation costs one judgement per new message.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from proxy.injection.classifier import Classifier
from proxy.injection.normalise import Views, normalise
from proxy.injection.rules import RULES, Rule, match


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    # Bounded labels only (rule ids, "classifier", normalisation signals): these go to
    # logs, metrics and error messages, so they never carry message text.
    reasons: tuple[str, ...] = ()

    @property
    def layer(self) -> str:
        if not self.reasons:
            return "none"
        return "classifier" if self.reasons[0] == "classifier" else "rules"


class Detector:
    """Layers can be switched off one by one; the benchmark measures each on its own."""

    def __init__(
        self,
        classifier: Classifier | None,
        *,
        rules: tuple[Rule, ...] = RULES,
        use_normalisation: bool = True,
    ) -> None:
        self.classifier = classifier
        self.rules = rules
        self.use_normalisation = use_normalisation
        name = classifier.name if classifier is not None else "none"
        version = getattr(classifier, "version", name)
        self.version = f"{version}+rules{len(rules)}+norm{int(use_normalisation)}"

    def threshold(self, role: str) -> float:
        """The default threshold for a role: the classifier's own (chosen on validation
        data), else 0.5, where a rule hit (score >= 0.93) always counts."""
        thresholds = getattr(self.classifier, "thresholds", None)
        if isinstance(thresholds, dict) and role in thresholds:
            return float(thresholds[role])
        return 0.5

    def judge(self, text: str, role: str) -> Verdict:
        views = normalise(text) if self.use_normalisation else Views(text, text)
        best, reasons = 0.0, []
        for hit in match(views, self.rules):
            best = max(best, hit.score)
            reasons.append(hit.rule)
        if self.classifier is not None:
            # The folded view and each decoded payload are judged on their own: a
            # base64 blob scores nothing as text, but what it decodes to might.
            for i, candidate in enumerate((views.folded, *views.decoded)):
                if not candidate.strip():
                    continue
                score = self.classifier.score(candidate, role)
                if score > best:
                    best = score
                    # The classifier leads the reasons when it is the strongest signal.
                    reasons.insert(0, "classifier")
                    if i > 0:
                        reasons.extend(sorted(views.signals & _DECODED_SIGNALS))
        if reasons:
            reasons.extend(sorted(views.signals & _EVASION_SIGNALS))
        return Verdict(best, tuple(dict.fromkeys(reasons)))


_DECODED_SIGNALS = frozenset({"base64", "hex", "url_encoded", "tag_chars", "html_entities",
                              "codepoints"})
_EVASION_SIGNALS = frozenset({"homoglyph", "invisible_chars", "leetspeak", "tag_chars"})


@functools.lru_cache(maxsize=64)
def _key_base(version: str, role: str) -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{version}\0{role}\0".encode())
    return h


class VerdictCache:
    """A bounded LRU of verdicts keyed by (detector version, role, content hash).

    Only touched from the event loop, so it needs no lock.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[bytes, Verdict] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(version: str, role: str, text: str) -> bytes:
        h = _key_base(version, role).copy()  # cheaper than a new hash per message
        h.update(text.encode("utf-8", "surrogatepass"))
        digest: bytes = h.digest()
        return digest

    def get(self, key: bytes) -> Verdict | None:
        verdict = self._items.get(key)
        if verdict is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return verdict

    def put(self, key: bytes, verdict: Verdict) -> None:
        self._items[key] = verdict
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
