"""Normalisation: undo the tricks that hide an injection from pattern matching.

Detection runs on *views* of a message, never on what is forwarded: the message itself
is not changed here. ``text`` is the Unicode-normalised form (NFKC, invisible and bidi
controls removed, mixed-script homoglyphs folded), ``folded`` additionally undoes
leetspeak and letter-spacing ("1gn0r3", "i g n o r e"), and ``decoded`` holds payloads
that were base64 / hex / URL-encoded, written as HTML entities or U+ code points, or
smuggled in Unicode tag characters, decoded, so
the rules and the classifier judge what the model would read once it decodes them.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import unquote

# Zero-width and invisible formatting characters (incl. soft hyphen, word joiner, BOM).
_INVISIBLE = "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u2060\u2061" \
             "\u2062\u2063\u2064\u3164\ufeff\uffa0"
# Bidi embeddings, overrides and isolates: used to show one order and mean another.
_BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_STRIP = {ord(c): None for c in _INVISIBLE + _BIDI}

# Cyrillic / Greek / Latin-extended letters and small capitals that render like ASCII
# letters. NFKC does
# not fold these (they are distinct letters), so "ignore" spelt with Cyrillic i, o, e
# survives it.
_HOMOGLYPHS = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u04bb\u04cf\u051b"
    "\u051d\u0261\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0423"
    "\u0406\u0408\u0405\u03b1\u03bf\u03c1\u03bd\u03c4\u03b9\u03ba\u03c5\u0391\u0392\u0395"
    "\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7\u0251\u0131\u1d00"
    "\u0299\u1d04\u1d05\u1d07\ua730\u0262\u029c\u026a\u1d0a\u1d0b\u029f\u1d0d\u0274\u1d0f"
    "\u1d18\u01eb\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22",
    "aeopcyxijsdhlqwgABEKMHOPCTXYIJSaopvtikuABEZHIKMNOPTYXaiabcdefghijklmnopqrstuvwyz",
)
_CONFUSABLE = frozenset(_HOMOGLYPHS)
_WORD = re.compile(r"\w+")

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                       "8": "b", "@": "a", "$": "s", "!": "i", "|": "l", "€": "e"})
# A token that mixes letters with leet digits/symbols; pure numbers are left alone.
_LEET_TOKEN = re.compile(
    r"(?<![\w@$!|€])(?=[\w@$!|€]*[A-Za-z])(?=[\w@$!|€]*[0134578@$!|€])[\w@$!|€]{3,20}(?![\w@$!|€])"
)
_LITERAL = re.compile(r"(\S+@\S+\.\w+|https?://\S+|www\.\S+)")
# "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e": four or more single letters spaced out.
_SPACED = re.compile(r"\b(?:[A-Za-z][ .\-_*]){3,}[A-Za-z]\b")

_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]{16,}={0,2}")
_HEX = re.compile(r"(?:\\x|0x)?(?:[0-9A-Fa-f]{2}(?:\\x|[ :]?)){8,}")
_URLENC = re.compile(r"%[0-9A-Fa-f]{2}")
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
_HTML_ENTITY = re.compile(r"&(?:#\d{2,6}|#x[0-9A-Fa-f]{2,6}|[A-Za-z]{2,8});")
_CODEPOINT = re.compile(r"\b[Uu]\+([0-9A-Fa-f]{4,6})\b ?")
MAX_DECODE_DEPTH = 2


@dataclass(frozen=True, slots=True)
class Views:
    text: str
    folded: str
    decoded: tuple[str, ...] = ()
    # What was found and undone ("zero_width", "homoglyph", "base64", ...), for reasons.
    signals: frozenset[str] = field(default_factory=frozenset)

    def all(self) -> tuple[str, ...]:
        return (self.text, self.folded, *self.decoded)


def _fold_homoglyphs(text: str) -> tuple[str, bool]:
    """Fold confusables only inside words that also hold Latin letters, or consist of
    confusables alone: real Cyrillic or Greek prose keeps its own letters."""
    changed = False

    def fix(m: re.Match[str]) -> str:
        nonlocal changed
        word = m.group(0)
        codes = [ord(c) for c in word if c.isalpha()]
        if not any(c in _CONFUSABLE for c in codes):
            return word
        latin = any(c < 0x250 for c in codes)
        if latin or all(c in _CONFUSABLE for c in codes):
            changed = True
            return word.translate(_HOMOGLYPHS)
        return word

    return _WORD.sub(fix, text), changed


def _printable(data: bytes) -> str | None:
    """Decoded bytes that read as text (>= 85 % printable, some letters), else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 4:
        return None
    good = sum(c.isprintable() or c in "\n\t\r" for c in text)
    letters = sum(c.isalpha() for c in text)
    if good / len(text) < 0.85 or letters < max(3, len(text) // 4):
        return None
    return text


def _decode_runs(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in _BASE64.finditer(text):
        run = m.group(0)
        padded = run + "=" * (-len(run) % 4)
        for decoder in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = _printable(decoder(padded))
            except (binascii.Error, ValueError):
                continue
            if decoded:
                out.append(("base64", decoded))
                break
    for m in _HEX.finditer(text):
        digits = re.sub(r"\\x|0x|[ :]", "", m.group(0))
        if len(digits) % 2 == 0:
            decoded = _printable(bytes.fromhex(digits))
            if decoded:
                out.append(("hex", decoded))
    if len(_URLENC.findall(text)) >= 3:
        out.append(("url_encoded", unquote(text)))
    if len(_HTML_ENTITY.findall(text)) >= 3:
        out.append(("html_entities", html.unescape(text)))
    if len(_CODEPOINT.findall(text)) >= 3:
        out.append(("codepoints", _CODEPOINT.sub(lambda m: _chr(m.group(1)), text)))
    for m in _TAGS.finditer(text):
        # Unicode tag characters mirror ASCII and render as nothing ("ASCII smuggling").
        hidden = "".join(chr(ord(c) - 0xE0000) for c in m.group(0) if 0xE0020 <= ord(c) < 0xE007F)
        if hidden.strip():
            out.append(("tag_chars", hidden))
    return out


def _chr(hex_digits: str) -> str:
    code = int(hex_digits, 16)
    return chr(code) if code <= 0x10FFFF else ""


def _fold_token(m: re.Match[str]) -> str:
    token = m.group(0)
    # Trailing "!", "$" or "|" is punctuation ("Hi!"), not a letter in disguise.
    core = token.rstrip("!$|")
    return core.translate(_LEET) + token[len(core):]


def _unleet(text: str) -> str:
    text = _SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group(0)), text)
    # Addresses and URLs keep their digits: "sara142@abc.com" is not "saraia2aabc".
    parts = _LITERAL.split(text)
    return "".join(p if i % 2 else _LEET_TOKEN.sub(_fold_token, p) for i, p in enumerate(parts))


def normalise(text: str) -> Views:
    signals: set[str] = set()
    stripped = text.translate(_STRIP)
    if len(stripped) != len(text):
        signals.add("invisible_chars")
    nfkc = unicodedata.normalize("NFKC", stripped)
    if nfkc != stripped:
        signals.add("nfkc")
    plain, homoglyphs = _fold_homoglyphs(nfkc)
    if homoglyphs:
        signals.add("homoglyph")
    plain_no_tags = _TAGS.sub("", plain)
    folded = _unleet(plain_no_tags)
    if folded != plain_no_tags:
        signals.add("leetspeak")

    decoded: list[str] = []
    frontier = [plain]
    for _ in range(MAX_DECODE_DEPTH):
        found = [d for t in frontier for d in _decode_runs(t)]
        if not found:
            break
        frontier = []
        for kind, payload in found:
            signals.add(kind)
            view = unicodedata.normalize("NFKC", payload.translate(_STRIP))
            if view not in decoded and view != plain:
                decoded.append(view)
                frontier.append(view)
    return Views(plain_no_tags, folded, tuple(decoded), frozenset(signals))
