"""Feature-cache extraction against a bare loop calling the same model on the same tensors, and the peak memory
of extraction for a small and a large synthetic dataset (each in a fresh process); print a table, write JSON.

    python -m experiments.benchmarks.extraction_throughput --out runs/benchmarks/extraction_throughput.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn

from encoders.base import Encoder, Preprocess
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
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1],
                        help="DataLoader worker counts of the pipeline (one timed run each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model (both runs)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest of each is kept")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[10_000, 50_000],
                        help="dataset sizes of the peak-RSS runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/extraction_throughput.json"))
    return parser.parse_args()


def bare_loop(encoder: Encoder, pixels: torch.Tensor, batch_size: int, device: str) -> float:
    """Seconds to run the model over preprocessed tensors, batch by batch, with nothing else around it."""
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            encoder(pixels[i : i + batch_size].to(device)).pooled.cpu()
    return time.perf_counter() - start


def pipeline(encoder: Encoder, dataset: SyntheticImages, workers: int, args: argparse.Namespace) -> float:
    """Seconds for extract_features into a fresh cache (key, allocation, loading, writes, checkpoints)."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        extract_features(encoder, dataset, CachePlan(root, "bench"),
                         ExtractOptions(batch_size=args.batch_size, num_workers=workers, device=args.device,
                                        progress=False))
        return time.perf_counter() - start


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
    torch.set_num_threads(args.threads)
    encoder = SmallViT().to(args.device).eval()
    dataset = SyntheticImages(args.images)
    pixels = torch.stack([encoder.preprocess(dataset[i][0]) for i in range(len(dataset))])
    bare_loop(encoder, pixels[: 4 * args.batch_size], args.batch_size, args.device)  # warm-up
    bare = min(bare_loop(encoder, pixels, args.batch_size, args.device) for _ in range(args.repeats))
    piped = {w: min(pipeline(encoder, dataset, w, args) for _ in range(args.repeats)) for w in args.workers}
    memory = measure_memory(args.memory_sizes, args.batch_size, max(args.workers))
    report = {
        "encoder": "small-vit (timm ViT, 32 px, patch 4, dim 192, depth 6)", "images": args.images,
        "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "bare_images_per_second": args.images / bare,
        "pipeline": [{"workers": w, "images_per_second": args.images / t, "pipeline_over_bare": bare / t}
                     for w, t in piped.items()],
        "memory_encoder": "cell-projection (768 features)", "memory_workers": max(args.workers), "memory": memory,
        "rss_growth_mb": memory[-1]["peak_rss_mb"] - memory[0]["peak_rss_mb"],
    }
    console = Console(width=120)
    table = Table(title=f"extraction of {args.images} synthetic 32 px images, batch {args.batch_size}")
    for column in ("loop", "images/s", "relative"):
        table.add_column(column)
    table.add_row("bare model loop (preprocessed tensors)", f"{report['bare_images_per_second']:.0f}", "1.00")
    for row in report["pipeline"]:
        table.add_row(f"extract_features ({row['workers']} loader workers)", f"{row['images_per_second']:.0f}",
                      f"{row['pipeline_over_bare']:.2f}")
    console.print(table)
    memory_table = Table(title="peak RSS of extraction (fresh process each)")
    for column in ("images", "seconds", "peak RSS MB", "workers peak RSS MB"):
        memory_table.add_column(column)
    for row in memory:
        memory_table.add_row(str(row["images"]), f"{row['seconds']:.1f}", f"{row['peak_rss_mb']:.0f}",
                             f"{row['workers_peak_rss_mb']:.0f}")
    console.print(memory_table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
