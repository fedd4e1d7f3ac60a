"""The Presidio AnalyzerEngine, built offline, once per process and configuration.

``AnalyzerEngine()`` with no arguments downloads ``en_core_web_lg`` and Presidio's
EmailRecognizer makes ``tldextract`` fetch the public-suffix list on first use (and hang
offline). Neither may happen in a proxy, so everything here is built explicitly:

- ``default`` tier: a blank spaCy English tokenizer plus a component that sets each
  token's lemma to its lower-case form (so Presidio's context-word boosting, which
  compares lemmas, still works), Presidio's pattern and checksum recognizers, and
  Warden's own (``recognizers``: secrets, street addresses, phone shapes, card issuers).
  No model; ~3 ms of CPU per KB.
- ``ner`` tier: the above plus spaCy's ``en_core_web_sm`` NER (``ner``: PERSON,
  LOCATION, DATE_TIME, NRP). Only the ``ner`` pipe runs: it has its own tok2vec, and
  tagger/parser/lemmatizer would triple the cost.
"""

from __future__ import annotations

import importlib.util
import logging
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Literal

import spacy
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    DateRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MacAddressRecognizer,
    MedicalLicenseRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    UkNinoRecognizer,
    UrlRecognizer,
    UsBankRecognizer,
    UsItinRecognizer,
    UsLicenseRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)
from spacy.language import Language
from spacy.tokens import Doc

from proxy.pii.ner import NER_MODELS, NerRecognizer, default_ner_configuration
from proxy.pii.recognizers import (
    CardRecognizer,
    IbanAnyCaseRecognizer,
    address_recognizer,
    phone_recognizer,
    secrets_recognizer,
)

log = logging.getLogger("warden.pii")

Tier = Literal["default", "ner"]

_LEMMA_PIPE = "warden_lower_lemma"


@Language.component(_LEMMA_PIPE)
def _lower_lemma(doc: Doc) -> Doc:
    for token in doc:
        token.lemma_ = token.lower_
    return doc


class OfflineEmailRecognizer(EmailRecognizer):
    """EmailRecognizer whose domain check uses tldextract's bundled suffix snapshot."""

    # Built once per class: the snapshot parse costs ~50 ms.
    _extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def validate_result(self, pattern_text: str) -> bool:
        return bool(self._extract(pattern_text).fqdn)


class OfflineSpacyEngine(SpacyNlpEngine):
    """SpacyNlpEngine that loads locally and never calls ``spacy.cli.download``."""

    def __init__(self, tier: Tier) -> None:
        super().__init__(
            models=[{"lang_code": "en", "model_name": tier}],
            ner_model_configuration=default_ner_configuration(keep_organizations=True),
        )
        self.tier = tier

    def load(self) -> None:
        if self.tier == "ner":
            installed = [m for m in NER_MODELS if importlib.util.find_spec(m) is not None]
            if not installed:
                raise RuntimeError(
                    f"pii tier 'ner' needs a spaCy model package, one of {list(NER_MODELS)} "
                    "(install warden[ner]); Warden never downloads models at run time"
                )
            nlp = spacy.load(installed[0], enable=["ner"])
        else:
            nlp = spacy.blank("en")
        nlp.add_pipe(_LEMMA_PIPE)
        self.nlp = {"en": nlp}  # type: ignore[assignment]


class FastContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, same rules, two costs removed.

    Upstream finds the token of each result by walking the whole spaCy Doc, creating a
    Token object per step: O(tokens x results), ~70 % of a 1 KB scan. Token start
    offsets are sorted, so a binary search finds the same token. Upstream also deep-copies
    every result first; ``analyze`` builds a fresh list per call that nobody else holds,
    so the results are boosted in place.
    """

    def enhance_using_context(self, text: str, raw_results: list[RecognizerResult],
                              nlp_artifacts: Any, recognizers: list[EntityRecognizer],
                              context: list[str] | None = None) -> list[RecognizerResult]:
        by_id = {r.id: r for r in recognizers}
        extra = [w.lower() for w in context or ()]
        if nlp_artifacts is None:
            return raw_results
        for result in raw_results:
            meta = result.recognition_metadata or {}
            recognizer = by_id.get(meta.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
            if (recognizer is None or not recognizer.context
                    or meta.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY)):
                continue
            words = self._extract_surrounding_words(
                nlp_artifacts=nlp_artifacts, word=text[result.start:result.end],
                start=result.start) + extra
            found = self._find_supportive_word_in_context(words, recognizer.context,
                                                          self.context_matching_mode)
            if found:
                result.score = min(max(result.score + self.context_similarity_factor,
                                       self.min_score_with_context_similarity), 1.0)
                if result.analysis_explanation is not None:
                    result.analysis_explanation.set_supportive_context_word(found)
                    result.analysis_explanation.set_improved_score(result.score)
        return raw_results

    @staticmethod
    def _find_index_of_match_token(word: str, start: int, tokens: Any,
                                   tokens_indices: list[int]) -> int:
        i = bisect_right(tokens_indices, start) - 1
        # Same rule as upstream: the first token that starts at or still covers `start`.
        if i < 0 or start >= tokens_indices[i] + len(tokens[i]):
            i += 1
        if i >= len(tokens_indices):
            raise ValueError(f"no token at offset {start} for a match of length {len(word)}")
        return i


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What makes two engines different; equal specs share one engine per process."""

    tier: Tier = "default"
    phone_regions: tuple[str, ...] = ("US", "GB")

    @property
    def key(self) -> str:
        return f"pii.engine:{self.tier}:{','.join(self.phone_regions)}"


def _recognizers(spec: EngineSpec) -> list[EntityRecognizer]:
    found: list[EntityRecognizer] = [
        CreditCardRecognizer(), CryptoRecognizer(), DateRecognizer(), OfflineEmailRecognizer(),
        IbanRecognizer(), IpRecognizer(), MacAddressRecognizer(), MedicalLicenseRecognizer(),
        NhsRecognizer(), UkNinoRecognizer(), UrlRecognizer(), UsBankRecognizer(),
        UsItinRecognizer(), UsLicenseRecognizer(), UsPassportRecognizer(), UsSsnRecognizer(),
        # libphonenumber's matcher runs once per region over the whole text; it is the
        # most expensive recognizer on long texts, so only the configured regions run.
        PhoneRecognizer(supported_regions=spec.phone_regions), phone_recognizer(),
        CardRecognizer(), IbanAnyCaseRecognizer(), secrets_recognizer(), address_recognizer(),
    ]
    if spec.tier == "ner":
        found.append(NerRecognizer())
    return found


def build_analyzer(spec: EngineSpec) -> AnalyzerEngine:
    """A ready AnalyzerEngine; slow (0.1 s default, ~1 s ner): build once, share."""
    nlp_engine = OfflineSpacyEngine(spec.tier)
    nlp_engine.load()
    registry = RecognizerRegistry(recognizers=_recognizers(spec), supported_languages=["en"])
    engine = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"],
                            # Words after a match count too ("416 60 039 office"). Presidio
                            # counts them from the match's first token, so the window
                            # has to cover the match's own tokens as well.
                            context_aware_enhancer=FastContextEnhancer(
                                context_prefix_count=5, context_suffix_count=6))
    # Presidio drops stop words before it looks for context words, and spaCy lists
    # "call", "number", "home" as stop words: "call me on 555 0100" would get no boost.
    vocab = nlp_engine.get_nlp("en").vocab
    for recognizer in registry.recognizers:
        for word in recognizer.context or ():
            vocab[word].is_stop = False
    # Warm up: the first call loads lazy recognizers and compiles their patterns.
    engine.analyze("warm up 555-0100 a@b.co", language="en")
    log.info("pii analyzer ready (tier=%s, phone regions=%s)", spec.tier, spec.phone_regions)
    return engine


def supported_entities(engine: AnalyzerEngine) -> frozenset[str]:
    return frozenset(engine.get_supported_entities(language="en"))
