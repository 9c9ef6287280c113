"""A Grad-CAM++ grid over every encoder family on ShapesWorld, with tiny random encoders and no classifier:
each map explains the cosine similarity of the pooled feature to its true class's mean train feature. Scores per
encoder: CAM energy inside the object mask, the pointing game, ROAD (combined) and the number of constant maps.

    python -m experiments.benchmarks.cam_grid_all --out runs/benchmarks/cam_grid_all
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from encoders.registry import create_encoder
from experiments.benchmarks.common import add_threads_option, set_threads
from harmon.shapesworld.probe_sets import ProbeSet, render_set
from harmon.utils.files import write_json
from harmon.vae import tiny_kl16_config
from probe import plots
from probe.cam import (
    CosineTarget,
    PooledFeatures,
    compute_similarity_cams,
    constant_maps,
    overlay,
    to_display,
)
from probe.cam_study import blank_overlay
from probe.faithfulness import road_scores, summarise
from probe.localisation import cam_energy_in_mask, pointing_game

KL = tiny_kl16_config()
VIT = dict(depth=2, embed_dim=32, num_heads=2, img_size=64)
VIT14 = dict(depth=2, embed_dim=32, num_heads=2)
MAR = dict(img_size=64, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, decoder_embed_dim=32,
           decoder_depth=1, decoder_num_heads=2, diffloss_d=1, diffloss_w=32, buffer_size=4, class_num=10)
RAE = dict(encoder_hidden_size=64, encoder_num_hidden_layers=2, decoder_hidden_size=32, decoder_num_hidden_layers=1,
           decoder_num_attention_heads=2, decoder_intermediate_size=64, patch_size=4)
SMALL_KL = dict(block_out_channels=(8, 16, 16), norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
# label -> (registry name, options for a tiny random model), one row per family and pooling of interest
ROWS: dict[str, tuple[str, dict]] = {
    "pixels": ("pixels", dict(image_size=64, patch=8)),
    "VAE KL-16": ("vae-kl16", dict(config=KL, image_size=64)),
    "VA-VAE": ("vae-vavae-f16d32", dict(config=dict(block_out_channels=(4, 4, 8, 8, 16), norm_num_groups=2),
                                        image_size=64)),
    "REPA-E VAE": ("vae-repae-vavae", dict(config=SMALL_KL, image_size=64)),
    "VQGAN": ("vqgan-taming-f16-16384", dict(config={"embed_dim": 8, "n_embed": 32, "ddconfig": {
        "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16], "resolution": 64,
        "z_channels": 32}}, image_size=64)),
    "MAR": ("mar-b", dict(config=MAR, vae_config=KL, image_size=64)),
    "Harmon MAR": ("harmon-0.5b-mar", dict(config=MAR, vae_config=KL, image_size=64)),
    "SigLIP (map)": ("siglip-b16", dict(config=VIT)),
    "SigLIP 2 (map)": ("siglip2-b16", dict(config=VIT)),
    "DINOv2 (cls)": ("dinov2-s", dict(config=VIT14, image_size=56)),
    "DINOv2 reg (cls)": ("dinov2-s-reg", dict(config=VIT14, image_size=56)),
    "DINOv2 HF (cls)": ("dinov2-s-hf", dict(config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=64, patch_size=14), image_size=56)),
    "MAE (cls)": ("mae-b16", dict(config=VIT)),
    "RAE DINOv2": ("rae-dinov2-b", dict(config=dict(RAE, encoder_type="dinov2", encoder_patch_size=14,
                                                     encoder_input_size=56))),
    "RAE MAE": ("rae-mae-b16", dict(config=dict(RAE, encoder_type="mae", encoder_patch_size=16,
                                                 encoder_input_size=64))),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=7, help="explained images (one per shape first)")
    parser.add_argument("--train", type=int, default=70, help="train images for the class-mean references")
    parser.add_argument("--encoders", help="comma list of registry names to draw (default: every row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/cam_grid_all"))
    add_threads_option(parser, default=2)
    args = parser.parse_args()
    known = {name for name, _ in ROWS.values()}
    unknown = set(args.encoders.split(",")) - known if args.encoders else set()
    if unknown:
        parser.error(f"unknown encoders {sorted(unknown)}; choose from {sorted(known)}")
    return args


def encoder_frame(encoder, mask: np.ndarray) -> np.ndarray:
    """An object mask carried through the encoder's own preprocessing geometry (resize / crop, nearest)."""
    geometry = dataclasses.replace(encoder.preprocess, interpolation="nearest", mean=(0.0,) * 3, std=(1.0,) * 3)
    image = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    return geometry(image)[0].numpy() > 0.5


