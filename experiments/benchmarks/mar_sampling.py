"""Images/s of class-conditional MAR sampling (median of interleaved repeats), eager and, with --compile, a
torch.compile'd copy of the same weights, with the time split between encoder, decoder and diffusion head.

    python -m experiments.benchmarks.mar_sampling --sizes tiny,mar_base --batch-sizes 1,16 --num-iter 64

Random weights (speed does not depend on them). Each variant first runs `--warmup` whole untimed samplings at
the timed setting (compilation happens there), then the variants take turns for `--repeats` rounds; the clock
waits for the device around each sampling. The split comes from one more run per variant with the clock waiting
at every part boundary, so it is reported apart from the throughput. Writes a JSON file after every batch size
and prints a table.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from experiments.benchmarks.common import (
    SplitTimer,
    add_device_options,
    add_repeat_options,
    add_sampling_options,
    device_and_dtype,
    interleave,
    machine,
    timed,
)
from harmon.compile import compile_for_sampling
from harmon.mar import MAR, MARConfig, mar_config
from harmon.utils.files import write_json
from harmon.utils.runtime import bf16_autocast

TINY = MARConfig(
    encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2,
    decoder_num_heads=4, diffloss_d=2, diffloss_w=128,
)
PARTS = ("encoder", "decoder", "diffusion")


def build(size: str, diffusion_steps: str, device: torch.device, dtype: torch.dtype) -> MAR:
    config = TINY if size == "tiny" else mar_config(size)
    torch.manual_seed(0)
    return MAR(replace(config, num_sampling_steps=diffusion_steps)).to(device, dtype).eval()


def variants(model: MAR, args: argparse.Namespace) -> dict[str, MAR]:
    """The eager model and, with --compile, a compiled copy of it."""
    if args.compile == "off":
        return {"eager": model}
    return {"eager": model, "compiled": compile_for_sampling(copy.deepcopy(model), args.compile, args.compile_backend)}


def split(model: MAR, sample, device: torch.device) -> dict:
    """Seconds per part of one sampling with the clock waiting at every part boundary."""
    timer = SplitTimer({"encoder": (model, "forward_mae_encoder"), "decoder": (model, "forward_mae_decoder"),
                        "diffusion": (model.diffloss, "sample")}, device)
    try:
        total, _ = timed(sample, device)
    finally:
        timer.restore()
    parts = {k: timer.seconds[k] for k in PARTS}
    return {"split_run_s": total, "split_s": parts, "other_s": total - sum(parts.values())}


def bench(size: str, models: dict[str, MAR], batch: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One row per variant: median images/s over interleaved repeats, spread, split, and agreement with eager."""
    first = next(iter(models.values()))
    labels = torch.arange(batch, device=device) % first.config.class_num

    def sampler(model: MAR):
        def sample() -> torch.Tensor:
            with bf16_autocast(device, args.autocast):
                return model.sample_tokens(batch, num_iter=args.num_iter, cfg=args.cfg, labels=labels, seed=0)
        return sample

    samplers = {name: sampler(model) for name, model in models.items()}
    timings = interleave(samplers, args.repeats, device, args.warmup)
    eager = timings.results["eager"].float()
    rows = []
    for name, model in models.items():
        median = timings.median(name)
        difference = (timings.results[name].float() - eager).abs().max().item()
        rows.append({
            "size": size, "batch": batch, "variant": name, "num_iter": args.num_iter, "cfg": args.cfg,
            "diffusion_steps": args.diffusion_steps, "seconds": timings.spread(name), "images_per_s": batch / median,
            "speedup_over_eager": timings.median("eager") / median,
            "max_abs_diff_vs_eager": difference, "max_abs_eager": eager.abs().max().item(),
            **split(model, samplers[name], device),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        })
    return rows


def print_table(report: dict) -> None:
    table = Table("model", "batch", "variant", "images/s", "median s", "spread %", "warm-up s", "speed-up",
                  "encoder s", "decoder s", "diffusion s", "other s",
                  title=f"MAR class-conditional sampling on {report['device']} ({report['dtype']}, "
                        f"autocast {report['autocast']}, compile {report['compile']}, {report['threads']} threads)")
    for r in report["rows"]:
        s, t = r["split_s"], r["seconds"]
        table.add_row(r["size"], str(r["batch"]), r["variant"], f"{r['images_per_s']:.3f}", f"{t['median_s']:.2f}",
                      f"{t['spread_pct']:.1f}", f"{sum(t['warmup_s']):.1f}", f"{r['speedup_over_eager']:.2f}",
                      f"{s['encoder']:.2f}", f"{s['decoder']:.2f}", f"{s['diffusion']:.2f}", f"{r['other_s']:.2f}")
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,mar_base", help="comma list of 'tiny', 'mar_base', 'mar_large', 'mar_huge'")
    parser.add_argument("--batch-sizes", default="1,16", help="comma list of batch sizes")
    parser.add_argument("--num-iter", type=int, default=64, help="MAR decoding steps")
    parser.add_argument("--diffusion-steps", default="100", help="diffusion respacing of the head (100 as released)")
    parser.add_argument("--cfg", type=float, default=2.9, help="guidance scale (1.0 = no CFG, half the work)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/mar_sampling.json"), help="JSON output path")
    add_device_options(parser)
    add_repeat_options(parser)
    add_sampling_options(parser)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    report = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "autocast": args.autocast,
              "compile": args.compile, "compile_backend": args.compile_backend, **machine(),
              "args": vars(args), "rows": []}
    for size in args.sizes.split(","):
        models = variants(build(size, args.diffusion_steps, device, dtype), args)
        for batch in args.batch_sizes.split(","):
            report["rows"] += bench(size, models, int(batch), args, device)
            write_json(args.out, report)
        del models
    print_table(report)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
