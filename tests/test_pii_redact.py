"""Actions per entity, the request's mapping, and refusals that never name a value."""

from __future__ import annotations

import pytest

from proxy.errors import ContentFiltered
from proxy.pii.cache import Span
from proxy.pii.pseudonyms import PLACEHOLDER_RE, Pseudonymizer
from proxy.pii.redact import Redactions, mask, redact

TEXT = "mail ann@example.com, ssn 536-90-4399, card 4111111111111111"
SPANS = (Span(5, 20, "EMAIL_ADDRESS", 1.0), Span(26, 37, "US_SSN", 0.85),
         Span(44, 60, "CREDIT_CARD", 1.0))
P = Pseudonymizer(b"k", "tenant-a")


def run(actions: dict[str, str], default: str = "pseudonymize") -> tuple[str, Redactions]:
    state = Redactions()
    return redact(TEXT, SPANS, actions, default, P, state), state  # type: ignore[arg-type]


def test_pseudonymize_is_the_default_and_fills_the_mapping() -> None:
    out, state = run({})
    assert [m[0] for m in PLACEHOLDER_RE.finditer(out)] == list(state.mapping)
    assert sorted(state.mapping.values()) == sorted(TEXT[s.start:s.end] for s in SPANS)
    assert "ann@example.com" not in out and "4111" not in out


def test_mask_hash_drop() -> None:
    out, state = run({"US_SSN": "mask", "CREDIT_CARD": "hash", "EMAIL_ADDRESS": "drop"})
    assert out.startswith("mail , ssn *******4399, card <CREDIT_CARD:")
    assert "4111111111111111" not in out
    assert state.mapping == {}  # none of these is restorable
    assert state.counts == {("mask", "US_SSN"): 1, ("hash", "CREDIT_CARD"): 1,
                            ("drop", "EMAIL_ADDRESS"): 1}
    assert mask("1234") == "****"


def test_block_names_the_entity_type_never_the_value() -> None:
    with pytest.raises(ContentFiltered) as err:
        run({"US_SSN": "block"})
    assert err.value.code == "content_filter"
    assert "US_SSN" in err.value.message
    assert "536" not in err.value.message and "4399" not in err.value.message


def test_same_value_same_placeholder_in_every_part_of_a_request() -> None:
    state = Redactions()
    spans = (Span(0, 15, "EMAIL_ADDRESS", 1.0),)
    a = redact("ann@example.com", spans, {}, "pseudonymize", P, state)
    b = redact("ann@example.com!", spans, {}, "pseudonymize", P, state)
    assert b == a + "!"
    assert len(state.mapping) == 1


def test_bare_placeholders_for_restricted_fields() -> None:
    state = Redactions()
    out = redact("ann_smith", (Span(0, 9, "PERSON", 0.9),), {}, "mask", P, state, bare=True)
    assert out.startswith("PERSON_") and "<" not in out


def test_a_digest_collision_within_one_request_gets_a_longer_placeholder() -> None:
    class Colliding(Pseudonymizer):
        def digest(self, entity: str, value: str, purpose: bytes = b"p") -> str:
            real = super().digest(entity, value, purpose)
            return "abcdef" + real[6:]  # every value shares its first six digits

    p = Colliding(b"k", "t")
    state = Redactions()
    first = state.placeholder(p, "EMAIL_ADDRESS", "a@x.io")
    second = state.placeholder(p, "EMAIL_ADDRESS", "b@x.io")
    assert first == "<EMAIL_ADDRESS_abcdef>"
    assert second != first and second.startswith("<EMAIL_ADDRESS_abcdef")
    assert state.mapping == {first: "a@x.io", second: "b@x.io"}
    assert PLACEHOLDER_RE.fullmatch(second)
