"""The long fuzz run: hypothesis strategies, raw header abuse and schemathesis against a
real ``warden serve`` subprocess (and mock provider), with one computed figure.

    python bench/fuzz.py                 # ~2-4 min: 300 examples per strategy
    python bench/fuzz.py --examples 50   # quick look

Prints "N cases tried, 0 responses 5xx, 0 tracebacks, 0 crashes" and exits 1 if any
count is not zero (or a response does not conform to /openapi.json). Loopback only;
both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fuzzing, harness
from bench.fuzzing import FAULTY_KEYS, KEY, Verdict, judge


def policies(mock: str) -> list[dict[str, Any]]:
    return [
        harness.basic_tenant(mock),
        {**harness.basic_tenant(mock, fuzzing.GUARDED_KEY, "guarded"),
         **fuzzing.GUARDED_SECTIONS},
        harness.tenant("faulty", FAULTY_KEYS[0], {
            "gpt-4o-mini": [harness.deployment(mock, "fail_rate=0.5,status=503")]}),
        harness.tenant("down", FAULTY_KEYS[1], {
            "gpt-4o-mini": [harness.deployment("http://127.0.0.1:9")]}),
    ]


def run_hypothesis(url: str, verdict: Verdict, examples: int) -> None:
    cfg = settings(max_examples=examples, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
    client = httpx.Client(base_url=url, timeout=60)

    def send(path: str, content: bytes, headers: dict[str, str], label: str) -> None:
        try:
            r = client.post(path, content=content, headers=headers)
        except httpx.LocalProtocolError:
            return  # the client refused to send it; the raw cases cover that
        except httpx.TransportError as e:
            verdict.cases += 1
            verdict.crashes += 1
            verdict.note(f"transport error {e!r}: {label}")
            return
        faulty = any(k in json.dumps(headers) for k in FAULTY_KEYS)
        judge(verdict, r.status_code, r.content, label, fault_allowed=faulty)

    json_headers = {"Content-Type": "application/json"}

    @given(body=fuzzing.chat_bodies(), path=st.sampled_from(fuzzing.ENDPOINTS),
           key=st.sampled_from([KEY, fuzzing.GUARDED_KEY, fuzzing.GUARDED_KEY, *FAULTY_KEYS]))
    @cfg
    def mutated(body: Any, path: str, key: str) -> None:
        content = json.dumps(body).encode()
        send(path, content, {**json_headers, "Authorization": f"Bearer {key}"},
             f"{path} {content[:200]!r}")

    @given(raw=fuzzing.raw_bodies(), path=st.sampled_from(fuzzing.ENDPOINTS),
           key=st.sampled_from([KEY, fuzzing.GUARDED_KEY]))
    @cfg
    def raw(raw: bytes, path: str, key: str) -> None:
        send(path, raw, {**json_headers, "Authorization": f"Bearer {key}"}, repr(raw[:200]))

    @given(value=fuzzing.json_values)
    @cfg
    def anything(value: Any) -> None:
        send("/v1/chat/completions", json.dumps(value).encode(),
             {**json_headers, "Authorization": f"Bearer {KEY}"}, repr(value)[:200])

    @given(headers=fuzzing.auth_headers())
    @cfg
    def header_values(headers: dict[str, str]) -> None:
        # The client may refuse to send it (UnicodeEncodeError); the raw cases cover that.
        with contextlib.suppress(httpx.LocalProtocolError, UnicodeEncodeError):
            send("/v1/chat/completions", json.dumps(fuzzing.valid_chat()).encode(),
                 {**json_headers, **headers}, repr(headers))

    for test in (mutated, raw, anything, header_values):
        test()
    client.close()


def run_raw(url: str, verdict: Verdict, repeat: int) -> None:
    u = urlsplit(url)
    for _ in range(repeat):
        for label, request, protocol_level in fuzzing.header_abuse_requests():
            try:
                status, _, body = fuzzing.raw_exchange(u.hostname or "127.0.0.1",
                                                       u.port or 80, request)
            except OSError as e:
                verdict.cases += 1
                verdict.crashes += 1
                verdict.note(f"raw {label}: {e!r}")
                continue
            judge(verdict, status, body, label, protocol_level=protocol_level)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=300, help="per hypothesis strategy")
    ap.add_argument("--schema-examples", type=int, default=100,
                    help="per operation and mode (positive/negative) for schemathesis")
    ap.add_argument("--json", type=Path, help="also write the counts here")
    args = ap.parse_args(argv)
    started = time.monotonic()
    verdict = Verdict()
    with tempfile.TemporaryDirectory(prefix="warden-fuzz-") as tmp, \
            harness.stack(Path(tmp), policies,
                          proxy_env={"WARDEN_MAX_BODY_BYTES": str(256 * 1024)}) as run:
        fds_before = run.open_fds()
        run_hypothesis(run.url, verdict, args.examples)
        run_raw(run.url, verdict, repeat=max(1, args.examples // 50))
        conformance = fuzzing.run_schemathesis(run.url, verdict, args.schema_examples, seed=1)
        alive = run.alive() and httpx.get(f"{run.url}/healthz", timeout=10).status_code == 200
        if not alive:
            verdict.crashes += 1
        fds_after = run.open_fds()
    elapsed = time.monotonic() - started
    print(verdict.figure())
    print("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(verdict.statuses.items())))
    print(f"schemathesis conformance failures: {sum(conformance.values())} {conformance or ''}")
    print(f"proxy alive afterwards: {alive}; open fds before/after: {fds_before}/{fds_after}; "
          f"{elapsed:.0f} s")
    for p in verdict.problems:
        print("  problem:", p)
    if args.json:
        args.json.write_text(json.dumps({**verdict.__dict__, "conformance": conformance,
                                         "elapsed_s": elapsed}, indent=1))
    return 0 if verdict.ok and not conformance else 1


if __name__ == "__main__":
    sys.exit(main())
