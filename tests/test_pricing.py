"""Prices from litellm's bundled table (read as JSON, litellm never imported) and the
per-deployment overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.context import Usage
from proxy.pricing import Price, PriceTable, litellm_table_path
from proxy.tenants import Deployment
from tests.support import env_for_subprocess


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    path = litellm_table_path()
    assert path is not None and path.name == "model_prices_and_context_window_backup.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def dep(provider: str, model: str, **extra: Any) -> Deployment:
    return Deployment.model_validate({"provider": provider, "model": model, **extra})


def test_openai_price_is_the_tables(table: PriceTable, raw: dict[str, Any]) -> None:
    entry = raw["gpt-4o-mini"]
    price = table.price(dep("openai", "gpt-4o-mini"))
    assert price == Price(entry["input_cost_per_token"], entry["output_cost_per_token"])
    cost = table.cost(dep("openai", "gpt-4o-mini"), Usage(1000, 500))
    assert cost == pytest.approx(1000 * entry["input_cost_per_token"]
                                 + 500 * entry["output_cost_per_token"])


def test_provider_prefixed_entries_win(table: PriceTable, raw: dict[str, Any]) -> None:
    assert table.price(dep("azure", "gpt-4o")) == Price(
        raw["azure/gpt-4o"]["input_cost_per_token"], raw["azure/gpt-4o"]["output_cost_per_token"])
    anthropic = next(k for k, v in raw.items() if isinstance(v, dict)
                     and v.get("litellm_provider") == "anthropic" and "/" not in k
                     and "input_cost_per_token" in v)
    assert table.price(dep("anthropic", anthropic)) == Price(
        raw[anthropic]["input_cost_per_token"], raw[anthropic]["output_cost_per_token"])


def test_bare_name_of_another_provider_does_not_match(table: PriceTable) -> None:
    # A self-hosted server that calls its model gpt-4o is not billed OpenAI's price.
    assert table.price(dep("vllm", "gpt-4o", api_base="http://gpu:8000/v1")) is None
    assert table.price(dep("openai_compatible", "gpt-4o-mini", api_base="http://h/v1")) is None
    # An anthropic deployment does not pick up an OpenAI-listed name.
    assert table.price(dep("anthropic", "gpt-4o-mini")) is None
    assert table.price(dep("openai", "no-such-model-anywhere")) is None
    assert table.cost(dep("openai", "no-such-model-anywhere"), Usage(10, 10)) is None


def test_ollama_models_are_free_when_listed(table: PriceTable, raw: dict[str, Any]) -> None:
    name = next(k for k in raw if k.startswith("ollama/")).split("/", 1)[1]
    assert table.cost(dep("ollama", name), Usage(1000, 1000)) == 0.0


def test_overrides_win_field_by_field(table: PriceTable, raw: dict[str, Any]) -> None:
    both = dep("vllm", "llama-3-8b", api_base="http://h/v1",
               input_cost_per_token=1e-7, output_cost_per_token=3e-7)
    assert table.cost(both, Usage(10, 20)) == pytest.approx(10 * 1e-7 + 20 * 3e-7)
    half = dep("openai", "gpt-4o-mini", input_cost_per_token=0.0)
    listed_out = raw["gpt-4o-mini"]["output_cost_per_token"]
    assert table.price(half) == Price(0.0, listed_out)
    # One override on an unlisted model: an input price alone means output is free
    # (embedding models); an output price alone leaves the input unknown.
    assert table.price(dep("vllm", "embedder", input_cost_per_token=2e-8)) == Price(2e-8, 0.0)
    assert table.price(dep("vllm", "embedder", output_cost_per_token=2e-8)) is None


def test_missing_or_broken_table_prices_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "prices.json"
    broken.write_text("{not json")
    for table in (PriceTable.load(broken), PriceTable.load(tmp_path / "absent.json")):
        assert len(table) == 0
        assert table.price(dep("openai", "gpt-4o-mini")) is None
        assert table.price(dep("openai", "x", input_cost_per_token=1.0,
                               output_cost_per_token=2.0)) == Price(1.0, 2.0)


def test_loading_prices_never_imports_litellm() -> None:
    code = ("import sys; from proxy.pricing import PriceTable; t = PriceTable.load(); "
            "assert len(t) > 1000; assert 'litellm' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env_for_subprocess(), timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
