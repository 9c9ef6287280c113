"""One class-conditional MAR sampling composed from timed parts, for sizes where whole interleaved samplings do
not fit the time at hand (MAR-B at batch 16 with guidance is about 2e14 FLOP; on 2 CPU cores, tens of minutes per
sampling). Compares the sampling loop as it runs now (`fast`) with the loop it replaced (`reference`).

    python -m experiments.benchmarks.mar_sampling_parts --size mar_base --batch 16 --num-iter 64

- Head: at every reveal size k the mask schedule uses, one head sampling of batch*k tokens (twice the rows with
  guidance), `fast` (`DiffLoss.sample`: condition and step embeddings once per loop, coefficients from device
  tables) and `reference` (the whole network and seven float64 schedule gathers at every step, as the loop ran
  before), interleaved; both draw the same noise, and their largest difference is reported.
- Encoder + decoder: one sampling step at a few steps of the schedule (their visible and revealed counts),
  `fast` (the decoder's last block at the revealed rows only) and `reference` (the whole decoder, then the
  revealed rows picked), interleaved, with the largest difference of their conditions; interpolated linearly
  over the visible count to every step.
- Totals: the head's time summed over the schedule's reveal sizes plus the encoder+decoder time summed over its
  steps. Left out: the loop's gathers and scatters of tokens (`mar_sampling`'s "other" column measures them).
- FLOP/s of each part (arithmetic counted by torch's FlopCounterMode) against the fp32 matmul rate measured in
  the same run at the parts' own matmul shapes and at 2048^3.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from experiments.benchmarks.common import (
    add_repeat_options,
    add_threads_option,
    interleave,
    machine,
    set_threads,
)
from experiments.benchmarks.mar_sampling import build
from harmon.diffloss import DiffLoss
from harmon.mar import MAR, mask_from_orders, mask_schedule
from harmon.utils.files import write_json


def schedule_steps(seq_len: int, num_iter: int) -> list[tuple[int, int]]:
    """(visible tokens before the step, tokens revealed by it) for each step of masked decoding."""
    steps, masked = [], seq_len
    for step, after in enumerate(mask_schedule(seq_len, num_iter)):
        left = 0 if step == num_iter - 1 else after
        steps.append((seq_len - masked, masked - left))
        masked = after
    return steps


def reference_sample(head: DiffLoss, z: torch.Tensor, cfg: float, generator: torch.Generator) -> torch.Tensor:
    """The per-step loop: the whole network with per-row timesteps and every coefficient gathered at each step."""
    diffusion = head.gen_diffusion
    x = torch.randn(len(z) // 2, head.in_channels, generator=generator)
    x = torch.cat([x, x])
    for i in reversed(range(diffusion.num_timesteps)):
        t = torch.full((len(x),), i, dtype=torch.long)
        pred = diffusion.p_mean_variance(head.net.forward_with_cfg(x, diffusion.timestep_map[t], z, cfg), x, t)
        noise = torch.randn(x.shape, generator=generator)
        x = pred["mean"] + (1.0 if i > 0 else 0.0) * torch.exp(0.5 * pred["log_variance"]) * noise
    return x


def flops(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def compare(variants: dict, args: argparse.Namespace) -> dict:
    """`fast` and `reference` interleaved: each one's median seconds and the largest difference of their results."""
    timings = interleave(variants, args.repeats, "cpu", args.warmup)
    fast, reference = timings.results["fast"], timings.results["reference"]
    return {"max_abs_diff": (fast - reference).abs().max().item(), "max_abs": reference.abs().max().item(),
            **{f"{name}_s": timings.spread(name) for name in variants}}


def counted(variants: dict, times: int = 1) -> dict:
    """Each variant's FLOP (one untimed run), multiplied by `times`."""
    return {f"{name}_flop": flops(run) * times for name, run in variants.items()}


def head_row(head: DiffLoss, z: torch.Tensor, cfg: float, args: argparse.Namespace) -> dict:
    """Both loops on the conditions `z`: median seconds, FLOP and the largest difference of their samples."""
    variants = {"fast": lambda: head.sample(z, cfg=cfg, generator=torch.Generator().manual_seed(0)),
                "reference": lambda: reference_sample(head, z, cfg, torch.Generator().manual_seed(0))}
    return {"rows": len(z), **compare(variants, args), **(counted(variants) if args.count_flops else {})}


