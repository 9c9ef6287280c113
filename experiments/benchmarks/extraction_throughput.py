"""Feature-cache extraction against a bare loop calling the same model on the same tensors, and the peak memory
of extraction for a small and a large synthetic dataset (each in a fresh process); print a table, write JSON.

The bare loop and the pipeline with each worker count run once untimed at the timed setting, then take turns
for `--repeats` rounds; medians are reported.

    python -m experiments.benchmarks.extraction_throughput --out runs/benchmarks/extraction_throughput.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn

from encoders.base import Encoder, Preprocess
from experiments.benchmarks.common import (
    add_repeat_options,
    add_threads_option,
    interleave,
    machine,
    set_threads,
)
from harmon.utils.files import write_json
from harmon.utils.runtime import bf16_autocast
from probe.feature_cache import CachePlan
from probe.features import ExtractOptions, extract_features


class SmallViT(Encoder):
    """A randomly initialised timm ViT with a class token on small images (a stand-in for a real encoder)."""

    name = "small-vit"
    num_prefix_tokens = 1
    poolings = ("mean", "cls")

    def __init__(self, image_size: int = 32, patch: int = 4, dim: int = 192, depth: int = 6, heads: int = 3) -> None:
        from timm.models.vision_transformer import VisionTransformer

        super().__init__(Preprocess(image_size=image_size, crop="center"))
        torch.manual_seed(0)
        self.patch = patch
        self.vit = VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=dim, depth=depth,
                                     num_heads=heads, num_classes=0)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch, width // self.patch

    def num_layers(self) -> int:
        return len(self.vit.blocks)

    def cam_layer(self) -> nn.Module:
        return self.vit.blocks[-1]

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.vit.forward_features(pixels)


VIT_SHAPES = {
    "small": {"image_size": 32, "patch": 4, "dim": 192, "depth": 6, "heads": 3},
    "b16": {"image_size": 224, "patch": 16, "dim": 768, "depth": 12, "heads": 12},
}


class CellProjection(Encoder):
    """Cheap encoder for the memory runs: 4x4-pixel cell means projected to `dim` features."""

    name = "cell-projection"

    def __init__(self, image_size: int = 32, dim: int = 768) -> None:
        super().__init__(Preprocess(image_size=image_size, crop="center"))
        torch.manual_seed(0)
        self.proj = nn.Linear(3, dim)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // 4, width // 4

    def num_layers(self) -> int:
        return 1

    def cam_layer(self) -> nn.Module:
        return self.proj

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.proj(torch.nn.functional.avg_pool2d(pixels, 4).flatten(2).transpose(1, 2))


class SyntheticImages:
    """`count` random RGB images made on demand from their index (nothing held in memory), 10 classes."""

    def __init__(self, count: int, size: int = 32) -> None:
        self.count, self.size = count, size
        self.classes = [str(c) for c in range(10)]
        self.targets = np.arange(count) % 10
        self.cache_id = f"synthetic-{count}-{size}"

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        pixels = np.random.default_rng(index).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
        return Image.fromarray(pixels), int(self.targets[index])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images in the throughput comparison")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vit", choices=sorted(VIT_SHAPES), default="small",
                        help="the random timm ViT: 'small' (32 px, patch 4, dim 192, depth 6) or 'b16' "
                             "(ViT-B/16, 224 px)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="autocast of both loops")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1],
                        help="DataLoader worker counts of the pipeline (one variant each)")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[10_000, 50_000],
                        help="dataset sizes of the peak-RSS runs (none: skip them)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/extraction_throughput.json"))
    add_threads_option(parser, default=1)
    add_repeat_options(parser)
    return parser.parse_args()


def bare_loop(encoder: Encoder, pixels: torch.Tensor, args: argparse.Namespace) -> None:
    """The model over preprocessed tensors, batch by batch, under the same autocast, with nothing else around it."""
    with torch.inference_mode(), bf16_autocast(args.device, args.dtype == "bf16"):
        for i in range(0, len(pixels), args.batch_size):
            encoder(pixels[i : i + args.batch_size].to(args.device)).pooled.float().cpu()


def pipeline(encoder: Encoder, dataset: SyntheticImages, workers: int, args: argparse.Namespace) -> None:
    """extract_features into a fresh cache (key, allocation, loading, writes, checkpoints)."""
    with tempfile.TemporaryDirectory() as root:
        extract_features(encoder, dataset, CachePlan(root, "bench", dtype=args.dtype),
                         ExtractOptions(batch_size=args.batch_size, num_workers=workers, device=args.device,
                                        progress=False))


def peak_rss(count: int, batch_size: int, workers: int, queue: multiprocessing.Queue) -> None:
    """Run in a fresh process: extract `count` synthetic images, report peak RSS (MB) of this process and of
    its loader workers."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        extract_features(CellProjection(), SyntheticImages(count), CachePlan(root, "bench"),
                         ExtractOptions(batch_size=batch_size, num_workers=workers, device="cpu", progress=False))
        seconds = time.perf_counter() - start
    queue.put({"images": count, "seconds": seconds,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})


