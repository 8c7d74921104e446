"""How sure a held-out figure is: confidence intervals of a mean over prompts, of a success rate, and of the
difference between two models scored on the same prompts and seeds.

Held-out tables score one video per prompt, so a figure is a mean over a few dozen or a few hundred prompts. Two
successes in 128 is a rate of 0.016 whose 95% interval runs from 0.004 to 0.055, and a stage that gains one video
moves it by 0.008. A difference between stages counts as a gain only where its interval lies above 0. The
difference is paired (the same prompt and seed in both rows), which is far tighter than comparing two intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999


@dataclass(frozen=True)
class Interval:
    """An estimate over prompts and its confidence interval [low, high]."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or wholly below 0: a difference the prompts make clear."""
        return self.low > 0 or self.high < 0

    def signed(self) -> str:
        """'+0.012 [-0.004, +0.031]': a difference."""
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def _scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name}: expected a non-empty 1-d sequence of per-prompt scores, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: per-prompt scores must be finite")
    return array


def _bootstrap_mean(x: np.ndarray, confidence: float, seed: int) -> Interval:
    """The mean of x with a percentile-bootstrap interval (defined where every resample agrees, as for a row of
    zeros, where the BCa interval is not)."""
    if np.ptp(x) == 0:
        return Interval(float(x[0]), float(x[0]), float(x[0]))  # every resample has the same mean
    result = stats.bootstrap(
        (x,),
        np.mean,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Interval(float(x.mean()), float(ci.low), float(ci.high))


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """The mean of per-prompt scores (a total) with a percentile-bootstrap interval."""
    return _bootstrap_mean(_scores(values, "mean_interval"), confidence, seed)


def rate_interval(flags: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The share of prompts whose flag is 1 (a success rate) with Wilson's score interval, which, unlike the
    bootstrap, does not collapse to [0, 0] when no prompt has succeeded yet."""
    x = _scores(flags, "rate_interval")
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError("rate_interval: flags must be 0 or 1")
    successes = int(x.sum())
    ci = stats.binomtest(successes, len(x)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / len(x), float(ci.low), float(ci.high))


def paired_difference(
    before: Sequence[float] | np.ndarray,
    after: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """mean(after - before) over the same prompts and seeds, with a paired percentile-bootstrap interval: a
    gain of `after` over `before` is one whose interval lies above 0."""
    a, b = _scores(before, "paired_difference (before)"), _scores(after, "paired_difference (after)")
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {len(a)} scores before but {len(b)} after; pair them prompt by prompt")
    return _bootstrap_mean(b - a, confidence, seed)  # resampling prompts resamples their differences


__all__ = ["CONFIDENCE", "Interval", "mean_interval", "paired_difference", "rate_interval"]
