"""PII accuracy and latency of the ``pii`` policy, computed (never typed in).

Accuracy, per entity type, for the default and the NER tier, on:

1. ``synth_dataset_v2.json`` (presidio-research's public labelled set, in shared/data/pii);
2. a set generated with presidio-evaluator's own generator: its wheel is fetched with
   ``pip download --no-deps`` into a cache directory outside git, with the generator's
   pure-Python dependencies (faker, pandas, tqdm, python-dotenv) installed next to it
   with ``pip install --no-deps --target``. Its HospitalProvider (which fetches data from
   Wikipedia) is left out: nothing here touches the network beyond the package index;
3. a secrets set generated here (vendor-format keys in sentence templates), because
   neither public set has credentials.

Scoring is span-based. A gold span is *found* when a prediction of the same type
overlaps it (recall). A prediction is *correct* when it overlaps a gold span of the same
type (strict precision). Because the policy's job is to keep PII from the provider, two
redaction-level numbers are reported as well: the share of predictions that overlap any
gold PII span (a prediction of the wrong type still hides PII), and the share of gold
characters that end up redacted. Gold types the tier does not claim (ORGANIZATION,
TITLE, AGE, ...) are not scored; a prediction overlapping one is not a false positive.

Latency: ``on_request`` of the real policy (executor hop included) for a new 1 KB
message (p50/p90), for the same message again (cache), and ``on_chunk`` per streamed
chunk with restoration active.

    python bench/pii_eval.py                      # quick: subsets, few repetitions
    python bench/pii_eval.py --full --append      # all samples; append to RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import statistics
import string
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from proxy.context import RequestContext  # noqa: E402
from proxy.metrics import Metrics  # noqa: E402
from proxy.policies.pii import STATE, PiiConfig, PiiPolicy, build  # noqa: E402
from proxy.services import Services  # noqa: E402
from proxy.settings import Settings  # noqa: E402
from proxy.store import MemoryStore  # noqa: E402

EVALUATOR = "presidio-evaluator==0.3.2"
GENERATOR_DEPS = ("faker==40.54.0", "pandas==3.1.1", "tqdm==4.70.1", "python-dotenv==1.2.4")
CACHE = Path(os.environ.get("WARDEN_BENCH_CACHE", Path.home() / ".cache" / "warden-bench"))

# Dataset label -> Warden entity type. Labels absent here are not scored.
LABELS = {
    "PERSON": "PERSON", "GPE": "LOCATION", "LOCATION": "LOCATION",
    "STREET_ADDRESS": "STREET_ADDRESS", "CREDIT_CARD": "CREDIT_CARD",
    "PHONE_NUMBER": "PHONE_NUMBER", "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "IBAN_CODE": "IBAN_CODE", "US_SSN": "US_SSN", "IP_ADDRESS": "IP_ADDRESS",
    "DATE_TIME": "DATE_TIME", "NRP": "NRP",
}
SECRET_TYPES = ("API_KEY", "AWS_ACCESS_KEY", "GITHUB_TOKEN", "JWT", "PRIVATE_KEY",
                "BEARER_TOKEN", "CONNECTION_STRING", "SECRET")


@dataclass
class Sample:
    text: str
    spans: list[tuple[int, int, str]]  # start, end, dataset label


# -- datasets -----------------------------------------------------------------------


def synth_path(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else [
        ROOT.parent / "shared/data/pii/synth_dataset_v2.json",
        ROOT.parent.parent / "shared/data/pii/synth_dataset_v2.json",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise SystemExit(f"synth_dataset_v2.json not found (tried {candidates}); pass --synth")


def load_synth(path: Path) -> list[Sample]:
    return [Sample(d["full_text"], [(s["start_position"], s["end_position"], s["entity_type"])
                                    for s in d["spans"]])
            for d in json.loads(path.read_text())]


def evaluator_generated(n: int, seed: int) -> list[Sample]:
    """Sentences from presidio-evaluator's generator, fetched into CACHE on first use."""
    wheel_dir, deps = CACHE / "wheels", CACHE / "deps"
    if not any(wheel_dir.glob("presidio_evaluator-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(wheel_dir), EVALUATOR], check=True)
    if not (deps / "faker").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                        str(deps), *GENERATOR_DEPS], check=True)
    wheel = next(wheel_dir.glob("presidio_evaluator-*.whl"))
    unpacked = CACHE / wheel.stem
    if not unpacked.is_dir():  # unpacked: the generator reads its templates as files
        import zipfile

        zipfile.ZipFile(wheel).extractall(unpacked)
    sys.path[:0] = [str(deps), str(unpacked)]
    import contextlib
    import io

    from presidio_evaluator.data_generator import (  # type: ignore[import-not-found]
        PresidioSentenceFaker,
        presidio_additional_entity_providers,
    )

    providers = [p for p in presidio_additional_entity_providers
                 if p.__name__ != "HospitalProvider"]  # it downloads from Wikipedia
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        faker = PresidioSentenceFaker("en_US", lower_case_ratio=0.05, random_seed=seed,
                                      entity_providers=providers)
        results = faker.generate_new_fake_sentences(n)
    return [Sample(r.full_text, [(s.start_position, s.end_position, s.entity_type)
                                 for s in r.spans]) for r in results]


