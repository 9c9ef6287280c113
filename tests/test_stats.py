"""Paired statistics, checked against scipy, closed forms and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from probe.stats import (
    CANNOT_TELL,
    DOES_NOT_HOLD,
    HOLDS,
    Interval,
    bootstrap_differences,
    mcnemar_exact,
    paired_bootstrap,
    rank_with_ties,
    seed_interval,
    tie_verdict,
    verdict,
)


def interval(low: float, high: float, estimate: float | None = None) -> Interval:
    middle = (low + high) / 2 if estimate is None else estimate
    return Interval(middle, low, high, 0.95, "hand", 10)


# ---------------------------------------------------------------- McNemar


def test_mcnemar_counts_and_p_match_scipy_binomtest() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        a, b = rng.random(n) < 0.7, rng.random(n) < rng.uniform(0.3, 0.9)
        result = mcnemar_exact(a, b)
        assert result["b"] == sum(x and not y for x, y in zip(a, b, strict=True))
        assert result["c"] == sum(y and not x for x, y in zip(a, b, strict=True))
        discordant = result["b"] + result["c"]
        expected = 1.0 if discordant == 0 else scipy_stats.binomtest(result["b"], discordant, 0.5).pvalue
        assert result["p_value"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_hand_cases_are_two_sided() -> None:
    # b = 1, c = 5: p = 2 * (C(6,0) + C(6,1)) / 2**6 = 14 / 64 (one-sided would be 7 / 64).
    a = [0, 0, 0, 0, 0, 1, 1]
    b = [1, 1, 1, 1, 1, 1, 0]
    result = mcnemar_exact(a, b)
    assert (result["b"], result["c"], result["n"]) == (1, 5, 7)
    assert result["p_value"] == pytest.approx(14 / 64)
    # b = 0, c = 5: p = 2 * 0.5**5 = 0.0625.
    assert mcnemar_exact([0] * 5, [1] * 5)["p_value"] == pytest.approx(0.0625)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0  # no discordant pairs
    assert mcnemar_exact([1, 0], [0, 1])["p_value"] == 1.0  # b == c: capped at 1


def test_mcnemar_rejects_non_binary_and_mismatched() -> None:
    with pytest.raises(ValueError, match="correct_a"):
        mcnemar_exact([0.5, 1.0], [1, 0])
    with pytest.raises(ValueError, match="lengths"):
        mcnemar_exact([1, 0, 1], [1, 0])


# ---------------------------------------------------------------- seed t-interval


def test_seed_interval_matches_scipy_t_interval() -> None:
    diffs = np.array([0.012, -0.004, 0.021, 0.009, 0.015])
    for level in (0.9, 0.95, 0.99):
        result = seed_interval(diffs, level=level)
        low, high = scipy_stats.t.interval(
            level, df=len(diffs) - 1, loc=diffs.mean(), scale=scipy_stats.sem(diffs)
        )
        assert (result.low, result.high) == pytest.approx((low, high), rel=1e-12)
        assert result.estimate == pytest.approx(diffs.mean())
        assert result.n == 5 and result.level == level


def test_seed_interval_hand_computation_uses_n_minus_one_dof() -> None:
    # d = [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302652729911275 (table value).
    result = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (result.low, result.high) == pytest.approx((2 - half, 2 + half), rel=1e-9)


def test_seed_interval_single_seed_is_unbounded_and_empty_is_rejected() -> None:
    one = seed_interval([0.05])
    assert one.estimate == 0.05 and one.low == -math.inf and one.high == math.inf
    assert verdict(one) == CANNOT_TELL and tie_verdict(one, margin=0.01) == CANNOT_TELL
    with pytest.raises(ValueError, match="differences"):
        seed_interval([])
    with pytest.raises(ValueError, match="level"):
        seed_interval([1.0, 2.0], level=1.0)


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_constant_difference_gives_zero_width_interval() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(50)
    result = paired_bootstrap(b + 0.25, b, resamples=300)
    assert result.low == pytest.approx(0.25, abs=1e-12) and result.high == pytest.approx(0.25, abs=1e-12)
    assert result.estimate == pytest.approx(0.25) and result.n == 50
    ones = paired_bootstrap([1] * 40, [0] * 40, resamples=100)
    assert (ones.low, ones.estimate, ones.high) == (1.0, 1.0, 1.0)


def test_bootstrap_resamples_both_sides_together() -> None:
    # Identical non-constant vectors: every paired replicate is exactly 0; an unpaired bootstrap would not be.
    a = np.random.default_rng(1).random(80) < 0.5
    result = paired_bootstrap(a, a.copy(), resamples=500)
    assert (result.low, result.estimate, result.high) == (0.0, 0.0, 0.0)


def test_bootstrap_mean_and_standard_error_match_closed_form() -> None:
    rng = np.random.default_rng(2)
    n = 400
    a = rng.random(n) < 0.75
    b = np.where(rng.random(n) < 0.8, a, rng.random(n) < 0.6)
    d = a.astype(float) - b.astype(float)
    replicates = bootstrap_differences(a, b, resamples=4000, seed=5)
    se = math.sqrt(d.var() / n)  # standard error of the mean under resampling: population variance / n
    assert replicates.shape == (4000,)
    assert replicates.mean() == pytest.approx(d.mean(), abs=4 * se / math.sqrt(4000))
    assert replicates.std() == pytest.approx(se, rel=0.06)
    result = paired_bootstrap(a, b, resamples=4000, seed=5)
    z = scipy_stats.norm.ppf(0.975)
    assert result.estimate == pytest.approx(d.mean())
    assert result.low == pytest.approx(d.mean() - z * se, abs=0.25 * se)
    assert result.high == pytest.approx(d.mean() + z * se, abs=0.25 * se)


def test_bootstrap_is_seeded_and_chunking_does_not_change_the_distribution() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(30), rng.random(30)
    first = paired_bootstrap(a, b, resamples=200, seed=7)
    assert first == paired_bootstrap(a, b, resamples=200, seed=7)
    assert first != paired_bootstrap(a, b, resamples=200, seed=8)
    small_chunks = bootstrap_differences(a, b, resamples=2000, seed=7, chunk_values=30 * 3)
    assert small_chunks.mean() == pytest.approx(np.mean(a - b), abs=0.01)
    assert small_chunks.std() == pytest.approx(math.sqrt(np.var(a - b) / 30), rel=0.1)


def test_bootstrap_validation_names_the_argument() -> None:
    with pytest.raises(ValueError, match="lengths"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="correct_a"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="correct_b"):
        paired_bootstrap([1.0, 0.0], [1.0, float("nan")])
    for level in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="level"):
            paired_bootstrap([1, 0], [0, 1], level=level)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap([1, 0], [0, 1], resamples=0)


# ---------------------------------------------------------------- Interval and verdicts


def test_interval_helpers() -> None:
    item = Interval(0.032, 0.010, 0.054, 0.95, "paired bootstrap", 1000)
    assert item.format() == "+3.2 [+1.0, +5.4]"
    assert Interval(-0.5, -0.75, -0.25, 0.9, "x", 3).format(scale=1, digits=2) == "-0.50 [-0.75, -0.25]"
    assert item.excludes_zero and not interval(-0.01, 0.02).excludes_zero
    assert not interval(0.0, 0.02).excludes_zero
    assert item.negated() == Interval(-0.032, -0.054, -0.010, 0.95, "paired bootstrap", 1000)
    assert item.to_dict() == {
        "estimate": 0.032, "low": 0.010, "high": 0.054, "level": 0.95, "method": "paired bootstrap", "n": 1000
    }
    with pytest.raises(ValueError, match="low"):
        Interval(0.0, 1.0, -1.0, 0.95, "x", 1)


def test_verdict_boundaries() -> None:
    assert verdict(interval(1e-9, 0.1)) == HOLDS
    assert verdict(interval(0.0, 0.1)) == CANNOT_TELL  # touches zero: no ordering
    assert verdict(interval(-0.1, 0.1)) == CANNOT_TELL
    assert verdict(interval(-0.1, 0.0)) == DOES_NOT_HOLD
    assert verdict(interval(-0.1, -1e-9)) == DOES_NOT_HOLD
    assert verdict(interval(0.0, 0.0)) == DOES_NOT_HOLD  # exactly equal: A is not better
    assert verdict(interval(-math.inf, math.inf)) == CANNOT_TELL
    # With a margin the claim is A - B > margin.
    assert verdict(interval(0.02, 0.05), margin=0.02) == CANNOT_TELL
    assert verdict(interval(0.021, 0.05), margin=0.02) == HOLDS
    assert verdict(interval(0.005, 0.02), margin=0.02) == DOES_NOT_HOLD
    assert verdict(interval(0.005, 0.021), margin=0.02) == CANNOT_TELL
    with pytest.raises(ValueError, match="margin"):
        verdict(interval(0.0, 1.0), margin=-0.1)


def test_tie_verdict_boundaries() -> None:
    assert tie_verdict(interval(-0.01, 0.01), margin=0.02) == HOLDS
    assert tie_verdict(interval(-0.02, 0.02), margin=0.02) == HOLDS  # closed band
    assert tie_verdict(interval(-0.021, 0.01), margin=0.02) == CANNOT_TELL
    assert tie_verdict(interval(0.01, 0.03), margin=0.02) == CANNOT_TELL
    assert tie_verdict(interval(0.021, 0.05), margin=0.02) == DOES_NOT_HOLD
    assert tie_verdict(interval(-0.05, -0.021), margin=0.02) == DOES_NOT_HOLD
    assert tie_verdict(interval(0.02, 0.05), margin=0.02) == CANNOT_TELL
    assert tie_verdict(interval(-0.01, 0.01), margin=0.0) == CANNOT_TELL
    assert tie_verdict(interval(0.0, 0.0), margin=0.0) == HOLDS
    with pytest.raises(ValueError, match="margin"):
        tie_verdict(interval(0.0, 1.0), margin=math.nan)


def test_interval_containing_zero_never_orders() -> None:
    rng = np.random.default_rng(6)
    for _ in range(200):
        low, high = -rng.random(), rng.random()
        item = interval(low, high)
        for margin in (0.0, 0.01, 0.5):
            assert verdict(item, margin=margin) != HOLDS
            assert verdict(item.negated(), margin=margin) != HOLDS


# ---------------------------------------------------------------- tiers


def test_rank_with_ties_hand_case() -> None:
    estimates = {"mae": 0.80, "dino": 0.79, "random": 0.50, "clip": 0.81}
    pairwise = {
        ("clip", "mae"): interval(-0.01, 0.03),
        ("mae", "dino"): interval(-0.02, 0.04),
        ("dino", "clip"): interval(-0.05, 0.01),  # stored in the other order: clip - dino = [-0.01, 0.05]
        ("clip", "random"): interval(0.25, 0.37),
        ("mae", "random"): interval(0.24, 0.36),
        ("random", "dino"): interval(-0.35, -0.23),
    }
    assert rank_with_ties(estimates, pairwise) == [["clip", "mae", "dino"], ["random"]]
    separated = {**pairwise, ("clip", "mae"): interval(0.005, 0.03), ("dino", "clip"): interval(-0.05, -0.01)}
    assert rank_with_ties(estimates, separated) == [["clip"], ["mae", "dino"], ["random"]]


def test_rank_with_ties_never_splits_a_non_transitive_tie() -> None:
    # a > b is resolved, b ~ c and a ~ c are not: a and c may not land in different tiers, so all merge.
    estimates = {"a": 0.9, "b": 0.8, "c": 0.7}
    pairwise = {
        ("a", "b"): interval(0.01, 0.2), ("b", "c"): interval(-0.05, 0.25), ("a", "c"): interval(-0.01, 0.4)
    }
    assert rank_with_ties(estimates, pairwise) == [["a", "b", "c"]]
    pairwise[("a", "c")] = interval(0.02, 0.4)
    assert rank_with_ties(estimates, pairwise) == [["a"], ["b", "c"]]


def test_rank_with_ties_errors() -> None:
    with pytest.raises(ValueError, match="estimates"):
        rank_with_ties({}, {})
    with pytest.raises(ValueError, match="pairwise"):
        rank_with_ties({"a": 1.0, "b": 0.5}, {})