def measure_memory(sizes: list[int], batch_size: int, workers: int) -> list[dict]:
    context = multiprocessing.get_context("spawn")
    results = []
    for count in sizes:
        queue = context.Queue()
        process = context.Process(target=peak_rss, args=(count, batch_size, workers, queue))
        process.start()
        results.append(queue.get())
        process.join()
    return results


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    shape = VIT_SHAPES[args.vit]
    encoder = SmallViT(**shape).to(args.device).eval()
    dataset = SyntheticImages(args.images, shape["image_size"])
    pixels = torch.stack([encoder.preprocess(dataset[i][0]) for i in range(len(dataset))])
    variants = {"bare": lambda: bare_loop(encoder, pixels, args)}
    variants |= {f"workers_{w}": partial(pipeline, encoder, dataset, w, args) for w in args.workers}
    timings = interleave(variants, args.repeats, args.device, args.warmup)
    bare = timings.median("bare")
    memory = measure_memory(args.memory_sizes, args.batch_size, max(args.workers))
    report = {
        "encoder": f"small-vit (random timm ViT, {shape['image_size']} px, patch {shape['patch']}, "
                   f"dim {shape['dim']}, depth {shape['depth']})",
        "vit": args.vit, "images": args.images, "batch_size": args.batch_size, "dtype": args.dtype,
        "device": args.device, "repeats": args.repeats, **machine(),
        "bare_images_per_second": args.images / bare, "bare_seconds": timings.spread("bare"),
        "pipeline": [{"workers": w, "images_per_second": args.images / timings.median(f"workers_{w}"),
                      "pipeline_over_bare": bare / timings.median(f"workers_{w}"),
                      "seconds": timings.spread(f"workers_{w}")} for w in args.workers],
        "memory_encoder": "cell-projection (768 features)", "memory_workers": max(args.workers), "memory": memory,
        "rss_growth_mb": memory[-1]["peak_rss_mb"] - memory[0]["peak_rss_mb"] if memory else None,
    }
    console = Console(width=120)
    table = Table(title=f"extraction of {args.images} synthetic {shape['image_size']} px images, batch "
                        f"{args.batch_size}, {args.dtype}, medians of {args.repeats} interleaved runs")
    for column in ("loop", "images/s", "relative", "spread %"):
        table.add_column(column)
    table.add_row("bare model loop (preprocessed tensors)", f"{report['bare_images_per_second']:.0f}", "1.00",
                  f"{report['bare_seconds']['spread_pct']:.1f}")
    for row in report["pipeline"]:
        table.add_row(f"extract_features ({row['workers']} loader workers)", f"{row['images_per_second']:.0f}",
                      f"{row['pipeline_over_bare']:.2f}", f"{row['seconds']['spread_pct']:.1f}")
    console.print(table)
    memory_table = Table(title="peak RSS of extraction (fresh process each)")
    for column in ("images", "seconds", "peak RSS MB", "workers peak RSS MB"):
        memory_table.add_column(column)
    for row in memory:
        memory_table.add_row(str(row["images"]), f"{row['seconds']:.1f}", f"{row['peak_rss_mb']:.0f}",
                             f"{row['workers_peak_rss_mb']:.0f}")
    if memory:
        console.print(memory_table)
    write_json(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
