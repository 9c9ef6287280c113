"""`harmon generate` and `harmon ask`: text-to-image and image question answering with a Harmon checkpoint.

The functions are registered as commands by experiments/cli.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from experiments.cli_common import (
    Autocast,
    CompileBackend,
    CompileMode,
    compiled_for_sampling,
    device_and_dtype,
    error_line,
)

err_console = Console(stderr=True, soft_wrap=True)

CHECKPOINT_HELP = ("Harmon checkpoint: harmon-0.5b, harmon-1.5b, harmon-1.5b-o, a path to a flat official-layout "
                   "file, hf://owner/repo/file or a URL.")
LLM_HELP = ("Qwen2 LLM config source: hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a folder with config.json. "
            "Default: the named checkpoint's LLM, or guessed from the file's embedding width.")
TOKENIZER_HELP = "Tokenizer: hub id or folder. Default: the --llm source."
VAE_HELP = "KL-16 VAE weights: kl16 (hub), a path to kl16.ckpt or a safetensors file."
DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."
DTYPE_HELP = "fp32 or bf16 (the official scripts run bf16 on GPUs)."
SIZE_HELP = "Image side in pixels, a multiple of 16 (512 as released; 256 is 4x cheaper)."
Checkpoint = Annotated[str, typer.Option(help=CHECKPOINT_HELP)]
ImageSize = Annotated[int, typer.Option(help=SIZE_HELP)]
Device = Annotated[str, typer.Option(help=DEVICE_HELP)]
Dtype = Annotated[str, typer.Option(help=DTYPE_HELP)]
Llm = Annotated[str | None, typer.Option(help=LLM_HELP)]
Tokenizer = Annotated[str | None, typer.Option(help=TOKENIZER_HELP)]
Vae = Annotated[str, typer.Option(help=VAE_HELP)]


def _load(checkpoint: str, llm: str | None, tokenizer: str | None, vae: str, device: str, dtype: str,
          image_size: int):
    from harmon.checkpoints import CheckpointError
    from harmon.harmon_loading import load_harmon

    dev, dt = device_and_dtype(device, dtype, ("fp32", "bf16"))
    try:
        with err_console.status(f"Loading {checkpoint} on {dev}"):
            return load_harmon(checkpoint, llm=llm, tokenizer=tokenizer, vae=vae, device=dev, dtype=dt,
                               image_size=image_size)
    except CheckpointError as err:
        err_console.print(error_line(err), soft_wrap=True)
        raise typer.Exit(2) from err


def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to draw; sent as 'Generate an image: <prompt>'. "
                                                      "Omit it with --prompts.")] = None,
    checkpoint: Checkpoint = "harmon-0.5b",
    out: Annotated[Path, typer.Option(help="Output image file (PNG/JPEG); a grid when --grid > 1. With --prompts: "
                                           "the output folder.")] = Path("out.png"),
    prompts: Annotated[Path | None, typer.Option(help="Batch mode: a prompt file, GenEval metadata JSONL (images in "
                                                      "GenEval's layout) or captions for FID (a .txt list, MJHQ's "
                                                      "meta_data.json, COCO captions JSON; a flat folder). Resumes; "
                                                      "spreads over `accelerate launch` / `torchrun` processes.")
                       ] = None,
    per_prompt: Annotated[int, typer.Option(help="Batch mode, GenEval layout: images per prompt (GenEval uses 4).")
                          ] = 4,
    batch_size: Annotated[int, typer.Option(help="Batch mode, flat layout: captions per generation call.")] = 16,
    limit: Annotated[int | None, typer.Option(help="Batch mode: only the first N prompts or captions.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same images.")] = 0,
    steps: Annotated[int, typer.Option(help="Masked autoregressive decoding steps.")] = 64,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale (1.0 disables it, halving the work).")
                   ] = 3.0,
    cfg_schedule: Annotated[str, typer.Option(help="'constant' (Harmon's default) or 'linear' (MAR's).")
                            ] = "constant",
    temperature: Annotated[float, typer.Option(help="Scales the per-step diffusion noise.")] = 1.0,
    image_size: ImageSize = 512,
    grid: Annotated[int, typer.Option(help="Images per side of the output grid: grid x grid samples.")] = 1,
    device: Device = "auto", dtype: Dtype = "fp32", llm: Llm = None, tokenizer: Tokenizer = None, vae: Vae = "kl16",
    compile_mode: CompileMode = "off", compile_backend: CompileBackend = "inductor", autocast: Autocast = False,
) -> None:
    """Text-to-image generation with Harmon (masked autoregressive decoding, KV-cached prompt, CFG)."""
    from harmon.generation import generate_images
    from harmon.images import save_image_grid
    from harmon.utils.runtime import bf16_autocast

    if grid < 1:
        raise typer.BadParameter(f"--grid {grid} must be at least 1")
    if (prompt is None) == (prompts is None):
        raise typer.BadParameter("give either PROMPT or --prompts FILE (exactly one)")
    if prompts is not None:
        from experiments.evaluation.batch import generate_batch
        from experiments.evaluation.prompt_files import read_prompt_file

        if per_prompt < 1 or batch_size < 1 or (limit is not None and limit < 1):
            raise typer.BadParameter(f"--per-prompt {per_prompt}, --batch-size {batch_size} and --limit {limit} "
                                     "must be positive")
        prompt_file = read_prompt_file(prompts)
        model = compiled_for_sampling(_load(checkpoint, llm, tokenizer, vae, device, dtype, image_size),
                                      compile_mode, compile_backend)
        generate_batch(model, prompt_file, out, per_prompt=per_prompt, batch_size=batch_size, limit=limit, seed=seed,
                       steps=steps, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature,
                       image_size=image_size, autocast=autocast, console=err_console)
        return
    model = compiled_for_sampling(_load(checkpoint, llm, tokenizer, vae, device, dtype, image_size), compile_mode,
                                  compile_backend)
    try:
        with bf16_autocast(model.device, autocast):
            images = generate_images(model, [prompt] * grid**2, steps=steps, cfg=cfg, cfg_schedule=cfg_schedule,
                                     temperature=temperature, seed=seed, image_size=image_size, progress=True)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    save_image_grid(images, out, rows=grid, rounding="harmon")
    err_console.print(f"Wrote {grid**2} image(s) of {image_size}px to {out}")


def ask(
    image: Annotated[Path, typer.Argument(help="Image file to ask about.", exists=True, dir_okay=False)],
    question: Annotated[str, typer.Argument(help="The question.")] = "Describe the image in detail.",
    checkpoint: Checkpoint = "harmon-1.5b",
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 512,
    image_size: ImageSize = 512,
    device: Device = "auto", dtype: Dtype = "fp32", llm: Llm = None, tokenizer: Tokenizer = None, vae: Vae = "kl16",
) -> None:
    """Answer a question about an image with Harmon (greedy decoding); prints the answer."""
    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(image)
        picture.load()
    except (UnidentifiedImageError, OSError) as err:
        raise typer.BadParameter(f"{image} is not a readable image ({err})") from err
    model = _load(checkpoint, llm, tokenizer, vae, device, dtype, image_size)
    with err_console.status("Answering"):
        (reply,) = model.answer(picture, question, max_new_tokens=max_new_tokens, image_size=image_size)
    typer.echo(reply)
