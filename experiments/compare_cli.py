"""`harmon compare`: the typer command function (heavy imports stay inside it so that the CLI starts fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from experiments.probe_cli import (
    BatchSize,
    Cache,
    Device,
    EncoderOptions,
    PerClass,
    Seed,
    Weights,
    _run,
    console,
)

PRESET_HELP = ("'micro' (seconds, tiny random registry encoders on digits; a smoke run), 'mini' (offline: the tiny "
               "VAE, VQGAN, MAR, MAE and SigLIP-style encoders of the offline Figure 2 on its ShapesWorld shape set, "
               "pretrained on first use and cached in $HARMON_CACHE/figure2), 'paper' (MAR-B, KL-16, the taming "
               "VQGAN and SigLIP-B/16 with their released weights; needs --data), or a YAML file of that layout. "
               "Without it, --encoder and --data are required.")


def _override(items: list[str], key: str, value: object) -> None:
    import json

    items.append(f"{key}={json.dumps(value)}")


def compare(
    encoder: Annotated[list[str] | None, typer.Option("--encoder", help="Encoder name (repeatable; `harmon encoders` "
                                                                        "lists them); replaces the preset's encoders.")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset: 'imagefolder:PATH', 'fashion-mnist', 'digits' (or "
                                                  "'shapesworld' with a zoo preset); replaces the preset's.")] = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    weights: Weights = None,
    encoder_options: EncoderOptions = None,
    per_class: PerClass = None,
    layers: Annotated[str | None, typer.Option(help="Also probe these blocks of every encoder, from the same "
                                                    "extraction pass: 'all' or comma-separated indices.")] = None,
    reference: Annotated[str | None, typer.Option(help="Alignment: the encoder every other one is also scored "
                                                       "against.")] = None,
    reconstruct: Annotated[list[str] | None, typer.Option(
        "--reconstruct", help="Encoder (its label: the name unless the preset labels it) to reconstruct val images "
                              "with (repeatable; it needs a decoder: vae-*, vqgan-*); default: every encoder that "
                              "has one.")] = None,
    fd_encoder: Annotated[str | None, typer.Option(
        help="Registry encoder whose pooled features the Fréchet distance of reconstructions to originals uses "
             "(weights through --weights NAME=SOURCE, e.g. NAME=random offline).")] = None,
    lpips: Annotated[bool | None, typer.Option("--lpips/--no-lpips", help="Score LPIPS (downloads torchvision's "
                                                                          "AlexNet weights once).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a preset key, e.g. --set epochs=5 "
                                                                      "(repeatable).")] = None,
    workers: Annotated[int, typer.Option(help="Processes pretraining the zoo on first use.")] = 2,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    cache: Cache = None,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Run folder: report.md, results.json, figures (PNG and PDF), "
                                                  "alignment/ (default: runs/compare-<preset>).")] = None,
) -> None:
    """Probes (per layer), k-NN, alignment, Grad-CAM++ localisation and the reconstruction / semantics trade-off of
    several encoders on one shared feature cache, in one report.md with every figure and a results.json."""

    def action():
        from experiments.compare.config import load_compare_config
        from experiments.compare.run import run_compare
        from harmon.utils.strict_yaml import ConfigError

        if preset is None and (not encoder or data is None):
            raise typer.BadParameter("pass --encoder (one or more) and --data, or a --preset", param_hint="--encoder")
        settings: list[str] = []
        if encoder:
            sources = dict(item.partition("=")[::2] for item in weights or [])
            import json

            options = {}
            for item in encoder_options or []:
                name, _, text = item.partition("=")
                try:
                    options[name] = json.loads(text)
                except json.JSONDecodeError as error:
                    raise ValueError(f"--encoder-options {item!r}: {error}") from error
            _override(settings, "encoders", [{"name": name, "weights": sources.get(name),
                                              "options": options.get(name, {})} for name in encoder])
        for key, value in (("data", data), ("per_class", per_class), ("layers", layers),
                           ("alignment.reference", reference), ("reconstruction.encoders", reconstruct),
                           ("reconstruction.lpips", lpips)):
            if value is not None:
                _override(settings, key, value)
        if fd_encoder is not None:
            sources = dict(item.partition("=")[::2] for item in weights or [])
            _override(settings, "reconstruction.fd_encoder", {"name": fd_encoder, "weights": sources.get(fd_encoder)})
        _override(settings, "batch_size", batch_size)
        _override(settings, "device", device)
        _override(settings, "seed", seed)
        source = preset or Path(__file__).resolve().parent / "presets" / "compare-default.yaml"
        try:
            config = load_compare_config(source, [*settings, *(overrides or [])])
        except (ConfigError, FileNotFoundError) as error:
            raise ValueError(f"--preset/--set: {error}") from error
        target = out or Path(f"runs/{config.name}")
        return run_compare(config, target, cache, workers, console=console), target

    results, target = _run(action)
    console.print(f"Compared {len(results['encoders'])} encoders in {results['timings']['total_s']:.0f} s; wrote "
                  f"report.md, results.json and {len(results['figures'])} figures to [bold]{target}/[/]")
