"""Honest label-noise figures: what a judge of measured accuracy says about the rows it kept.

A judge that is right 85% of the time cannot certify "0% noise": among the reviews it calls negative, some are not.
Given the judge's measured sensitivity and specificity (with their 95% intervals, from `prefsynth judge-eval`), the
share of reviews it called negative among everything generated gives the true share of negative reviews
(Rogan-Gladen), and from that the share of the kept ones that really are negative (the positive predictive value).
Intervals take the worst and best case over the sampling interval of the observed share and the intervals of the
judge's sensitivity and specificity, so they widen when the judge is poorly measured.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Accuracy:
    """A judge's measured accuracy on one side: sensitivity = P(judged X | truly X), specificity = P(judged not X |
    truly not X), each with its count so the interval can be recomputed."""

    sensitivity: float
    sensitivity_n: int
    specificity: float
    specificity_n: int

    def intervals(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return (wilson(self.sensitivity * self.sensitivity_n, self.sensitivity_n),
                wilson(self.specificity * self.specificity_n, self.specificity_n))


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def prevalence(observed: float, se: float, sp: float) -> float:
    """True share of X given the share judged X (Rogan-Gladen), clipped to [0, 1]."""
    j = se + sp - 1
    return _clip((observed + sp - 1) / j) if j > 0 else float("nan")


def ppv(prev: float, se: float, sp: float) -> float:
    """Share of the reviews judged X that truly are X."""
    hit, false = prev * se, (1 - prev) * (1 - sp)
    return hit / (hit + false) if hit + false > 0 else float("nan")


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}]"

    def as_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


def kept_precision(judged_x: int, total: int, acc: Accuracy) -> Estimate:
    """Share of the reviews the judge called X (kept) that truly are X, from `judged_x` of `total` called X."""
    (se_lo, se_hi), (sp_lo, sp_hi) = acc.intervals()
    obs = judged_x / total if total else 0.0
    point = ppv(prevalence(obs, acc.sensitivity, acc.specificity), acc.sensitivity, acc.specificity)
    vals = []
    for o, se, sp in itertools.product(wilson(judged_x, total), (se_lo, acc.sensitivity, se_hi),
                                       (sp_lo, acc.specificity, sp_hi)):
        v = ppv(prevalence(o, se, sp), se, sp)
        if not math.isnan(v):
            vals.append(v)
    if math.isnan(point) or not vals:
        return Estimate(float("nan"), 0.0, 1.0)
    return Estimate(point, min(vals), max(vals))


def pair_noise(chosen: Estimate, rejected: Estimate) -> Estimate:
    """Share of kept pairs where at least one side is not of its labelled polarity (sides taken as independent)."""
    return Estimate(1 - chosen.value * rejected.value, 1 - chosen.high * rejected.high,
                    1 - chosen.low * rejected.low)
