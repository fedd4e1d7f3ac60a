"""A model in a policy file: a list of deployments, or a mapping with fallbacks/retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.tenants import ModelRoute, PolicyError, TenantConfig, load_configs

A = {"provider": "openai", "model": "a", "api_base": "http://127.0.0.1:1/v1"}
B = {"provider": "azure", "model": "b", "api_base": "https://x.openai.azure.com",
     "priority": 1, "weight": 2.5}


def config(**models: Any) -> TenantConfig:
    return TenantConfig.model_validate({"tenant": "t", "keys": ["vk-test-key-1"],
                                        "models": models})


def test_list_shape_still_loads() -> None:
    cfg = config(m=[A, B])
    route = cfg.models["m"]
    assert isinstance(route, ModelRoute)
    assert [d.model for d in route.deployments] == ["a", "b"]
    assert route.deployments[1].priority == 1 and route.deployments[1].weight == 2.5
    assert route.context_window_fallbacks == [] and route.retry.attempts is None


def test_mapping_shape_with_fallbacks_inline_and_by_name() -> None:
    cfg = config(small={"deployments": [A], "context_window_fallbacks": ["big", B],
                        "content_policy_fallbacks": ["big"], "retry": {"attempts": 3}},
                 big=[B])
    assert [d.model for d in cfg.fallbacks("small", "context_window_fallbacks")] == ["b", "b"]
    assert [d.model for d in cfg.fallbacks("small", "content_policy_fallbacks")] == ["b"]
    assert cfg.fallbacks("big", "context_window_fallbacks") == ()
    assert cfg.fallbacks("nope", "context_window_fallbacks") == ()
    assert cfg.models["small"].retry.attempts == 3
    assert [d.model for d in cfg.models["small"].all_deployments()] == ["a", "b"]


def write(tmp: Path, models: dict[str, Any]) -> Path:
    path = tmp / "t.yaml"
    path.write_text(yaml.safe_dump({"tenant": "t", "keys": ["vk-test-key-1"],
                                    "models": models}))
    return path


@pytest.mark.parametrize(("models", "key", "reason"), [
    ({"m": {"deployments": [A], "context_window_fallbacks": ["ghost"]}}, "models",
     "names 'ghost', which is not a model of this tenant"),
    ({"m": {"deployments": [A], "content_policy_fallbacks": ["m"]}}, "models",
     "the model itself"),
    ({"m": {"deployments": []}}, "models", "needs at least one deployment"),
    ({"m": {"deployments": [A], "fallbacks": [A]}}, "models.m.fallbacks", "unknown key"),
    ({"m": {"deployments": [{**A, "colour": 1}]}}, "models.m.deployments[0].colour",
     "unknown key"),
    ({"m": [{**A, "weight": 0}]}, "models.m[0].weight", "greater than 0"),
    ({"m": [{**A, "priority": -1}]}, "models.m[0].priority", "greater than or equal"),
    ({"m": {"deployments": [A], "retry": {"attempts": 0}}}, "models.m.retry.attempts",
     "greater than or equal to 1"),
])
def test_errors_name_the_key(tmp_path: Path, models: dict[str, Any], key: str,
                             reason: str) -> None:
    write(tmp_path, models)
    with pytest.raises(PolicyError) as info:
        load_configs(tmp_path)
    assert info.value.key == key
    assert reason in info.value.reason
