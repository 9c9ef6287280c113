"""Extraction time of L layers in one pass against one layer (the final features): a ViT-B/16-shaped timm model
with random weights, a small batch on the CPU. Both the full extraction into fresh feature caches (one per layer)
and the encoder forward alone are timed, in interleaved repeats after a warm-up, and the medians compared; prints
a table and writes JSON.

    python -m experiments.benchmarks.layers_extraction --threads 1 --out runs/benchmarks/layers_extraction.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from rich.console import Console
from rich.table import Table

from encoders.registry import create_encoder
from experiments.benchmarks.common import add_device_options, device_and_dtype, interleave, machine
from probe.conditions import Conditions
from probe.datasets import ArrayImageDataset
from probe.feature_cache import CachePlan
from probe.features import ExtractOptions, extract_layer_features


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm model name (random weights)")
    parser.add_argument("--layers", default="all", help="'all' or comma-separated block indices")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each case (after one warm-up)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/layers_extraction.json"))
    add_device_options(parser)
    parser.set_defaults(threads=1)
    return parser.parse_args()


def extraction(encoder, dataset, layers: list[int | None], options: ExtractOptions,
               dtype: torch.dtype) -> Callable[[], None]:
    """Extract `layers` into fresh caches (removed afterwards)."""

    def run() -> None:
        root = tempfile.mkdtemp(prefix="layers-benchmark-")
        try:
            extract_layer_features(encoder, dataset, CachePlan(root, "bench", dtype=dtype), layers, options)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return run


def main() -> None:
    args = parse_args()
    device, dtype = device_and_dtype(args)
    encoder = create_encoder(f"timm:{args.model}", weights="random", seed=0).to(device)
    layers = Conditions.parse(args.layers, None).layers_of(encoder, args.model, None)
    size = encoder.preprocess.image_size
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size), dtype=np.uint8)
    dataset = ArrayImageDataset(images, [i % 10 for i in range(args.images)], [str(i) for i in range(10)])
    options = ExtractOptions(batch_size=args.batch_size, num_workers=0, device=device, progress=False)
    pixels = torch.stack([encoder.preprocess(dataset[i][0]) for i in range(args.batch_size)]).to(device)

    def forward(chosen: list[int | None]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                encoder.layer_features(pixels, chosen)
        return run

    before = machine()
    timed = interleave({"extract_one": extraction(encoder, dataset, [None], options, dtype),
                        "extract_all": extraction(encoder, dataset, layers, options, dtype),
                        "forward_one": forward([None]), "forward_all": forward(layers)}, args.repeats, device)
    medians = {name: timed.median(name) for name in timed.seconds}
    report = {
        "model": f"timm {args.model}, random weights ({sum(p.numel() for p in encoder.parameters()) / 1e6:.1f} M "
                 f"parameters), {size} px, {encoder.num_layers()} blocks",
        "layers": layers, "num_layers": len(layers), "images": args.images, "batch_size": args.batch_size,
        "repeats": args.repeats, "threads": before["threads"], "device": str(device), "dtype": str(dtype),
        "timm": timm.__version__, "torch": torch.__version__, "machine_before": before, "machine_after": machine(),
        "seconds": timed.seconds, "median_seconds": medians,
        "timings": {name: timed.spread(name) for name in timed.seconds},
        "extraction_ratio": medians["extract_all"] / medians["extract_one"],
        "forward_ratio": medians["forward_all"] / medians["forward_one"],
        "per_repeat_extraction_ratios": [a / b for a, b in zip(timed.seconds["extract_all"],
                                                                timed.seconds["extract_one"], strict=True)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table("case", "1 layer (s)", f"{len(layers)} layers (s)", "ratio")
    table.add_row(f"extraction of {args.images} images into the cache", f"{medians['extract_one']:.2f}",
                  f"{medians['extract_all']:.2f}", f"{report['extraction_ratio']:.3f}")
    table.add_row(f"encoder forward, batch {args.batch_size}", f"{medians['forward_one']:.3f}",
                  f"{medians['forward_all']:.3f}", f"{report['forward_ratio']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"medians of {args.repeats} interleaved repeats, {before['threads']} thread(s), load average "
                  f"{before['load_average'][0]:.1f} -> {report['machine_after']['load_average'][0]:.1f}; wrote "
                  f"{args.out}")


if __name__ == "__main__":
    main()
