"""The CAM study behind `harmon cam`: Grad-CAM++ grids of many encoders, constant maps reported, ROAD scores.

Each encoder is explained either through its linear probe (trained here or loaded from a probe run's `heads/`)
or, with a cosine target, through the similarity of its pooled feature to a reference embedding (no classifier).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from encoders.registry import weights_source
from harmon.utils.files import write_json
from harmon.utils.runtime import rank, resolve_device
from probe import plots
from probe.cam import (
    CosineTarget,
    PooledFeatures,
    ProbeClassifier,
    compute_cams,
    compute_similarity_cams,
    constant_maps,
    overlay,
    to_display,
)
from probe.cam_targets import TargetSpec, class_mean_features, parse_target, references_for
from probe.faithfulness import road_scores, summarise
from probe.study import (
    ProbeStudyConfig,
    _data_json,
    _extract,
    _skipped_md,
    load_data,
    load_head,
    pick_images,
    probe_encoder,
)


def blank_overlay(image: np.ndarray) -> np.ndarray:
    """A constant map drawn as the greyed-out image (so a blank row never passes for a cold map)."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    return (0.35 * grey + 0.65 * 200).clip(0, 255).astype(np.uint8).repeat(3, axis=2)


def _explain(spec, encoder, head, pixels, targets, data, config, target: TargetSpec, cam_batch_size: int):
    """(maps, model, per-image targets for ROAD, predictions or None)."""
    device = resolve_device(config.device)
    if target.kind == "logit":
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        maps = compute_cams(encoder, head, pixels, targets, pooling=config.pooling, layer=config.layer,
                            batch_size=cam_batch_size, features=config.features)
        model = ProbeClassifier(encoder, head, config.pooling, config.layer, config.features)
        with torch.no_grad():
            predicted = model(pixels.to(device)).argmax(1).cpu().tolist()
        return maps, model, [ClassifierOutputTarget(t) for t in targets], predicted
    model = PooledFeatures(encoder, config.pooling)
    with torch.no_grad():
        pooled = model(pixels.to(device)).cpu()
    means = None
    if target.reference == "class-mean":
        train = _extract(encoder, data, config, "train")
        means = class_mean_features(np.asarray(train.features, dtype=np.float32), np.asarray(train.labels),
                                    len(data.classes))
    references = references_for(target, pooled, targets, means, spec.title)
    maps = compute_similarity_cams(encoder, pixels, references, pooling=config.pooling, batch_size=cam_batch_size)
    return maps, model, [CosineTarget(r) for r in references], None


def _cams_md(results: dict[str, Any], target: TargetSpec, skipped: list[dict[str, str]]) -> str:
    summary, count = results["encoders"], len(results["targets"])
    what = ("the probe logit of the true class" if target.kind == "logit"
            else f"cosine similarity of the pooled feature to `{target.text}`")
    lines = ["# Grad-CAM++\n",
             f"{count} val images of `{results['data']['spec']}`; target: {what} (maps min-max normalised per "
             "image). Grid: `cams.png` / `cams.pdf`; greyed-out cells are constant maps.\n",
             "| encoder | weights | CAM layer | correct | constant maps | ROAD (combined) | CAM seconds |",
             "|---|---|---|---|---|---|---|"]
    for label, v in summary.items():
        correct = "–" if v["correct"] is None else f"{v['correct']}/{count}"
        road = "–" if v["road"] is None else f"{v['road']:.4f}"
        lines.append(f"| {label} | {v['weights_source']} | `{v['cam_layer']}` | {correct} | "
                     f"{len(v['constant_maps'])}/{count} | {road} | {v['cam_seconds']:.2f} |")
    blank = {k: v["constant_maps"] for k, v in summary.items() if v["constant_maps"]}
    lines += ["", "ROAD: (LeRF - MoRF) / 2 over the removal of 20/40/60/80 % of the pixels with noisy linear infill; "
              "higher means the map points at what the target uses. Constant maps get no score.\n"]
    if blank:
        lines += ["## Warning: constant maps\n",
                  "These maps are identically zero or constant: Grad-CAM++ found no positive evidence for the target "
                  "at the CAM layer (drawn greyed out, not as a cold map).\n"]
        lines += [f"- **{k}**: images {', '.join(map(str, v))}" for k, v in blank.items()]
        lines.append("")
    lines += ["## Skipped files\n", _skipped_md(skipped)]
    return "\n".join(lines)


