"""Evaluate Warden's injection detector, layer by layer, on public data.

Data are fetched at evaluation time (see injection_data.py; nothing is committed).
Thresholds are chosen on VALIDATION splits only (neuralchemy validation for prompts,
the held-out part of BIPIA train for tool results) at FPR <= 2 %, then applied to the
test sets. "oracle" recall (best recall at <= 2 % FPR on the test set itself) is shown
beside it to separate ranking quality from threshold transfer; it is not a claim.

    python bench/injection_eval.py                      # all variants
    python bench/injection_eval.py --variants combined --limit 200   # quick check

The shipped model is trained on the validation splits too (train_injection.py --cv), so
its thresholds come with it, chosen on out-of-fold scores: evaluate it with
``--thresholds model`` (the validation columns are then in-sample, not a measurement).

Needs the ``bench`` extra (pyarrow; stackone-defender + onnxruntime for that variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import injection_data as data

from proxy.injection.classifier import (
    MODEL_PATH,
    HashedLinearClassifier,
    LinearModel,
    StackOneClassifier,
)
from proxy.injection.detector import Detector, VerdictCache
from proxy.injection.rules import RULES

TARGET_FPR = 0.02


def variants(names: list[str], model: Path = MODEL_PATH) -> dict[str, Callable[[], Detector]]:
    def builtin() -> HashedLinearClassifier:
        return HashedLinearClassifier(LinearModel.load(model))

    every: dict[str, Callable[[], Detector]] = {
        "rules_raw": lambda: Detector(None, use_normalisation=False),
        "rules": lambda: Detector(None),
        "classifier_raw": lambda: Detector(builtin(), rules=(), use_normalisation=False),
        "classifier": lambda: Detector(builtin(), rules=()),
        "combined": lambda: Detector(builtin()),
        "stackone_raw": lambda: Detector(StackOneClassifier(), rules=(), use_normalisation=False),
        "stackone_combined": lambda: Detector(StackOneClassifier()),
    }
    return {n: every[n] for n in names}


def _scores(det: Detector, samples: list[data.Sample], thresholds: dict[str, float]
            ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Scores shifted by the role's threshold (score - threshold + 0.5), so one cut at
    0.5 applies each role's own threshold and the oracle ranks within that scale."""
    scores, labels, times = [], [], []
    for s in samples:
        t0 = time.perf_counter()
        score = det.judge(s.text, s.role).score
        times.append(time.perf_counter() - t0)
        scores.append(score - thresholds.get(s.role, 0.5) + 0.5)
        labels.append(s.label)
    return np.array(scores), np.array(labels), times


