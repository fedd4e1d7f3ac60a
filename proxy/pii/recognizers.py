"""Recognizers Presidio does not ship: secrets, street addresses, tenant deny-lists/regexes.

All of them are one small regex-driven class, ``RegexRecognizer``: a list of rules, each
an entity type, a compiled pattern, a score and optionally the name of the group that
holds the sensitive part (``bearer <token>`` redacts the token, not the word "bearer").

Why secrets count as PII here: in a multi-agent conversation a credential mentioned
once is resent to the provider on every later turn and is visible to every agent that
reads the history.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import AnalysisExplanation, LocalRecognizer, RecognizerResult

# Entity types Warden adds (Presidio's own keep their names: EMAIL_ADDRESS, ...).
SECRET_ENTITIES: tuple[str, ...] = (
    "API_KEY",
    "AWS_ACCESS_KEY",
    "GITHUB_TOKEN",
    "JWT",
    "PRIVATE_KEY",
    "BEARER_TOKEN",
    "CONNECTION_STRING",
    "SECRET",
)
ADDRESS_ENTITY = "STREET_ADDRESS"


@dataclass(frozen=True, slots=True)
class Rule:
    entity: str
    pattern: re.Pattern[str]
    score: float
    group: str | None = None  # the named group that is the sensitive part


def _rule(entity: str, pattern: str, score: float, group: str | None = None,
          flags: int = 0) -> Rule:
    return Rule(entity, re.compile(pattern, flags), score, group)


# Token bodies are long and random; the prefixes are the vendors' documented ones.
SECRET_RULES: tuple[Rule, ...] = (
    # OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-) and Anthropic (sk-ant-api03-...).
    _rule("API_KEY", r"(?<![\w-])sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", 0.95),
    # Stripe live/test secret keys, Google API keys, Slack tokens.
    _rule("API_KEY", r"(?<![\w-])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}", 0.95),
    _rule("API_KEY", r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])", 0.95),
    _rule("API_KEY", r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,}", 0.95),
    _rule("AWS_ACCESS_KEY",
          r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)"
          r"[A-Z0-9]{16}(?![A-Z0-9])", 0.95),
    _rule("GITHUB_TOKEN", r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_\w{22,255})",
          0.95),
    # A JWT's header and payload are base64url JSON objects, so both start with "eyJ".
    _rule("JWT", r"(?<![\w-])eyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}", 0.95),
    _rule("PRIVATE_KEY",
          r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
          r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", 0.99, flags=re.DOTALL),
    # An unterminated block (a truncated paste) still leaks the key material.
    _rule("PRIVATE_KEY", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[A-Za-z0-9+/=\s]{16,}",
          0.9),
    _rule("BEARER_TOKEN", r"\b[Bb]earer\s+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)", 0.9, "v"),
    # scheme://user:password@host — the whole URL: user and host are as telling as the
    # password, and the agent's tool gets the real one back through restoration.
    _rule("CONNECTION_STRING",
          r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@\"'<>]+:[^\s@/\"'<>]+@[^\s\"'<>]+", 0.95),
    # key = value assignments of things that are secret by name (.env files, ODBC
    # strings, YAML). The value only: the name tells the model what it was.
    _rule("SECRET",
          r"(?i)(?<![A-Za-z0-9-])(?:[A-Za-z0-9]+_)*(?:aws_secret_access_key|secret_access_key|client_secret|api[_-]?key"
          r"|access[_-]?token|auth[_-]?token|secret[_-]?key|password|passwd|pwd)"
          r"[\"']?\s*[:=]\s*[\"']?(?P<v>[^\s\"',;<>]{6,})", 0.85, "v"),
)

# Street suffixes (English) and the street words of the languages the public labelled
# sets use. Kept as alternations; the recognizer compiles them once per process.
_SUFFIX_EN = (
    r"street|st|avenue|ave|av|road|rd|lane|ln|drive|dr|boulevard|blvd|court|ct|place|pl"
    r"|square|sq|way|terrace|ter|parkway|pkwy|highway|hwy|circle|cir|crescent|cres"
    r"|close|grove|gardens|row|walk|mews|hill|park|trail|trl|alley|plaza|loop|path|pike"
    r"|expressway|freeway|route|causeway|quay|wharf|green|vale|view|rise|ridge|point"
)
_COMPOUND = (  # glued onto the street name: Friedhofstrasse, Puruntie, Rooseveltlaan
    r"stra(?:ss|ß)e|str\.|weg|gasse|allee|platz|damm|ufer|katu|tie|kuja|polku|vej"
    r"|gade|gata|gatan|vägen|veien|gaten|vegur|laan|straat|plein|dreef|kade|singel|utca"
)
_PREFIX = (  # precede the name: Rue de Virton, Via Roma, Rua Diadema, Calle Mayor
    r"rue|avenue|av\.|avenida|boulevard|bd|chemin|route|place|impasse|allée|quai|via|viale"
    r"|piazza|corso|largo|rua|travessa|praça|calle|carrer|paseo|plaza|camino|ulica|ul\."
    r"|ulitsa|odos|leoforos|strada|calea|aleea|str\."
)
# At most four words: a street name is short, and an unbounded run of capitalised words
# would swallow a title-cased sentence.
_NAME = (r"[A-ZÀ-Þ][\w'.-]*(?:[ \t]+(?:[A-ZÀ-Þ][\w'.-]*|de|del|la|le|di|da|do|dos|das|van"
         r"|von|z)){0,3}")
_UNIT = r"(?:apt\.?|apartment|suite|ste\.?|unit|flat|floor|fl\.?|room|rm\.?|#)\s*[\w-]{1,6}"
_NUM = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,5})?"

ADDRESS_RULES: tuple[Rule, ...] = (
    # 350 Fifth Avenue (Suite 4) / 24 Clarke Ave.
    _rule(ADDRESS_ENTITY,
          rf"\b{_NUM}(?:[ \t]+{_NUM})?[ \t]+(?:{_NAME}[ \t]+)?(?i:{_SUFFIX_EN})\b\.?"
          rf"(?:,?\s*(?i:{_UNIT}))*", 0.7),
    # Friedhofstrasse 33 / 6108 Friedhofstrasse 33 / Rooseveltlaan 110 Apt. 949
    _rule(ADDRESS_ENTITY,
          rf"(?:\b{_NUM}[ \t]+)?\b[A-ZÀ-Þ][\w'-]{{2,}}?(?i:{_COMPOUND})\b[ \t]+{_NUM}\b"
          rf"(?:,?\s*(?i:{_UNIT}))*", 0.7),
    # 36 rue de pologne / 2456 Rue de Virton 38: a leading number makes case irrelevant.
    _rule(ADDRESS_ENTITY,
          rf"\b{_NUM},?[ \t]+(?i:{_PREFIX})[ \t]+(?i:{_NAME})(?:[ \t]+{_NUM}\b)?"
          rf"(?:,?\s*(?i:{_UNIT}))*", 0.6),
    # Via Roma 131 / Rua Diadema 1903: without a leading number the name must be
    # capitalised and a house number must follow ("via the API" is not an address).
    _rule(ADDRESS_ENTITY,
          rf"\b(?i:{_PREFIX})[ \t]+{_NAME}[ \t]+{_NUM}\b(?:,?\s*(?i:{_UNIT}))*", 0.6),
    # International "number, street, number" lines: 20789 Allika 46 / 0138 Brisas 6802.
    # The street word is capitalised and the line ends after the house number.
    _rule(ADDRESS_ENTITY,
          r"(?<![\w.,])\d{2,6}[ \t]+[A-ZÀ-Þ][\w'.-]+(?:[ \t]+[\w'.-]+){0,3}[ \t]+\d{1,5}[a-zA-Z]?"
          r"\.?(?=[ \t]*(?:\n|,|$))", 0.45),
    # The last line of an address block: Country/City then a postcode, line end.
    _rule(ADDRESS_ENTITY,
          r"(?m)^[ \t]*[A-ZÀ-Þ][\w'.()-]*(?:[ \t]+[A-ZÀ-Þ(][\w'.()-]*){0,3},?[ \t]+\d{4,6}[ \t]*$",
          0.4),
    # PO boxes and US military addresses.
    _rule(ADDRESS_ENTITY, r"(?i)\b(?:P\.?\s?O\.?\s?Box|Post Office Box)\s+\d{1,6}\b", 0.7),
    _rule(ADDRESS_ENTITY, r"\b(?:PSC|Unit|USNS|USNV|USS|USCGC)\s+\d{3,5},?\s+Box\s+\d{3,5}"
          r"(?:\s+(?:APO|FPO|DPO)\s+A[AEP]\s+\d{5})?", 0.8),
    # A unit line on its own ("Apt. 117"): lower score, capitalised "Suite" only, so
    # "the test suite 2" is not an address.
    _rule(ADDRESS_ENTITY, r"\b(?:[Aa]pt\.?|[Aa]partment|Suite)\s+\d{1,5}\b", 0.5),
)


# Phone numbers libphonenumber rejects (fictional ranges, foreign national formats
# without a country code) but a human reads as phone numbers. Shapes that are phone-like
# on their own score 0.5; a bare run of digit groups scores 0.3 and only passes the
# default 0.4 threshold next to a context word ("call", "phone", "mobile", ...).
_EXT = r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?"
PHONE_RULES: tuple[Rule, ...] = (
    _rule("PHONE_NUMBER", r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{2,5}){2,5}"
          rf"{_EXT}(?![\w-])", 0.5),
    _rule("PHONE_NUMBER", r"(?<![\w(])\(\d{1,5}\)[ .-]?\d{3,4}(?:[ .-]?\d{2,4}){1,2}"
          rf"{_EXT}(?!\w|-\d)", 0.5),
    _rule("PHONE_NUMBER", rf"(?<![\w.-])\d{{3}}([.-])\d{{3}}\1\d{{4}}{_EXT}(?![\w-])", 0.5),
    _rule("PHONE_NUMBER", r"(?<![\w.:-])\d{2}([ .-])\d{2}\1\d{2}\1\d{2}\1\d{2}(?![\w.:-])", 0.5),
)
# Presidio matches context words as substrings of nearby lemmas: no short words ("tel"
# would fire on "hotel", "text" on "context").
PHONE_CONTEXT = ["phone", "telephone", "cell", "mobile", "call", "number", "fax", "office",
                 "dial", "sms", "whatsapp", "contact", "message", "answering", "landline"]
# A run of 2-8 digit groups with single separators; 6-15 digits in all (E.164's range,
# and the six-digit local numbers of small countries).
# "-Office" may follow ("555 0100-Office"), a further "-12" may not.
_DIGIT_RUN = re.compile(r"(?<![\w.:/+-])\d{2,12}(?:[ .-]\d{1,8}){0,4}(?![\w:/]|[.-]\d)")
_DATE_LIKE = re.compile(r"^(?:\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}"
                        r"|(?:19|20)\d\d ?[-\u2013] ?(?:19|20)\d\d)$")  # dates, year ranges

# Issuer prefixes Presidio's card regex misses: Mastercard 2-series, 19-digit Visa,
# Maestro (12-19 digits), JCB 15-digit (2131/1800), UnionPay. Luhn-checked.
_CARD = re.compile(r"(?<![\w+-])(?:\d[ -]?){11,18}\d(?![\w-])")
_CARD_PREFIX = re.compile(r"^(?:4|5[0-8]|2[2-7]|3[0-9]|6|2131|1800)")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class RegexRecognizer(LocalRecognizer):
    """Runs a list of rules; one instance can serve several entity types."""

    def __init__(self, rules: Sequence[Rule], name: str, context: list[str] | None = None
                 ) -> None:
        self.rules = tuple(rules)
        self._label = name
        entities = sorted({r.entity for r in self.rules})
        super().__init__(supported_entities=entities, name=name, supported_language="en",
                         context=context)

    def load(self) -> None:
        """Nothing to load: the patterns were compiled at construction."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None
                ) -> list[RecognizerResult]:
        wanted = set(entities) if entities else None
        out: list[RecognizerResult] = []
        for rule in self.rules:
            if wanted is not None and rule.entity not in wanted:
                continue
            for m in rule.pattern.finditer(text):
                start, end = m.span(rule.group) if rule.group else m.span()
                if end <= start:
                    continue
                out.append(RecognizerResult(
                    entity_type=rule.entity, start=start, end=end, score=rule.score,
                    # Presidio's context enhancer writes into the explanation.
                    analysis_explanation=AnalysisExplanation(
                        recognizer=self._label, original_score=rule.score,
                        pattern=rule.pattern.pattern[:40]),
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: self._label,
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    },
                ))
        return out


