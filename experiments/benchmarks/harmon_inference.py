"""Harmon inference speed: text-to-image images/s (eager, a torch.compile'd copy with --compile, and the prompt
recomputed every step instead of cached) with a time split, and answering tokens/s of the whole decoding call.

    python -m experiments.benchmarks.harmon_inference --sizes tiny,harmon-0.5b --batch-sizes 1,8 --steps 64

Random weights (speed does not depend on them): 'tiny' is the test-size model; 'harmon-0.5b' has the shapes of
the release (Qwen2.5-0.5B-Instruct dims, MAR-B, KL-16) with a tiny tokenizer. Every variant first runs
`--warmup` whole untimed calls at the timed setting, then the variants take turns for `--repeats` rounds and
medians are reported; the clock waits for the device around each call. Generation times `generate_images`
(prompt, decoding, VAE); its split comes from one more run per variant with the clock waiting at every part
boundary. Answering times the visual features, the prompt and `generate_ids` (LLM, lm_head, token picking) for
one and for `--answer-tokens` new tokens; the difference gives the decoding rate. Writes a JSON file after every
measurement and prints tables.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
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
from harmon.generation import generate_images
from harmon.harmon_loading import paper_harmon_config
from harmon.model import Harmon
from harmon.prompts import preprocess_image
from harmon.tiny import TINY_CORPUS, TINY_MAR, tiny_harmon
from harmon.tokenizer import build_tiny_tokenizer
from harmon.understanding import build_understanding_inputs, generate_ids
from harmon.utils.files import write_json
from harmon.utils.runtime import bf16_autocast

PROMPT = "a photo of a red cube on top of a blue sphere, studio lighting"
QUESTION = "Describe the image in detail."
PARTS = ("llm", "mar_encoder", "mar_decoder", "diffusion", "vae_decode")


def build(size: str, diffusion_steps: str, device: torch.device, dtype: torch.dtype) -> Harmon:
    if size == "tiny":
        model = tiny_harmon(mar=replace(TINY_MAR, num_sampling_steps=diffusion_steps))
    elif size == "harmon-0.5b":
        config = paper_harmon_config("harmon-0.5b", image_size=512)
        config = replace(config, mar=replace(config.mar, num_sampling_steps=diffusion_steps))
        torch.manual_seed(0)
        with torch.device(device):
            model = Harmon(config, build_tiny_tokenizer(TINY_CORPUS))
    else:
        raise SystemExit(f"unknown size {size!r}; use 'tiny' or 'harmon-0.5b'")
    return model.to(device, dtype).eval()


def generation_variants(model: Harmon, compiled: Harmon | None, batch: int, args: argparse.Namespace
                        ) -> dict[str, tuple[Harmon, bool]]:
    """name -> (model, reuse the prompt cache): eager, compiled with --compile, recomputed at --no-cache-batch."""
    chosen = {"eager": (model, True)}
    if compiled is not None:
        chosen["compiled"] = (compiled, True)
    if batch == args.no_cache_batch:
        chosen["recompute-prompt"] = (model, False)
    return chosen


def split(model: Harmon, generate, device: torch.device, steps: int, reuse: bool) -> dict:
    """Seconds per part of one generation with the clock waiting at every part boundary."""
    timer = SplitTimer({"llm": (model.llm.model, "forward"), "mar_encoder": (model.mar, "forward_mae_encoder"),
                        "mar_decoder": (model.mar, "forward_mae_decoder"),
                        "diffusion": (model.mar.diffloss, "sample"), "vae_decode": (model.vae, "decode")}, device)
    try:
        total, _ = timed(generate, device)
    finally:
        timer.restore()
    llm_calls = timer.calls["llm"]
    parts = {part: timer.seconds[part] for part in PARTS}
    return {"split_run_s": total, "split_s": parts, "other_s": total - sum(parts.values()),
            "prefill_s": llm_calls[0] if reuse else None, "llm_per_step_s": sum(llm_calls[int(reuse):]) / steps}


def bench_generation(size: str, model: Harmon, compiled: Harmon | None, batch: int, args: argparse.Namespace,
                     device: torch.device) -> list[dict]:
    """One row per variant: median images/s over interleaved repeats, spread, split, and agreement with eager."""
    chosen = generation_variants(model, compiled, batch, args)

    def generator(model: Harmon, reuse: bool):
        def generate() -> torch.Tensor:
            with bf16_autocast(device, args.autocast):
                return generate_images(model, [PROMPT] * batch, steps=args.steps, cfg=args.cfg, seed=0,
                                       image_size=args.image_size, reuse_prompt_cache=reuse)
        return generate

    runs = {name: generator(m, reuse) for name, (m, reuse) in chosen.items()}
    timings = interleave(runs, args.repeats, device, args.warmup)
    eager = timings.results["eager"]
    rows = []
    for name, (m, reuse) in chosen.items():
        median = timings.median(name)
        rows.append({
            "size": size, "batch": batch, "variant": name, "steps": args.steps, "image_size": args.image_size,
            "cfg": args.cfg, "diffusion_steps": args.diffusion_steps, "reuse_prompt_cache": reuse,
            "seconds": timings.spread(name), "images_per_s": batch / median, "speedup_over_eager": timings.median("eager") / median,
            "max_abs_diff_vs_eager": (timings.results[name] - eager).abs().max().item(),
            **split(m, runs[name], device, args.steps, reuse),
        })
    return rows


def bench_answer(size: str, model: Harmon, args: argparse.Namespace, device: torch.device) -> dict:
    """Median seconds of whole answers with 1 and with `--answer-tokens` new tokens (greedy, no early stop)."""
    image = Image.new("RGB", (args.image_size, args.image_size), (120, 30, 200))
    pixels = torch.stack([preprocess_image(image, args.image_size)] * args.answer_batch)
    prompt_tokens = []

    def answering(new_tokens: int):
        def run() -> list[list[int]]:
            with torch.no_grad(), bf16_autocast(device, args.autocast):
                embeds, mask = build_understanding_inputs(model, model.visual_features(pixels),
                                                          [QUESTION] * args.answer_batch)
                prompt_tokens.append(int(mask[0].sum()))
                return generate_ids(model.llm, embeds, mask, new_tokens)
        return run

    many = args.answer_tokens
    timings = interleave({"first": answering(1), "all": answering(many)}, args.repeats, device, args.warmup)
    first, whole = timings.median("first"), timings.median("all")
    generated = sum(len(row) for row in timings.results["all"])
    return {
        "size": size, "batch": args.answer_batch, "image_size": args.image_size, "prompt_tokens": prompt_tokens[0],
        "new_tokens": many, "generated_tokens": generated, "first_token_s": timings.spread("first"),
        "answer_s": timings.spread("all"), "tokens_per_s": generated / whole,
        "decode_tokens_per_s": (args.answer_batch * (many - 1) / (whole - first)
                                if many > 1 and whole > first else None),
    }


def print_tables(report: dict) -> None:
    where = (f"{report['device']} ({report['dtype']}, autocast {report['autocast']}, compile {report['compile']}, "
             f"{report['threads']} threads)")
    args = report["args"]
    table = Table("model", "batch", "variant", "images/s", "median s", "spread %", "warm-up s", "speed-up", "LLM s",
                  "prefill s", "LLM/step s", "MAR enc s", "MAR dec s", "diffusion s", "VAE s", "other s",
                  title=f"Harmon text-to-image, {args['steps']} steps, {args['image_size']}px, cfg {args['cfg']}, "
                        f"on {where}")
    for r in report["generation"]:
        s, t = r["split_s"], r["seconds"]
        table.add_row(r["size"], str(r["batch"]), r["variant"], f"{r['images_per_s']:.4f}", f"{t['median_s']:.2f}",
                      f"{t['spread_pct']:.1f}", f"{sum(t['warmup_s']):.1f}", f"{r['speedup_over_eager']:.2f}",
                      f"{s['llm']:.2f}", "-" if r["prefill_s"] is None else f"{r['prefill_s']:.3f}",
                      f"{r['llm_per_step_s']:.3f}", f"{s['mar_encoder']:.2f}", f"{s['mar_decoder']:.2f}",
                      f"{s['diffusion']:.2f}", f"{s['vae_decode']:.2f}", f"{r['other_s']:.2f}")
    answers = Table("model", "batch", "prompt tokens", "new tokens", "first token s", "answer s", "spread %",
                    "decode tok/s", "overall tok/s", title=f"Harmon answering (greedy, no early stop) on {where}")
    for r in report["answering"]:
        decode = "-" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}"
        answers.add_row(r["size"], str(r["batch"]), str(r["prompt_tokens"]), str(r["new_tokens"]),
                        f"{r['first_token_s']['median_s']:.3f}", f"{r['answer_s']['median_s']:.3f}",
                        f"{r['answer_s']['spread_pct']:.1f}", decode, f"{r['tokens_per_s']:.1f}")
    console = Console(width=200)
    console.print(table)
    console.print(answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,harmon-0.5b", help="comma list of 'tiny', 'harmon-0.5b'")
    parser.add_argument("--batch-sizes", default="1,8", help="comma list of generation batch sizes")
    parser.add_argument("--steps", type=int, default=64, help="masked autoregressive steps (64 as released)")
    parser.add_argument("--image-size", type=int, default=512, help="image side in pixels (512 as released)")
    parser.add_argument("--diffusion-steps", default="100", help="diffusion respacing of the head (100 as released)")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance scale (1.0 = no unconditional rows)")
    parser.add_argument("--no-cache-batch", type=int, default=1,
                        help="batch size also timed with the prompt recomputed every step (0 = none)")
    parser.add_argument("--answer-tokens", type=int, default=32, help="new tokens per answer (no early stop)")
    parser.add_argument("--answer-batch", type=int, default=1, help="images answered at once (0 = no answering)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/harmon_inference.json"),
                        help="JSON output path")
    add_device_options(parser)
    add_repeat_options(parser)
    add_sampling_options(parser)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    report = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "autocast": args.autocast,
              "compile": args.compile, "compile_backend": args.compile_backend, **machine(), "args": vars(args),
              "models": [], "generation": [], "answering": []}
    for size in args.sizes.split(","):
        start = time.perf_counter()
        model = build(size, args.diffusion_steps, device, dtype)
        report["models"].append({"size": size, "build_s": time.perf_counter() - start,
                                 "params_m": {part: sum(p.numel() for p in getattr(model, part).parameters()) / 1e6
                                              for part in ("llm", "mar", "vae")}})
        compiled = (None if args.compile == "off" else
                    compile_for_sampling(copy.deepcopy(model), args.compile, args.compile_backend))
        for batch in args.batch_sizes.split(","):
            report["generation"] += bench_generation(size, model, compiled, int(batch), args, device)
            write_json(args.out, report)
        if args.answer_batch:
            report["answering"].append(bench_answer(size, model, args, device))
            write_json(args.out, report)
        del model, compiled
    print_tables(report)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
