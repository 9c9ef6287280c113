"""`harmon align`: the typer command function (heavy imports stay inside it so that the CLI starts fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from experiments.probe_cli import (
    DEFAULT_WORKERS,
    BatchSize,
    Cache,
    Data,
    Device,
    EncoderOptions,
    Encoders,
    MaskRatios,
    Seed,
    Weights,
    Workers,
    _run,
    _specs,
    console,
)

DEFAULT_MAX_IMAGES = 1024  # the paper's main setting


def pick_val_images(count: int, available: int, seed: int) -> Any:
    """Sorted positions of `count` val images drawn with `seed`; None (every image) when count >= available."""
    import numpy as np

    if count < 1:
        raise ValueError(f"--max-images {count}: use at least 1 image")
    if count >= available:
        return None
    return np.sort(np.random.default_rng(seed).choice(available, count, replace=False))


def align(
    encoder: Encoders,
    data: Data,
    reference: Annotated[str | None, typer.Option(help="Encoder (one of --encoder) that every other encoder is "
                                                       "also scored against (default: none).")] = None,
    k: Annotated[int, typer.Option("--k", help="Neighbours per image for mutual k-NN and CKNNA (1 <= k < the "
                                               "number of images).")] = 10,
    max_images: Annotated[int, typer.Option(help="Val images scored (a seeded random subset when the split is "
                                                 "larger; at most 20000 for the k-NN metrics).")] = DEFAULT_MAX_IMAGES,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="Metric to compute (repeatable): mutual_knn, "
                                                                      "cknna, debiased_cka, linear_cka (default: "
                                                                      "all four).")] = None,
    weights: Weights = None,
    encoder_options: EncoderOptions = None,
    layers: Annotated[str | None, typer.Option(help="Score several blocks of every encoder but the reference, from "
                                                    "one extraction pass, against the reference's final features: "
                                                    "'all' or comma-separated indices; needs --reference.")] = None,
    mask_ratio: MaskRatios = None,
    batch_size: BatchSize = 64,
    workers: Workers = DEFAULT_WORKERS,
    device: Device = "auto",
    cache: Cache = None,
    seed: Seed = 0,
    out: Annotated[Path, typer.Option(help="Run folder: alignment.json, report.md, alignment-<metric>.png/.pdf.")] = Path(
        "runs/align"),
) -> None:
    """Mutual k-NN, CKNNA (reference form), debiased and linear CKA between encoders' pooled val features (with
    --layers / --mask-ratio: each layer and ratio against the reference)."""

    def action() -> dict[str, Any]:
        from experiments.align import run_alignment
        from probe.alignment import KNN_METRICS, METRICS, check_knn_size
        from probe.conditions import Conditions
        from probe.study import ProbeStudyConfig, _extract, load_data, probe_inputs

        conditions = Conditions.parse(layers, mask_ratio)
        config = ProbeStudyConfig(_specs(encoder, weights, encoder_options), data, str(out),
                                  cache=str(cache) if cache else None, batch_size=batch_size, workers=workers,
                                  device=device, seed=seed)
        if reference is not None and reference not in encoder:
            raise ValueError(f"--reference {reference!r} is not among --encoder {encoder}; pass one of them")
        swept = [spec for spec in config.encoders if spec.name != reference]
        if conditions != Conditions() and (reference is None or not swept):
            raise ValueError("--layers / --mask-ratio score encoders against --reference: pass --reference NAME and "
                             "at least one other --encoder")
        if conditions.mask_ratios:
            from probe.condition_study import check_maskable

            check_maskable(swept, conditions)
        metrics = tuple(metric or METRICS)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"--metric {unknown[0]!r} is not a metric; use one of {', '.join(METRICS)}")
        study = load_data(data, seed=seed)
        study.val_subset = pick_val_images(max_images, len(study.val), seed)
        count = len(study.labels("val"))
        if set(metrics) & set(KNN_METRICS):
            check_knn_size(count, k)  # before any extraction
        if conditions != Conditions():
            from experiments.align_conditions import align_conditions

            return align_conditions(config, study, reference, swept, conditions, out, k, metrics)
        features, described = {}, {}
        for spec in config.encoders:
            extracted = _extract(spec.build(seed), study, config, "val")
            features[spec.title] = probe_inputs(extracted, "pooled")
            described[spec.title] = {"encoder": spec.name, "weights_digest": extracted.manifest["key"]["weights"],
                                     "pooling": extracted.manifest["key"]["pooling"],
                                     "dim": int(features[spec.title].shape[1]), "cache": str(extracted.path)}
        positions = None if study.val_subset is None else study.val_subset.tolist()
        info = {"data": study.name, "split": "val", "seed": seed, "encoders": described, "val_positions": positions}
        return run_alignment(features, out, k, reference, count, metrics, info=info)

    results = _run(action)
    plots = "line plots" if "scores" in results else "heatmaps"
    console.print(f"Scored {len(results['encoders'])} encoders on {results['n']} images (k = {results['k']}); "
                  f"wrote alignment.json, report.md and {plots} to [bold]{out}/[/]")
