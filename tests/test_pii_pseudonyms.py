"""Placeholders are stable across turns, engines and processes, and keyed per tenant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.pii.pseudonyms import (
    PLACEHOLDER_RE,
    Pseudonymizer,
    SecretMissing,
    resolve_secret,
)

ROOT = Path(__file__).resolve().parents[1]


def test_placeholder_shape_and_stability() -> None:
    a = Pseudonymizer(b"key", "t1").placeholder("EMAIL_ADDRESS", "ann@example.com")
    b = Pseudonymizer(b"key", "t1").placeholder("EMAIL_ADDRESS", "ann@example.com")
    assert a == b
    assert PLACEHOLDER_RE.fullmatch(a)
    assert a.startswith("<EMAIL_ADDRESS_") and len(a) == len("<EMAIL_ADDRESS_>") + 6


def test_key_tenant_and_entity_all_change_the_placeholder() -> None:
    base = Pseudonymizer(b"key", "t1").placeholder("EMAIL_ADDRESS", "x@y.io")
    assert Pseudonymizer(b"other", "t1").placeholder("EMAIL_ADDRESS", "x@y.io") != base
    assert Pseudonymizer(b"key", "t2").placeholder("EMAIL_ADDRESS", "x@y.io") != base
    assert Pseudonymizer(b"key", "t1").placeholder("SECRET", "x@y.io")[8:] != base[15:]


def test_hash_does_not_reveal_the_placeholder() -> None:
    p = Pseudonymizer(b"key", "t1")
    digest = p.placeholder("EMAIL_ADDRESS", "x@y.io")[15:-1]
    assert digest not in p.hashed("EMAIL_ADDRESS", "x@y.io")


def test_same_placeholder_in_another_process() -> None:
    code = ("from proxy.pii.pseudonyms import Pseudonymizer;"
            "print(Pseudonymizer(b'key', 't1').placeholder('PHONE_NUMBER', '+1 212 555 0187'))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == Pseudonymizer(b"key", "t1").placeholder("PHONE_NUMBER", "+1 212 555 0187")


def test_secret_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PII_KEY_FOR_TEST", "from-env")
    (tmp_path / "k").write_text("from-file\n")
    assert resolve_secret("env:PII_KEY_FOR_TEST", "process") == b"from-env"
    assert resolve_secret(f"file:{tmp_path / 'k'}", "process") == b"from-file"
    assert resolve_secret(None, "process") == b"process"
    assert resolve_secret(None, None) is None


def test_a_configured_secret_that_is_missing_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(SecretMissing):
        resolve_secret("env:PII_KEY_THAT_IS_NOT_SET_ANYWHERE", "process")
    with pytest.raises(SecretMissing):
        resolve_secret(f"file:{tmp_path / 'absent'}", None)
