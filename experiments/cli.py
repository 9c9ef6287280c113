"""The `harmon` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from experiments.cli_common import (
    Autocast,
    CompileBackend,
    CompileMode,
    HarmonApp,
    compiled_for_sampling,
    device_and_dtype,
)

app = HarmonApp(
    help="harmon-toolkit: take apart the visual representations of unified multimodal models.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.command("mar-demo")
def mar_demo(
    out: Annotated[Path, typer.Option(help="Run folder for samples, plots, results.json and report.md.")] = Path(
        "runs/demo"),
    dataset: Annotated[str, typer.Option(help="'auto' (Fashion-MNIST if installed, else digits), "
                                              "'fashion-mnist' or 'digits'.")] = "auto",
    steps: Annotated[int, typer.Option(help="Training steps of the small MAR.")] = 1200,
    per_class: Annotated[int, typer.Option(help="Training images per class.")] = 600,
    seed: Annotated[int, typer.Option(help="Seed for data subset, training and sampling.")] = 0,
) -> None:
    """Offline demo: train a small class-conditional MAR on real images, sample every class, score the samples."""
    from experiments.toy_mar import ToyMARConfig, run
    from harmon.utils.files import output_dir

    output_dir(out, "--out")
    results = run(ToyMARConfig(dataset=dataset, steps=steps, per_class=per_class, seed=seed, out=str(out)), console)
    console.print(f"[bold]Trained a {results['parameters_m']:.2f} M-parameter MAR on {results['dataset']}[/] "
                  f"in {results['train_seconds']:.0f} s (loss {results['first_loss']:.3f} -> "
                  f"{results['last_loss']:.3f}).")
    console.print(f"Samples recognised as their class by a real-image classifier: "
                  f"[bold]{100 * results['class_agreement']:.1f} %[/] (chance {100 * results['chance']:.0f} %).")
    console.print(f"Outputs in [bold]{out}/[/]: samples.png/.pdf, loss.png/.pdf, results.json, report.md")


@app.command()
def checkpoints() -> None:
    """List the checkpoint names that --checkpoint options accept, with where they come from."""
    from harmon.checkpoints import KNOWN_FILES, cache_dir

    table = Table("name", "source")
    for name, source in KNOWN_FILES.items():
        table.add_row(name, source)
    console.print(table)
    console.print(f"URL downloads are cached in {cache_dir()}; hub files in the Hugging Face cache. "
                  "Set HF_HUB_OFFLINE=1 to forbid downloads. Any local file path works too.")


@app.command("mar-sample")
def mar_sample(
    classes: Annotated[str, typer.Argument(help="Comma-separated ImageNet class indices, e.g. '207,360,387'.")],
    checkpoint: Annotated[str, typer.Option(help="MAR checkpoint: mar-base, mar-large, mar-huge, a path, "
                                                 "hf://owner/repo/file or a URL.")] = "mar-base",
    vae: Annotated[str, typer.Option(help="KL-16 VAE checkpoint (kl16, a path, hf:// or URL).")] = "kl16",
    out: Annotated[Path, typer.Option(help="Output PNG grid (one column per class).")] = Path("mar_samples.png"),
    per_class: Annotated[int, typer.Option(help="Images per class.")] = 1,
    num_iter: Annotated[int, typer.Option(help="MAR decoding steps (64 is fast; MAR's evaluation uses 256).")] = 64,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale (1.0 disables it).")] = 2.9,
    cfg_schedule: Annotated[str, typer.Option(help="'linear' (MAR's default) or 'constant'.")] = "linear",
    temperature: Annotated[float, typer.Option(help="Scales the per-step diffusion noise.")] = 1.0,
    diffusion_steps: Annotated[str, typer.Option(help="Diffusion respacing, e.g. '100' or '50'.")] = "100",
    ema: Annotated[bool, typer.Option(help="Use the EMA weights (as MAR's evaluation does).")] = True,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same images.")] = 0,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (bf16 on GPUs).")] = "fp32",
    compile_mode: CompileMode = "off",
    compile_backend: CompileBackend = "inductor",
    autocast: Autocast = False,
) -> None:
    """Class-conditional sampling with an official MAR checkpoint and the KL-16 VAE."""
    import torch

    from harmon.images import save_image_grid
    from harmon.mar_loading import load_mar
    from harmon.utils.runtime import bf16_autocast
    from harmon.vae import decode, load_kl16

    try:
        labels = [int(c) for c in classes.split(",") if c.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"classes {classes!r} must be comma-separated integers") from err
    dev, dt = device_and_dtype(device, dtype)
    model = load_mar(checkpoint, ema=ema, num_sampling_steps=diffusion_steps).to(dev, dt)
    bad = [c for c in labels if not 0 <= c < model.config.class_num]
    if bad:
        raise typer.BadParameter(f"classes {bad} are outside 0..{model.config.class_num - 1}")
    autoencoder = load_kl16(vae).to(dev, dt)
    model = compiled_for_sampling(model, compile_mode, compile_backend)
    label_tensor = torch.tensor(labels).repeat_interleave(per_class).to(dev)
    with bf16_autocast(dev, autocast):
        latents = model.sample_tokens(len(label_tensor), num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule,
                                      labels=label_tensor, temperature=temperature, seed=seed, progress=True)
        images = decode(autoencoder, latents)
    save_image_grid(images.float().cpu(), out, rows=per_class, column_major=True)
    console.print(f"Wrote {len(label_tensor)} images to {out}")


from experiments.harmon_cli import ask, generate  # noqa: E402

app.command()(generate)
app.command()(ask)


from experiments.probe_cli import cam, encoders, figure2, probe  # noqa: E402

app.command()(probe)
app.command()(cam)
app.command()(figure2)
app.command()(encoders)


from experiments.align_cli import align  # noqa: E402

app.command()(align)


from experiments.compare_cli import compare  # noqa: E402

app.command()(compare)


from experiments.train_cli import train  # noqa: E402

app.command()(train)


from experiments.ablation_cli import figure6, table5  # noqa: E402

app.command()(table5)
app.command()(figure6)


from experiments.evaluation_cli import fid, gen_table, geneval  # noqa: E402

app.command()(geneval)
app.command()(fid)
app.command("gen-table")(gen_table)


if __name__ == "__main__":
    app()
