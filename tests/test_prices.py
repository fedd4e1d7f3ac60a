"""Prices from litellm's bundled map (litellm never imported), overridable per deployment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.prices import FREE, Price, PriceBook, price_file
from proxy.tenants import Deployment
from tests.support import env_for_subprocess


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.bundled()


def test_prices_come_from_the_bundled_map(book: PriceBook) -> None:
    price = book.price(Deployment(provider="openai", model="gpt-4o-mini"))
    assert (price.input_pico, price.output_pico) == (150_000, 600_000)  # $0.15/$0.60 per M
    assert price.max_output_tokens == 16384
    assert book.price(Deployment(provider="azure", model="gpt-4o")).input_pico == 2_500_000


def test_deployment_overrides_win(book: PriceBook) -> None:
    custom = Deployment(provider="vllm", model="my-llama", input_cost_per_token=1e-7,
                        output_cost_per_token=3e-7)
    assert book.known(custom)
    assert book.price(custom) == Price(100_000, 300_000, None)


def test_unknown_models_are_free_with_one_warning(book: PriceBook,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    nobody = Deployment(provider="vllm", model="nobody-knows-me")
    assert not book.known(nobody)
    assert book.price(nobody) == FREE
    book.price(nobody)
    assert sum("no price known" in r.message for r in caplog.records) == 1


def test_costs_are_exact_integers() -> None:
    price = Price(150_000, 600_000)
    assert price.cost_nano(1000, 500) == 450_000  # $0.00045
    assert Price(1, 0).cost_nano(1, 0) == 1  # rounded up, never down


def test_reading_prices_does_not_import_litellm() -> None:
    code = ("import sys; from proxy.prices import PriceBook; PriceBook.bundled(); "
            "print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env_for_subprocess(), check=True)
    assert out.stdout.strip() == "False"
    assert price_file() is not None


def test_self_hosted_models_never_take_a_commercial_list_price(book: PriceBook) -> None:
    local = Deployment(provider="vllm", model="gpt-4o")
    assert not book.known(local)
    assert book.price(local) == FREE
    assert book.price(Deployment(provider="ollama", model="llama3")).max_output_tokens == 8192
    # Azure without its own entry falls back to OpenAI's list price.
    assert book.price(Deployment(provider="azure", model="gpt-4o-mini")).input_pico == 150_000
