"""The `train` command: `harmon train CONFIG`, or `python -m experiments.train_cli CONFIG` (also under
`accelerate launch -m experiments.train_cli` and `torchrun -m experiments.train_cli`)."""

from __future__ import annotations

from pathlib import Path

import typer

import harmon.train
from experiments.cli_common import HarmonApp
from harmon.utils.strict_yaml import list_presets

PRESETS = list_presets(Path(harmon.train.__file__).parent / "presets")  # read without importing torch for --help


def train(
    config: str = typer.Argument(..., help=f"A YAML file or a preset name: {', '.join(PRESETS)}."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one key, e.g. --set optim.lr.llm=1e-5 --set data.batch_size=64 (repeatable)."),
    resume: bool = typer.Option(True, help="Continue from the newest checkpoint in out_dir when there is one."),
    progress: bool = typer.Option(True, help="Show a progress bar (main process only)."),
) -> None:
    """Train Harmon for one stage of the recipe. One process, or many under `accelerate launch` / `torchrun`."""
    from harmon.train.config import load_config
    from harmon.train.trainer import Trainer, TrainingStopped
    from harmon.utils.strict_yaml import ConfigError

    try:
        cfg = load_config(config, overrides)
        trainer = Trainer(cfg, progress=progress)
        result = trainer.fit(resume=resume)
    except (ConfigError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except TrainingStopped as err:
        typer.echo(f"stopped: {err}", err=True)
        raise typer.Exit(3) from err
    if not trainer.accelerator.is_main_process:
        return
    skipped = sum(result.skipped.values())
    typer.echo(f"done: {result.iteration} iterations in {result.seconds:.1f} s; weights {result.weights}; "
               f"{skipped} bad rows skipped {result.skipped or ''}")


def main() -> None:
    app = HarmonApp(add_completion=False)
    app.command()(train)
    app()


if __name__ == "__main__":
    main()
