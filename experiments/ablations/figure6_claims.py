"""Figure 6 verdicts from per-item scores: paired comparisons of the runs on the shared held-out questions
(understanding, 0/1 per question) and the shared generation prompts (0/1 per prompt, the same sampling seeds for
every run), each item's score the mean over the last `last` evaluations of its run.

Claims (the paper says yes to all three):
1. unified training keeps understanding: unified - und-only is not below -tolerance;
2. understanding supervision boosts generation: unified - gen-only > 0;
3. the gain needs the shared encoder: decoupled - unified < 0 on generation.
The synergy holds when all three hold, does not hold when any does not hold, and cannot be told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.ablations.config import Figure6Endpoints
from experiments.ablations.paired import INVERTED, combined, interval_of, paired_difference
from probe.stats import verdict

PER_ITEM = {"understanding": "qa_correct", "generation": "gen_correct"}
Items = Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]]  # run -> metric -> seed -> score per item
COMPARISONS = (
    ("understanding_kept", "unified", "und-only", "understanding", "kept"),
    ("generation_gain", "unified", "gen-only", "generation", "gain"),
    ("decoupled_loses_generation", "decoupled", "unified", "generation", "loss"),
    ("decoupled_vs_unified_understanding", "decoupled", "unified", "understanding", None),
    ("decoupled_vs_gen_only_generation", "decoupled", "gen-only", "generation", None),
)
CLAIMS = ("understanding_kept", "generation_gain", "decoupled_loses_generation")


def item_scores(rows: Sequence[Mapping[str, Any]], metric: str, last: int) -> list[float]:
    """Each item's score averaged over the last `last` evaluation rows of one run and seed."""
    key = PER_ITEM[metric]
    return np.mean([row[key] for row in rows[-last:]], axis=0).tolist()


def per_item(runs: Mapping[str, Mapping[int, Mapping[int, Mapping[str, Any]]]], metrics: Mapping[str, Sequence[str]],
             last: int) -> dict[str, dict[str, dict[int, list[float]]]]:
    """run -> metric -> seed -> per-item scores, from run -> seed -> iteration -> evaluation row (a metric whose
    rows keep no per-item scores, e.g. public benchmarks, is left out)."""
    out: dict[str, dict[str, dict[int, list[float]]]] = {}
    for name, seeds in runs.items():
        for metric in metrics[name]:
            if not all(PER_ITEM[metric] in row for points in seeds.values() for row in points.values()):
                continue
            out.setdefault(name, {})[metric] = {
                seed: item_scores([points[p] for p in sorted(points)], metric, last) for seed, points in seeds.items()}
    return out


def synergy_claims(items: Items, endpoints: Figure6Endpoints) -> dict[str, Any]:
    """The paired comparisons, the three claims and the synergy verdict (None entries where a run is missing)."""
    comparisons: dict[str, dict[str, Any] | None] = {}
    for key, a, b, metric, claim in COMPARISONS:
        if metric not in items.get(a, {}) or metric not in items.get(b, {}):
            comparisons[key] = None
            continue
        entry = {"a": a, "b": b, "metric": metric,
                 **paired_difference(items[a][metric], items[b][metric], level=endpoints.level,
                                     resamples=endpoints.bootstrap)}
        interval = interval_of(entry)
        if claim == "kept":  # not worse by more than the tolerance: the negation of "und-only wins by > tolerance"
            entry["verdict"] = INVERTED[verdict(interval.negated(), margin=endpoints.tolerance)]
        elif claim == "gain":
            entry["verdict"] = verdict(interval)
        elif claim == "loss":
            entry["verdict"] = verdict(interval.negated())
        comparisons[key] = entry
    parts = [comparisons[k]["verdict"] for k in CLAIMS if comparisons[k] is not None]
    synergy = combined(parts) if len(parts) == len(CLAIMS) else None
    return {"comparisons": comparisons, **{k: None if comparisons[k] is None else comparisons[k]["verdict"]
                                           for k in CLAIMS},
            "synergy": synergy, "synergy_shows": synergy == "holds", "tolerance": endpoints.tolerance}