def _token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits
           ) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def secrets_set(n: int, seed: int) -> list[Sample]:
    """Vendor-format credentials in the sentences agents actually exchange."""
    rng = random.Random(seed)
    b64u = string.ascii_letters + string.digits + "-_"
    makers = {
        "API_KEY": [lambda: "sk-proj-" + _token(rng, 48, b64u),
                    lambda: "sk-" + _token(rng, 48),
                    lambda: "sk-ant-api03-" + _token(rng, 93, b64u) + "AA",
                    lambda: "AIza" + _token(rng, 35, b64u),
                    lambda: "sk_live_" + _token(rng, 24)],
        "AWS_ACCESS_KEY": [lambda: "AKIA" + _token(rng, 16, string.ascii_uppercase + "234567")],
        "GITHUB_TOKEN": [lambda: "ghp_" + _token(rng, 36),
                         lambda: "github_pat_" + _token(rng, 22) + "_" + _token(rng, 59)],
        "JWT": [lambda: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ" + _token(rng, 40, b64u) + "."
                + _token(rng, 43, b64u)],
        "PRIVATE_KEY": [lambda: "-----BEGIN PRIVATE KEY-----\n" + "\n".join(
            _token(rng, 64, string.ascii_letters + string.digits + "+/") for _ in range(4))
            + "\n-----END PRIVATE KEY-----"],
        "BEARER_TOKEN": [lambda: _token(rng, 32, b64u + ".")],
        "CONNECTION_STRING": [lambda: rng.choice(["postgresql", "mysql", "mongodb+srv", "redis",
                                                  "amqp"]) + "://" + _token(rng, 6).lower()
                              + ":" + _token(rng, 14) + "@" + _token(rng, 8).lower()
                              + ".internal:5432/app"],
        "SECRET": [lambda: _token(rng, 20, string.ascii_letters + string.digits + "!#%&*")],
    }
    templates = {
        "BEARER_TOKEN": ["curl -H 'Authorization: Bearer {v}' https://api.example.com/v1",
                         "The header is Authorization: Bearer {v} for the staging API."],
        "SECRET": ["DB_PASSWORD={v}", "set password: {v} in the config",
                   "aws_secret_access_key = {v}", "client_secret={v}"],
        "*": ["Here is the key: {v}", "Use {v} to call the billing service.",
              "export TOKEN_VALUE={v}", "The config says `{v}`; rotate it after the demo.",
              "{v}", "I pasted it below:\n{v}\nthanks"],
    }
    out = []
    for i in range(n):
        entity = SECRET_TYPES[i % len(SECRET_TYPES)]
        value = rng.choice(makers[entity])()
        template = rng.choice(templates.get(entity, templates["*"]))
        start = template.index("{v}")
        out.append(Sample(template.replace("{v}", value), [(start, start + len(value), entity)]))
    return out


CLEAN_MODULES = ("json", "asyncio", "http.client", "email.message", "argparse", "logging",
                 "unittest", "collections", "re", "datetime", "decimal", "pathlib", "subprocess",
                 "socket", "ssl", "urllib.request", "csv", "sqlite3", "zipfile", "tarfile",
                 "typing", "dataclasses", "functools", "itertools", "string", "textwrap",
                 "ipaddress", "uuid", "hashlib", "hmac", "base64", "struct", "shutil", "os")


