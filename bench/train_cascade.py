"""Fit the tool-role stack of the cascade classifier (proxy/injection/cascade.py).

Input: the out-of-fold file of the linear model's own training run
(``train_injection.py --cv 5 ... --oof OOF.npz``, same --seed), that model file, and
stackone's MiniLM scores of the same out-of-fold BIPIA documents (computed here on one
thread if the cache file is absent; ~11 min). Training data only: BIPIA train.

The stack (linear margin, clipped MiniLM logit) is fitted out of fold a second time
(nested, on the CV's own folds), Platt-scaled and thresholded at FPR <= 2 % on e-mails
and on tables separately, exactly like the linear model's tool threshold; the shipped
stack is then fitted on all out-of-fold documents.

    python bench/train_cascade.py --oof OOF.npz --model proxy/injection/model.npz \\
        --stackone-scores so_tool.npz --out proxy/injection/cascade.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.special

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import injection_data as data
from injection_oof import _stackone_cached, fit_stack, nested_stack
from train_injection import platt, threshold_per_kind

from proxy.injection.cascade import Stack
from proxy.injection.classifier import LinearModel

FPR = 0.02


def tool_items(cv: int, seed: int) -> tuple[list[data.Sample], np.ndarray]:
    """The BIPIA documents in the order of the out-of-fold arrays, and their folds."""
    items: list[data.Sample] = []
    folds: list[int] = []
    for f, (_, held) in enumerate(data.bipia_folds(cv, seed)):
        part = data.bipia_samples(held, seed=seed)
        items += part
        folds += [f] * len(part)
    return items, np.array(folds)


def fit_cascade(margins: np.ndarray, second: np.ndarray, labels: np.ndarray,
                kinds: np.ndarray, folds: np.ndarray, clip: tuple[float, float],
                email_weight: float, version: str) -> tuple[Stack, dict[str, float]]:
    """The stack, its Platt scaling and per-kind threshold from out-of-fold inputs."""
    s = np.clip(scipy.special.logit(np.clip(second, 1e-6, 1 - 1e-6)), *clip)
    x = np.c_[margins, s, np.ones_like(margins)]
    clean = labels == 0
    n_mail = max(1, int((clean & (kinds == "bipia-email")).sum()))
    n_table = int((clean & (kinds == "bipia-table")).sum())
    w = np.where(kinds == "bipia-email", email_weight * n_table / n_mail, 1.0)
    z = nested_stack(x, labels, w, folds)
    a, b = platt(z, labels)
    probs = 1.0 / (1.0 + np.exp(-(a * z + b)))
    thr = threshold_per_kind(probs, labels, kinds, FPR)
    v = fit_stack(x, labels, w)
    stack = Stack(float(v[0]), float(v[1]), float(v[2]), clip[0], clip[1], (a, b),
                  round(max(0.5, thr), 4), version)
    low, high = stack.band()
    report = {"recall_per_kind_threshold": float((probs[labels == 1] >= thr).mean()),
              "band_fraction": float(((margins >= low) & (margins < high)).mean())}
    for k in sorted(set(kinds)):
        report[f"fpr_{k}"] = float((probs[clean & (kinds == k)] >= thr).mean())
        report[f"recall_{k}"] = float((probs[~clean & (kinds == k)] >= thr).mean())
    return stack, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--oof", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=Path("proxy/injection/model.npz"))
    ap.add_argument("--stackone-scores", type=Path, help="cache of the MiniLM scores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--clip", default="-3,3", help="range of the MiniLM logit")
    ap.add_argument("--email-weight", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path("proxy/injection/cascade.npz"))
    args = ap.parse_args()

    items, folds = tool_items(args.cv, args.seed)
    with np.load(args.oof) as o:
        margins, labels, kinds = o["tool_margin"], o["tool_label"], o["tool_group"]
    assert len(items) == len(margins)
    assert all(s.label == lab for s, lab in zip(items, labels, strict=True))
    second, _ = _stackone_cached(items, args.stackone_scores)
    lo, hi = (float(c) for c in args.clip.split(","))
    version = LinearModel.load(args.model).fingerprint
    stack, report = fit_cascade(margins, second, labels, kinds, folds, (lo, hi),
                                args.email_weight, version)
    stack.save(args.out)
    print(json.dumps({"stack": [stack.w_margin, stack.w_second, stack.bias],
                      "platt": stack.platt, "threshold": stack.threshold,
                      "band": stack.band(), "out_of_fold": report}, indent=2))


if __name__ == "__main__":
    main()
