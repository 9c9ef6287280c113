"""Harmon inference speed: text-to-image images/s with a time split, prompt-cache savings, answering tokens/s.

    python -m experiments.benchmarks.harmon_inference --sizes tiny,harmon-0.5b --batch-sizes 1,8 --steps 64

Random weights (speed does not depend on them): 'tiny' is the test-size model; 'harmon-0.5b' has the shapes of
the release (Qwen2.5-0.5B-Instruct dims, MAR-B, KL-16) with a tiny tokenizer. On CUDA the clock waits for the
device at every split. Writes a JSON file and prints tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from experiments.benchmarks.common import SplitTimer, add_device_options, device_and_dtype
from harmon.generation import generate_images
from harmon.harmon_loading import paper_harmon_config
from harmon.model import Harmon
from harmon.prompts import preprocess_image
from harmon.tiny import TINY_CORPUS, tiny_harmon
from harmon.tokenizer import build_tiny_tokenizer
from harmon.understanding import build_understanding_inputs, generate_ids

PROMPT = "a photo of a red cube on top of a blue sphere, studio lighting"
PARTS = ("llm", "mar_encoder", "mar_decoder", "diffusion", "vae_decode")


def build(size: str, device: torch.device, dtype: torch.dtype) -> Harmon:
    if size == "tiny":
        model = tiny_harmon()
    elif size == "harmon-0.5b":
        config = paper_harmon_config("harmon-0.5b", image_size=512)
        with torch.device(device):
            model = Harmon(config, build_tiny_tokenizer(TINY_CORPUS))
    else:
        raise SystemExit(f"unknown size {size!r}; use 'tiny' or 'harmon-0.5b'")
    return model.to(device, dtype).eval()


def bench_generation(model: Harmon, timer: SplitTimer, batch: int, steps: int, image_size: int, cfg: float,
                     reuse: bool) -> dict:
    timer.reset()
    with timer.part("total"):
        generate_images(model, [PROMPT] * batch, steps=steps, cfg=cfg, seed=0, image_size=image_size,
                        reuse_prompt_cache=reuse)
    total = timer.seconds["total"]
    llm_calls = timer.calls["llm"]
    split = {part: timer.seconds[part] for part in PARTS}
    return {
        "batch": batch, "steps": steps, "image_size": image_size, "cfg": cfg, "reuse_prompt_cache": reuse,
        "seconds": total, "images_per_s": batch / total, "split_s": split, "other_s": total - sum(split.values()),
        "prefill_s": llm_calls[0] if reuse else None, "llm_per_step_s": sum(llm_calls[int(reuse):]) / steps,
    }


def bench_answer(model: Harmon, timer: SplitTimer, batch: int, new_tokens: int, image_size: int) -> dict:
    image = Image.new("RGB", (image_size, image_size), (120, 30, 200))
    timer.reset()
    with torch.no_grad():
        with timer.part("visual"):
            features = model.visual_features(torch.stack([preprocess_image(image, image_size)] * batch))
        embeds, mask = build_understanding_inputs(model, features, ["Describe the image in detail."] * batch)
        generate_ids(model.llm, embeds, mask, new_tokens)
    prefill, decode = timer.calls["llm"][0], sum(timer.calls["llm"][1:])
    return {
        "batch": batch, "image_size": image_size, "prompt_tokens": int(mask[0].sum()), "new_tokens": new_tokens,
        "visual_s": timer.seconds["visual"], "prefill_s": prefill, "decode_s": decode,
        "decode_tokens_per_s": batch * (new_tokens - 1) / decode if new_tokens > 1 else None,
        "tokens_per_s": batch * new_tokens / (timer.seconds["visual"] + prefill + decode),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,harmon-0.5b", help="comma list of 'tiny', 'harmon-0.5b'")
    parser.add_argument("--batch-sizes", default="1,8", help="comma list of generation batch sizes")
    parser.add_argument("--steps", type=int, default=64, help="masked autoregressive steps (64 as released)")
    parser.add_argument("--image-size", type=int, default=512, help="image side in pixels (512 as released)")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance scale (1.0 = no unconditional rows)")
    parser.add_argument("--no-cache-batch", type=int, default=1,
                        help="batch size also timed with the prompt recomputed every step (0 = skip)")
    parser.add_argument("--answer-tokens", type=int, default=32, help="new tokens per answer (no early stop)")
    parser.add_argument("--answer-batch", type=int, default=1, help="images answered at once")
    parser.add_argument("--out", default="runs/benchmarks/harmon_inference.json", help="JSON output path")
    add_device_options(parser)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    generation, answering = [], []
    for size in args.sizes.split(","):
        start = time.perf_counter()
        model = build(size, device, dtype)
        build_s = time.perf_counter() - start
        params = {part: sum(p.numel() for p in getattr(model, part).parameters()) / 1e6
                  for part in ("llm", "mar", "vae")}
        generate_images(model, PROMPT, steps=2, cfg=args.cfg, seed=0, image_size=64)  # warm-up
        timer = SplitTimer({"llm": (model.llm.model, "forward"), "mar_encoder": (model.mar, "forward_mae_encoder"),
                            "mar_decoder": (model.mar, "forward_mae_decoder"),
                            "diffusion": (model.mar.diffloss, "sample"), "vae_decode": (model.vae, "decode")},
                           device)
        runs = [(int(b), True) for b in args.batch_sizes.split(",")]
        runs += [(args.no_cache_batch, False)] if args.no_cache_batch else []
        for batch, reuse in runs:
            row = bench_generation(model, timer, batch, args.steps, args.image_size, args.cfg, reuse)
            generation.append({"size": size, "params_m": params, "build_s": build_s, **row})
        answering.append({"size": size, **bench_answer(model, timer, args.answer_batch, args.answer_tokens,
                                                       args.image_size)})
        del model, timer

    where = f"{device} ({str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads)"
    table = Table("model", "batch", "cache", "images/s", "total s", "LLM s", "prefill s", "LLM/step s", "MAR enc s",
                  "MAR dec s", "diffusion s", "VAE s", "other s",
                  title=f"Harmon text-to-image, {args.steps} steps, {args.image_size}px, cfg {args.cfg}, on {where}")
    for r in generation:
        s = r["split_s"]
        table.add_row(r["size"], str(r["batch"]), "reuse" if r["reuse_prompt_cache"] else "recompute",
                      f"{r['images_per_s']:.4f}", f"{r['seconds']:.1f}", f"{s['llm']:.2f}",
                      "-" if r["prefill_s"] is None else f"{r['prefill_s']:.3f}", f"{r['llm_per_step_s']:.3f}",
                      f"{s['mar_encoder']:.2f}", f"{s['mar_decoder']:.2f}", f"{s['diffusion']:.2f}",
                      f"{s['vae_decode']:.2f}", f"{r['other_s']:.2f}")
    answers = Table("model", "batch", "prompt tokens", "new tokens", "visual s", "prefill s", "decode tok/s",
                    "overall tok/s", title=f"Harmon answering (greedy, no early stop) on {where}")
    for r in answering:
        decode = "-" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}"
        answers.add_row(r["size"], str(r["batch"]), str(r["prompt_tokens"]), str(r["new_tokens"]),
                        f"{r['visual_s']:.2f}", f"{r['prefill_s']:.2f}", decode, f"{r['tokens_per_s']:.1f}")
    console = Console(width=180)
    console.print(table)
    console.print(answers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "dtype": str(dtype), "threads": torch.get_num_threads(),
                               "args": vars(args), "generation": generation, "answering": answering}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
