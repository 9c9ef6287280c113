"""`harmon probe`, `harmon cam`, `harmon figure2` and `harmon encoders`: typer command functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from experiments.cli_common import error_line
from experiments.paper import PAPER_TOP5
from harmon.utils.runtime import default_workers

console = Console()

DATA_HELP = ("Dataset: 'imagefolder:PATH' (PATH/train/<class>/* and PATH/val/<class>/*), 'fashion-mnist' "
             "or 'digits'.")

Encoders = Annotated[list[str], typer.Option("--encoder", help="Encoder name or alias (repeatable); "
                                                               "`harmon encoders` lists them.")]
Weights = Annotated[list[str] | None, typer.Option("--weights", help="NAME=SOURCE (repeatable): weights of encoder "
                                                                     "NAME (a path, known name, hf://..., URL or "
                                                                     "'random'); default: the registry's source.")]
EncoderOptions = Annotated[list[str] | None, typer.Option(
    "--encoder-options", help="NAME=JSON (repeatable): builder keyword arguments of encoder NAME as a JSON object, "
                              "e.g. 'harmon-0.5b-mar={\"image_size\": 256}'.")]
Data = Annotated[str, typer.Option(help=DATA_HELP)]
PerClass = Annotated[int | None, typer.Option(help="Balanced subsets: N images per class in train and in val "
                                                   "(default: every image).")]
Layer = Annotated[int | None, typer.Option(help="Encoder block whose output is probed (0-based, negative from the "
                                                "end; default: the final features).")]
Layers = Annotated[str | None, typer.Option(help="Several blocks from one extraction pass: 'all' or comma-separated "
                                                 "indices (e.g. 0,4,8,11; negative from the end); adds a plot per "
                                                 "layer (instead of --layer).")]
MaskRatios = Annotated[str | None, typer.Option(
    "--mask-ratio", help="MAR-family encoders only: hide this fraction of the image tokens from the encoder, as MAR's "
                         "generation does (comma-separated values in [0, 1), or 'default' for 0,0.25,0.5,0.75,0.9; "
                         "masks seeded by --seed; 'mean' pools the visible tokens, 'buffer_mean' the buffers); adds a "
                         "plot against the ratio.")]
Pooling = Annotated[str | None, typer.Option(help="Pooling: mean, cls, map or buffer_mean (default: the "
                                                  "encoder's own).")]
Features = Annotated[str, typer.Option(help="'pooled' (the pooled vector) or 'tokens' (patch tokens flattened; "
                                            "for small grids such as the pixels baseline).")]
BatchSize = Annotated[int, typer.Option(help="Images per extraction batch.")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes decoding and preprocessing images "
                                           "(default: up to 4, at most the CPU cores).")]
DEFAULT_WORKERS = default_workers()
Device = Annotated[str, typer.Option(help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")]
Dtype = Annotated[str, typer.Option(help="Encoder compute precision: fp32, bf16 or fp16 (autocast).")]
Epochs = Annotated[int, typer.Option(help="Linear-probe training epochs.")]
Cache = Annotated[Path | None, typer.Option(help="Feature-cache root (default: $HARMON_CACHE/features).")]
Check = Annotated[str, typer.Option(help="Image-folder scan: 'decode' every image once, or 'header' only (faster).")]
Seed = Annotated[int, typer.Option(help="Seed of the subsets, the probe and of `--weights NAME=random` (the same "
                                         "seed builds the same random encoder, so caches and heads are reused).")]


def _specs(names: list[str], weights: list[str] | None, options: list[str] | None = None) -> list[Any]:
    import json

    from probe.study import EncoderSpec

    sources: dict[str, str] = {}
    for item in weights or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise typer.BadParameter(f"--weights {item!r} must look like NAME=SOURCE, e.g. vae-kl16=kl16")
        if name not in names:
            raise typer.BadParameter(f"--weights {item!r} names {name!r}, which is not among --encoder {names}")
        sources[name] = source
    arguments: dict[str, dict[str, Any]] = {}
    for item in options or []:
        name, sep, text = item.partition("=")
        if name not in names:
            raise typer.BadParameter(f"--encoder-options {item!r} names {name!r}, which is not among --encoder {names}")
        try:
            arguments[name] = json.loads(text) if sep else None
        except json.JSONDecodeError as error:
            raise typer.BadParameter(f"--encoder-options {item!r}: {error}") from error
        if not isinstance(arguments[name], dict):
            raise typer.BadParameter(f"--encoder-options {item!r} must look like NAME={{\"key\": value, ...}}")
    return [EncoderSpec(name, sources.get(name), options=arguments.get(name, {})) for name in names]


def _run(action: Callable[[], Any]) -> Any:
    """Run a study; known input problems become one clear error line and exit code 2."""
    from harmon.checkpoints import CheckpointError
    from probe.datasets import DatasetUnavailable
    from probe.feature_cache import CacheSpaceError

    try:
        return action()
    except (ValueError, FileNotFoundError, DatasetUnavailable, CacheSpaceError, CheckpointError) as error:
        console.print(error_line(error), soft_wrap=True)
        raise typer.Exit(2) from error


def probe(
    encoder: Encoders,
    data: Data,
    weights: Weights = None,
    per_class: PerClass = None,
    encoder_options: EncoderOptions = None,
    layer: Layer = None,
    layers: Layers = None,
    mask_ratio: MaskRatios = None,
    pooling: Pooling = None,
    features: Features = "pooled",
    batch_size: BatchSize = 64,
    workers: Workers = DEFAULT_WORKERS,
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
    """Extract (cached) features of one or more encoders and train linear probes on them (with --layers and
    --mask-ratio: at every layer and mask ratio, each layer set from one pass)."""
    from probe.conditions import Conditions
    from probe.study import ProbeStudyConfig, run_probe_study

    def action():
        if layer is not None and layers is not None:
            raise ValueError(f"--layer {layer} and --layers {layers}: pass one of them")
        conditions = Conditions.parse(layers, mask_ratio)
        config = ProbeStudyConfig(
            _specs(encoder, weights, encoder_options), data, str(out), cache=str(cache) if cache else None,
            per_class=per_class, check=check, layer=layer, pooling=pooling, features=features,
            batch_size=batch_size, workers=workers, device=device, dtype=dtype, epochs=epochs, knn=knn,
            sklearn=sklearn, seed=seed,
        )
        if conditions == Conditions():
            return run_probe_study(config, console), "results.json, report.md, heads/ and plots"
        from probe.condition_study import run_condition_study

        return run_condition_study(config, conditions, console), "results.json, results.csv, report.md and plots"

    results, written = _run(action)
    if results is not None:
        console.print(f"Wrote {written} to [bold]{out}/[/]")


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
    target: Annotated[str, typer.Option(help="What the maps explain: 'logit' (the probe logit of the true class), "
                                             "'cosine:image:K' (similarity to the K-th shown image's pooled "
                                             "feature), 'cosine:class-mean' (to the class-mean train feature) or "
                                             "'cosine:file:PATH' (to a .npy/.safetensors embedding, [D] or a row "
                                             "per class, e.g. SigLIP text embeddings); cosine targets need no "
                                             "probe.")] = "logit",
    workers: Workers = DEFAULT_WORKERS,
    device: Device = "auto",
    dtype: Dtype = "fp32",
    epochs: Epochs = 20,
    cache: Cache = None,
    check: Check = "decode",
    seed: Seed = 0,
    out: Annotated[Path, typer.Option(help="Run folder: cams.png/.pdf, cams.json, cams.md, cams-<encoder>.npy.")] = Path(
        "runs/cam"),
) -> None:
    """Grad-CAM++ maps (probe logits or cosine similarity), constant maps reported, ROAD faithfulness scores."""
    from probe.study import ProbeStudyConfig, run_cam_study

    def action():
        config = ProbeStudyConfig(
            _specs(encoder, weights), data, str(out), cache=str(cache) if cache else None, per_class=per_class,
            check=check, layer=layer, pooling=pooling, features=features, batch_size=batch_size, workers=workers,
            device=device, dtype=dtype, epochs=epochs, seed=seed,
        )
        return run_cam_study(config, images, str(heads) if heads else None, cam_batch_size, console, target)

    _run(action)
    console.print(f"Wrote the CAM grid to [bold]{out}/cams.png[/] (and .pdf), maps and cams.json beside it")


def figure2(
    preset: Annotated[str, typer.Option(help="'mini' (offline: tiny VAE, VQGAN, MAR, MAE and SigLIP-style encoders "
                                             "pretrained here on ShapesWorld, each beside its random-init twin and "
                                             "raw pixels, probed identically; what `make demo` runs), 'micro' (the "
                                             "same in seconds, a smoke test), 'long' (longer pretraining with a MAR "
                                             "dose check), 'paper' (MAR-B, KL-16, VQGAN, SigLIP-B/16 on ImageNet "
                                             "with their random twins; needs --data and the hub weights), or a YAML "
                                             "file in one of these layouts.")] = "paper",
    seeds: Annotated[int, typer.Option(help="Offline presets: pretraining x probe seeds 0..N-1. One seed is "
                                            "exploratory (image-bootstrap intervals); 3 or more give the "
                                            "seed intervals the verdicts rest on.")] = 1,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a preset key, e.g. --set pretraining.steps.MAR=3000 --set endpoints.probe=attentive "
                      "(repeatable).")] = None,
    data: Annotated[Path | None, typer.Option(help="Paper preset: ImageNet-1K folder with train/<wnid>/* and "
                                                   "val/<wnid>/*.")] = None,
    workers: Annotated[int | None, typer.Option(help="Offline presets: processes (default: up to 2 of the CPU "
                                                     "cores); paper: DataLoader workers (default 8).")] = None,
    device: Device = "auto",
    dtype: Dtype = "bf16",
    cache: Cache = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved configuration and exit without running.")] = False,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/figure2 for paper, "
                                                  "runs/figure2-<preset> otherwise).")] = None,
) -> None:
    """Reproduce Figure 2 of the Harmon paper: linear and attentive probes and Grad-CAM++ of MAR, VAE, VQGAN and
    SigLIP, each against its random-init twin, with paired intervals and verdicts."""
    import json

    from harmon.checkpoints import cache_dir
    from harmon.utils.strict_yaml import ConfigError, read_yaml, to_dict

    if seeds < 1:
        raise typer.BadParameter(f"{seeds}; give at least 1 seed (3 or more for seed intervals)", param_hint="--seeds")
    overrides = overrides or []
    source = Path(preset)
    paper = preset == "paper" or (source.suffix in (".yaml", ".yml") and "encoders" in _yaml_keys(source, read_yaml))
    if not paper:
        from experiments.figure2.config import load_figure2_config

        try:
            config = load_figure2_config(preset, overrides)
        except (ConfigError, FileNotFoundError) as error:
            raise typer.BadParameter(str(error), param_hint="--preset/--set") from error
        if dry_run:
            console.print_json(json.dumps(to_dict(config)))
            return
        from experiments.figure2.run import run_figure2

        out = out or Path(f"runs/figure2-{config.name.removeprefix('figure2-')}")
        root = cache or cache_dir() / "figure2"
        console.print(f"Figure 2 ({config.name}, {seeds} seed(s)): pretrained encoders, probe images and features "
                      f"are kept in {root}")
        _run(lambda: run_figure2(config, out, root, seeds=seeds, workers=workers, console=console))
        console.print(f"Wrote [bold]{out}/[/]: report.md (gate, claims with intervals, verdicts), results.json, "
                      "results.csv and the plots (PNG and PDF)")
        return
    from probe.study import run_probe_study

    if data is None:
        raise typer.BadParameter("the paper preset needs --data IMAGENET_DIR (with train/ and val/ class folders)",
                                 param_hint="--data")
    out = out or Path("runs/figure2")
    settings = [f"data=imagefolder:{data}", f"out={out}", f"device={device}", f"dtype={dtype}",
                *([f"cache={cache}"] if cache else []), *([f"workers={workers}"] if workers else []), *overrides]
    try:
        config = paper_config(preset, settings)
    except (ConfigError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error), param_hint="--preset/--set") from error
    if dry_run:
        console.print_json(json.dumps(to_dict(config)))
        return
    _run(lambda: run_probe_study(config, console))
    console.print(f"Wrote the Figure 2 study to [bold]{out}/[/] (topk.png: ours beside the paper's top-5)")


def _yaml_keys(path: Path, read_yaml: Callable[[Path], dict]) -> list[str]:
    try:
        return list(read_yaml(path))
    except FileNotFoundError as error:
        raise typer.BadParameter(f"{path} does not exist", param_hint="--preset") from error


def paper_config(source: str, overrides: list[str]) -> Any:
    """The paper's Figure 2 probe study from `experiments/presets/figure2-paper.yaml` (or a YAML of that layout),
    with the paper's top-5 numbers beside ours unless the file gives its own."""
    from dataclasses import replace

    from experiments.figure2.config import PRESETS
    from harmon.utils.strict_yaml import load_typed
    from probe.study import ProbeStudyConfig

    config = load_typed(ProbeStudyConfig, source, PRESETS, "figure2-", overrides)
    return replace(config, paper_top5=config.paper_top5 or dict(PAPER_TOP5))


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
