"""What a request cost, in USD: per-token prices for a deployment, times its usage.

Prices come from the table litellm ships (``model_prices_and_context_window_backup.json``),
read as a plain JSON file: the package is *located* with ``importlib.util.find_spec``,
never imported (``import litellm`` costs ~4 s and ~200 MB and would try to fetch the
table from GitHub). A deployment's ``input_cost_per_token`` / ``output_cost_per_token``
override the table, for negotiated prices and for models the table does not know.

Lookup, first hit wins: the deployment's overrides; ``"<provider>/<model>"``; the bare
``"<model>"`` when the table lists it for the same provider family (Azure falls back to
OpenAI's list price). Self-hosted servers (vLLM, Ollama, TGI, any OpenAI-compatible one)
never match a bare commercial name: a local model called ``gpt-4o`` costs nothing per
token, so only an explicit ``ollama/...`` entry or an override prices it. No price
means ``None`` (unknown), never 0: the caller decides what unknown means.

Cached-input discounts are not applied (``Usage`` does not carry cached tokens yet):
for prompt-cached traffic the figure is an upper bound.
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
    from proxy.context import Usage
    from proxy.tenants import Deployment

log = logging.getLogger("warden.pricing")

TABLE_NAME = "model_prices_and_context_window_backup.json"
# Providers whose models are the operator's own hardware: no list price applies.
_SELF_HOSTED = frozenset({"vllm", "ollama", "tgi", "openai_compatible", "hosted_vllm"})
# Deployment.provider -> the litellm_provider values its bare model names are listed under.
_FAMILIES: Mapping[str, frozenset[str]] = {
    "openai": frozenset({"openai", "text-completion-openai"}),
    "azure": frozenset({"azure", "openai"}),
    "anthropic": frozenset({"anthropic"}),
}


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token."""

    input: float
    output: float

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input + completion_tokens * self.output


def litellm_table_path() -> Path | None:
    """Where litellm's bundled price table is, without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / TABLE_NAME
    return path if path.is_file() else None


def _as_price(entry: Any) -> Price | None:
    if not isinstance(entry, dict):
        return None
    inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token", 0.0)
    if not isinstance(inp, int | float) or not isinstance(out, int | float):
        return None
    return Price(float(inp), float(out))


class PriceTable:
    """The table, keyed as litellm keys it, plus a per-(provider, model) lookup cache.

    Built once per process (``Services.shared``-style ownership is the caller's); the
    cache makes the per-request lookup one dict hit.
    """

    def __init__(self, entries: Mapping[str, Any]) -> None:
        self._entries = entries
        self._cache: dict[tuple[str, str], Price | None] = {}

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """Parse litellm's table (~3 MB, ~50 ms); an absent or broken file is an empty
        table (every model unpriced unless overridden), logged once."""
        path = path or litellm_table_path()
        if path is None:
            log.warning("litellm's price table not found: costs need per-deployment prices")
            return cls({})
        try:
            entries = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            log.warning("cannot read price table %s: %s", path, e)
            return cls({})
        return cls(entries if isinstance(entries, dict) else {})

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, provider: str, model: str) -> Price | None:
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._find(provider, model)
        if len(self._cache) < 4096:  # deployments are config: this never fills in practice
            self._cache[key] = price
        return price

    def _find(self, provider: str, model: str) -> Price | None:
        price = _as_price(self._entries.get(f"{provider}/{model}"))
        if price is not None or provider in _SELF_HOSTED:
            return price
        entry = self._entries.get(model)
        family = _FAMILIES.get(provider, frozenset({provider}))
        if isinstance(entry, dict) and entry.get("litellm_provider") in family:
            return _as_price(entry)
        return None

    def price(self, deployment: Deployment) -> Price | None:
        """The deployment's per-token price; its overrides win, field by field."""
        inp, out = deployment.input_cost_per_token, deployment.output_cost_per_token
        if inp is not None and out is not None:
            return Price(inp, out)
        listed = self.lookup(deployment.provider, deployment.model)
        if inp is None and out is None:
            return listed
        if listed is None:
            # One override alone: the other side is unknown, unless it is the output of
            # a model that only reads (embeddings), which the override author meant as 0.
            return Price(inp, 0.0) if inp is not None else None
        return Price(inp if inp is not None else listed.input,
                     out if out is not None else listed.output)

    def cost(self, deployment: Deployment, usage: Usage) -> float | None:
        """USD for ``usage`` on ``deployment``; ``None`` when no price is known."""
        price = self.price(deployment)
        if price is None:
            return None
        return price.of(usage.prompt_tokens, usage.completion_tokens)
