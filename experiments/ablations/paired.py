"""Paired comparisons of ablation runs scored on the same held-out items, with the statistics of `probe.stats` only.

Per seed, two runs scored on the same questions (or prompts) give a paired bootstrap interval of their difference.
Across seeds the verdicts use the Student-t interval of the per-seed differences, so the noise is the variance of
training seeds, not of items counted twice; with one seed the bootstrap interval is used and the comparison is
marked exploratory (it cannot see seed variance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from probe.stats import CANNOT_TELL, DOES_NOT_HOLD, HOLDS, Interval, paired_bootstrap, seed_interval

PerSeed = Mapping[int, Sequence[float]]  # seed -> one score per item, in the same item order for every run
INVERTED = {HOLDS: DOES_NOT_HOLD, DOES_NOT_HOLD: HOLDS, CANNOT_TELL: CANNOT_TELL}


def paired_difference(a: PerSeed, b: PerSeed, *, level: float = 0.95, resamples: int = 2000,
                      keep: Sequence[bool] | None = None) -> dict[str, Any]:
    """mean(a) - mean(b) on the same items, seed by seed: each seed's paired bootstrap interval, and `interval`,
    the one verdicts use (Student-t over the per-seed differences; the bootstrap one for a single seed).
    `keep` selects the items compared (e.g. the primary question kinds)."""
    if sorted(a) != sorted(b) or not a:
        raise ValueError(f"paired runs need the same seeds; got {sorted(a)} and {sorted(b)}")
    mask = None if keep is None else np.asarray(keep, dtype=bool)
    per_seed, means = [], []
    for seed in sorted(a):
        first, second = np.asarray(a[seed], dtype=float), np.asarray(b[seed], dtype=float)
        if mask is not None:
            first, second = first[mask], second[mask]
        per_seed.append(paired_bootstrap(first, second, resamples=resamples, level=level, seed=seed))
        means.append(float(first.mean() - second.mean()))
    decisive = per_seed[0] if len(per_seed) == 1 else seed_interval(means, level)
    return {"interval": decisive.to_dict(), "per_seed": [i.to_dict() for i in per_seed], "differences": means,
            "seeds": sorted(a), "exploratory": len(per_seed) == 1}


def interval_of(entry: Mapping[str, Any]) -> Interval:
    return Interval(**entry["interval"])


def seed_means(scores: PerSeed, keep: Sequence[bool] | None = None) -> dict[str, Any]:
    """Mean score per seed (over the kept items) and their mean."""
    mask = None if keep is None else np.asarray(keep, dtype=bool)
    values = [float(np.asarray(scores[s], dtype=float)[mask].mean() if mask is not None else np.mean(scores[s]))
              for s in sorted(scores)]
    return {"mean": float(np.mean(values)), "per_seed": values}


def combined(verdicts: Sequence[str]) -> str:
    """A claim made of parts: holds when every part holds, does not hold when any part does not hold."""
    if any(v == DOES_NOT_HOLD for v in verdicts):
        return DOES_NOT_HOLD
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else CANNOT_TELL


def yes_ratio_flags(yes_ratios: Mapping[str, Mapping[int, float | None]], bounds: tuple[float, float]
                    ) -> list[dict[str, Any]]:
    """Runs (label, seed) whose share of "yes" answers lies outside `bounds`: they have not left the answer prior
    (always "yes" scores POPE F1 66.7 on a balanced set, always "no" 0)."""
    low, high = bounds
    flags = []
    for label, seeds in yes_ratios.items():
        for seed, ratio in sorted(seeds.items()):
            if ratio is not None and not low <= ratio <= high:
                flags.append({"run": label, "seed": seed, "yes_ratio": ratio,
                              "reason": "almost always answers yes" if ratio > high else "almost always answers no"})
    return flags


def describe(entry: Mapping[str, Any], scale: float = 100.0) -> str:
    """E.g. "+3.2 [+1.0, +5.4] (t-interval over 3 seeds)"."""
    interval = interval_of(entry)
    how = ("paired bootstrap, 1 seed: exploratory" if entry["exploratory"] else
           f"t-interval over {len(entry['seeds'])} seeds")
    return f"{interval.format(scale)} ({how})"