def _layer_name(encoder, pooling: str | None) -> str:
    layer = encoder.cam_layer_for(pooling or encoder.default_pooling)
    return next((name for name, module in encoder.named_modules() if module is layer), type(layer).__name__)


def run_cam_study(config: ProbeStudyConfig, images: int = 8, heads: str | None = None, cam_batch_size: int = 8,
                  console: Console | None = None, target: str = "logit") -> dict[str, Any] | None:
    """Grad-CAM++ maps of `images` val images for every encoder: cams.png/.pdf, cams-<encoder>.npy, cams.json,
    cams.md (constant maps and ROAD scores per encoder). Returns the results (None on ranks > 0)."""
    spec_target = parse_target(target)
    if heads is not None and spec_target.kind != "logit":
        raise ValueError(f"--heads explains probe logits; drop --heads or use --target logit (got {target!r})")
    console = console or Console()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(config.data, config.per_class, config.seed, config.check)
    val_labels = data.labels("val")
    chosen = pick_images(val_labels, images)
    positions = chosen if data.val_subset is None else data.val_subset[chosen]
    pictures = [data.val[int(i)][0] for i in positions]
    targets = val_labels[chosen].tolist()
    rows: dict[str, np.ndarray] = {}
    first_row, summary = None, {}
    for spec in config.encoders:
        head = None
        if spec_target.kind != "logit":
            encoder = spec.build(config.seed)
        elif heads is None:
            _, head, encoder = probe_encoder(spec, data, config, console)
        else:
            encoder = spec.build(config.seed)
            head = load_head(Path(heads) / "heads" / f"{spec.file_name}.safetensors", encoder, config, data.classes)
        if rank() != 0:  # other processes of a multi-process launch only help extracting
            continue
        device = resolve_device(config.device)
        encoder = encoder.to(device)
        head = head.to(device) if head is not None else None
        pixels = torch.stack([encoder.preprocess(p) for p in pictures])
        start = time.perf_counter()
        maps, model, cam_targets, predicted = _explain(spec, encoder, head, pixels, targets, data, config,
                                                       spec_target, cam_batch_size)
        cam_s = time.perf_counter() - start
        blank = constant_maps(maps)
        road = road_scores(model, pixels, maps, cam_targets, seed=config.seed)
        shown = to_display(pixels, encoder.preprocess)
        first_row = shown if first_row is None else first_row
        rows[spec.title + (f"\n{len(blank)} blank" if blank else "")] = np.stack(
            [blank_overlay(image) if i in blank else overlay(image, cam)
             for i, (image, cam) in enumerate(zip(shown, maps, strict=True))])
        np.save(out / f"cams-{spec.file_name}.npy", maps)
        if blank:
            console.print(f"[yellow]warning:[/] {spec.title}: {len(blank)} of {len(maps)} maps are constant "
                          "(listed in cams.md)")
        summary[spec.title] = {
            "encoder": spec.name, "weights": spec.weights,
            "weights_source": weights_source(spec.name, spec.weights, config.seed),
            "cam_layer": _layer_name(encoder, config.pooling), "predicted": predicted,
            "correct": None if predicted is None else int(sum(p == t for p, t in zip(predicted, targets, strict=True))),
            "constant_maps": blank, "road": summarise(road), "road_per_image": [None if np.isnan(r) else float(r)
                                                                               for r in road],
            "cam_seconds": cam_s, "map_shape": list(maps.shape)}
    if rank() != 0:
        return None
    plots.plot_cam_grid(first_row, rows, out / "cams", [data.classes[t] for t in targets])
    results = {"config": asdict(config), "data": _data_json(data), "val_positions": positions.tolist(),
               "targets": targets, "target": spec_target.text, "encoders": summary, "heads": heads}
    write_json(out / "cams.json", results)
    (out / "cams.md").write_text(_cams_md(results, spec_target, data.skipped))
    return results