def clean_corpus() -> list[str]:
    """PII-free technical prose: the standard library's docstrings, in ~1 KB pieces."""
    import importlib
    import inspect

    texts: list[str] = []
    for name in CLEAN_MODULES:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                docs.append(inspect.getdoc(getattr(mod, attr, None)) or "")
        for doc in dict.fromkeys(docs):
            for para in doc.split("\n\n"):
                if len(para) > 40:
                    texts.append(para[:1500])
    return texts


# -- scoring ------------------------------------------------------------------------


@dataclass
class Score:
    gold: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    predicted: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    over_pii: int = 0  # predictions overlapping any gold span
    gold_chars: int = 0
    hidden_chars: int = 0

    def row(self, entity: str) -> tuple[int, float | None, int, float | None]:
        g, p = self.gold[entity], self.predicted[entity]
        return (g, self.found[entity] / g if g else None, p,
                self.correct[entity] / p if p else None)


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(policy: PiiPolicy, samples: list[Sample], claimed: set[str]) -> Score:
    sc = Score()
    for s in samples:
        preds = [(p.start, p.end, p.entity) for p in policy.scanner.analyze(s.text)]
        gold_all = [(a, b, LABELS.get(t, t)) for a, b, t in s.spans]
        gold = [g for g in gold_all if g[2] in claimed]
        for a, b, t in gold:
            sc.gold[t] += 1
            if any(overlaps((a, b), p[:2]) and p[2] == t for p in preds):
                sc.found[t] += 1
            covered = sum(1 for i in range(a, b) if not s.text[i].isspace()
                          and any(p[0] <= i < p[1] for p in preds))
            sc.gold_chars += sum(1 for i in range(a, b) if not s.text[i].isspace())
            sc.hidden_chars += covered
        for p in preds:
            sc.predicted[p[2]] += 1
            if any(overlaps(p[:2], g[:2]) and g[2] == p[2] for g in gold):
                sc.correct[p[2]] += 1
            if any(overlaps(p[:2], g[:2]) for g in gold_all):
                sc.over_pii += 1
    return sc


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def score_table(name: str, sc: Score) -> list[str]:
    lines = [f"**{name}**", "", "| entity | gold | recall | predicted | precision |",
             "|---|---:|---:|---:|---:|"]
    for entity in sorted(set(sc.gold) | set(sc.predicted)):
        g, r, p, pr = sc.row(entity)
        lines.append(f"| {entity} | {g} | {fmt(r)} | {p} | {fmt(pr)} |")
    tp, pred = sum(sc.correct.values()), sum(sc.predicted.values())
    found, gold = sum(sc.found.values()), sum(sc.gold.values())
    lines.append(f"| **all (strict)** | {gold} | {fmt(found / gold if gold else None)} | {pred} "
                 f"| {fmt(tp / pred if pred else None)} |")
    chars = sc.hidden_chars / sc.gold_chars if sc.gold_chars else None
    lines += ["", f"Redaction view: {fmt(sc.over_pii / pred if pred else None)} of predictions "
              f"cover gold PII of some type; {fmt(chars)} of gold PII characters are redacted.",
              ""]
    return lines


# -- latency ------------------------------------------------------------------------

LOREM = ("The quarterly report is attached; please review the figures for the northern "
         "region before the meeting. Customer {n} wrote from ann.{n}@example.org and asked "
         "us to call back on +1 415 555 {p:04d} about invoice {n}. The shipment left the "
         "warehouse on time, but the carrier reported a delay at the border crossing. ")


def message_1kb(n: int) -> str:
    text = ""
    while len(text) < 1024:
        text += LOREM.format(n=n, p=n % 10000)
    return text[:1024]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else values[0]


async def latency(policy: PiiPolicy, reps: int) -> dict[str, float]:
    async def once(text: str) -> float:
        ctx = RequestContext(request_id="b", operation="chat", model="m", body={
            "model": "m", "messages": [{"role": "user", "content": text}]})
        t = time.perf_counter()
        await policy.on_request(ctx)
        return time.perf_counter() - t

    for i in range(5):  # warm-up
        await once(message_1kb(10_000_000 + i))
    fresh = [await once(message_1kb(i)) for i in range(reps)]
    repeated_text = message_1kb(99)
    await once(repeated_text)
    repeated = [await once(repeated_text) for _ in range(reps * 5)]
    return {"new_p50": statistics.median(fresh), "new_p90": pct(fresh, 90),
            "repeat_p50": statistics.median(repeated), "repeat_p90": pct(repeated, 90)}


