"""The NER tier: people and places, not organisations, not identifiers in code."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.pii.engine import EngineSpec, build_analyzer
from proxy.pii.ner import NER_MODELS, default_ner_configuration


@pytest.fixture(scope="module")
def ner() -> Any:
    return build_analyzer(EngineSpec("ner", ("US",)))


def test_ner_tier_finds_people_and_places_but_not_organisations(ner: Any) -> None:
    nlp = ner.nlp_engine.nlp["en"]
    assert nlp.pipe_names == ["ner", "warden_lower_lemma"]
    text = "Maria Gonzalez flew to Madrid to update the IBAN of her account."
    hits = {text[r.start:r.end]: r.entity_type for r in ner.analyze(text, language="en")}
    assert hits.get("Maria Gonzalez") == "PERSON"
    assert hits.get("Madrid") == "LOCATION"
    assert "ORGANIZATION" not in hits.values()


def test_ner_names_labelled_org_become_people_and_code_is_not_a_person(ner: Any) -> None:
    text = "Maybe it's under Miklós Hajdu. Check the IBAN field and call the API."
    hits = {text[r.start:r.end]: r.entity_type for r in ner.analyze(text, language="en")}
    assert hits.get("Miklós Hajdu") == "PERSON"
    assert "IBAN" not in hits and "API" not in hits


def test_presidio_default_configuration_ignores_organisations_unless_asked() -> None:
    assert "ORGANIZATION" in default_ner_configuration().labels_to_ignore
    assert "ORGANIZATION" not in default_ner_configuration(keep_organizations=True
                                                           ).labels_to_ignore
    assert default_ner_configuration().model_to_presidio_entity_mapping["GPE"] == "LOCATION"


def test_an_installed_model_package_is_found() -> None:
    import importlib.util

    assert any(importlib.util.find_spec(m) is not None for m in NER_MODELS)
