"""Grad-CAM++ throughput of `compute_cams` in batches against a loop over single images (same encoder, probe
head and images; the maps are checked to agree), beside the batching gain of the model's own forward+backward
(the ceiling on a CPU, where compute grows with the batch); print a table and write JSON.

    python -m experiments.benchmarks.cam_batched --out runs/benchmarks/cam_batched.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from experiments.benchmarks.extraction_throughput import SmallViT
from probe.cam import ProbeClassifier, compute_cams
from probe.linear import LinearProbeHead


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dim", type=int, default=192, help="ViT width")
    parser.add_argument("--depth", type=int, default=6, help="ViT blocks")
    parser.add_argument("--heads", type=int, default=3, help="ViT attention heads")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats; the fastest of each is kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/cam_batched.json"))
    return parser.parse_args()


def timed(function, repeats: int) -> tuple[np.ndarray, float]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return result, best


def forward_backward(model: ProbeClassifier, images: torch.Tensor, batch_size: int) -> None:
    """The model's own work in a CAM: forward, then backward of one logit per image to the input."""
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].clone().requires_grad_(True)
        model(batch)[:, 0].sum().backward()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    encoder = SmallViT(dim=args.dim, depth=args.depth, heads=args.heads).to(args.device).eval().requires_grad_(False)
    head = LinearProbeHead(args.dim, 10).to(args.device)
    images = torch.randn(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    classes = [i % 10 for i in range(args.images)]
    compute_cams(encoder, head, images[:2], classes[:2])  # warm-up
    batched, batched_s = timed(lambda: compute_cams(encoder, head, images, classes, batch_size=args.batch_size),
                               args.repeats)
    single, single_s = timed(lambda: np.concatenate([compute_cams(encoder, head, images[i : i + 1], [c])
                                                     for i, c in enumerate(classes)]), args.repeats)
    one_by_one, one_by_one_s = timed(lambda: compute_cams(encoder, head, images, classes, batch_size=1), args.repeats)
    model = ProbeClassifier(encoder, head)
    _, model_single_s = timed(lambda: forward_backward(model, images, 1), args.repeats)
    _, model_batched_s = timed(lambda: forward_backward(model, images, args.batch_size), args.repeats)
    report = {
        "encoder": f"timm ViT, 32 px, patch 4, dim {args.dim}, depth {args.depth}, frozen; probe: BN + Linear",
        "images": args.images, "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "batched_images_per_second": args.images / batched_s, "single_images_per_second": args.images / single_s,
        "one_object_batch_1_images_per_second": args.images / one_by_one_s,
        "speedup": single_s / batched_s, "speedup_over_one_object_batch_1": one_by_one_s / batched_s,
        "model_forward_backward_speedup": model_single_s / model_batched_s,
        "max_abs_difference": float(max(np.abs(batched - single).max(), np.abs(batched - one_by_one).max())),
    }
    table = Table(title=f"Grad-CAM++ on {args.images} images (32 px), ViT dim {args.dim} depth {args.depth}")
    for column in ("mode", "images/s", "relative"):
        table.add_column(column)
    table.add_row("loop: one compute_cams call per image", f"{report['single_images_per_second']:.1f}", "1.00")
    table.add_row("one CAM object, batches of 1", f"{report['one_object_batch_1_images_per_second']:.1f}",
                  f"{single_s / one_by_one_s:.2f}")
    table.add_row(f"batches of {args.batch_size}, one CAM object", f"{report['batched_images_per_second']:.1f}",
                  f"{report['speedup']:.2f}")
    table.add_row(f"model forward+backward only, batches of {args.batch_size} vs 1", "",
                  f"{report['model_forward_backward_speedup']:.2f}")
    console = Console(width=120)
    console.print(table)
    console.print(f"largest difference between batched and single maps: {report['max_abs_difference']:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
