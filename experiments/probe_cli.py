"""`harmon probe`, `harmon cam`, `harmon figure2` and `harmon encoders`: typer command functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()

DATA_HELP = ("Dataset: 'imagefolder:PATH' (PATH/train/<class>/* and PATH/val/<class>/*), 'fashion-mnist' "
             "or 'digits'.")
PAPER_TOP5 = {"MAR": 83.1, "VAE": 18.5, "VQGAN": 18.2, "SigLIP": 95.9}  # Harmon Figure 2, ImageNet-1K val top-5
PAPER_ENCODERS = {"MAR": "mar-b", "VAE": "vae-kl16", "VQGAN": "vqgan", "SigLIP": "siglip-b16"}

Encoders = Annotated[list[str], typer.Option("--encoder", help="Encoder name or alias (repeatable); "
                                                               "`harmon encoders` lists them.")]
Weights = Annotated[list[str] | None, typer.Option("--weights", help="NAME=SOURCE (repeatable): weights of encoder "
                                                                     "NAME (a path, known name, hf://..., URL or "
                                                                     "'random'); default: the registry's source.")]
Data = Annotated[str, typer.Option(help=DATA_HELP)]
PerClass = Annotated[int | None, typer.Option(help="Balanced subsets: N images per class in train and in val "
                                                   "(default: every image).")]
Layer = Annotated[int | None, typer.Option(help="Encoder block whose output is probed (0-based, negative from the "
                                                "end; default: the final features).")]
Pooling = Annotated[str | None, typer.Option(help="Pooling: mean, cls, map or buffer_mean (default: the "
                                                  "encoder's own).")]
Features = Annotated[str, typer.Option(help="'pooled' (the pooled vector) or 'tokens' (patch tokens flattened; "
                                            "for small grids such as the pixels baseline).")]
BatchSize = Annotated[int, typer.Option(help="Images per extraction batch.")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes decoding and preprocessing images.")]
Device = Annotated[str, typer.Option(help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")]
Dtype = Annotated[str, typer.Option(help="Encoder compute precision: fp32, bf16 or fp16 (autocast).")]
Epochs = Annotated[int, typer.Option(help="Linear-probe training epochs.")]
Cache = Annotated[Path | None, typer.Option(help="Feature-cache root (default: $HARMON_CACHE/features).")]
Check = Annotated[str, typer.Option(help="Image-folder scan: 'decode' every image once, or 'header' only (faster).")]
Seed = Annotated[int, typer.Option(help="Seed of the subsets and the probe.")]


def _device(name: str) -> str | None:
    return None if name == "auto" else name


def _specs(names: list[str], weights: list[str] | None) -> list[Any]:
    from probe.study import EncoderSpec

    sources: dict[str, str] = {}
    for item in weights or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise typer.BadParameter(f"--weights {item!r} must look like NAME=SOURCE, e.g. vae-kl16=kl16")
        if name not in names:
            raise typer.BadParameter(f"--weights {item!r} names {name!r}, which is not among --encoder {names}")
        sources[name] = source
    return [EncoderSpec(name, sources.get(name)) for name in names]


def _run(action: Callable[[], Any]) -> Any:
    """Run a study; known input problems become one clear error line and exit code 2."""
    from harmon.checkpoints import CheckpointError
    from probe.datasets import DatasetUnavailable
    from probe.features import CacheSpaceError

    try:
        return action()
    except (ValueError, FileNotFoundError, DatasetUnavailable, CacheSpaceError, CheckpointError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error


def probe(
    encoder: Encoders,
    data: Data,
    weights: Weights = None,
    per_class: PerClass = None,
    layer: Layer = None,
    pooling: Pooling = None,
    features: Features = "pooled",
    batch_size: BatchSize = 64,
    workers: Workers = 4,
    device: Device = "auto",
    dtype: Dtype = "fp32",
    epochs: Epochs = 20,
    knn: Annotated[bool, typer.Option(help="Also run the weighted k-NN probe (k = 10, 20, 100, 200).")] = False,
    sklearn: Annotated[bool, typer.Option(help="Also fit scikit-learn's logistic regression as a reference.")] = False,
    cache: Cache = None,
    check: Check = "decode",
    seed: Seed = 0,
    out: Annotated[Path, typer.Option(help="Run folder: results.json, report.md, heads/, PNG/PDF plots.")] = Path(
        "runs/probe"),
) -> None:
    """Extract (cached) features of one or more encoders and train linear probes on them."""
    from probe.study import ProbeStudyConfig, run_probe_study

    def action():
        config = ProbeStudyConfig(
            _specs(encoder, weights), data, str(out), cache=str(cache) if cache else None, per_class=per_class,
            check=check, layer=layer, pooling=pooling, features=features, batch_size=batch_size, workers=workers,
            device=_device(device), dtype=dtype, epochs=epochs, knn=knn, sklearn=sklearn, seed=seed,
        )
        return run_probe_study(config, console)

    if _run(action) is not None:
        console.print(f"Wrote results.json, report.md, heads/ and plots to [bold]{out}/[/]")


def cam(
    encoder: Encoders,
    data: Data,
    weights: Weights = None,
    images: Annotated[int, typer.Option(help="Val images to explain (cycling through the classes).")] = 8,
    heads: Annotated[Path | None, typer.Option(help="A `harmon probe` run folder whose heads/ to use "
                                                    "(default: train the probes here).")] = None,
    per_class: PerClass = None,
    layer: Layer = None,
    pooling: Pooling = None,
    features: Features = "pooled",
    batch_size: BatchSize = 64,
    cam_batch_size: Annotated[int, typer.Option(help="Images per Grad-CAM++ batch.")] = 8,
    workers: Workers = 4,
    device: Device = "auto",
    dtype: Dtype = "fp32",
    epochs: Epochs = 20,
    cache: Cache = None,
    check: Check = "decode",
    seed: Seed = 0,
    out: Annotated[Path, typer.Option(help="Run folder: cams.png/.pdf, cams.json, cams.md, cams-<encoder>.npy.")] = Path(
        "runs/cam"),
) -> None:
    """Grad-CAM++ maps of linear probes (target: the probe logit of each image's true class)."""
    from probe.study import ProbeStudyConfig, run_cam_study

    def action():
        config = ProbeStudyConfig(
            _specs(encoder, weights), data, str(out), cache=str(cache) if cache else None, per_class=per_class,
            check=check, layer=layer, pooling=pooling, features=features, batch_size=batch_size, workers=workers,
            device=_device(device), dtype=dtype, epochs=epochs, seed=seed,
        )
        return run_cam_study(config, images, str(heads) if heads else None, cam_batch_size, console)

    _run(action)
    console.print(f"Wrote the CAM grid to [bold]{out}/cams.png[/] (and .pdf), maps and cams.json beside it")


def paper_config(data: Path, out: Path, cache: Path | None, batch_size: int, workers: int, device: str | None,
                 dtype: str) -> Any:
    """The Figure 2 run: four encoders with their hub weights on ImageNet, MAE's linear-probe recipe
    (LARS, base lr 0.1, no weight decay, batch 16384, 90 epochs with 10 warm-up), scored by top-5."""
    from probe.study import EncoderSpec, ProbeStudyConfig

    return ProbeStudyConfig(
        [EncoderSpec(name, label=label) for label, name in PAPER_ENCODERS.items()], f"imagefolder:{data}", str(out),
        cache=str(cache) if cache else None, check="header", batch_size=batch_size, workers=workers, device=device,
        dtype=dtype, epochs=90, warmup_epochs=10, optimizer="lars", probe_batch_size=16384, base_lrs=(0.1,),
        weight_decays=(0.0,), paper_top5=dict(PAPER_TOP5),
    )


def figure2(
    preset: Annotated[str, typer.Option(help="'mini' (offline: tiny VQGAN, VAE, MAR and SigLIP-style encoders "
                                             "pretrained here on ShapesWorld and Fashion-MNIST, then probed; what "
                                             "`make demo` runs), 'micro' (the same in seconds, a smoke test) or "
                                             "'paper' (MAR-B, KL-16, VQGAN, SigLIP-B/16 on ImageNet; needs --data "
                                             "and the hub weights).")] = "paper",
    data: Annotated[Path | None, typer.Option(help="ImageNet-1K folder with train/<wnid>/* and val/<wnid>/*.")] = None,
    batch_size: BatchSize = 128,
    workers: Workers = 8,
    device: Device = "auto",
    dtype: Dtype = "bf16",
    cache: Cache = None,
    dry_run: Annotated[bool, typer.Option(help="Print the planned run and exit without running it.")] = False,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/figure2 for paper, "
                                                  "runs/figure2-<preset> otherwise).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the mini/micro presets (data, pretraining, probes).")] = 0,
) -> None:
    """Reproduce Figure 2 of the Harmon paper: linear probes and Grad-CAM++ of MAR, VAE, VQGAN and SigLIP."""
    import json
    from dataclasses import asdict

    from harmon.checkpoints import cache_dir
    from probe.study import run_probe_study

    if preset in ("mini", "micro"):
        from experiments.figure2_mini import run_mini

        out = out or Path(f"runs/figure2-{preset}")
        pretrained = cache or cache_dir() / f"figure2-{preset}"
        console.print(f"Mini Figure 2 ({preset}): tiny encoders are pretrained once and kept in {pretrained}")
        _run(lambda: run_mini(out, pretrained, seed=seed, scale=preset, console=console))
        console.print(f"Wrote [bold]{out}/[/]: report.md (the Figure 2 table, ours beside the paper's), "
                      "results.json and the plots (PNG and PDF)")
        return
    if preset != "paper":
        raise typer.BadParameter(f"preset {preset!r} is not available; use mini, micro or paper", param_hint="--preset")
    out = out or Path("runs/figure2")
    if data is None:
        raise typer.BadParameter("the paper preset needs --data IMAGENET_DIR (with train/ and val/ class folders)",
                                 param_hint="--data")
    config = paper_config(data, out, cache, batch_size, workers, _device(device), dtype)
    if dry_run:
        console.print_json(json.dumps(asdict(config)))
        return
    _run(lambda: run_probe_study(config, console))
    console.print(f"Wrote the Figure 2 study to [bold]{out}/[/] (topk.png: ours beside the paper's top-5)")


def encoders() -> None:
    """List the registered encoders with their family, aliases and default weights."""
    from rich.table import Table

    from encoders.registry import list_encoders

    entries = sorted(list_encoders(), key=lambda e: (e.family, e.name))
    table = Table("name", "family", "aliases", "default weights")
    for entry in entries:
        table.add_row(entry.name, entry.family, ", ".join(entry.aliases) or "-", entry.source)
    console.print(table)
    if any(entry.name == "timm" for entry in entries):
        console.print("`--encoder timm:<model name>` builds any timm model.")
