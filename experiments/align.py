"""The alignment study behind `harmon align`: every metric for every pair of encoders on the same images.

Writes `alignment.json` (n and k beside every value, the CKNNA form), `alignment-<metric>.png/.pdf` heatmaps and
`report.md` (one table per metric, and the scores against the reference encoder when one is given).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmon.utils.files import atomic_write, write_json
from probe.alignment import (
    DEFAULT_CKNNA_FORM,
    KNN_METRICS,
    METRICS,
    against_reference,
    alignment_matrix,
    check_knn_size,
)
from probe.alignment_plots import plot_alignment_heatmap

FORM_NOTES = {"reference": "unbiased HSIC of the mutual-k-NN-masked kernels, the form behind published numbers",
              "paper": "the paper's Align(K, L), centred by row means"}
TITLES = {"mutual_knn": "mutual k-NN", "cknna": "CKNNA", "debiased_cka": "debiased CKA", "linear_cka": "linear CKA"}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _settings(block: Mapping[str, Any]) -> str:
    parts = [f"n = {block['n']}"]
    if "k" in block:
        parts.append(f"k = {block['k']}")
    if "form" in block:
        parts.append(f"{block['form']} form")
    return ", ".join(parts)


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def alignment_report(results: Mapping[str, Any]) -> str:
    """Markdown: one encoders x encoders table per metric, then the scores against the reference."""
    lines = ["# Representation alignment\n",
             f"{results['n']} images, k = {results['k']}, CKNNA in the {results['cknna_form']} form "
             f"({FORM_NOTES[results['cknna_form']]}). "
             "Cell (row, column): the metric of the row encoder against the column encoder; "
             "heatmaps: `alignment-<metric>.png` / `.pdf`.\n"]
    for metric, block in results["metrics"].items():
        names = block["names"]
        lines += [f"## {TITLES[metric]} ({_settings(block)})\n", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        lines += [f"| {a} | " + " | ".join(_cell(v) for v in row) + " |"
                  for a, row in zip(names, block["matrix"], strict=True)]
        lines.append("")
    if results.get("against_reference"):
        reference = results["reference"]
        metrics = list(results["against_reference"])
        lines += [f"## Against {reference}\n", "| encoder | " + " | ".join(TITLES[m] for m in metrics) + " |",
                  "|---" * (len(metrics) + 1) + "|"]
        others = list(results["against_reference"][metrics[0]]["values"])
        lines += [f"| {name} | " + " | ".join(_cell(results["against_reference"][m]["values"][name]) for m in metrics)
                  + " |" for name in others]
        lines.append("")
    return "\n".join(lines)


def _pairs(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"metric": metric, "x": a, "y": b, "value": value, "n": block["n"], "k": block.get("k"),
             "form": block.get("form")}
            for metric, block in metrics.items()
            for a, row in zip(block["names"], block["matrix"], strict=True)
            for b, value in zip(block["names"], row, strict=True)]


def run_alignment(features_by_encoder: Mapping[str, np.ndarray], out: Path, k: int, reference: str | None,
                  n_images: int, metrics: Sequence[str] = METRICS, form: str = DEFAULT_CKNNA_FORM,
                  info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score the first `n_images` rows of every encoder's [N, D] features (the same images, in the same order)
    with every metric; write alignment.json, the heatmaps and report.md into `out`; return the results."""
    if reference is not None and reference not in features_by_encoder:
        raise ValueError(f"--reference {reference!r} is not among --encoder {list(features_by_encoder)}; "
                         "pass one of them")
    if n_images < 1:
        raise ValueError(f"--max-images {n_images}: use at least 1 image")
    short = {name: len(x) for name, x in features_by_encoder.items() if len(x) < n_images}
    if short:
        raise ValueError(f"features of {short} have fewer than {n_images} rows; lower --max-images")
    if set(metrics) & set(KNN_METRICS):
        check_knn_size(n_images, k)
    features = {name: np.asarray(x)[:n_images] for name, x in features_by_encoder.items()}
    table = alignment_matrix(features, metrics, k, form)
    for block in table.values():
        block["matrix"] = [[_finite(v) for v in row] for row in block["matrix"]]
    results: dict[str, Any] = {"n": n_images, "k": k, "cknna_form": form, "encoders": list(features),
                               "reference": reference, "config": dict(info or {}), "metrics": table}
    if reference is not None and len(features) > 1:
        versus = against_reference(features, reference, metrics, k, form)
        for block in versus.values():
            block["values"] = {name: _finite(v) for name, v in block["values"].items()}
        results["against_reference"] = versus
    results["pairs"] = _pairs(table)
    out = Path(out)
    write_json(out / "alignment.json", results)
    for metric, block in table.items():
        plot_alignment_heatmap(block["names"], block["matrix"], out / f"alignment-{metric}",
                               title=f"{TITLES[metric]} ({_settings(block)})", label=TITLES[metric])
    atomic_write(out / "report.md", alignment_report(results))
    return results
