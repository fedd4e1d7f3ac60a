"""bench/scenarios.py: every scenario's policy file is one Warden's loader accepts."""

from __future__ import annotations

import json

import pytest
import yaml

from bench import scenarios
from bench.scenarios import Scenario, Target, Workload
from proxy.tenants import TenantConfig

MOCK = "http://127.0.0.1:1234"


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS, ids=lambda s: s.name)
def test_registered_scenarios_make_valid_policy_files(scenario: Scenario) -> None:
    policy = scenarios.tenant_policy(scenario, MOCK)
    # Through YAML as run.py writes it, then Warden's own model: unknown keys would fail.
    cfg = TenantConfig.model_validate(yaml.safe_load(yaml.safe_dump(policy)))
    assert scenarios.API_KEY in cfg.keys
    plain = cfg.models[scenarios.MODEL].deployments[0]
    stream = cfg.models[scenarios.STREAM_MODEL].deployments[0]
    assert plain.fast and stream.fast  # the benchmark measures the fast path
    assert plain.api_base == f"{MOCK}/v1"
    assert stream.api_base == f"{MOCK}/f/chunks={scenario.workload.stream_chunks}/v1"


def test_scenario_names_are_unique_and_core_targets_registered() -> None:
    names = [s.name for s in scenarios.SCENARIOS]
    assert len(names) == len(set(names))
    assert scenarios.by_name(["warden"])[0].targets == scenarios.CORE_TARGETS


def test_sections_and_env_get_the_mock_url() -> None:
    s = Scenario("x", "x", sections={"output": {"url": "{mock}/hook", "n": [1, "{mock}"]}})
    policy = scenarios.tenant_policy(s, MOCK)
    assert policy["output"] == {"url": f"{MOCK}/hook", "n": [1, MOCK]}
    assert scenarios.substitute({"WARDEN_X": "{mock}/y"}, MOCK) == {"WARDEN_X": f"{MOCK}/y"}


def test_by_name_rejects_unknown() -> None:
    with pytest.raises(KeyError, match="nope"):
        scenarios.by_name(["nope"])
    assert scenarios.by_name(None) == scenarios.SCENARIOS


def test_workloads_are_deduplicated_by_name() -> None:
    a = Scenario("a", "a")
    b = Scenario("b", "b", workload=scenarios.ONE_TURN)
    other = Workload("one-turn", ({"role": "user", "content": "different"},))
    assert scenarios.workloads([a, b]) == [scenarios.ONE_TURN]
    with pytest.raises(ValueError, match="one-turn"):
        scenarios.workloads([a, Scenario("c", "c", workload=other)])


def test_workload_body() -> None:
    body = json.loads(scenarios.ONE_TURN.body("m", stream=True))
    assert body["model"] == "m" and body["stream"] is True
    assert body["messages"] == list(scenarios.ONE_TURN.messages)
    assert "stream" not in json.loads(scenarios.ONE_TURN.body("m", stream=False))


def test_conversation_is_autogen_shaped() -> None:
    msgs = scenarios.conversation(20)
    assert msgs[0]["role"] == "system"
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * 19 + ["user"]


def test_target_needs_one_bound() -> None:
    with pytest.raises(ValueError):
        Target("ready_s")
    with pytest.raises(ValueError):
        Target("ready_s", max=1, min=0)
    assert Target("ready_s", max=2).met(2.0) and not Target("ready_s", max=2).met(2.1)
    assert Target("rps32_ratio", min=0.5).met(0.5) and not Target("rps32_ratio", min=0.5).met(0.4)


def test_litellm_config_matches_the_tenant() -> None:
    cfg = scenarios.litellm_config(MOCK, scenarios.ONE_TURN)
    names = [m["model_name"] for m in cfg["model_list"]]
    assert names == [scenarios.MODEL, scenarios.STREAM_MODEL]
    assert cfg["model_list"][1]["litellm_params"]["api_base"] == f"{MOCK}/f/chunks=20/v1"
    assert cfg["general_settings"]["master_key"].startswith("sk-")
