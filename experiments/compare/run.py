"""`harmon compare` end to end. Every encoder's train / val features are extracted once into one feature cache
(every requested layer from one pass) and read by everything after: linear probes per layer, the k-NN probe, the
alignment metrics and, through the final-layer probe heads, Grad-CAM++ (scored against exact object masks where
the data has them). Encoders with a decoder also reconstruct val images: PSNR, SSIM, LPIPS, and the Fréchet
distance of reconstructions to originals in another encoder's pooled features. Writes results.json, report.md and
every figure (PNG and PDF)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from encoders.base import Encoder
from encoders.registry import weights_source
from experiments.align import run_alignment
from experiments.compare.config import SHAPES, ZOO, CompareConfig, EncoderItem
from experiments.compare.controls import control_comparisons
from experiments.compare.report import write_report
from harmon.checkpoints import cache_dir
from harmon.utils.files import file_stem, output_dir, write_json
from harmon.utils.runtime import resolve_device
from probe import plots
from probe.alignment import KNN_METRICS, METRICS
from probe.cam import compute_cams, constant_maps, overlay, to_display
from probe.frechet import frechet_distance_features
from probe.knn import knn_probe
from probe.line_plots import plot_lines
from probe.linear import predict_logits
from probe.localisation import cam_energy_in_mask, pointing_game
from probe.pareto import non_dominated, plot_pareto
from probe.reconstruction import lpips, lpips_network, psnr, ssim
from probe.study import (
    EncoderSpec,
    ProbeStudyConfig,
    StudyData,
    extract_split_layers,
    linear_scores,
    load_data,
    pick_images,
)


@dataclass
class Built:
    """An encoder ready to measure: its adapter, the pooling used and where its weights came from."""

    encoder: Encoder
    pooling: str | None
    source: str


class Builder:
    """Builds registry encoders and zoo arms (pretraining the zoo's chains on first use)."""

    def __init__(self, config: CompareConfig, root: Path, workers: int, console: Console):
        self.config, self.root, self.recipe = config, root, None
        if config.zoo is not None:
            from experiments.compare.zoo import pretrain_arms, zoo_recipe

            self.recipe = zoo_recipe(config.zoo, config.seed)
            items = [*config.encoders, config.reconstruction.fd_encoder]
            arms = [i.name[len(ZOO):] for i in items if i is not None and i.name.startswith(ZOO)]
            pretrain_arms(self.recipe, arms, root / "pretrain", workers, console)

    def build(self, item: EncoderItem) -> Built:
        if item.name.startswith(ZOO):
            from experiments.compare.zoo import zoo_encoder

            encoder, record = zoo_encoder(self.recipe, item.name[len(ZOO):], self.root / "pretrain")
            source = f"offline Figure 2 zoo ({self.config.zoo}, seed {self.config.seed})" + (
                f", pretrained {record['training']['optim']['steps']} steps" if record else ", no weights")
            return Built(encoder, item.pooling, source)
        spec = EncoderSpec(item.name, item.weights, item.label, dict(item.options))
        return Built(spec.build(self.config.seed), item.pooling, weights_source(item.name, item.weights,
                                                                                  self.config.seed))

    def twin(self, item: EncoderItem) -> Built:
        """The random-init twin of `item`: the same architecture, preprocessing and pooling, seeded by the run
        seed (a zoo arm: as the offline Figure 2 builds it; a registry encoder: its weights "random")."""
        if not item.name.startswith(ZOO):
            return self.build(replace(item, weights="random"))
        from experiments.compare.zoo import zoo_twin

        arm, seed = item.name[len(ZOO):], self.config.seed
        source = f"random initialisation (seed {seed})" + (", on the trained VAE" if arm == "MAR" else "")
        return Built(zoo_twin(self.recipe, arm, self.root / "pretrain", seed), item.pooling, source)


def is_pixels(item: EncoderItem) -> bool:
    """Raw pixels: no weights, so no twin; the pixel control of every other encoder."""
    return item.name.removeprefix(ZOO) == "pixels"


def parse_layers(text: str | None, encoder: Encoder) -> list[int]:
    """Block indices from 'all' or '0,2,-1' (negative from the end), checked against the encoder."""
    if text is None:
        return []
    count = encoder.num_layers()
    if text.strip() == "all":
        return list(range(count))
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--layers {text!r}: use 'all' or comma-separated block indices, e.g. 0,2,-1") from error
    bad = [v for v in values if not -count <= v < count]
    if bad:
        raise ValueError(f"--layers {text!r}: {encoder.name} has {count} blocks; pass indices in 0..{count - 1} "
                         f"(or -{count}..-1)")
    return sorted({v % count for v in values})


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def _unit(pixels: torch.Tensor, encoder: Encoder) -> torch.Tensor:
    """Preprocessed pixels back in [0, 1]."""
    mean = torch.tensor(encoder.preprocess.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.preprocess.std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() * std + mean).clamp(0, 1)


@torch.no_grad()
def pooled_features(built: Built, images: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Pooled features (N, D) of [0, 1] images (N, 3, H, W), each through the encoder's own preprocessing."""
    encoder = built.encoder.to(device)
    rows = []
    for start in range(0, len(images), batch_size):
        pictures = [Image.fromarray(a) for a in (images[start:start + batch_size].permute(0, 2, 3, 1).cpu().numpy()
                                                  * 255).round().astype(np.uint8)]
        pixels = torch.stack([encoder.preprocess(p) for p in pictures]).to(device)
        rows.append(encoder(pixels, pooling=built.pooling).pooled.float().cpu().numpy())
    return np.concatenate(rows)


def reconstruct_scores(built: Built, data: StudyData, positions: np.ndarray, lpips_net: torch.nn.Module | None,
                       fd: Built | None, batch_size: int,
                       device: torch.device) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Mean (and per-image) PSNR / SSIM / LPIPS of reconstructions of val images and their Fréchet distance to the
    originals in `fd`'s pooled features; plus the first 8 originals and reconstructions (in [0, 1])."""
    encoder = built.encoder.to(device)
    originals, recons = [], []
    for start in range(0, len(positions), batch_size):
        chosen = positions[start:start + batch_size]
        pixels = torch.stack([encoder.preprocess(data.val[int(i)][0]) for i in chosen]).to(device)
        originals.append(_unit(pixels, encoder))
        recons.append(_unit(encoder.reconstruct(pixels), encoder))
    original, recon = torch.cat(originals), torch.cat(recons)
    result: dict[str, Any] = {"images": len(original), "resolution": list(original.shape[-2:]),
                              "psnr_per_image": psnr(recon, original).tolist(),
                              "ssim_per_image": ssim(recon, original).tolist()}
    if lpips_net is not None:
        result["lpips_per_image"] = lpips(recon, original, lpips_net.to(device)).tolist()
    for metric in ("psnr", "ssim", "lpips"):
        if f"{metric}_per_image" in result:
            result[metric] = float(np.mean(result[f"{metric}_per_image"]))
    if fd is not None:
        a = pooled_features(fd, original, batch_size, device)
        b = pooled_features(fd, recon, batch_size, device)
        result["frechet"] = frechet_distance_features(a, b)
        result["frechet_dim"] = int(a.shape[1])
    return result, original[:8].cpu(), recon[:8].cpu()


def localisation(built: Built, head: torch.nn.Module, data: StudyData, chosen: np.ndarray, targets: list[int],
                 masks: list[np.ndarray] | None, device: torch.device) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Grad-CAM++ of the final-layer probe for the true class; energy in the object mask and the pointing game
    where masks exist. Returns the scores, the shown images and the overlays."""
    encoder = built.encoder.to(device)
    pixels = torch.stack([encoder.preprocess(data.val[int(i)][0]) for i in chosen])
    maps = compute_cams(encoder, head, pixels, targets, pooling=built.pooling)
    blank = constant_maps(maps)
    scores: dict[str, Any] = {"images": len(maps), "constant_maps": blank}
    if masks is not None:
        picked = [masks[int(i)] for i in chosen]
        scores["energy_in_mask"] = 100 * float(np.mean([cam_energy_in_mask(c, m) for c, m in zip(maps, picked, strict=True)]))
        scores["pointing_game"] = 100 * float(np.mean([pointing_game(c, m) for c, m in zip(maps, picked, strict=True)]))
    shown = to_display(pixels, encoder.preprocess)
    return scores, shown, np.stack([overlay(image, cam) for image, cam in zip(shown, maps, strict=True)])


def dataset_positions(data: StudyData, chosen: np.ndarray) -> np.ndarray:
    """Positions in the val dataset of `chosen` positions in its (balanced-subset) labels."""
    return chosen if data.val_subset is None else data.val_subset[chosen]


def _data(config: CompareConfig, root: Path) -> tuple[StudyData, list[np.ndarray] | None]:
    if config.data == SHAPES:
        from experiments.compare.zoo import shapes_data

        return shapes_data(config.zoo, root / "probe-sets")
    return load_data(config.data, config.per_class, config.seed), None


def check_reconstruction(config: CompareConfig, built: dict[str, Built]) -> list[str]:
    """The labels that reconstruct: those asked for (each must have a decoder) or every one with a decoder."""
    asked = config.reconstruction.encoders
    if asked is None:
        return [label for label, b in built.items() if b.encoder.has_decoder]
    for label in asked:
        if not built[label].encoder.has_decoder:
            raise built[label].encoder.no_decoder_error()
    return list(asked)


def run_compare(config: CompareConfig, out_dir: str | Path, cache: str | Path | None = None, workers: int = 2,
                loader_workers: int = 0, console: Console | None = None) -> dict[str, Any]:
    """Run the comparison into `out_dir`; `cache`: the feature cache root (default $HARMON_CACHE/features; the zoo
    and the ShapesWorld probe images live in $HARMON_CACHE/figure2); `workers`: pretraining processes of the zoo;
    `loader_workers`: DataLoader processes of the extraction. Returns the results."""
    console = console or Console()
    out = output_dir(out_dir, "--out")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    zoo_root = cache_dir() / "figure2"
    builder = Builder(config, zoo_root, workers, console)
    timings["pretraining_s"] = time.perf_counter() - start
    data, masks = _data(config, zoo_root)
    device = resolve_device(config.device)
    items = {item.title: item for item in config.encoders}
    built = {label: builder.build(item) for label, item in items.items()}
    twins = {label: builder.twin(item) for label, item in items.items() if config.twins and not is_pixels(item)}
    recon_labels = check_reconstruction(config, built)
    layers = {label: parse_layers(config.layers, b.encoder) for label, b in built.items()}
    n_val = len(data.labels("val"))
    metrics = tuple(config.alignment.metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"alignment.metrics: {unknown[0]!r} is not a metric; use {', '.join(METRICS)}")
    n_align = min(n_val, config.alignment.max_images)
    if set(metrics) & set(KNN_METRICS) and not 1 <= config.alignment.k < n_align:
        raise ValueError(f"alignment.k {config.alignment.k}: needs 1 <= k < {n_align} (the val images scored)")
    study = ProbeStudyConfig([EncoderSpec(label) for label in items], config.data, str(out),
                             cache=None if cache is None else str(cache), batch_size=config.batch_size,
                             workers=loader_workers,
                             device=str(device), epochs=config.epochs, seed=config.seed)
    val_labels = data.labels("val")
    chosen = pick_images(val_labels, min(config.cam_images, n_val)) if config.cam_images else np.array([], int)
    cam_targets = val_labels[chosen].tolist()
    cam_positions = dataset_positions(data, chosen)
    lpips_net = lpips_network() if config.reconstruction.lpips and recon_labels else None
    fd = builder.build(config.reconstruction.fd_encoder) if config.reconstruction.fd_encoder and recon_labels else None
    recon_positions = dataset_positions(data, pick_images(val_labels, min(config.reconstruction.images, n_val)))
    encoders, val_features, cams, samples = {}, {}, {"rows": {}, "images": None}, {}
    twin_results, correct, twin_correct = {}, {}, {}
    with _progress(console) as progress:
        bar = progress.add_task("measuring encoders", total=len(built) + len(twins))
        for label, b in built.items():
            progress.update(bar, description=f"measuring {label}")
            encoders[label], head, final, correct[label] = measure(label, b, layers[label], data,
                                                                   replace(study, pooling=b.pooling), config, console)
            if label in twins:
                progress.advance(bar)
                twin = f"{label} (random)"
                progress.update(bar, description=f"measuring {twin}")
                twin_results[twin], _, _, twin_correct[label] = measure(
                    twin, twins[label], layers[label], data, replace(study, pooling=twins[label].pooling), config,
                    console)
                twin_results[twin]["twin_of"] = label
            val_features[label] = final
            if config.cam_images:
                begin = time.perf_counter()
                scores, shown, rows = localisation(b, head, data, cam_positions, cam_targets, masks, device)
                scores["seconds"] = time.perf_counter() - begin
                encoders[label]["cam"] = scores
                cams["images"] = shown if cams["images"] is None else cams["images"]
                cams["rows"][label] = rows
            if label in recon_labels:
                begin = time.perf_counter()
                encoders[label]["reconstruction"], *samples[label] = reconstruct_scores(
                    b, data, recon_positions, lpips_net, fd, config.batch_size, device)
                encoders[label]["reconstruction"]["seconds"] = time.perf_counter() - begin
            progress.advance(bar)
    figures = draw(config, encoders, layers, cams, samples, [data.classes[t] for t in cam_targets], out)
    alignment = None
    if len(val_features) > 1:
        positions = np.arange(n_align)
        alignment = run_alignment({k: v[positions] for k, v in val_features.items()}, out / "alignment",
                                  config.alignment.k, config.alignment.reference, n_align, metrics,
                                  info={"data": data.name, "split": "val", "seed": config.seed})
        figures += [f"alignment/alignment-{m}.png" for m in metrics]
    pixels = next((label for label, item in items.items() if is_pixels(item)), None)
    controls = control_comparisons(correct, twin_correct, pixels, config.seed)
    pareto = pareto_points(config, encoders, layers)
    if pareto["points"]:
        plot_pareto([(p["x"], p["y"]) for p in pareto["points"]], [p["label"] for p in pareto["points"]],
                    out / "pareto", pareto["xlabel"], "linear probe top-1 (%)",
                    title=f"Reconstruction vs semantics on {config.name}")
        figures.append("pareto.png")
    timings["total_s"] = time.perf_counter() - start
    results = {"name": config.name, "config": asdict(config), "data": {"spec": data.name, "classes": data.classes,
               "train_samples": len(data.labels("train")), "val_samples": n_val, "object_masks": masks is not None},
               "device": str(device), "encoders": encoders, "twins": twin_results, "controls": controls,
               "alignment": alignment, "pareto": pareto,
               "reconstructing": recon_labels, "fd_encoder": None if fd is None else
               {"name": config.reconstruction.fd_encoder.name, "encoder": fd.encoder.name, "weights": fd.source},
               "figures": figures, "timings": timings}
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


def measure(label: str, built: Built, layers: list[int], data: StudyData, study: ProbeStudyConfig,
            config: CompareConfig,
            console: Console) -> tuple[dict[str, Any], torch.nn.Module, np.ndarray, np.ndarray]:
    """Extract (cached) and probe one encoder at its layers and final features; k-NN on the final features.
    Returns its results, the final-layer head, its val features and the head's per-image 0/1 correctness."""
    begin = time.perf_counter()
    asked: list[int | None] = [*layers, None]
    train = extract_split_layers(built.encoder, data, study, "train", asked)
    val = extract_split_layers(built.encoder, data, study, "val", asked)
    extract_s = time.perf_counter() - begin
    result: dict[str, Any] = {"encoder": built.encoder.name, "weights": built.source,
                              "pooling": train[-1].manifest["key"]["pooling"],
                              "weights_digest": train[-1].manifest["key"]["weights"],
                              "dim": int(train[-1].features.shape[1]), "has_decoder": built.encoder.has_decoder,
                              "cache": {"computed": sum(c.stats["computed"] for c in [*train, *val]),
                                        "reused": sum(c.stats["reused"] for c in [*train, *val]),
                                        "val": str(val[-1].path)},
                              "layers": {}}
    begin = time.perf_counter()
    head = final = correct = None
    for layer, tr, va in zip(asked, train, val, strict=True):
        (train_x, val_x), sweep, report = linear_scores(tr, va, study, data.classes)
        scores = {"top1": report["top1"], "top5": report["top5"], "dim": int(train_x.shape[1])}
        if layer is None:
            result.update(scores)
            head, final = sweep.head, np.asarray(val_x)
            predictions = predict_logits(head, val_x).numpy().argmax(1)
            correct = (predictions == np.asarray(va.labels)).astype(np.float64)
            if config.knn:
                ks = tuple(k for k in (10, 20, 100, 200) if k <= len(train_x)) or (len(train_x),)
                knn = knn_probe(train_x, tr.labels, val_x, va.labels, ks=ks, device=study.device)
                result["knn"] = {str(k): v for k, v in knn.items()}
        else:
            result["layers"][str(layer)] = scores
    result["timings"] = {"extract_s": extract_s, "probe_s": time.perf_counter() - begin}
    console.print(f"[bold]{label}[/]: top-1 {result['top1']:.1f} % ({result['cache']['computed']} images encoded, "
                  f"{result['cache']['reused']} from the cache)")
    return result, head, final, correct


def pareto_points(config: CompareConfig, encoders: dict[str, Any], layers: dict[str, list[int]]) -> dict[str, Any]:
    """One point per reconstructing encoder (and per probed layer): (reconstruction metric, probe top-1)."""
    metric = config.reconstruction.metric
    points = []
    for label, r in encoders.items():
        if "reconstruction" not in r:
            continue
        x = r["reconstruction"][metric]
        points.append({"label": label, "layer": None, "x": x, "y": r["top1"]})
        points += [{"label": f"{label} L{layer}", "layer": int(layer), "x": x, "y": s["top1"]}
                   for layer, s in r["layers"].items()]
    for point, best in zip(points, non_dominated([(p["x"], p["y"]) for p in points]), strict=True):
        point["non_dominated"] = best
    return {"metric": metric, "xlabel": {"psnr": "reconstruction PSNR (dB)", "ssim": "reconstruction SSIM"}[metric],
            "points": points, "left_out": [label for label, r in encoders.items() if "reconstruction" not in r]}


def draw(config: CompareConfig, encoders: dict[str, Any], layers: dict[str, list[int]], cams: dict[str, Any],
         samples: dict[str, Any], captions: list[str], out: Path) -> list[str]:
    """Probe bars, the layer plot, the CAM grid and reconstruction samples; returns the PNG names."""
    figures = ["probes.png"]
    plots.plot_topk_bars({k: {"top1": v["top1"], "top5": v["top5"]} for k, v in encoders.items()}, out / "probes",
                         title=f"Linear probe ({config.name})")
    if any(layers.values()):
        series = {label: [(int(layer), s["top1"]) for layer, s in r["layers"].items()] for label, r in encoders.items()
                  if r["layers"]}
        plot_lines(series, out / "layers", "block", "linear probe top-1 (%)", title="Probe accuracy per layer",
                   integer_x=True)
        figures.append("layers.png")
    if cams["rows"]:
        plots.plot_cam_grid(cams["images"], cams["rows"], out / "cams", captions)
        figures.append("cams.png")
    for label, (original, recon) in samples.items():
        stem = f"reconstructions-{file_stem(label)}"
        pictures = torch.cat([original, recon]).permute(0, 2, 3, 1).numpy()
        plots.plot_cam_grid(pictures[: len(original)], {"reconstruction": pictures[len(original):]}, out / stem)
        figures.append(f"{stem}.png")
    return figures
