"""Training rows of the built-in injection classifier (bench/train_injection.py).

What the classifier is fitted on, as (text, role, label, weight) rows: labelled prompts
(user role, with the windows of long ones), BIPIA training contexts cut into the
detector's units (tool role, clean windows negative, windows holding an inserted attack
positive), and the added sources the options ask for. Shared by the plain recipe and by
every cross-validation fold, so a fold's model is trained exactly as the final one.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import injection_data as data
import injection_dedup as dedup

from proxy.injection.classifier import units
from proxy.injection.normalise import normalise

Row = tuple[str, str, int, float]  # text, role, label, weight


def view(text: str) -> str:
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


def extra_samples(args: argparse.Namespace, tests: list[str]) -> list[data.Sample]:
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
        extra = extra_samples(args, tests) if extra is None else extra
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
    if args.benign_weight != 1.0:
        # The operating point is FPR <= 2 %: weighting benign prompts up spends the
        # fit on the top of the benign score distribution, where the threshold sits.
        # The user role's total weight is kept, so the balance with tool results holds.
        before = sum(wt for _, r, _, wt in rows if r == "user")
        rows = [(t, r, lab, wt * args.benign_weight if r == "user" and lab == 0 else wt)
                for t, r, lab, wt in rows]
        scale = before / sum(wt for _, r, _, wt in rows if r == "user")
        rows = [(t, r, lab, wt * scale if r == "user" else wt) for t, r, lab, wt in rows]
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
