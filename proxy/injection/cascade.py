"""A two-stage classifier: the built-in linear model first, a MiniLM second, and only for
tool results whose linear margin lands where the second opinion can change the verdict.

``injection.classifier: cascade`` (needs the ``stackone`` extra). Tool results are scored
by a small logistic stack of two numbers: the linear model's margin and the logit of
stackone-defender's int8 MiniLM score (clipped to ``[lo, hi]``), fitted out of fold on
BIPIA training documents by ``bench/train_cascade.py`` and shipped as ``cascade.npz``.
Because the MiniLM logit is clipped, the stacked score of a document can only move
within a known range: a document whose margin puts it above the default threshold even
at the lowest MiniLM logit, or below it even at the highest, is decided without the
MiniLM (the "band" is the margin range in between). The MiniLM costs ~45 ms per tool
result on one core against ~4 ms for the linear model, so only the band pays for it.

Outside the band the stacked score is computed with the clipped logit's bound that
keeps the document on its side, so the verdict at the default threshold is exactly the
full stack's. A tenant threshold other than the default still gets a monotone score,
but the band was cut for the default one. Prompts (user role) are scored by the linear
model alone: the stack did not help there (bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proxy.injection.classifier import HashedLinearClassifier, LinearModel

CASCADE_PATH = Path(__file__).with_name("cascade.npz")


@dataclass(frozen=True, slots=True)
class Stack:
    """z = w_margin * margin + w_second * clip(logit(second), lo, hi) + bias;
    p = sigmoid(a * z + b); verdict at p >= threshold."""

    w_margin: float
    w_second: float
    bias: float
    lo: float
    hi: float
    platt: tuple[float, float]
    threshold: float
    model_version: str  # LinearModel.fingerprint of the model the stack was fitted on

    def z_threshold(self) -> float:
        a, b = self.platt
        t = min(max(self.threshold, 1e-9), 1 - 1e-9)
        return (math.log(t / (1 - t)) - b) / a

    def band(self) -> tuple[float, float]:
        """Margins where the clipped second score can flip the verdict (w_margin > 0 and
        w_second > 0 are checked at load)."""
        zt = self.z_threshold()
        return ((zt - self.bias - self.w_second * self.hi) / self.w_margin,
                (zt - self.bias - self.w_second * self.lo) / self.w_margin)

    def probability(self, margin: float, second_logit: float) -> float:
        s = min(max(second_logit, self.lo), self.hi)
        z = self.w_margin * margin + self.w_second * s + self.bias
        a, b = self.platt
        return 1.0 / (1.0 + math.exp(-(a * z + b)))

    def save(self, path: Path) -> None:
        np.savez(path, weights=np.array([self.w_margin, self.w_second, self.bias]),
                 clip=np.array([self.lo, self.hi]), platt=np.array(self.platt),
                 threshold=np.float64(self.threshold), model_version=np.array(self.model_version))

    @classmethod
    def load(cls, path: Path = CASCADE_PATH) -> Stack:
        with np.load(path, allow_pickle=False) as d:
            w, c, p = d["weights"], d["clip"], d["platt"]
            stack = cls(float(w[0]), float(w[1]), float(w[2]), float(c[0]), float(c[1]),
                        (float(p[0]), float(p[1])), float(d["threshold"]),
                        str(d["model_version"]))
        if not (stack.w_margin > 0 and stack.w_second > 0 and stack.platt[0] > 0
                and stack.lo < stack.hi):
            raise ValueError(f"{path}: a stack must increase with both scores")
        return stack


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class CascadeClassifier:
    """Linear model for everything; the second stage for tool results in the band."""

    name = "cascade"

    def __init__(self, second: Callable[[str], float] | None = None,
                 model: LinearModel | None = None, stack: Stack | None = None) -> None:
        self.linear = HashedLinearClassifier(model)
        self.stack = stack if stack is not None else Stack.load()
        if self.stack.model_version != self.linear.model.fingerprint:
            raise ValueError(f"cascade stack fitted on {self.stack.model_version!r}, "
                             f"linear model is {self.linear.model.fingerprint!r}")
        self.second = second if second is not None else _stackone()
        self.version = f"{self.linear.version}+cascade"
        self.thresholds = {**self.linear.thresholds, "tool": self.stack.threshold}
        self.low, self.high = self.stack.band()
        self.second_calls = 0

    def score(self, text: str, role: str) -> float:
        if role != "tool":
            return self.linear.score(text, role)
        model = self.linear.model
        margin = max((model.margin(u, role) for u in model.units(text, role)), default=-1e9)
        if margin >= self.high:
            return self.stack.probability(margin, self.stack.lo)
        if margin < self.low:
            return self.stack.probability(margin, self.stack.hi)
        self.second_calls += 1
        return self.stack.probability(margin, _logit(self.second(text)))


def _stackone() -> Callable[[str], float]:
    from proxy.injection.classifier import StackOneClassifier

    clf = StackOneClassifier()
    return lambda text: clf.score(text, "tool")