def head_parts(model: MAR, batch: int, sizes: list[int], cfg: float, args: argparse.Namespace) -> list[dict]:
    """One row per reveal size k (batch * k tokens, twice the rows with guidance)."""
    rows = []
    for k in sizes:
        z = torch.randn(2 * batch * k, model.config.decoder_embed_dim, generator=torch.Generator().manual_seed(k))
        rows.append({"k": k, **head_row(model.diffloss, z, cfg, args)})
    return rows


def guided_step(model: MAR, batch: int, visible: int, k: int, generator: torch.Generator) -> dict:
    """One guided sampling step's encoder and decoder with `visible` tokens unmasked and `k` revealed in every row:
    `fast` computes the decoder's last block at the k revealed rows only, `reference` the whole decoder (then picks
    the k rows), as the loop did before."""
    config, grid = model.config, model.default_grid()
    tokens = torch.randn(2 * batch, config.seq_len, model.token_embed_dim, generator=generator)
    orders = model.sample_orders(batch, config.seq_len, generator)
    masked = config.seq_len - visible
    mask = mask_from_orders(orders, masked).repeat(2, 1)
    rows = orders[:, masked - k : masked].sort(dim=1).values.repeat(2, 1)
    labels = torch.arange(batch) % config.class_num
    cond = torch.cat([model.class_emb(labels), model.fake_latent.expand(batch, -1)])

    def step(fast: bool) -> torch.Tensor:
        x = model.forward_mae_encoder(tokens, mask, cond, grid, visible=visible)
        if fast:
            return model.forward_mae_decoder(x, mask, grid, visible=visible, rows=rows)
        z = model.forward_mae_decoder(x, mask, grid, visible=visible)
        return z.gather(1, rows[..., None].expand(-1, -1, z.shape[-1]))

    return {"fast": lambda: step(True), "reference": lambda: step(False)}


def encoder_decoder_parts(model: MAR, batch: int, points: list[tuple[int, int]],
                          args: argparse.Namespace) -> list[dict]:
    """Per (visible, revealed) step: median seconds of one guided step's encoder and decoder both ways, the largest
    difference of their conditions, and the FLOP."""
    generator, rows = torch.Generator().manual_seed(0), []
    for v, k in points:
        row = {"visible": v, "k": k, **compare(guided_step(model, batch, v, k, generator), args)}
        if args.count_flops:  # every count is linear in the batch
            row.update(counted(guided_step(model, 1, v, k, generator), batch))
        rows.append(row)
    return rows


