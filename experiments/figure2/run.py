"""The offline Figure 2 study end to end: pretrain every seed's tiny encoders (cached), measure every arm on every
task with the same probes (one process per arm, on every core), compute intervals, the gate and the verdicts,
Grad-CAM++ of the shape probes, and write results.json, results.csv, report.md and the plots."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from experiments.figure2 import analysis
from experiments.figure2.arms import Arm, Recipes, build_arms, pretrain_all, recipes
from experiments.figure2.config import ENCODERS, TASKS, Figure2Config
from experiments.figure2.data import load_sets
from experiments.figure2.measure import measure_arm
from experiments.figure2.report import write_outputs
from probe.cam import compute_cams, overlay, to_display
from probe.localisation import cam_energy_in_mask, pointing_game
from probe.study import pick_images


def _measure_job(config: Figure2Config, recipe: Recipes, cache: str, seed: int, label: str) -> tuple[Any, Any]:
    """Measure one arm in this process (one thread)."""
    torch.set_num_threads(1)
    root = Path(cache)
    arm = build_arms(recipe, root / "pretrain", seed)[label]
    sets = load_sets(config, root / "probe-sets")
    return measure_arm(arm.encoder, arm.pooling, sets, config, root / "features", seed)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def measure_all(config: Figure2Config, all_recipes: dict[int, Recipes], labels: list[str], cache: Path, workers: int,
                console: Console) -> tuple[analysis.Scores, dict[str, Any]]:
    """Scores of every (seed, arm), and the shape heads of the first seed's arms."""
    jobs = [(seed, label) for seed in all_recipes for label in labels]
    scores: analysis.Scores = {seed: {} for seed in all_recipes}
    heads: dict[str, Any] = {}
    first = min(all_recipes)
    with _progress(console) as progress:
        bar = progress.add_task("probing every arm on every task", total=len(jobs))
        if workers <= 1:
            outcomes = []
            for seed, label in jobs:
                outcomes.append(_measure_job(config, all_recipes[seed], str(cache), seed, label))
                progress.advance(bar)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_measure_job, config, all_recipes[s], str(cache), s, label) for s, label in jobs]
                outcomes = []
                for future in futures:
                    outcomes.append(future.result())
                    progress.advance(bar)
    for (seed, label), (results, head) in zip(jobs, outcomes, strict=True):
        scores[seed][label] = results
        if seed == first:
            heads[label] = head
    return scores, heads


def localise(arms: dict[str, Arm], heads: dict[str, Any], config: Figure2Config, cache: Path) -> dict[str, Any]:
    """Grad-CAM++ of each trained arm's (and pixels') shape probe for the true class on val images of the single
    set, scored against the object's exact mask; returns scores, overlays, shown images and captions."""
    val = load_sets(config, cache / "probe-sets")["single"]["val"]
    labels = np.asarray(val.dataset.targets)
    classes = val.dataset.classes
    chosen = pick_images(labels, min(len(labels), config.cam_per_class * len(classes)))
    labels_shown = [int(labels[i]) for i in chosen]
    masks = [val.masks[int(i)] for i in chosen]
    some = next(iter(arms.values())).encoder.preprocess
    pixels = torch.stack([some(val.dataset[int(i)][0]) for i in chosen])
    shown = to_display(pixels[: config.grid_images], some)
    scores, rows = {}, {}
    for label in [*ENCODERS, "pixels"]:
        arm = arms[label]
        maps = compute_cams(arm.encoder, heads[label], pixels, labels_shown, pooling=arm.pooling)
        scores[label] = {
            "energy_in_mask": 100 * float(np.mean([cam_energy_in_mask(c, m) for c, m in zip(maps, masks, strict=True)])),
            "pointing_game": 100 * float(np.mean([pointing_game(c, m) for c, m in zip(maps, masks, strict=True)])),
            "constant_maps": int(sum(float(c.max() - c.min()) < 1e-6 for c in maps)), "images": len(maps)}
        rows[label] = np.stack([overlay(image, cam) for image, cam in zip(shown, maps[: len(shown)], strict=True)])
    area = 100 * float(np.mean([m.mean() for m in masks]))
    return {"scores": scores, "mask_area_percent": area, "rows": rows, "images": shown,
            "captions": [classes[t] for t in labels_shown[: config.grid_images]]}


def run_figure2(config: Figure2Config, out_dir: str | os.PathLike, cache_dir: str | os.PathLike, seeds: int = 1,
                workers: int | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the study for seeds 0..seeds-1 and write its outputs to `out_dir`; returns the results dict."""
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: give at least 1 (3 or more for verdicts that include seed variance)")
    console = console or Console()
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    out, cache = Path(out_dir), Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        all_recipes = {seed: recipes(config, seed) for seed in range(seeds)}
        pretrain_seconds = pretrain_all(list(all_recipes.values()), cache / "pretrain", workers, console)
        timings["pretraining_s"] = time.perf_counter() - start
        start = time.perf_counter()
        load_sets(config, cache / "probe-sets")
        timings["data_s"] = time.perf_counter() - start
        arms = build_arms(all_recipes[0], cache / "pretrain", 0)
        start = time.perf_counter()
        scores, heads = measure_all(config, all_recipes, list(arms), cache, workers, console)
        timings["probe_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cams = localise(arms, heads, config, cache)
        timings["cam_s"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    gains = analysis.twin_gains(scores, config.endpoints, list(TASKS))
    steps = {"MAR": config.pretraining.steps["MAR"], **{f"MAR@{n}": n for n in config.pretraining.mar_doses}}
    results = {
        "name": config.name, "seeds": seeds, "workers": workers, "config": config,
        "arms": {label: {"encoder": arm.encoder.describe(), "twin_of": arm.twin_of, "pooling": arm.pooling
                         or arm.encoder.default_pooling,
                         "pretraining": None if arm.record is None else
                         {k: v for k, v in arm.record.items() if k != "curves"}}
                 for label, arm in arms.items()},
        "summary": analysis.summarise_arms(scores, config.endpoints),
        "twin_gains": gains,
        "claims": analysis.claims(scores, gains, config.endpoints),
        "dose": analysis.dose_check(gains, config.endpoints, steps),
        "localisation": {k: v for k, v in cams.items() if k in ("scores", "mask_area_percent")},
        "pretraining_seconds": pretrain_seconds, "timings": timings,
        "curves": {label: arm.record["curves"]["loss"] for label, arm in arms.items() if arm.record},
    }
    write_outputs(results, cams, out)
    return results
