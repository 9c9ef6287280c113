"""From per-image scores to intervals, claims and the gate, with the statistics of `probe.stats` only.

Per seed, two arms scored on the same validation images give a paired bootstrap interval of their difference.
Across seeds the verdicts use the Student-t interval of the per-seed paired differences (pretraining and probe
seed together), which is the variance that dominates small studies; with one seed the bootstrap interval is used
and the run is marked exploratory (it cannot see seed variance).

The gate: on each semantic task, MAR must beat its random-init twin beyond the interval (the decisive probe). Where
it does not, the report says the mechanism cannot be tested there and ranks no encoder on that task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.figure2.config import ENCODERS, Endpoints
from probe.stats import (
    CANNOT_TELL,
    HOLDS,
    Interval,
    mcnemar_exact,
    paired_bootstrap,
    rank_with_ties,
    seed_interval,
    tie_verdict,
    verdict,
)

Scores = dict[int, dict[str, dict[str, dict[str, dict[str, Any]]]]]  # seed -> arm -> task -> probe -> result
SCALE = {"accuracy": 100.0, "r2": 100.0, "psnr": 1.0}  # shown as points of accuracy / R^2 x 100 / dB
GATED = "not ranked: the gate is closed on this task"


def probe_of(task_results: dict[str, Any], decisive: str) -> str:
    """The decisive probe for classification tasks; the only probe of regression / reconstruction tasks."""
    return decisive if decisive in task_results else next(iter(task_results))


def difference(scores: Scores, a: str, b: str, task: str, probe: str, endpoints: Endpoints) -> dict[str, Any]:
    """a - b on the same images: per-seed bootstrap intervals, and the interval the verdict uses."""
    per_seed, means = [], []
    for seed in sorted(scores):
        first, second = scores[seed][a][task][probe]["scores"], scores[seed][b][task][probe]["scores"]
        per_seed.append(paired_bootstrap(first, second, resamples=endpoints.bootstrap, level=endpoints.level,
                                         seed=seed))
        means.append(float(np.mean(first) - np.mean(second)))
    decisive = per_seed[0] if len(per_seed) == 1 else seed_interval(means, endpoints.level)
    kind = scores[min(scores)][a][task][probe]["kind"]
    entry = {"a": a, "b": b, "task": task, "probe": probe, "kind": kind, "interval": decisive.to_dict(),
             "per_seed": [i.to_dict() for i in per_seed], "exploratory": len(per_seed) == 1}
    if kind == "accuracy":
        entry["mcnemar"] = [mcnemar_exact(scores[s][a][task][probe]["scores"], scores[s][b][task][probe]["scores"])
                            for s in sorted(scores)]
    return entry


def interval_of(entry: dict[str, Any]) -> Interval:
    return Interval(**entry["interval"])


def summarise_arms(scores: Scores, endpoints: Endpoints) -> dict[str, dict[str, dict[str, Any]]]:
    """arm -> task -> probe -> mean over seeds, per-seed means, the t-interval of the mean, the input width."""
    seeds = sorted(scores)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for arm, tasks in scores[seeds[0]].items():
        for task, probes in tasks.items():
            for probe, result in probes.items():
                values = [float(np.mean(scores[s][arm][task][probe]["scores"])) for s in seeds]
                spread = seed_interval(values, endpoints.level)
                table.setdefault(arm, {}).setdefault(task, {})[probe] = {
                    "mean": float(np.mean(values)), "per_seed": values, "interval": spread.to_dict(),
                    "kind": result["kind"], "input_dim": result["input_dim"], "images": len(result["scores"])}
    return table


def twin_gains(scores: Scores, endpoints: Endpoints, tasks: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """encoder -> task -> probe -> the difference trained - random twin (every probe of every task)."""
    first = scores[min(scores)]
    arms = [arm for arm in first if arm in ENCODERS or arm.startswith("MAR@")]
    gains: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in arms:
        twin = f"{arm.split('@')[0]} (random)"
        for task in tasks:
            for probe in first[arm][task]:
                gains.setdefault(arm, {}).setdefault(task, {})[probe] = difference(scores, arm, twin, task, probe,
                                                                                   endpoints)
    return gains


def claims(scores: Scores, gains: dict[str, Any], endpoints: Endpoints) -> dict[str, Any]:
    """The gate per semantic task, the paper's claims on semantic tasks (only where the gate is open), the control
    predictions on low-level tasks, and ties-aware rankings. Every verdict comes from an interval."""
    gate, semantic, controls, rankings = {}, [], [], {}
    for task in endpoints.semantic:
        probe = probe_of(gains["MAR"][task], endpoints.probe)
        gate[task] = {"probe": probe, "interval": gains["MAR"][task][probe]["interval"],
                      "verdict": verdict(interval_of(gains["MAR"][task][probe])),
                      "exploratory": gains["MAR"][task][probe]["exploratory"]}
        gate[task]["open"] = gate[task]["verdict"] == HOLDS
        for claim, a, b, kind in (("MAR > VAE", "MAR", "VAE", "order"), ("MAR > VQGAN", "MAR", "VQGAN", "order"),
                                  ("VAE ≈ VQGAN", "VAE", "VQGAN", "tie"), ("MAR > MAE", "MAR", "MAE", "order")):
            entry = difference(scores, a, b, task, probe, endpoints)
            interval = interval_of(entry)
            if not gate[task]["open"]:
                outcome = GATED
            elif kind == "tie":
                outcome = tie_verdict(interval, margin=endpoints.tie_margin)
            else:
                outcome = verdict(interval)
            semantic.append({"claim": claim, **entry, "verdict": outcome,
                             "verdict_ignoring_gate": tie_verdict(interval, margin=endpoints.tie_margin)
                             if kind == "tie" else verdict(interval)})
        if gate[task]["open"]:
            rankings[task] = rank_arms(scores, task, probe, endpoints)
    for task in endpoints.controls:
        probe = probe_of(scores[min(scores)]["MAR"][task], endpoints.probe)
        for claim, a, b in (("VAE > MAR", "VAE", "MAR"), ("VQGAN > MAR", "VQGAN", "MAR")):
            entry = difference(scores, a, b, task, probe, endpoints)
            controls.append({"claim": claim, **entry, "verdict": verdict(interval_of(entry))})
    return {"gate": gate, "semantic": semantic, "controls": controls, "rankings": rankings,
            "gate_open_tasks": [t for t, g in gate.items() if g["open"]]}


def rank_arms(scores: Scores, task: str, probe: str, endpoints: Endpoints) -> list[list[str]]:
    """Tiers of the trained encoders and pixels; two sit in different tiers only when their interval excludes 0."""
    arms = [*ENCODERS, "pixels"]
    seeds = sorted(scores)
    estimates = {arm: float(np.mean([np.mean(scores[s][arm][task][probe]["scores"]) for s in seeds])) for arm in arms}
    pairwise = {(a, b): interval_of(difference(scores, a, b, task, probe, endpoints))
                for i, a in enumerate(arms) for b in arms[i + 1 :]}
    return rank_with_ties(estimates, pairwise)


def dose_check(gains: dict[str, Any], endpoints: Endpoints, steps: dict[str, int]) -> dict[str, Any] | None:
    """MAR's twin gain at each pretraining length on the semantic tasks, and whether it grows from the shortest to
    the longest length (difference of the two gains' estimates against the wider of their intervals)."""
    arms = sorted((arm for arm in gains if arm == "MAR" or arm.startswith("MAR@")), key=lambda a: steps[a])
    if len(arms) < 2:
        return None
    out = {}
    for task in endpoints.semantic:
        probe = probe_of(gains["MAR"][task], endpoints.probe)
        series = [{"arm": arm, "steps": steps[arm], "interval": gains[arm][task][probe]["interval"]} for arm in arms]
        low, high = series[0]["interval"], series[-1]["interval"]
        grows = high["low"] > low["high"]
        shrinks = high["high"] < low["low"]
        out[task] = {"series": series, "probe": probe,
                     "verdict": HOLDS if grows else ("does not hold" if shrinks else CANNOT_TELL)}
    return out
