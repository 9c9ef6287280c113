"""Images/s of class-conditional MAR sampling, with the time split between encoder, decoder and diffusion head.

    python -m experiments.benchmarks.mar_sampling --sizes tiny,mar_base --batch-sizes 1,16 --num-iter 64

Random weights (speed does not depend on them). On CUDA the clock waits for the device at every split.
Writes a JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from experiments.benchmarks.common import SplitTimer, add_device_options, device_and_dtype
from harmon.mar import MAR, MARConfig, mar_config

TINY = MARConfig(
    encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2,
    decoder_num_heads=4, diffloss_d=2, diffloss_w=128,
)


def bench(size: str, batch: int, num_iter: int, cfg: float, device: torch.device, dtype: torch.dtype) -> dict:
    config = TINY if size == "tiny" else mar_config(size)
    model = MAR(config).to(device, dtype).eval()
    labels = torch.arange(batch, device=device) % config.class_num
    model.sample_tokens(batch, num_iter=2, cfg=cfg, labels=labels, seed=0)  # warm-up
    timer = SplitTimer({"encoder": (model, "forward_mae_encoder"), "decoder": (model, "forward_mae_decoder"),
                        "diffusion": (model.diffloss, "sample")}, device)
    with timer.part("total"):
        model.sample_tokens(batch, num_iter=num_iter, cfg=cfg, labels=labels, seed=0)
    total = timer.seconds["total"]
    return {
        "size": size, "batch": batch, "num_iter": num_iter, "cfg": cfg, "device": str(device),
        "dtype": str(dtype).removeprefix("torch."), "seconds": total, "images_per_s": batch / total,
        "split_s": {k: timer.seconds[k] for k in ("encoder", "decoder", "diffusion")},
        "other_s": total - sum(timer.seconds[k] for k in ("encoder", "decoder", "diffusion")),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,mar_base", help="comma list of 'tiny', 'mar_base', 'mar_large', 'mar_huge'")
    parser.add_argument("--batch-sizes", default="1,16", help="comma list of batch sizes")
    parser.add_argument("--num-iter", type=int, default=64, help="MAR decoding steps")
    parser.add_argument("--cfg", type=float, default=2.9, help="guidance scale (1.0 = no CFG, half the work)")
    parser.add_argument("--out", default="runs/benchmarks/mar_sampling.json", help="JSON output path")
    add_device_options(parser)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    rows = [bench(size, int(b), args.num_iter, args.cfg, device, dtype)
            for size in args.sizes.split(",") for b in args.batch_sizes.split(",")]

    table = Table("model", "batch", "steps", "images/s", "total s", "encoder s", "decoder s", "diffusion s", "other s",
                  title=f"MAR class-conditional sampling on {device} ({str(dtype).removeprefix('torch.')}, cfg {args.cfg})")
    for r in rows:
        s = r["split_s"]
        table.add_row(r["size"], str(r["batch"]), str(r["num_iter"]), f"{r['images_per_s']:.3f}", f"{r['seconds']:.1f}",
                      f"{s['encoder']:.1f}", f"{s['decoder']:.1f}", f"{s['diffusion']:.1f}", f"{r['other_s']:.1f}")
    Console().print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
