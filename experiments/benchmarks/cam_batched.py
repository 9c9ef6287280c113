"""Grad-CAM++ throughput of `compute_cams` in batches against a loop over single images (same encoder, probe
head and images; the maps are checked to agree), beside the batching gain of the model's own forward+backward
(the ceiling on a CPU, where compute grows with the batch). Each mode runs once untimed, then the modes take
turns for `--repeats` rounds and medians are reported; print a table and write JSON.

    python -m experiments.benchmarks.cam_batched --out runs/benchmarks/cam_batched.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from experiments.benchmarks.common import (
    add_repeat_options,
    add_threads_option,
    interleave,
    machine,
    set_threads,
)
from experiments.benchmarks.extraction_throughput import SmallViT
from harmon.utils.files import write_json
from probe.cam import ProbeClassifier, compute_cams
from probe.linear import LinearProbeHead


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dim", type=int, default=192, help="ViT width")
    parser.add_argument("--depth", type=int, default=6, help="ViT blocks")
    parser.add_argument("--heads", type=int, default=3, help="ViT attention heads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/cam_batched.json"))
    add_threads_option(parser, default=1)
    add_repeat_options(parser)
    return parser.parse_args()


def forward_backward(model: ProbeClassifier, images: torch.Tensor, batch_size: int) -> None:
    """The model's own work in a CAM: forward, then backward of one logit per image to the input."""
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].clone().requires_grad_(True)
        model(batch)[:, 0].sum().backward()


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    encoder = SmallViT(dim=args.dim, depth=args.depth, heads=args.heads).to(args.device).eval().requires_grad_(False)
    head = LinearProbeHead(args.dim, 10).to(args.device)
    model = ProbeClassifier(encoder, head)
    images = torch.randn(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    classes = [i % 10 for i in range(args.images)]
    timings = interleave({
        "batched": lambda: compute_cams(encoder, head, images, classes, batch_size=args.batch_size),
        "single": lambda: np.concatenate([compute_cams(encoder, head, images[i : i + 1], [c])
                                          for i, c in enumerate(classes)]),
        "one_object_batch_1": lambda: compute_cams(encoder, head, images, classes, batch_size=1),
        "model_batch_1": lambda: forward_backward(model, images, 1),
        "model_batched": lambda: forward_backward(model, images, args.batch_size),
    }, args.repeats, args.device, args.warmup)
    batched, single, one_by_one = (timings.results[k] for k in ("batched", "single", "one_object_batch_1"))
    batched_s, single_s, one_by_one_s = (timings.median(k) for k in ("batched", "single", "one_object_batch_1"))
    report = {
        "encoder": f"timm ViT, 32 px, patch 4, dim {args.dim}, depth {args.depth}, frozen; probe: BN + Linear",
        "images": args.images, "batch_size": args.batch_size, "device": args.device, "repeats": args.repeats,
        **machine(),
        "batched_images_per_second": args.images / batched_s, "single_images_per_second": args.images / single_s,
        "one_object_batch_1_images_per_second": args.images / one_by_one_s,
        "speedup": single_s / batched_s, "speedup_over_one_object_batch_1": one_by_one_s / batched_s,
        "model_forward_backward_speedup": timings.median("model_batch_1") / timings.median("model_batched"),
        "max_abs_difference": float(max(np.abs(batched - single).max(), np.abs(batched - one_by_one).max())),
        "seconds": {name: timings.spread(name) for name in timings.seconds},
    }
    table = Table(title=f"Grad-CAM++ on {args.images} images (32 px), ViT dim {args.dim} depth {args.depth}, "
                        f"medians of {args.repeats} interleaved runs")
    for column in ("mode", "images/s", "relative", "spread %"):
        table.add_column(column)
    seconds = report["seconds"]
    table.add_row("loop: one compute_cams call per image", f"{report['single_images_per_second']:.1f}", "1.00",
                  f"{seconds['single']['spread_pct']:.1f}")
    table.add_row("one CAM object, batches of 1", f"{report['one_object_batch_1_images_per_second']:.1f}",
                  f"{single_s / one_by_one_s:.2f}", f"{seconds['one_object_batch_1']['spread_pct']:.1f}")
    table.add_row(f"batches of {args.batch_size}, one CAM object", f"{report['batched_images_per_second']:.1f}",
                  f"{report['speedup']:.2f}", f"{seconds['batched']['spread_pct']:.1f}")
    table.add_row(f"model forward+backward only, batches of {args.batch_size} vs 1", "",
                  f"{report['model_forward_backward_speedup']:.2f}",
                  f"{seconds['model_batched']['spread_pct']:.1f}")
    console = Console(width=120)
    console.print(table)
    console.print(f"largest difference between batched and single maps: {report['max_abs_difference']:.2e}")
    write_json(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
