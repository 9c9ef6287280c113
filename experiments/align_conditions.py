"""Alignment per layer and mask ratio behind `harmon align --layers/--mask-ratio`: every layer (and ratio) of
every encoder against the reference encoder's final, unmasked features on the same images.

Writes `alignment.json` (n and k beside every value), `report.md` (one row per encoder, layer and ratio) and line
plots `alignment-layers-<metric>.png/.pdf` (with --layers) and `alignment-mask-ratio-<metric>.png/.pdf` (with
--mask-ratio).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.align import TITLES, _cell, _finite
from harmon.utils.files import atomic_write, write_json
from probe.alignment import DEFAULT_CKNNA_FORM, against_reference
from probe.conditions import Conditions
from probe.line_plots import plot_lines
from probe.study import EncoderSpec, ProbeStudyConfig, StudyData, _extract, extract_split_layers, probe_inputs

Condition = tuple[str, int | None, float]  # (encoder, layer, mask ratio)


def _label(condition: Condition) -> str:
    encoder, layer, ratio = condition
    return f"{encoder} | layer {'final' if layer is None else layer} | r {ratio:g}"


def condition_alignment_report(results: Mapping[str, Any]) -> str:
    metrics = list(results["metrics"])
    lines = ["# Representation alignment by layer and mask ratio\n",
             f"Every layer and mask ratio of every encoder against the final, unmasked features of "
             f"`{results['reference']}`: {results['n']} images, k = {results['k']}, CKNNA in the "
             f"{results['cknna_form']} form. Mask ratio: the fraction of image tokens hidden from the encoder.\n",
             "| encoder | layer | mask ratio | " + " | ".join(TITLES[m] for m in metrics) + " |",
             "|---" * (len(metrics) + 3) + "|"]
    for row in results["scores"]:
        layer = "final" if row["layer"] is None else row["layer"]
        lines.append(f"| {row['encoder']} | {layer} | {row['mask_ratio']:g} | "
                     + " | ".join(_cell(row[m]) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def _series(scores: Sequence[Mapping[str, Any]], metric: str, x: str, several: str, name: str) -> dict[str, list]:
    series: dict[str, list] = {}
    for encoder in dict.fromkeys(row["encoder"] for row in scores):
        rows = [row for row in scores if row["encoder"] == encoder]
        split = len({row[several] for row in rows}) > 1
        for row in rows:
            series.setdefault(f"{encoder} ({name} {row[several]:g})" if split else encoder, []).append(
                (row[x], row[metric]))
    return series


def run_condition_alignment(reference: str, reference_features: np.ndarray,
                            features: Mapping[Condition, np.ndarray], conditions: Conditions, out: Path, k: int,
                            metrics: Sequence[str], info: Mapping[str, Any] | None = None,
                            form: str = DEFAULT_CKNNA_FORM) -> dict[str, Any]:
    """Score every condition's [n, D] features against the reference's [n, D]; write the files; return them."""
    labelled = {_label(condition): x for condition, x in features.items()}
    if reference in labelled:
        raise ValueError(f"--reference {reference!r} clashes with a condition label; rename the encoder")
    table = against_reference({reference: reference_features, **labelled}, reference, metrics, k, form)
    scores = [{"encoder": condition[0], "layer": condition[1], "mask_ratio": condition[2],
               **{metric: _finite(table[metric]["values"][_label(condition)]) for metric in metrics}}
              for condition in features]
    results: dict[str, Any] = {
        "n": len(reference_features), "k": k, "cknna_form": form, "reference": reference,
        "encoders": [reference, *dict.fromkeys(condition[0] for condition in features)],
        "conditions": {"layers": conditions.layers, "mask_ratios": list(conditions.mask_ratios)},
        "metrics": {metric: {key: value for key, value in block.items() if key != "values"}
                    for metric, block in table.items()},
        "config": dict(info or {}), "scores": scores,
    }
    out = Path(out)
    write_json(out / "alignment.json", results)
    for metric in metrics:
        title = f"{TITLES[metric]} against {reference} (n = {results['n']})"
        if conditions.layers is not None:
            plot_lines(_series(scores, metric, "layer", "mask_ratio", "r ="), out / f"alignment-layers-{metric}",
                       "layer (block index)", TITLES[metric], title, integer_x=True)
        if conditions.mask_ratios:
            plot_lines(_series(scores, metric, "mask_ratio", "layer", "layer"), out / f"alignment-mask-ratio-{metric}",
                       "mask ratio (fraction of tokens hidden)", TITLES[metric], title)
    atomic_write(out / "report.md", condition_alignment_report(results))
    return results


def align_conditions(config: ProbeStudyConfig, study: StudyData, reference: str, swept: Sequence[EncoderSpec],
                     conditions: Conditions, out: Path, k: int, metrics: Sequence[str]) -> dict[str, Any]:
    """Extract the reference's final features and every layer and ratio of the `swept` encoders (each layer set
    in one pass) on the study's val images, then score them (`run_condition_alignment`)."""
    spec = next(s for s in config.encoders if s.name == reference)
    extracted = _extract(spec.build(config.seed), study, config, "val")
    reference_features = probe_inputs(extracted, "pooled")
    described = {reference: {"encoder": reference, "weights_digest": extracted.manifest["key"]["weights"],
                             "pooling": extracted.manifest["key"]["pooling"], "cache": str(extracted.path)}}
    features: dict[Condition, np.ndarray] = {}
    for spec in swept:
        encoder = spec.build(config.seed)
        layers = conditions.layers_of(encoder, spec.name, None)
        described[spec.title] = {"encoder": spec.name, "weights_digest": encoder.weights_digest(),
                                 "pooling": encoder.default_pooling, "num_layers": encoder.num_layers()}
        for ratio in conditions.ratios:
            caches = extract_split_layers(encoder, study, config, "val", layers, ratio)
            features.update({(spec.title, layer, ratio): probe_inputs(cache, "pooled")
                             for layer, cache in zip(layers, caches, strict=True)})
    positions = None if study.val_subset is None else study.val_subset.tolist()
    info = {"data": study.name, "split": "val", "seed": config.seed, "encoders": described, "val_positions": positions}
    return run_condition_alignment(reference, reference_features, features, conditions, out, k, metrics, info)
