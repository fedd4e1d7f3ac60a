"""What a call costs: litellm's bundled price map, read without importing litellm.

``model_prices_and_context_window_backup.json`` ships inside the litellm package; it is
located with ``importlib.util.find_spec`` (which does not run litellm) and parsed once
per process. A deployment's ``input_cost_per_token`` / ``output_cost_per_token`` in the
policy file override it (self-hosted and custom models).

Costs are integers in nano-dollars so the store adds them exactly: per-token prices are
held in pico-dollars (every price in the map is a whole number of those) and a call's
cost is rounded up to the next nano-dollar.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.tenants import Deployment

log = logging.getLogger("warden.prices")

NANO_PER_USD = 1_000_000_000
_PRICE_FILE = "model_prices_and_context_window_backup.json"
# Providers that are the operator's own hardware: no list price applies.
_SELF_HOSTED = frozenset({"vllm", "ollama", "tgi", "openai_compatible", "hosted_vllm"})
# Deployment.provider -> the litellm_provider values its bare model names are listed under.
_FAMILIES: Mapping[str, frozenset[str]] = {
    "openai": frozenset({"openai", "text-completion-openai"}),
    "azure": frozenset({"azure", "openai"}),
}


def _priced(entry: Any) -> Mapping[str, Any] | None:
    return entry if isinstance(entry, Mapping) and "input_cost_per_token" in entry else None


def price_file() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / _PRICE_FILE
    return path if path.is_file() else None


def _pico(usd_per_token: Any) -> int | None:
    if isinstance(usd_per_token, bool) or not isinstance(usd_per_token, int | float):
        return None
    return round(usd_per_token * 1e12)


@dataclass(frozen=True, slots=True)
class Price:
    input_pico: int  # pico-dollars per prompt token
    output_pico: int  # pico-dollars per completion token
    max_output_tokens: int | None = None

    def cost_nano(self, prompt_tokens: int, completion_tokens: int) -> int:
        pico = prompt_tokens * self.input_pico + completion_tokens * self.output_pico
        return -(-pico // 1000)


FREE = Price(0, 0)


class PriceBook:
    """Model -> price, from litellm's map, with per-deployment overrides."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self._table = table
        self._prices: dict[tuple[str, str, float | None, float | None], Price] = {}

    @classmethod
    def bundled(cls) -> PriceBook:
        path = price_file()
        if path is None:
            log.warning("litellm's price map was not found: USD budgets count every model "
                        "as free unless its deployment sets input/output_cost_per_token")
            return cls({})
        with path.open("rb") as f:
            return cls(json.load(f))

    def _entry(self, deployment: Deployment) -> Mapping[str, Any] | None:
        """``provider/model`` first; a bare model name only when the table lists it for
        the same provider family (Azure takes OpenAI's list price). A self-hosted server
        never matches a bare commercial name: a local model called gpt-4o is free per
        token unless an ``ollama/...``-style entry or an override prices it."""
        provider, model = deployment.provider, deployment.model
        entry = _priced(self._table.get(f"{provider}/{model}"))
        if entry is not None or provider in _SELF_HOSTED:
            return entry
        entry = _priced(self._table.get(model))
        family = _FAMILIES.get(provider, frozenset({provider}))
        return entry if entry is not None and entry.get("litellm_provider") in family else None

    def known(self, deployment: Deployment) -> bool:
        return (self._entry(deployment) is not None
                or (deployment.input_cost_per_token is not None
                    and deployment.output_cost_per_token is not None))

    def price(self, deployment: Deployment) -> Price:
        """The deployment's price; free (with one warning) when nobody knows it."""
        key = (deployment.provider, deployment.model, deployment.input_cost_per_token,
               deployment.output_cost_per_token)
        found = self._prices.get(key)
        if found is None:
            found = self._prices[key] = self._lookup(deployment)
        return found

    def _lookup(self, deployment: Deployment) -> Price:
        entry = self._entry(deployment) or {}
        inp = deployment.input_cost_per_token
        out = deployment.output_cost_per_token
        input_pico = _pico(inp if inp is not None else entry.get("input_cost_per_token"))
        output_pico = _pico(out if out is not None else entry.get("output_cost_per_token", 0))
        if input_pico is None:
            log.warning("no price known for %s: counted as free against USD budgets; set "
                        "input_cost_per_token/output_cost_per_token on the deployment",
                        deployment.label)
        max_out = entry.get("max_output_tokens")
        return Price(input_pico or 0, output_pico or 0,
                     max_out if isinstance(max_out, int) and max_out > 0 else None)