def score_row(label: str, name: str, options: dict, shown, train, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    encoder = create_encoder(name, weights="random", seed=seed, **options)
    pixels = torch.stack([encoder.preprocess(Image.fromarray(im)) for im in shown.images])
    train_pixels = torch.stack([encoder.preprocess(Image.fromarray(im)) for im in train.images])
    model = PooledFeatures(encoder)
    with torch.no_grad():
        features = torch.cat([model(train_pixels[i : i + 32]) for i in range(0, len(train_pixels), 32)])
    classes = int(train.labels.max()) + 1
    means = torch.stack([features[torch.from_numpy(train.labels == c)].mean(0) for c in range(classes)])
    references = means[torch.from_numpy(shown.labels)]
    maps = compute_similarity_cams(encoder, pixels, references, batch_size=8)
    blank = constant_maps(maps)
    road = road_scores(model, pixels, maps, [CosineTarget(r) for r in references], seed=seed)
    masks = [encoder_frame(encoder, m[0]) for m in shown.masks]
    drawn = [i for i in range(len(maps)) if i not in blank]
    energy = [cam_energy_in_mask(maps[i], masks[i]) for i in drawn]
    pointing = [pointing_game(maps[i], masks[i]) for i in drawn]
    area = float(np.mean([m.mean() for m in masks]))  # what a uniform map would score on energy
    row = {"encoder": name, "pooling": encoder.default_pooling, "grid": list(encoder.grid_for(*pixels.shape[-2:])),
           "prefix_tokens": encoder.num_prefix_tokens, "cam_layer": next(
               n for n, m in encoder.named_modules() if m is encoder.cam_layer_for(encoder.default_pooling)),
           "constant_maps": blank, "energy_in_mask": float(np.mean(energy)) if energy else None,
           "uniform_energy": area, "pointing_game": float(np.mean(pointing)) if pointing else None,
           "road": summarise(road)}
    shown_pixels = to_display(pixels, encoder.preprocess)
    cells = np.stack([blank_overlay(im) if i in blank else overlay(im, cam)
                      for i, (im, cam) in enumerate(zip(shown_pixels, maps, strict=True))])
    return row, cells, shown_pixels


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    chosen = {label: row for label, row in ROWS.items() if not args.encoders or row[0] in args.encoders.split(",")}
    probe_set = ProbeSet("single", image_size=64)
    train = render_set(probe_set, args.seed, args.train)
    shown = render_set(probe_set, args.seed + 1, args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, cells, first = {}, {}, None
    for label, (name, options) in chosen.items():
        rows[label], cells[label], display = score_row(label, name, options, shown, train, args.seed)
        first = display if first is None or display.shape[1:3] == (64, 64) and first.shape[1:3] != (64, 64) else first
    size = first.shape[1:3]
    resized = {k: np.stack([np.asarray(Image.fromarray(c).resize(size[::-1])) for c in v]) for k, v in cells.items()}
    plots.plot_cam_grid(first, resized, args.out / "cams", [probe_set.classes()[c] for c in shown.labels])
    write_json(args.out / "results.json", {"images": args.images, "train": args.train, "seed": args.seed,
                                          "target": "cosine to the class-mean train feature", "encoders": rows})
    table = Table("encoder", "registry name", "pooling", "grid", "prefix", "CAM layer", "energy in mask",
                  "uniform", "pointing", "ROAD", "constant")
    lines = ["| encoder | registry name | pooling | grid | prefix | CAM layer | energy in mask (uniform) | "
             "pointing game | ROAD | constant maps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        cellsrow = [label, r["encoder"], r["pooling"], "x".join(map(str, r["grid"])), str(r["prefix_tokens"]),
                    r["cam_layer"], fmt(r["energy_in_mask"]), fmt(r["uniform_energy"]), fmt(r["pointing_game"]),
                    fmt(r["road"]), f"{len(r['constant_maps'])}/{args.images}"]
        table.add_row(*cellsrow)
        lines.append(f"| {' | '.join(cellsrow[:6])} | {cellsrow[6]} ({cellsrow[7]}) | {' | '.join(cellsrow[8:])} |")
    (args.out / "scores.md").write_text("\n".join(lines) + "\n")
    Console().print(table)


if __name__ == "__main__":
    main()
