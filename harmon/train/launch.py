"""The `train` command: `python -m harmon.train CONFIG` (also `harmon train`, `accelerate launch -m harmon.train`,
`torchrun -m harmon.train`)."""

from __future__ import annotations

import typer

from harmon.train.config import list_presets, load_config
from harmon.train.strict import ConfigError
from harmon.train.trainer import Trainer, TrainingStopped


def train(
    config: str = typer.Argument(..., help=f"A YAML file or a preset name: {', '.join(list_presets())}."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one key, e.g. --set optim.lr.llm=1e-5 --set data.batch_size=64 (repeatable)."),
    resume: bool = typer.Option(True, help="Continue from the newest checkpoint in out_dir when there is one."),
    progress: bool = typer.Option(True, help="Show a progress bar (main process only)."),
) -> None:
    """Train Harmon for one stage of the recipe. One process, or many under `accelerate launch` / `torchrun`."""
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
    typer.run(train)
