"""The real CLI: serve (ready line, SIGTERM drain), check, demo, mock-upstream."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import KEY, env_for_subprocess, spawn, tenant_policy, write_policies

pytestmark = pytest.mark.slow


def test_check_accepts_good_and_rejects_bad(tmp_path: Path) -> None:
    good = write_policies(tmp_path / "good", tenant_policy("http://127.0.0.1:1"))
    out = subprocess.run([sys.executable, "-m", "proxy", "check", "--policies", str(good)],
                         capture_output=True, text=True, env=env_for_subprocess())
    assert out.returncode == 0, out.stderr
    assert "ok " in out.stdout and "tenant acme" in out.stdout
    bad = write_policies(tmp_path / "bad", {**tenant_policy("http://127.0.0.1:1"), "pi": {}})
    out = subprocess.run([sys.executable, "-m", "proxy", "check", "--policies", str(bad)],
                         capture_output=True, text=True, env=env_for_subprocess())
    assert out.returncode == 1
    assert f"{bad}/acme.yaml: pi: unknown key" in out.stderr


def test_serve_refuses_to_start_on_invalid_policies(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "serve", "--policies",
                          str(tmp_path), "--port", "0"], capture_output=True, text=True,
                         env=env_for_subprocess(), timeout=60)
    assert out.returncode == 1
    assert "no *.yaml policy files" in out.stderr


def test_serve_drains_in_flight_requests_on_sigterm(tmp_path: Path) -> None:
    with spawn("mock-upstream", "--port", "0", ready="MOCK_READY") as (_, mock_port):
        url = f"http://127.0.0.1:{mock_port}"
        pdir = write_policies(tmp_path / "p", tenant_policy(url, spec="latency_ms=1500"))
        with spawn("serve", "--policies", str(pdir), "--port", "0") as (proc, port):
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/readyz").status_code == 200
            result: dict[str, object] = {}

            def slow_call() -> None:
                r = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                               headers={"Authorization": f"Bearer {KEY}"},
                               json={"model": "gpt-4o-mini",
                                     "messages": [{"role": "user", "content": "drain me"}]})
                result["status"] = r.status_code
                result["text"] = r.json()["choices"][0]["message"]["content"]

            t = threading.Thread(target=slow_call)
            t.start()
            time.sleep(0.5)  # the request is in flight, waiting on the slow provider
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                httpx.get(f"{base}/healthz", timeout=2)
            t.join(20)
            assert result == {"status": 200, "text": "Echo: drain me"}
            assert proc.wait(20) == 0


def test_demo_runs_end_to_end() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "demo"], capture_output=True,
                         text=True, env=env_for_subprocess(), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    sent = next(i for i, line in enumerate(lines) if "provider received" in line)
    provider_saw = lines[sent] + lines[sent + 1]
    assert "<EMAIL_ADDRESS_" in provider_saw and "jane.doe@example.com" not in provider_saw
    assert "sk-proj-" not in provider_saw
    assert "agent got back    Echo: Email the invoice to jane.doe@example.com" in out.stdout
    assert "400 content_filter" in out.stdout and "prompt injection" in out.stdout
    assert "401 invalid_api_key" in out.stdout
    assert "429 rate_limit_exceeded" in out.stdout and "x-ratelimit-limit-requests: 8" in out.stdout
    assert out.stderr == "", out.stderr
    # 2 conversation turns + 1 header probe + 4 calls until the RPM of 8 ran out.
    assert 'warden_requests_total{model="gpt-4o-mini",outcome="ok",tenant="demo"} 7.0' \
        in out.stdout
    assert 'warden_injection_detections_total{action="block"' in out.stdout
