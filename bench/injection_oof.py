"""Read the out-of-fold scores of train_injection.py (``--cv K --oof FILE``): where the
errors of the built-in classifier sit, and what the ideas for the missed targets of
issue 4 would give, measured on training data only.

    python bench/injection_oof.py lengths OOF.npz        # a separate threshold for long prompts
    python bench/injection_oof.py twins OOF.npz [--seed S] [--cv K]
    python bench/injection_oof.py seeds OOF0.npz OOF1.npz ...   # thresholds across CV draws
    python bench/injection_oof.py stackone OOF.npz [--role user|tool] [--seed S]
        [--stackone-scores CACHE.npz]                # linear + MiniLM stack
    python bench/injection_oof.py inthewild MODEL.npz   # CHECK on a test set, never for choosing

Everything but ``inthewild`` reads training data only (neuralchemy train + validation,
BIPIA train). ``stackone`` needs the ``stackone`` extra and runs the MiniLM on one thread.
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
import scipy.special

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import injection_data as data
import injection_dedup as dedup

FPR = 0.02
Array = np.ndarray


def threshold(scores: Array, labels: Array, fpr: float = FPR) -> float:
    """Lowest threshold whose FPR on these negatives is <= fpr."""
    neg = np.sort(scores[labels == 0])[::-1]
    k = int(np.floor(fpr * len(neg)))
    return float(np.nextafter(neg[k], np.inf)) if k < len(neg) else float("-inf")


def threshold_per_kind(scores: Array, labels: Array, kinds: Array, fpr: float = FPR) -> float:
    """Lowest threshold with FPR <= fpr on the negatives of every kind."""
    return max(threshold(scores[kinds == k], labels[kinds == k], fpr)
               for k in sorted(set(kinds[labels == 0])))


def two_thresholds(scores: Array, labels: Array, long: Array, fpr: float = FPR
                   ) -> list[dict[str, float]]:
    """For every split of the pooled false-positive budget between long and short
    prompts: the two thresholds and the pooled and long-prompt recall there."""
    budget = int(np.floor(fpr * (labels == 0).sum()))
    neg_long = np.sort(scores[long & (labels == 0)])[::-1]
    neg_short = np.sort(scores[~long & (labels == 0)])[::-1]
    pos_long, pos_short = scores[long & (labels == 1)], scores[~long & (labels == 1)]
    out = []
    for k_long in range(min(budget, len(neg_long)) + 1):
        k_short = budget - k_long
        t_long = np.nextafter(neg_long[k_long], np.inf) if k_long < len(neg_long) else -np.inf
        t_short = (np.nextafter(neg_short[k_short], np.inf) if k_short < len(neg_short)
                   else -np.inf)
        hits = (pos_long >= t_long).sum() + (pos_short >= t_short).sum()
        out.append({"long_fp": k_long, "t_long": float(t_long), "t_short": float(t_short),
                    "recall": float(hits / (labels == 1).sum()),
                    "recall_long": float((pos_long >= t_long).mean())})
    return out


def fit_stack(x: Array, y: Array, w: Array, l2: float = 1e-4) -> Array:
    """Weighted logistic regression on a few dense columns (the last one the bias)."""
    def loss(v: Array) -> tuple[float, Array]:
        z = x @ v
        reg = np.r_[v[:-1], 0.0]
        value = float(np.sum(w * (np.logaddexp(0, z) - y * z)) / w.sum() + l2 * reg @ reg)
        return value, x.T @ (w * (scipy.special.expit(z) - y)) / w.sum() + 2 * l2 * reg

    return np.asarray(scipy.optimize.minimize(loss, np.zeros(x.shape[1]), jac=True,
                                              method="L-BFGS-B").x)


def nested_stack(x: Array, y: Array, w: Array, folds: Array) -> Array:
    """Out-of-fold stacked scores: the stack of each fold is fitted without it."""
    z = np.zeros(len(y))
    for f in sorted(set(folds)):
        v = fit_stack(x[folds != f], y[folds != f], w[folds != f])
        z[folds == f] = x[folds == f] @ v
    return z


def _load(path: Path, role: str) -> tuple[Array, Array, Array]:
    with np.load(path) as o:
        return o[f"{role}_margin"], o[f"{role}_label"], o[f"{role}_group"]


def cmd_lengths(args: argparse.Namespace) -> None:
    m, y, g = _load(args.oof[0], "user")
    long = g == "long"
    t = threshold(m, y)
    print(f"one threshold {t:.3f}: recall {(m[y == 1] >= t).mean():.4f}; long benign above "
          f"{int((m[long & (y == 0)] >= t).sum())} of {int((long & (y == 0)).sum())}; short "
          f"benign FPR {(m[~long & (y == 0)] >= t).mean():.4f}; long attacks recall "
          f"{(m[long & (y == 1)] >= t).mean():.3f} (n={int((long & (y == 1)).sum())})")
    print(json.dumps(two_thresholds(m, y, long)))


def cmd_twins(args: argparse.Namespace) -> None:
    """Prompts whose nearest prompt of the OTHER label (character 5-gram Jaccard) is
    close: the same text, or the same template, labelled both ways."""
    from train_injection import oof_order

    prompts = data.neuralchemy("train") + data.neuralchemy("validation")
    items = [prompts[i] for i in oof_order(prompts, args.cv, args.seed)]
    m, y, _ = _load(args.oof[0], "user")
    assert len(items) == len(m) and all(s.label == lab for s, lab in zip(items, y, strict=True))
    benign = [s.text for s in items if s.label == 0]
    attacks = [s.text for s in items if s.label == 1]
    near = np.zeros(len(items))
    near[y == 0] = dedup.overlap(benign, attacks).jaccard
    near[y == 1] = dedup.overlap(attacks, benign).jaccard
    t = threshold(m, y)
    fp, miss = (y == 0) & (m >= t), (y == 1) & (m < t)
    for j in (0.3, 0.4, 0.5):
        c = near >= j
        print(f"other-label twin at Jaccard >= {j}: {int(c[fp].sum())} of {int(fp.sum())} false "
              f"positives ({int(c[y == 0].sum())} of {int((y == 0).sum())} benign); "
              f"{int(c[miss].sum())} of {int(miss.sum())} misses "
              f"({int(c[y == 1].sum())} of {int((y == 1).sum())} attacks)")
    by_cat: dict[str, list[int]] = {}
    for s, hit in zip(items, m >= t, strict=True):
        if s.label == 1:
            by_cat.setdefault(s.group, [0, 0])[int(hit)] += 1
    print("missed / attacks by category:", {c: f"{n[0]}/{sum(n)}" for c, n in
                                           sorted(by_cat.items(), key=lambda kv: -kv[1][0])[:6]})


def cmd_seeds(args: argparse.Namespace) -> None:
    """Each CV draw's own thresholds against one threshold over all draws' scores."""
    for role in ("tool", "user"):
        parts = [_load(p, role) for p in args.oof]
        pick = ((lambda m, y, g: threshold_per_kind(m, y, g)) if role == "tool"
                else (lambda m, y, g: threshold(m, y)))
        pooled = pick(*(np.concatenate(c) for c in zip(*parts, strict=True)))
        for path, (m, y, g) in zip(args.oof, parts, strict=True):
            own = pick(m, y, g)
            print(f"{role} {path.name}: own threshold {own:.3f} recall "
                  f"{(m[y == 1] >= own).mean():.4f}; all-draws threshold {pooled:.3f} recall "
                  f"{(m[y == 1] >= pooled).mean():.4f}")


def one_thread_onnx() -> None:
    """Make onnxruntime sessions single-threaded (stackone builds its own session, with
    as many threads as cores): latencies comparable with the one-core linear model."""
    import onnxruntime as ort

    session = ort.InferenceSession
    if getattr(session, "one_thread", False):
        return

    def one_thread(path: str, *_: object, **__: object) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        return session(path, opts)

    one_thread.one_thread = True  # type: ignore[attr-defined]
    ort.InferenceSession = one_thread  # type: ignore[misc]


def _stackone_scores(items: list[data.Sample]) -> tuple[Array, Array]:
    one_thread_onnx()
    from stackone_defender.classifiers.tier2_classifier import Tier2Classifier

    clf = Tier2Classifier()
    clf.warmup()
    scores, times = [], []
    for s in items:
        t0 = time.perf_counter()
        scores.append(float(clf.classify_by_chunks(s.text).get("score", 0.0)))
        times.append(time.perf_counter() - t0)
    return np.array(scores), np.array(times)


def _stackone_cached(items: list[data.Sample], cache: Path | None) -> tuple[Array, Array]:
    """stackone's scores of these items, from ``cache`` when it holds them (an npz with
    ``score``, ``time`` and ``label`` in this order), else computed and saved there."""
    if cache is not None and cache.is_file():
        with np.load(cache) as c:
            assert len(c["score"]) == len(items)
            assert (c["label"] == np.array([s.label for s in items])).all()
            return c["score"], c["time"]
    scores, times = _stackone_scores(items)
    if cache is not None:
        np.savez(cache, score=scores, time=times, label=np.array([s.label for s in items]))
    return scores, times


def cmd_stackone(args: argparse.Namespace) -> None:
    """The stack of the linear margin and stackone's MiniLM score, fitted and judged out
    of fold (the stack's folds = the CV's folds): prompts, or BIPIA documents."""
    from train_injection import oof_order, prompt_folds

    if args.role == "user":
        prompts = data.neuralchemy("train") + data.neuralchemy("validation")
        fold_of = prompt_folds(prompts, args.cv, random.Random(args.seed))
        order = oof_order(prompts, args.cv, args.seed)
        items = [prompts[i] for i in order]
        folds = np.array([fold_of[i] for i in order])
    else:
        items, fold_list = [], []
        for f, (_, held) in enumerate(data.bipia_folds(args.cv, args.seed)):
            part = data.bipia_samples(held, seed=args.seed)
            items += part
            fold_list += [f] * len(part)
        folds = np.array(fold_list)
    m, y, g = _load(args.oof[0], args.role)
    assert len(items) == len(m) and all(s.label == lab for s, lab in zip(items, y, strict=True))
    so, times = _stackone_cached(items, args.stackone_scores)
    lengths = np.array([len(s.text) for s in items])
    print(f"stackone p50 {np.median(times) * 1e3:.1f} ms per text, "
          f"{np.median(times[lengths <= 480]) * 1e3:.1f} ms up to 480 characters, "
          f"{np.median(times[lengths > 480]) * 1e3:.1f} ms longer (one thread)")
    s = scipy.special.logit(np.clip(so, 1e-6, 1 - 1e-6))
    if args.role == "tool":
        n_mail = max(1, int(((g == "bipia-email") & (y == 0)).sum()))
        w = np.where(g == "bipia-email",
                     3.0 * int(((g == "bipia-table") & (y == 0)).sum()) / n_mail, 1.0)

        def pick(z: Array) -> float:
            return threshold_per_kind(z, y, g)
    else:
        w = np.ones(len(y))
        long_benign = (g == "long") & (y == 0)
        print(f"long benign prompts: stackone median {np.median(so[long_benign]):.3f}, "
              f"{int((so[long_benign] >= 0.5).sum())} of {int(long_benign.sum())} at >= 0.5")

        def pick(z: Array) -> float:
            return threshold(z, y)
    for name, z in (("linear", m), ("stackone", s)):
        print(f"{name}: recall {(z[y == 1] >= pick(z)).mean():.4f} at the role's threshold rule, "
              f"pooled recall at 2 % {(z[y == 1] >= threshold(z, y)).mean():.4f}")
    for lo, hi in ((-7.0, 7.0), (-3.0, 3.0)):
        x = np.c_[m, np.clip(s, lo, hi), np.ones_like(m)]
        z = nested_stack(x, y, w, folds)
        t = pick(z)
        v = fit_stack(x, y, w)
        # Messages whose stackone score could flip the decision: the cascade's band.
        band = (m >= (t - v[2] - v[1] * hi) / v[0]) & (m < (t - v[2] - v[1] * lo) / v[0])
        print(f"stack, MiniLM logit clipped to [{lo}, {hi}]: recall {(z[y == 1] >= t).mean():.4f}"
              f", pooled recall at 2 % {(z[y == 1] >= threshold(z, y)).mean():.4f}; weights "
              f"{np.round(v, 2).tolist()}; band holds {band.mean():.3f} of texts")


def cmd_inthewild(args: argparse.Namespace) -> None:
    """How in-the-wild recall (a TEST set) falls as the long-prompt threshold rises above
    the model's user threshold, in margin units: the cost side of a length-aware
    threshold. Not used to choose anything."""
    from proxy.injection.classifier import WINDOW_CHARS, LinearModel
    from proxy.injection.normalise import normalise
    from proxy.injection.rules import RULES, match

    model = LinearModel.load(args.oof[0])
    a, b = model.calibration["user"]
    thr = model.thresholds["user"]
    t_margin = (np.log(thr / (1 - thr)) - b) / a
    rows = []
    for s in data.inthewild():
        views = normalise(s.text)
        rule = max((h.score for h in match(views, RULES)), default=0.0)
        best = max(model.margin(u, "user") for c in (views.folded, *views.decoded)
                   if c.strip() for u in model.units(c, "user"))
        rows.append((rule >= thr, best, len(views.folded) > WINDOW_CHARS))
    r = np.array(rows, dtype=float)
    for offset in (0.0, 0.25, 0.5, 1.0, 2.0):
        hit = (r[:, 0] > 0) | (r[:, 1] >= t_margin + offset * r[:, 2])
        print(f"long threshold +{offset} margin: in-the-wild recall {hit.mean():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=("lengths", "twins", "seeds", "stackone", "inthewild"))
    ap.add_argument("oof", type=Path, nargs="+")
    ap.add_argument("--seed", type=int, default=0, help="the --seed of the CV run")
    ap.add_argument("--cv", type=int, default=5, help="the --cv of the CV run")
    ap.add_argument("--role", choices=("user", "tool"), default="tool", help="for stackone")
    ap.add_argument("--stackone-scores", type=Path,
                    help="stackone's scores of the OOF texts: read if there, else saved")
    args = ap.parse_args()
    {"lengths": cmd_lengths, "twins": cmd_twins, "seeds": cmd_seeds,
     "stackone": cmd_stackone, "inthewild": cmd_inthewild}[args.command](args)


if __name__ == "__main__":
    main()
