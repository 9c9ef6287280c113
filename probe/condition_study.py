"""Linear probes of every encoder at several layers and token-mask ratios (`harmon probe --layers/--mask-ratio`).

Per encoder and mask ratio, one pass over each split extracts every requested layer into its own cache; the
study's linear-probe sweep is trained on each (layer, ratio). Writes `results.json`, `results.csv`, `report.md`
and line plots: `layers.png/.pdf` (top-1 per layer) with `--layers`, `mask-ratio.png/.pdf` (top-1 against the
ratio) with `--mask-ratio`. k-NN, scikit-learn and attentive probes are left to the single-condition study.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from encoders.masking import hidden_count
from encoders.registry import get_entry, weights_source
from harmon.utils.files import atomic_write, output_dir, write_json
from harmon.utils.runtime import rank
from probe.conditions import Conditions
from probe.line_plots import plot_lines
from probe.study import (
    EncoderSpec,
    ProbeStudyConfig,
    StudyData,
    _data_json,
    _skipped_md,
    extract_split_layers,
    linear_scores,
    load_data,
    selected_settings,
)

CSV_FIELDS = ("encoder", "layer", "mask_ratio", "hidden_tokens", "tokens", "pooling", "dim", "top1", "top5",
              "mean_per_class_top1", "base_lr", "weight_decay", "extract_s", "probe_s")


def check_maskable(specs: list[EncoderSpec], conditions: Conditions) -> None:
    """With mask ratios, a ValueError naming `--mask-ratio` for any encoder outside the MAR family (before any
    encoder is built)."""
    others = [spec.name for spec in specs if get_entry(spec.name).family != "mar"]
    if conditions.mask_ratios and others:
        raise ValueError(f"--mask-ratio: {', '.join(others)} cannot hide tokens; token masks are for MAR-family "
                         "encoders (mar-b, mar-l, mar-h, harmon-*-mar)")


def token_count(encoder: Any) -> int:
    size = encoder.preprocess.image_size
    h, w = encoder.grid_for(size, size)
    return h * w


def probe_conditions(spec: EncoderSpec, data: StudyData, config: ProbeStudyConfig, conditions: Conditions,
                     console: Console) -> dict[str, Any] | None:
    """Every (layer, ratio) of one encoder; None on ranks > 0 of a multi-process launch (they only extract)."""
    encoder = spec.build(config.seed)
    layers = conditions.layers_of(encoder, spec.name, config.layer)
    cells = token_count(encoder)
    runs = []
    for ratio in conditions.ratios:
        start = time.perf_counter()
        trains = extract_split_layers(encoder, data, config, "train", layers, ratio)
        vals = extract_split_layers(encoder, data, config, "val", layers, ratio)
        extract_s = time.perf_counter() - start
        if rank() != 0:
            continue
        for layer, train, val in zip(layers, trains, vals, strict=True):
            start = time.perf_counter()
            (train_x, _), sweep, report = linear_scores(train, val, config, data.classes)
            runs.append({
                "layer": layer, "mask_ratio": ratio, "hidden_tokens": hidden_count(ratio, cells), "tokens": cells,
                "dim": int(train_x.shape[1]), "top1": report["top1"], "top5": report["top5"],
                "mean_per_class_top1": report["mean_per_class_top1"], "selected": selected_settings(sweep),
                "cache": {"train": train.key_hash, "val": val.key_hash,
                          "computed": train.stats["computed"] + val.stats["computed"],
                          "reused": train.stats["reused"] + val.stats["reused"]},
                "timings": {"extract_s": extract_s, "probe_s": time.perf_counter() - start},
            })
            console.print(f"[bold]{spec.title}[/] layer {'final' if layer is None else layer}, mask ratio {ratio}: "
                          f"top-1 {report['top1']:.2f} %")
    if rank() != 0:
        return None
    return {"encoder": spec.name, "weights": spec.weights,
            "weights_source": weights_source(spec.name, spec.weights, config.seed),
            "pooling": config.pooling or encoder.default_pooling, "num_layers": encoder.num_layers(),
            "features": config.features, "runs": runs}


def _csv(encoders: dict[str, Any]) -> str:
    handle = io.StringIO()
    writer = csv.DictWriter(handle, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for label, result in encoders.items():
        for run in result["runs"]:
            writer.writerow({"encoder": label, "pooling": result["pooling"],
                             "layer": "final" if run["layer"] is None else run["layer"],
                             **{k: run[k] for k in ("mask_ratio", "hidden_tokens", "tokens", "dim", "top1", "top5",
                                                    "mean_per_class_top1")},
                             "base_lr": run["selected"]["base_lr"], "weight_decay": run["selected"]["weight_decay"],
                             **run["timings"]})
    return handle.getvalue()


def condition_report(results: dict[str, Any]) -> str:
    """Markdown: one row per encoder, layer and mask ratio."""
    data = results["data"]
    lines = [
        "# Linear probes by layer and mask ratio\n",
        f"Data: `{data['spec']}`, {len(data['classes'])} classes, {data['train_samples']} train / "
        f"{data['val_samples']} val images. Mask ratio: the fraction of image tokens hidden from the encoder as in "
        "MAR's generation (seeded per image; `mean` pools the visible tokens, `buffer_mean` the buffers). Layer: "
        "0-based block index.\n",
        "| encoder | layer | mask ratio | hidden / tokens | pooling | dim | top-1 % | top-5 % | base lr | wd | "
        "extract s | probe s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["encoders"].items():
        for run in r["runs"]:
            lines.append(
                f"| {label} | {'final' if run['layer'] is None else run['layer']} | {run['mask_ratio']:g} | "
                f"{run['hidden_tokens']} / {run['tokens']} | {r['pooling']} | {run['dim']} | {run['top1']:.2f} | "
                f"{run['top5']:.2f} | {run['selected']['base_lr']} | {run['selected']['weight_decay']} | "
                f"{run['timings']['extract_s']:.1f} | {run['timings']['probe_s']:.1f} |")
    lines += ["", "Extraction time is per encoder and mask ratio (all layers of both splits in one pass each).",
              "", "## Weights\n", "| encoder | weights |", "|---|---|"]
    lines += [f"| {label} | {r['weights_source']} |" for label, r in results["encoders"].items()]
    figures = [name for name, used in (("`layers.png`", results["conditions"]["layers"] is not None),
                                       ("`mask-ratio.png`", bool(results["conditions"]["mask_ratios"]))) if used]
    lines += ["", f"Figures: {', '.join(figures)} (PDF beside each).\n", "## Skipped files\n",
              _skipped_md(data["skipped"])]
    return "\n".join(lines)


def condition_series(encoders: dict[str, Any], x: str, several: str, several_label: str) -> dict[str, list]:
    """label -> (x, top-1) points; one line per encoder and, when it takes several values, per `several`."""
    series: dict[str, list] = {}
    for label, result in encoders.items():
        split = len({run[several] for run in result["runs"]}) > 1
        for run in result["runs"]:
            name = f"{label} ({several_label} {run[several]:g})" if split else label
            series.setdefault(name, []).append((run[x], run["top1"]))
    return series


def plot_conditions(results: dict[str, Any], out: Path) -> None:
    encoders, conditions = results["encoders"], results["conditions"]
    title = f"Linear probe on {results['data']['spec']}"
    if conditions["layers"] is not None:
        plot_lines(condition_series(encoders, "layer", "mask_ratio", "r ="), out / "layers", "layer (block index)",
                   "top-1 (%)", title, integer_x=True)
    if conditions["mask_ratios"]:
        plot_lines(condition_series(encoders, "mask_ratio", "layer", "layer"), out / "mask-ratio",
                   "mask ratio (fraction of tokens hidden)", "top-1 (%)", title)


def run_condition_study(config: ProbeStudyConfig, conditions: Conditions,
                        console: Console | None = None) -> dict[str, Any] | None:
    """Run the study; returns the results (None on ranks > 0 of a multi-process launch)."""
    console = console or Console()
    arms = config.arms()
    check_maskable(arms, conditions)
    out = output_dir(config.out, "--out")
    output_dir(config.cache_root(), "--cache")
    data = load_data(config.data, config.per_class, config.seed, config.check)
    if data.skipped:
        console.print(f"[yellow]skipped {len(data.skipped)} files[/] (listed in results.json and report.md)")
    encoders = {}
    for spec in arms:
        result = probe_conditions(spec, data, config, conditions, console)
        if result is not None:
            encoders[spec.title] = result
    if rank() != 0:
        return None
    results = {"config": asdict(config), "conditions": asdict(conditions), "data": _data_json(data),
               "encoders": encoders}
    write_json(out / "results.json", results)
    atomic_write(out / "results.csv", _csv(encoders))
    atomic_write(out / "report.md", condition_report(results))
    plot_conditions(results, out)
    return results