def matmul_rate(m: int, k: int, n: int, repeats: int) -> float:
    """GFLOP/s of an fp32 (m, k) @ (k, n) product (median of `repeats` timed runs of about 20 GFLOP each)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    count = max(1, int(2e10 // (2 * m * k * n)))

    def run() -> None:
        for _ in range(count):
            torch.mm(a, b)

    return 2 * m * k * n * count / interleave({"mm": run}, repeats, "cpu", 1).median("mm") / 1e9


def compose(steps: list[tuple[int, int]], heads: list[dict], encdec: list[dict]) -> dict:
    """Seconds (and FLOP, when counted) of a whole sampling from the parts."""
    reveals = Counter(k for _, k in steps)
    by_k = {row["k"]: row for row in heads}
    visible, known = [v for v, _ in steps], [row["visible"] for row in encdec]

    def encoder_decoder(values: list[float]) -> float:
        return float(np.interp(visible, known, values).sum())

    total = {}
    for name in ("fast", "reference"):
        total[f"encoder_decoder_{name}_s"] = encoder_decoder([row[f"{name}_s"]["median_s"] for row in encdec])
        total[f"head_{name}_s"] = sum(n * by_k[k][f"{name}_s"]["median_s"] for k, n in reveals.items())
        total[f"sampling_{name}_s"] = total[f"encoder_decoder_{name}_s"] + total[f"head_{name}_s"]
        if f"{name}_flop" in encdec[0]:
            total[f"encoder_decoder_{name}_flop"] = encoder_decoder([row[f"{name}_flop"] for row in encdec])
            total[f"head_{name}_flop"] = sum(n * by_k[k][f"{name}_flop"] for k, n in reveals.items())
    for part in ("sampling", "encoder_decoder", "head"):
        total[f"{part}_speedup"] = total[f"{part}_reference_s"] / total[f"{part}_fast_s"]
    return total


def print_table(report: dict) -> None:
    t, peak = report["total"], report["matmul_gflops"]["square_2048"]
    table = Table("part", "seconds", "share of sampling", "GFLOP/s", "of 2048^3 matmul peak",
                  title=f"{report['size']} batch {report['batch']}, {report['num_iter']} steps, cfg {report['cfg']} "
                        f"({report['threads']} threads): sampling {t['sampling_speedup']:.3f}x, encoder+decoder "
                        f"{t['encoder_decoder_speedup']:.3f}x, head {t['head_speedup']:.3f}x")
    for name in ("fast", "reference"):
        for part, label in (("encoder_decoder", "encoder+decoder"), ("head", "head")):
            seconds, flop = t[f"{part}_{name}_s"], t.get(f"{part}_{name}_flop")
            rate = None if flop is None else flop / seconds / 1e9
            table.add_row(f"{label} ({name})", f"{seconds:.4g}", f"{100 * seconds / t[f'sampling_{name}_s']:.0f} %",
                          "-" if rate is None else f"{rate:.1f}", "-" if rate is None else f"{100 * rate / peak:.0f} %")
    table.add_row("sampling (fast / reference)", f"{t['sampling_fast_s']:.4g} / {t['sampling_reference_s']:.4g}",
                  "", "", "")
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mar_base", help="'tiny', 'mar_base', 'mar_large' or 'mar_huge'")
    parser.add_argument("--batch", type=int, default=16, help="images per sampling (rows are doubled by guidance)")
    parser.add_argument("--num-iter", type=int, default=64, help="MAR decoding steps")
    parser.add_argument("--diffusion-steps", default="100", help="diffusion respacing of the head (100 as released)")
    parser.add_argument("--cfg", type=float, default=2.9, help="guidance scale (must not be 1: the loops compared are guided)")
    parser.add_argument("--visible-points", type=int, default=4,
                        help="schedule steps, evenly spread, at which the encoder+decoder step is timed (interpolated "
                             "between by visible count)")
    parser.add_argument("--no-flops", dest="count_flops", action="store_false",
                        help="skip counting the arithmetic (one more untimed run of each part)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/mar_sampling_parts.json"), help="JSON output path")
    add_threads_option(parser)
    add_repeat_options(parser)
    args = parser.parse_args()
    if args.cfg == 1.0:
        parser.error("--cfg 1.0 turns guidance off; the loops compared here are the guided ones")
    threads = set_threads(args.threads)
    model = build(args.size, args.diffusion_steps, torch.device("cpu"), torch.float32)
    config = model.config
    steps = schedule_steps(config.seq_len, args.num_iter)
    points = [steps[i] for i in sorted({int(round(i)) for i in np.linspace(0, len(steps) - 1, args.visible_points)})]
    report = {"size": args.size, "batch": args.batch, "num_iter": args.num_iter, "cfg": args.cfg,
              "diffusion_steps": args.diffusion_steps, **machine(), "threads": threads, "args": vars(args),
              "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "schedule": steps}
    width, dim, tokens = config.diffloss_w, config.decoder_embed_dim, config.seq_len + config.buffer_size
    shapes = {"square_2048": (2048, 2048, 2048), "head_modulation": (2 * args.batch * 4, width, 3 * width),
              "decoder_mlp": (2 * args.batch * tokens, dim, 4 * dim)}
    report["matmul_gflops"] = {name: matmul_rate(*shape, args.repeats) for name, shape in shapes.items()}
    with torch.no_grad():
        report["head"] = head_parts(model, args.batch, sorted({k for _, k in steps}), args.cfg, args)
        write_json(args.out, report)
        report["encoder_decoder"] = encoder_decoder_parts(model, args.batch, points, args)
    report["total"] = compose(steps, report["head"], report["encoder_decoder"])
    write_json(args.out, report)
    print_table(report)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