def _threshold(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Lowest threshold with FPR <= fpr on these scores (never below 0.5: a score under
    0.5 means 'more likely benign')."""
    neg = np.sort(scores[labels == 0])[::-1]
    k = int(np.floor(fpr * len(neg)))
    thr = float(np.nextafter(neg[k], 2.0)) if k < len(neg) else 0.0
    return max(thr, 0.5)


def _rates(scores: np.ndarray, labels: np.ndarray, thr: float) -> dict[str, float | None]:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return {
        "recall": round(float((pos >= thr).mean()), 4) if len(pos) else None,
        "fpr": round(float((neg >= thr).mean()), 4) if len(neg) else None,
    }


def _oracle(scores: np.ndarray, labels: np.ndarray) -> float:
    neg = np.sort(scores[labels == 0])[::-1]
    k = int(np.floor(TARGET_FPR * len(neg)))
    thr = float(np.nextafter(neg[k], 2.0)) if k < len(neg) else 0.0
    return round(float((scores[labels == 1] >= thr).mean()), 4)


def _latency(det: Detector, samples: list[data.Sample]) -> dict[str, float]:
    """p50 of a new message (judge) and of a cached one (hash + LRU lookup)."""
    cache = VerdictCache()
    new, cached = [], []
    for s in samples:
        t0 = time.perf_counter()
        key = cache.key(det.version, s.role, s.text)
        if cache.get(key) is None:
            cache.put(key, det.judge(s.text, s.role))
        new.append(time.perf_counter() - t0)
    for s in samples:
        t0 = time.perf_counter()
        assert cache.get(cache.key(det.version, s.role, s.text)) is not None
        cached.append(time.perf_counter() - t0)
    return {"p50_new_ms": round(statistics.median(new) * 1e3, 3),
            "p95_new_ms": round(float(np.percentile(new, 95)) * 1e3, 3),
            "p50_cached_ms": round(statistics.median(cached) * 1e3, 4)}


def evaluate(name: str, det: Detector, sets: dict[str, list[data.Sample]],
             own_thresholds: bool = False) -> dict[str, object]:
    out: dict[str, object] = {}
    # Per-role thresholds, each chosen on its validation set at FPR <= 2 % -- or, with
    # own_thresholds, the detector's own defaults: a model trained on the validation
    # splits too (train_injection.py --cv) brings thresholds chosen on its out-of-fold
    # scores, and its validation columns below are then in-sample.
    s_val, y_val, _ = _scores(det, sets["nc_val"], {})
    t_val, z_val, _ = _scores(det, sets["bipia_val"], {})
    if own_thresholds:
        thresholds = {"user": det.threshold("user"), "tool": det.threshold("tool")}
    else:
        thresholds = {"user": _threshold(s_val, y_val, TARGET_FPR),
                      "tool": _threshold(t_val, z_val, TARGET_FPR)}
    out["threshold_source"] = "model" if own_thresholds else "validation"
    out["thresholds"] = {k: round(v, 4) for k, v in thresholds.items()}
    out["validation"] = {"nc_val": _rates(s_val, y_val, thresholds["user"]),
                         "bipia_val": _rates(t_val, z_val, thresholds["tool"])}
    for set_name in ("nc_test", "bastion", "inthewild", "bipia_test", "slabs_test"):
        scores, labels, times = _scores(det, sets[set_name], thresholds)
        row: dict[str, object] = {"n": len(labels), **_rates(scores, labels, 0.5)}
        if 0 < labels.sum() < len(labels):
            row["oracle_recall_at_2pct_fpr"] = _oracle(scores, labels)
        row["p50_ms"] = round(statistics.median(times) * 1e3, 3)
        out[set_name] = row
    out["latency_nc_test"] = _latency(det, sets["nc_test"])
    out["latency_bipia_test"] = _latency(det, sets["bipia_test"])
    print(name, json.dumps(out), flush=True)
    return out


def rule_precision(sets: dict[str, list[data.Sample]]) -> dict[str, dict[str, int]]:
    """Hits per rule on the TRAINING splits (the basis of each rule's score)."""
    det = Detector(None)
    counts = {r.id: {"tp": 0, "fp": 0} for r in RULES}
    for s in sets["nc_train"] + sets["slabs_train"]:
        for rule in det.judge(s.text, s.role).reasons:
            if rule in counts:
                counts[rule]["tp" if s.label else "fp"] += 1
    return counts


LABELS = {
    "rules_raw": "rules, raw text",
    "rules": "rules + normalisation",
    "classifier_raw": "classifier, raw text",
    "classifier": "classifier + normalisation",
    "combined": "**combined (shipped)**",
    "stackone_raw": "stackone-defender 0.9.4 Tier 2, raw",
    "stackone_combined": "stackone + rules + normalisation",
}


def markdown(results: dict[str, object]) -> str:
    """The RESULTS.md table of these results (percentages, one decimal)."""
    def pct(v: object) -> str:
        return "-" if v is None else f"{100 * float(v):.1f}"  # type: ignore[arg-type]

    lines = ["| layer / variant | thr user / tool | neuralchemy test R / FPR % (oracle R) | "
             "bastion R / FPR % | in-the-wild R % | BIPIA test R / FPR % (oracle R) | "
             "S-Labs test R / FPR % |", "|---|---|---|---|---|---|---|"]
    for name, label in LABELS.items():
        r = results.get(name)
        if not isinstance(r, dict):
            continue
        nc, ba, wi, bi, sl = (r[k] for k in ("nc_test", "bastion", "inthewild",
                                              "bipia_test", "slabs_test"))
        lines.append(
            f"| {label} | {r['thresholds']['user']:.3f} / {r['thresholds']['tool']:.3f} | "
            f"{pct(nc['recall'])} / {pct(nc['fpr'])} ({pct(nc['oracle_recall_at_2pct_fpr'])}) | "
            f"{pct(ba['recall'])} / {pct(ba['fpr'])} | {pct(wi['recall'])} | "
            f"{pct(bi['recall'])} / {pct(bi['fpr'])} ({pct(bi['oracle_recall_at_2pct_fpr'])}) | "
            f"{pct(sl['recall'])} / {pct(sl['fpr'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="rules_raw,rules,classifier_raw,classifier,"
                    "combined,stackone_raw,stackone_combined")
    ap.add_argument("--limit", type=int, default=0, help="cap every set (quick checks)")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--thresholds", choices=("validation", "model"), default="validation",
                    help="where each role's threshold comes from: chosen here on the "
                         "validation splits, or the detector's own (for a model trained "
                         "on the validation splits with train_injection.py --cv)")
    ap.add_argument("--model", type=Path, default=MODEL_PATH,
                    help="the built-in model to evaluate (default: the shipped one)")
    args = ap.parse_args()

    sets = {
        "nc_train": data.neuralchemy("train"),
        "slabs_train": data.slabs("train"),
        "nc_val": data.neuralchemy("validation"),
        "bipia_val": data.bipia("validation"),
        "nc_test": data.neuralchemy("test"),
        "bastion": data.bastion(),
        "inthewild": data.inthewild(),
        "bipia_test": data.bipia("test"),
        "slabs_test": data.slabs("test"),
    }
    if args.limit:
        sets = {k: v[:: max(1, len(v) // args.limit)] for k, v in sets.items()}
    results: dict[str, object] = {"rule_hits_on_training": rule_precision(sets)}
    print(json.dumps(results), flush=True)
    for name, factory in variants(args.variants.split(","), args.model).items():
        results[name] = evaluate(name, factory(), sets, args.thresholds == "model")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