class CardRecognizer(LocalRecognizer):
    """12-19 digit numbers with a card issuer prefix that pass the Luhn check."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["CREDIT_CARD"], name="WardenCard",
                         supported_language="en")

    def load(self) -> None:
        """Nothing to load."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None
                ) -> list[RecognizerResult]:
        out: list[RecognizerResult] = []
        for m in _CARD.finditer(text):
            digits = re.sub(r"[ -]", "", m[0])
            if 12 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn(digits):
                out.append(RecognizerResult(
                    entity_type="CREDIT_CARD", start=m.start(), end=m.end(), score=0.9,
                    analysis_explanation=AnalysisExplanation(
                        recognizer="WardenCard", original_score=0.9,
                        textual_explanation="issuer prefix and Luhn checksum"),
                    recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: "WardenCard",
                                          RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out


class PhoneShapeRecognizer(RegexRecognizer):
    """Phone-shaped text: the strong shapes of ``PHONE_RULES`` plus weak digit runs."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None
                ) -> list[RecognizerResult]:
        out = super().analyze(text, entities, nlp_artifacts)
        for m in _DIGIT_RUN.finditer(text):
            run = m[0]
            digits = sum(c.isdigit() for c in run)
            if not 6 <= digits <= 15 or _DATE_LIKE.match(run):
                continue
            if run.count(".") == 1 and not re.search(r"[ -]", run):
                continue  # a decimal number
            out.append(RecognizerResult(
                entity_type="PHONE_NUMBER", start=m.start(), end=m.end(), score=0.3,
                analysis_explanation=AnalysisExplanation(
                    recognizer=self._label, original_score=0.3,
                    textual_explanation="digit groups; needs a context word"),
                recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self._label,
                                      RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out


_IBAN = re.compile(r"(?<![\w-])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,4})?"
                   r"(?![\w-])")


def iban_valid(candidate: str) -> bool:
    """ISO 13616 mod-97 check (what makes a random token not an IBAN)."""
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


class IbanAnyCaseRecognizer(LocalRecognizer):
    """IBANs written in lower or mixed case, which Presidio's recognizer misses."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["IBAN_CODE"], name="WardenIban",
                         supported_language="en")

    def load(self) -> None:
        """Nothing to load."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None
                ) -> list[RecognizerResult]:
        out = []
        for m in _IBAN.finditer(text):
            if not m[0].isupper() and iban_valid(m[0]):
                out.append(RecognizerResult(
                    entity_type="IBAN_CODE", start=m.start(), end=m.end(), score=1.0,
                    analysis_explanation=AnalysisExplanation(
                        recognizer="WardenIban", original_score=1.0,
                        textual_explanation="mod-97 checksum"),
                    recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: "WardenIban",
                                          RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}))
        return out


def phone_recognizer() -> PhoneShapeRecognizer:
    return PhoneShapeRecognizer(PHONE_RULES, name="WardenPhone", context=PHONE_CONTEXT)


def secrets_recognizer() -> RegexRecognizer:
    return RegexRecognizer(SECRET_RULES, name="WardenSecrets")


def address_recognizer() -> RegexRecognizer:
    return RegexRecognizer(ADDRESS_RULES, name="WardenStreetAddress",
                           context=["address", "street", "live", "lives", "located", "ship"])


def deny_list_recognizer(entity: str, values: Iterable[str]) -> RegexRecognizer:
    """Exact terms a tenant never wants sent (project code names, client names)."""
    terms = sorted({v for v in values if v}, key=len, reverse=True)  # longest first
    alternation = "|".join(re.escape(t) for t in terms)
    pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)
    return RegexRecognizer([Rule(entity, pattern, 1.0)], name=f"DenyList:{entity}")


def pattern_recognizer(entity: str, regex: str, score: float) -> RegexRecognizer:
    """A tenant's own regex; validated at policy load (``re.compile`` errors name it)."""
    return RegexRecognizer([Rule(entity, re.compile(regex), score)], name=f"Pattern:{entity}")
