"""Policy files: validation names file, key and reason; keys hashed; routing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from proxy.metrics import Metrics
from proxy.services import Services
from proxy.settings import Settings
from proxy.store import MemoryStore
from proxy.tenants import PolicyError, load_configs, load_policy_set

GOOD = {
    "tenant": "research",
    "keys": ["vk-plain-key-1", "sha256:" + hashlib.sha256(b"vk-hashed-key").hexdigest()],
    "models": {"gpt-4o-mini": [{"provider": "openai", "model": "gpt-4o-mini",
                                "api_base": "http://127.0.0.1:1/v1",
                                "api_key": "env:OPENAI_API_KEY"}]},
}


def write(tmp: Path, name: str, data: object) -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def services() -> Services:
    return Services(settings=Settings(), store=MemoryStore(), metrics=Metrics())


def test_loads_and_authenticates_plain_and_hashed_keys(tmp_path: Path) -> None:
    write(tmp_path, "research.yaml", GOOD)
    policies = load_policy_set(tmp_path, services())
    assert policies.authenticate("vk-plain-key-1") is policies.tenants["research"]
    assert policies.authenticate("vk-hashed-key") is policies.tenants["research"]
    assert policies.authenticate("vk-hashed-keY") is None
    tenant = policies.tenants["research"]
    assert tenant.routes("gpt-4o-mini") is not None and tenant.routes("gpt-4") is None


@pytest.mark.parametrize(("change", "key", "reason"), [
    ({"surprise": 1}, "surprise", "unknown key"),
    ({"keys": []}, "keys", "at least 1"),
    ({"keys": ["short"]}, "keys", "at least 8 characters"),
    ({"keys": ["sha256:abc"]}, "keys", "64 hex digits"),
    ({"models": {"m": []}}, "models", "needs at least one deployment"),
    ({"models": {"m": [{"provider": "openai", "model": "x", "api_key": "sk-live-123"}]}},
     "models.m[0].api_key", "must be a reference"),
    ({"models": {"m": [{"provider": "openai", "model": "x", "api_base": "ftp://x"}]}},
     "models.m[0].api_base", "http:// or https://"),
    ({"models": {"m": [{"provider": "openai", "model": "x", "colour": "red"}]}},
     "models.m[0].colour", "unknown key"),
    ({"tenant": "has space"}, "tenant", "pattern"),
])
def test_errors_name_file_key_and_reason(tmp_path: Path, change: dict[str, object], key: str,
                                         reason: str) -> None:
    path = write(tmp_path, "t.yaml", {**GOOD, **change})
    with pytest.raises(PolicyError) as info:
        load_configs(tmp_path)
    assert info.value.file == path
    assert info.value.key == key
    assert reason in info.value.reason


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "t.yaml", "tenant: x\nkeys: [unclosed\n")
    with pytest.raises(PolicyError, match=r"t\.yaml: line \d+: invalid YAML"):
        load_configs(tmp_path)


def test_duplicate_tenants_and_keys_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", {**GOOD, "tenant": "other"})
    with pytest.raises(PolicyError, match=r"key also used in a\.yaml"):
        load_configs(tmp_path)
    write(tmp_path, "b.yaml", GOOD | {"keys": ["vk-other-key-1"]})
    with pytest.raises(PolicyError, match=r"'research' is also defined in a\.yaml"):
        load_configs(tmp_path)


def test_hidden_files_and_configmap_dirs_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "research.yaml", GOOD)
    (tmp_path / "..data").mkdir()
    write(tmp_path / "..data", "x.yaml", "not: [valid")
    write(tmp_path, ".hidden.yaml", "not: [valid")
    assert [c.tenant for _, c in load_configs(tmp_path)] == ["research"]


def test_credentials_resolve_from_env_and_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.tenants import Deployment

    monkeypatch.setenv("SOME_KEY", "sk-from-env")
    (tmp_path / "key").write_text("sk-from-file\n")
    assert Deployment(provider="openai", model="m", api_key="env:SOME_KEY").credential() \
        == "sk-from-env"
    assert Deployment(provider="openai", model="m", api_key=f"file:{tmp_path}/key")\
        .credential() == "sk-from-file"
    assert Deployment(provider="openai", model="m", api_key="env:UNSET_X").credential() is None
    assert Deployment(provider="anthropic", model="m").fast is False
    assert Deployment(provider="vllm", model="m").fast is True


def test_a_rotated_credential_file_is_picked_up_within_the_ttl(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy import tenants

    now = [1000.0]
    monkeypatch.setattr(tenants, "_clock", lambda: now[0])
    key = tmp_path / "rotating"
    key.write_text("sk-old\n")
    d = tenants.Deployment(provider="openai", model="m", api_key=f"file:{key}")
    assert d.credential() == "sk-old"
    key.write_text("sk-new\n")
    now[0] += tenants.SECRET_FILE_TTL_S / 2
    assert d.credential() == "sk-old"  # not re-read on every request
    now[0] += tenants.SECRET_FILE_TTL_S
    assert d.credential() == "sk-new"
    key.unlink()
    now[0] += tenants.SECRET_FILE_TTL_S
    assert d.credential() is None  # gone: no stale key kept


def test_shipped_example_policies_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "policies"
    assert load_configs(root)
