"""The ML layer: a small offline classifier behind a narrow, pluggable interface.

``Classifier`` is the seam: anything with ``score(text, role) -> float`` (a calibrated
probability) can sit here. The built-in one is a logistic regression over hashed
character 3-5-grams and word 1-2-grams, trained by ``bench/train_injection.py`` on the
public training splits and shipped as ``model.npz`` (~1 MB) next to this file: no
download, no native runtime, ~1 ms per short message on one core.

Tool results are judged with role-conjoined features (each feature also counted once
more under a "tool" salt), so one model learns both what an attack looks like in
general and what an out-of-place instruction looks like inside a document.

Long texts are scored in overlapping windows and the highest window wins: an
injection hidden in the middle of a long web page is not diluted by the page.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

MODEL_PATH = Path(__file__).with_name("model.npz")
WINDOW_CHARS = 480
WINDOW_STRIDE = 240
CHAR_NGRAMS = (3, 4, 5)
_ROLE_SALT = {"tool": 0x9E3779B97F4A7C15}
_WS = re.compile(r"\s+")
_WORDS = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class Classifier(Protocol):
    """Scores one text: the probability that it is an injection, in [0, 1]."""

    name: str

    def score(self, text: str, role: str) -> float: ...


def _mix(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser: spreads nearby n-gram codes over the whole hash space."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _char_hashes(text: str, ngrams: tuple[int, ...]) -> npt.NDArray[np.uint64]:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    parts = []
    for n in ngrams:
        if len(codes) < n:
            continue
        h = np.full(len(codes) - n + 1, np.uint64(n * 0x100000001B3), dtype=np.uint64)
        for k in range(n):
            h = h * np.uint64(0x100000001B3) + codes[k : len(codes) - n + 1 + k]
        parts.append(_mix(h))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _word_hashes(text: str) -> npt.NDArray[np.uint64]:
    words = _WORDS.findall(text)
    if not words:
        return np.zeros(0, dtype=np.uint64)
    uni = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    uni = uni + np.uint64(0xA5A5A5A5_00000000)
    bi = uni[:-1] * np.uint64(31) + (uni[1:] ^ np.uint64(0x5BD1E995))
    return _mix(np.concatenate([uni, bi]))


_LINE_START = re.compile(r"(?m)^[^\S\n]*([a-z']+)(?:[^\S\n]+([a-z']+))?")


def _line_start_hashes(text: str) -> npt.NDArray[np.uint64]:
    """The first word and the first two words of every line, as their own features.

    An injected instruction usually opens a line of its own ("Draft an introduction
    ...", "Translate your answer ..."), while the same verbs inside a sentence of a
    document ("... if you want to draft ...") are data; plain word n-grams cannot tell
    the two apart once whitespace is folded."""
    keys = []
    for m in _LINE_START.finditer(text):
        keys.append(zlib.crc32(f"^{m.group(1)}".encode()))
        if m.group(2):
            keys.append(zlib.crc32(f"^{m.group(1)} {m.group(2)}".encode()))
    if not keys:
        return np.zeros(0, dtype=np.uint64)
    return _mix(np.array(keys, dtype=np.uint64) + np.uint64(0x3C6EF372_00000000))


def features(text: str, role: str, dim: int, char_ngrams: tuple[int, ...] = CHAR_NGRAMS,
             line_starts: bool = False) -> tuple[IntArray, FloatArray]:
    """Sparse feature vector of one text: (indices, values), L2-normalised log counts."""
    lowered = text.lower()
    text = _WS.sub(" ", lowered).strip()
    hashes = np.concatenate([_char_hashes(f" {text} ", char_ngrams), _word_hashes(text)])
    if line_starts:
        hashes = np.concatenate([hashes, _line_start_hashes(lowered)])
    salt = _ROLE_SALT.get(role)
    if salt is not None:
        hashes = np.concatenate([hashes, _mix(hashes ^ np.uint64(salt))])
    if hashes.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx, counts = np.unique((hashes % np.uint64(dim)).astype(np.int64), return_counts=True)
    values = np.log1p(counts).astype(np.float32)
    values /= np.float32(np.sqrt(np.dot(values, values)))
    return idx, values


def windows(text: str, size: int = WINDOW_CHARS, stride: int = WINDOW_STRIDE) -> Iterator[str]:
    """The whole text if short, else overlapping windows cut at whitespace."""
    if len(text) <= size:
        yield text
        return
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > 0 else end
        yield text[start:end]
        if end >= len(text):
            return
        nxt = text.find(" ", start + stride, end)
        start = nxt + 1 if nxt > 0 else start + stride


_LINE = re.compile(r"[^\n]+")


def units(text: str, role: str, whole_prompt: bool = False) -> list[str]:
    """What gets scored. A prompt is read in windows; a tool result also line by line,
    because an injected instruction usually sits on a line of its own inside data
    (a table row, an e-mail paragraph) and a window would mix it with that data.

    With ``whole_prompt``, a long prompt is also scored as one unit: a role-play
    jailbreak spreads its set-up over a page, and no single window need look like one.
    Tool results never are, so a long clean document stays judged window by window."""
    out = list(windows(text))
    if whole_prompt and role != "tool" and len(out) > 1:
        out.append(text)
    if role == "tool" and len(out) + text.count("\n") > 1:
        for m in _LINE.finditer(text):
            line = m.group(0).strip()
            if len(line) >= 12:
                out.extend(windows(line))
    return out


@dataclass(frozen=True, slots=True)
class LinearModel:
    """Weights of the built-in classifier, with per-role Platt calibration."""

    weights: FloatArray
    bias: float
    # role -> (a, b): p = sigmoid(a * margin + b), fitted on the validation splits.
    calibration: dict[str, tuple[float, float]]
    version: str
    # role -> default threshold, chosen on validation at FPR <= 2 % (train script).
    thresholds: dict[str, float]
    char_ngrams: tuple[int, ...] = CHAR_NGRAMS
    # Score a long prompt as a whole too (see ``units``); trained to match.
    whole_prompt: bool = False
    # The line-start features of ``features`` (models trained with --line-starts).
    line_starts: bool = False

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def margin(self, text: str, role: str) -> float:
        idx, values = features(text, role, self.dim, self.char_ngrams, self.line_starts)
        return float(np.dot(self.weights[idx], values)) + self.bias

    def calibrate(self, margin: float, role: str) -> float:
        a, b = self.calibration.get(role, self.calibration["user"])
        return float(1.0 / (1.0 + np.exp(-(a * margin + b))))

    def save(self, path: Path, **meta: Any) -> None:
        roles = sorted(self.calibration)
        arrays: dict[str, Any] = {
            "weights": self.weights.astype(np.float16),
            "bias": np.float64(self.bias),
            "roles": np.array(roles),
            "calibration": np.array([self.calibration[r] for r in roles], dtype=np.float64),
            "thresholds": np.array([self.thresholds.get(r, 0.5) for r in roles]),
            "version": np.array(self.version),
            "char_ngrams": np.array(self.char_ngrams),
            "whole_prompt": np.array(self.whole_prompt),
            "line_starts": np.array(self.line_starts),
        }
        arrays.update({k: np.array(v) for k, v in meta.items()})
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> LinearModel:
        with np.load(path, allow_pickle=False) as data:
            roles = [str(r) for r in data["roles"]]
            cal = {r: (float(a), float(b)) for r, (a, b) in zip(roles, data["calibration"],
                                                                strict=True)}
            thr = {r: float(t) for r, t in zip(roles, data["thresholds"], strict=True)}
            ngrams = tuple(int(n) for n in data["char_ngrams"])
            whole = bool(data["whole_prompt"]) if "whole_prompt" in data.files else False
            starts = bool(data["line_starts"]) if "line_starts" in data.files else False
            return cls(data["weights"].astype(np.float32), float(data["bias"]), cal,
                       str(data["version"]), thr, ngrams, whole, starts)

    def units(self, text: str, role: str) -> list[str]:
        return units(text, role, self.whole_prompt)


class HashedLinearClassifier:
    """The built-in classifier: the max calibrated window score of one text."""

    name = "builtin"

    def __init__(self, model: LinearModel | None = None) -> None:
        self.model = model if model is not None else LinearModel.load()
        self.version = self.model.version
        self.thresholds = dict(self.model.thresholds)

    def score(self, text: str, role: str) -> float:
        best = max((self.model.margin(u, role) for u in self.model.units(text, role)),
                   default=-1e9)
        return self.model.calibrate(best, role)


class StackOneClassifier:
    """Adapter for ``stackone-defender``'s bundled int8 MiniLM (optional extra).

    Kept as the measured alternative (see bench/RESULTS.md); it needs onnxruntime and
    tokenizers, which the default install does not carry.
    """

    name = "stackone"

    def __init__(self) -> None:
        from stackone_defender.classifiers.tier2_classifier import Tier2Classifier

        self._clf = Tier2Classifier()
        self._clf.warmup()
        self.version = "stackone-defender"
        # The package's calibrated high-risk threshold for its bundled model.
        self.thresholds = {"user": 0.52, "tool": 0.52}

    def score(self, text: str, role: str) -> float:
        result = self._clf.classify_by_chunks(text)
        if result.get("skipped") and result.get("skip_reason", "").startswith(
            ("Classification error", "Warmup error", "Token count error")
        ):
            raise RuntimeError(f"stackone classifier failed: {result['skip_reason']}")
        return float(result["score"])


def load_classifier(name: str) -> Classifier:
    if name == "builtin":
        return HashedLinearClassifier()
    if name == "stackone":
        return StackOneClassifier()
    raise ValueError(f"unknown classifier {name!r}")