async def chunk_cost(policy: PiiPolicy, chunks: int) -> dict[str, float]:
    ctx = RequestContext(request_id="b", operation="chat", model="m", body={
        "model": "m", "messages": [{"role": "user", "content": message_1kb(1)}]})
    await policy.on_request(ctx)
    mapping = ctx.require(STATE).redactions.mapping
    reply = " and ".join(mapping) + " — noted. " + "Plain words follow here. " * 20
    pieces = [reply[i:i + 4] for i in range(0, len(reply), 4)]  # ~1 token per chunk
    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    stream = [{**head, "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    stream = (stream * (chunks // len(stream) + 1))[:chunks]
    times = []
    for c in stream:
        c = {**c, "choices": [{"index": 0, "delta": dict(c["choices"][0]["delta"])}]}
        t = time.perf_counter()
        policy.on_chunk(ctx, c)
        times.append(time.perf_counter() - t)
    return {"chunk_p50": statistics.median(times), "chunk_p99": pct(times, 99),
            "chunk_mean": statistics.fmean(times)}


# -- targets (issue 3) ----------------------------------------------------------------

RECALL_99 = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS")


def targets_table(tier: str, scores: list[Score], cpu_p50: float, lat: dict[str, float],
                  ch: dict[str, float]) -> list[str]:
    """Each target of the issue against what was measured: the two PII sets pooled,
    secrets from the secrets set, precision over all three sets."""
    pii = Score()
    for sc in scores[:2]:
        pii.gold.update(sc.gold)
        pii.found.update(sc.found)
    secrets = scores[2]
    rows: list[tuple[str, float, float, bool, str]] = []  # target, value, bound, higher?, unit
    for e in RECALL_99:
        if pii.gold[e]:
            rows.append((f"recall {e}", pii.found[e] / pii.gold[e], 0.99, True, ""))
    sg = sum(secrets.gold[e] for e in SECRET_TYPES)
    rows.append(("recall secrets (all types)",
                 sum(secrets.found[e] for e in SECRET_TYPES) / sg, 0.99, True, ""))
    if tier == "ner" and pii.gold["PERSON"]:
        rows.append(("recall PERSON", pii.found["PERSON"] / pii.gold["PERSON"], 0.80, True, ""))
    pred = sum(sum(sc.predicted.values()) for sc in scores)
    correct = sum(sum(sc.correct.values()) for sc in scores)
    rows.append(("precision overall (strict)", correct / pred, 0.90, True, ""))
    rows.append(("precision overall (redaction view)",
                 sum(sc.over_pii for sc in scores) / pred, 0.90, True, ""))
    bound = 3.0 if tier == "default" else 12.0
    rows.append(("new 1 KB message, analyzer CPU p50", cpu_p50 * 1e3, bound, False, " ms"))
    rows.append(("new 1 KB message, on_request wall p50", lat["new_p50"] * 1e3, bound, False,
                 " ms"))
    rows.append(("repeated message p50", lat["repeat_p50"] * 1e3, 0.1, False, " ms"))
    rows.append(("stream restoration per chunk p50", ch["chunk_p50"] * 1e6, 50.0, False, " µs"))
    lines = [f"Targets, tier `{tier}`:", "", "| target | measured | bound | met |",
             "|---|---:|---:|---|"]
    for name, value, limit, higher, unit in rows:
        met = value >= limit if higher else value <= limit
        gap = "" if met else f" (by {abs(value - limit):.3g}{unit})"
        cmp = "≥" if higher else "≤"
        lines.append(f"| {name} | {value:.3f}{unit} | {cmp} {limit:g}{unit} "
                     f"| {'yes' if met else 'no' + gap} |")
    return [*lines, ""]


# -- main ---------------------------------------------------------------------------


def build_policy(services: Services, tier: str) -> PiiPolicy:
    return build(PiiConfig(tier=tier), services)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synth", help="path to synth_dataset_v2.json")
    ap.add_argument("--full", action="store_true", help="all samples, more repetitions")
    ap.add_argument("--append", action="store_true", help="append a section to RESULTS.md")
    ap.add_argument("--tiers", default="default,ner")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    synth = load_synth(synth_path(args.synth))
    n_gen, n_secret = (1500, 400) if args.full else (300, 160)
    if not args.full:
        synth = random.Random(args.seed).sample(synth, 300)
    generated = evaluator_generated(n_gen, args.seed)
    secrets = secrets_set(n_secret, args.seed)
    reps = 200 if args.full else 30
    services = Services(settings=Settings(pii_secret="bench", pii_cache_size=100_000,
                                          cpu_workers=1), store=MemoryStore(), metrics=Metrics())
    out = [f"## PII accuracy and latency — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", "",
           f"`python bench/pii_eval.py{' --full' if args.full else ''}`; "
           f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
           f"load average {os.getloadavg()[0]:.1f} at start, Python "
           f"{platform.python_version()}, presidio-analyzer "
           f"{importlib.metadata.version('presidio-analyzer')}. "
           f"Samples: synth_dataset_v2 {len(synth)}, presidio-evaluator generator "
           f"({EVALUATOR}, seed {args.seed}) {len(generated)}, secrets set {len(secrets)}. "
           "Default policy config per tier (threshold 0.4, phone regions US, GB).", ""]
    try:
        for tier in args.tiers.split(","):
            policy = build_policy(services, tier)
            claimed = set(policy.scanner.entities)
            out.append(f"### tier `{tier}`")
            out.append("")
            scores = []
            for name, data in (("synth_dataset_v2", synth), ("presidio-evaluator generated",
                                                               generated),
                               ("secrets (generated here)", secrets)):
                t = time.perf_counter()
                sc = score(policy, data, claimed)
                scores.append(sc)
                out += score_table(f"{name} ({time.perf_counter() - t:.1f}s)", sc)
            clean = clean_corpus()
            kb = sum(len(t) for t in clean) / 1024
            hits: Counter[str] = Counter()
            examples: dict[str, str] = {}
            for t in clean:
                for p in policy.scanner.analyze(t):
                    hits[p.entity] += 1
                    examples.setdefault(p.entity, t[p.start:p.end][:40])
            out += [f"Findings on PII-free text (standard-library docstrings, {kb:.0f} KB): "
                    + (", ".join(f"{e} {n} (e.g. `{examples[e]!r}`)" for e, n in
                                 hits.most_common()) or "none")
                    + f" — {sum(hits.values()) / kb * 100:.1f} per 100 KB.", ""]
            cpu = []
            for i in range(reps):
                text = message_1kb(20_000_000 + i)
                t0 = time.thread_time()
                policy.scanner.analyze(text)
                cpu.append(time.thread_time() - t0)
            lat = asyncio.run(latency(policy, reps))
            ch = asyncio.run(chunk_cost(policy, 5000))
            out += [
                "| latency | p50 | p90/p99 |", "|---|---:|---:|",
                f"| on_request, new 1 KB message (wall) | {lat['new_p50'] * 1e3:.2f} ms "
                f"| {lat['new_p90'] * 1e3:.2f} ms |",
                f"| analyzer CPU time, new 1 KB message | {statistics.median(cpu) * 1e3:.2f} ms "
                f"| {pct(cpu, 90) * 1e3:.2f} ms |",
                f"| on_request, same message again (cache) | {lat['repeat_p50'] * 1e3:.3f} ms "
                f"| {lat['repeat_p90'] * 1e3:.3f} ms |",
                f"| on_chunk with restoration, per chunk | {ch['chunk_p50'] * 1e6:.1f} µs "
                f"| {ch['chunk_p99'] * 1e6:.1f} µs (p99) |", ""]
            out += targets_table(tier, scores, statistics.median(cpu), lat, ch)
    finally:
        services.close()
    text = "\n".join(out)
    print(text)
    if args.append:
        results = ROOT / "bench" / "RESULTS.md"
        prior = results.read_text() if results.exists() else "# Benchmark results\n"
        results.write_text(prior.rstrip("\n") + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
