"""Paired statistics for comparing two encoders scored on the same images, and verdicts that never turn a
tie into an ordering.

* `paired_bootstrap`: percentile interval of mean(a) - mean(b) over resampled image indices (one resample
  shared by both sides), for 0/1 correctness or any per-image score.
* `seed_interval`: mean of per-seed paired differences with a Student-t interval on n - 1 degrees of freedom.
* `mcnemar_exact`: exact two-sided McNemar test on the discordant counts.
* `verdict` / `tie_verdict`: "holds", "does not hold" or "cannot tell at this scale" for a claim A > B or
  A ~ B given an interval of A - B.
* `rank_with_ties`: tiers of encoders; two encoders land in different tiers only when their paired interval
  excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
CANNOT_TELL = "cannot tell at this scale"

Scores = np.ndarray | Sequence[float] | Sequence[bool]


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


@dataclass(frozen=True)
class Interval:
    """A point estimate of a difference A - B with a two-sided interval at confidence `level`, the method
    that produced it and the number of units (images or seeds) behind it."""

    estimate: float
    low: float
    high: float
    level: float
    method: str
    n: int

    def __post_init__(self) -> None:
        _check_level(self.level)
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly on one side of zero."""
        return self.low > 0.0 or self.high < 0.0

    @property
    def width(self) -> float:
        return self.high - self.low

    def negated(self) -> Interval:
        """The same interval for B - A."""
        return Interval(-self.estimate, -self.high, -self.low, self.level, self.method, self.n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """E.g. "+3.2 [+1.0, +5.4]" for an accuracy difference in fractions shown in percentage points."""
        values = (self.estimate * scale, self.low * scale, self.high * scale)
        return "{:+.{d}f} [{:+.{d}f}, {:+.{d}f}]".format(*values, d=digits)


def _paired_arrays(a: Scores, b: Scores, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, values in zip(names, (a, b), strict=True):
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or inf")
        arrays.append(array)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must score the same images: "
            f"lengths {arrays[0].size} and {arrays[1].size}"
        )
    return arrays[0], arrays[1]


def bootstrap_differences(
    correct_a: Scores, correct_b: Scores, *, resamples: int = 2000, seed: int = 0, chunk_values: int = 2**22
) -> np.ndarray:
    """`resamples` bootstrap replicates of mean(a) - mean(b): each replicate draws n image indices with
    replacement and evaluates both sides on that same draw, i.e. the mean of d_i = a_i - b_i over it.
    Replicates are drawn in chunks of about `chunk_values` indices, so memory stays bounded."""
    a, b = _paired_arrays(correct_a, correct_b, ("correct_a", "correct_b"))
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    differences = a - b
    n = differences.size
    rows = max(1, chunk_values // n)
    generator = np.random.default_rng(seed)
    replicates = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        indices = generator.integers(0, n, size=(stop - start, n))
        replicates[start:stop] = differences[indices].mean(axis=1)
    return replicates


def paired_bootstrap(
    correct_a: Scores, correct_b: Scores, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Estimate mean(a) - mean(b) over the same images with a percentile bootstrap interval: the
    (1 - level)/2 and (1 + level)/2 quantiles of `bootstrap_differences`."""
    _check_level(level)
    a, b = _paired_arrays(correct_a, correct_b, ("correct_a", "correct_b"))
    replicates = bootstrap_differences(a, b, resamples=resamples, seed=seed)
    low, high = np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(np.mean(a - b)), float(low), float(high), level, "paired bootstrap", a.size)


def seed_interval(differences: Scores, level: float = 0.95) -> Interval:
    """Mean of per-seed paired differences d_1..d_n with the Student-t interval
    mean +- t_{(1+level)/2, n-1} * s / sqrt(n), s the sample standard deviation (ddof = 1).
    One seed gives (-inf, +inf): no verdict can rest on a single seed."""
    _check_level(level)
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"differences must be a 1-D array, got shape {values.shape}")
    if values.size == 0:
        raise ValueError("differences is empty: seed_interval needs at least one per-seed difference")
    if not np.isfinite(values).all():
        raise ValueError("differences contains NaN or inf")
    n = values.size
    mean = float(values.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, level, "seed t-interval", n)
    half = float(scipy_stats.t.ppf((1.0 + level) / 2.0, df=n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, level, "seed t-interval", n)


def mcnemar_exact(correct_a: Scores, correct_b: Scores) -> dict[str, float | int]:
    """Exact McNemar test on 0/1 correctness of two classifiers over the same images.

    b = #(A right, B wrong), c = #(A wrong, B right); two-sided
    p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2)), and p = 1 when there are no discordant images."""
    a, b_scores = _paired_arrays(correct_a, correct_b, ("correct_a", "correct_b"))
    for name, values in (("correct_a", a), ("correct_b", b_scores)):
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError(f"{name} must hold 0/1 (or boolean) correctness values")
    right_a, right_b = a.astype(bool), b_scores.astype(bool)
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    p_value = 1.0 if b + c == 0 else min(1.0, 2.0 * float(scipy_stats.binom.cdf(min(b, c), b + c, 0.5)))
    return {"b": b, "c": c, "n": int(a.size), "p_value": p_value}


def _check_margin(margin: float) -> None:
    if not (margin >= 0.0 and math.isfinite(margin)):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")


def verdict(interval: Interval, *, margin: float = 0.0) -> str:
    """Verdict on the claim "A beats B by more than `margin`", given an interval of A - B.

    * "holds" when low > margin (the whole interval lies above the margin);
    * "does not hold" when high <= margin (the whole interval lies at or below it; with margin = 0, B is at
      least as good as A);
    * "cannot tell at this scale" otherwise, including any interval with low <= margin < high.

    An interval containing zero never yields "holds", for either A - B or B - A."""
    _check_margin(margin)
    if interval.low > margin:
        return HOLDS
    if interval.high <= margin:
        return DOES_NOT_HOLD
    return CANNOT_TELL


def tie_verdict(interval: Interval, *, margin: float) -> str:
    """Verdict on the claim "A and B agree within +-margin", given an interval of A - B.

    * "holds" when -margin <= low and high <= margin (the interval lies inside the band);
    * "does not hold" when low > margin or high < -margin (the interval lies entirely outside it);
    * "cannot tell at this scale" otherwise (the interval straddles an edge of the band)."""
    _check_margin(margin)
    if -margin <= interval.low and interval.high <= margin:
        return HOLDS
    if interval.low > margin or interval.high < -margin:
        return DOES_NOT_HOLD
    return CANNOT_TELL


def _difference(pairwise: Mapping[tuple[str, str], Interval], first: str, second: str) -> Interval:
    """Interval of first - second, read from either key order."""
    if (first, second) in pairwise:
        return pairwise[(first, second)]
    if (second, first) in pairwise:
        return pairwise[(second, first)].negated()
    raise ValueError(f"pairwise has no interval for ({first!r}, {second!r}) in either order")


def rank_with_ties(
    estimates: Mapping[str, float], pairwise: Mapping[tuple[str, str], Interval]
) -> list[list[str]]:
    """Tiers of encoders, best first; `pairwise[(a, b)]` is an interval of a - b (either key order works).

    Encoders are sorted by estimate (descending, then by name). Each one in turn joins a new tier if its
    interval against every encoder already placed lies strictly below zero (placed - it has low > 0);
    otherwise the earliest tier holding an encoder it is not separated from, and every tier after that
    one, merge with it into one tier. Hence two encoders sit in different tiers only if their paired
    interval excludes zero in the direction of the ranking; ties are never split, even when not transitive.
    """
    if not estimates:
        raise ValueError("estimates is empty: nothing to rank")
    order = sorted(estimates, key=lambda name: (-float(estimates[name]), name))
    tiers: list[list[str]] = []
    for name in order:
        joined = next(
            (
                index
                for index, tier in enumerate(tiers)
                if any(_difference(pairwise, member, name).low <= 0.0 for member in tier)
            ),
            None,
        )
        if joined is None:
            tiers.append([name])
        else:
            merged = [member for tier in tiers[joined:] for member in tier] + [name]
            tiers = tiers[:joined] + [merged]
    return tiers
