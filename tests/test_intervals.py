"""Confidence intervals of held-out figures, against closed forms in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from vidpost.intervals import mean_interval, paired_difference, rate_interval

Z95 = stats.norm.ppf(0.975)


def _wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval written out."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k", [0, 2, 64, 127, 128])
def test_success_rate_interval_is_wilsons(k):
    n = 128
    interval = rate_interval([1.0] * k + [0.0] * (n - k))
    low, high = _wilson(k, n)
    assert interval.value == k / n
    assert interval.low == pytest.approx(max(low, 0.0), abs=1e-12)
    assert interval.high == pytest.approx(min(high, 1.0), abs=1e-12)
    assert interval.high > 0  # no success yet is not proof that none will come


def test_success_rate_interval_covers_the_true_rate_about_as_often_as_it_says():
    rng = np.random.default_rng(0)
    rate, n, trials = 0.1, 100, 400
    covered = [
        (lambda i: i.low <= rate <= i.high)(rate_interval((rng.random(n) < rate).astype(float))) for _ in range(trials)
    ]
    assert 0.91 <= np.mean(covered) <= 0.99


def test_mean_interval_of_a_large_sample_is_the_normal_one():
    x = np.random.default_rng(1).normal(0.3, 1.0, size=4000)
    interval = mean_interval(x)
    half = Z95 * x.std(ddof=1) / math.sqrt(len(x))
    assert interval.value == pytest.approx(x.mean())
    assert interval.low == pytest.approx(x.mean() - half, abs=0.004)
    assert interval.high == pytest.approx(x.mean() + half, abs=0.004)


def test_paired_difference_is_tight_where_each_mean_alone_is_not():
    """The same prompts and seeds: each model's spread over prompts cancels in the difference."""
    before = np.random.default_rng(2).random(128)  # prompts differ a lot
    after = before + 0.01  # every prompt gains a little
    difference = paired_difference(before, after)
    assert difference.value == pytest.approx(0.01)
    assert (difference.low, difference.high) == pytest.approx((0.01, 0.01))
    assert difference.excludes_zero
    assert mean_interval(before).high > mean_interval(after).low  # unpaired, the two intervals overlap


def test_paired_difference_against_the_normal_interval_of_the_differences():
    rng = np.random.default_rng(3)
    before = rng.random(3000)
    gain = rng.normal(0.02, 0.2, size=3000)
    difference = paired_difference(before, before + gain)
    half = Z95 * gain.std(ddof=1) / math.sqrt(len(gain))
    assert difference.value == pytest.approx(gain.mean())
    assert difference.low == pytest.approx(gain.mean() - half, abs=0.002)
    assert difference.high == pytest.approx(gain.mean() + half, abs=0.002)


def test_a_difference_of_noise_is_not_a_gain_and_the_interval_is_seeded():
    rng = np.random.default_rng(4)
    before, after = (rng.random(32) < 0.05).astype(float), (rng.random(32) < 0.05).astype(float)
    difference = paired_difference(before, after)
    assert not difference.excludes_zero
    assert paired_difference(before, after) == difference
    assert difference.signed().startswith(("+", "-"))


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="pair them prompt by prompt"):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="0 or 1"):
        rate_interval([0.0, 0.5])
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([0.1, float("nan")])
