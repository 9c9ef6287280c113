"""`harmon table5` and `harmon figure6`: the paper's encoder and synergy ablations (registered in cli.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from experiments.cli_common import error_line

console = Console()

PRESET_HELP = ("'mini' (offline, on CPU in under 30 minutes: a small Harmon built from the mini Figure 2 tiny VAE "
               "and MAR, ShapesWorld data), 'micro' (the same in seconds, a smoke test), 'paper' (Harmon-0.5B with "
               "the paper encoders; edit the data paths in experiments/presets/{kind}-paper.yaml or pass a copy) or "
               "a YAML file.")
OUT_HELP = "Output folder (default: runs/{kind}-<preset>); runs inside it are reused or resumed on a rerun."
CACHE_HELP = ("Cache of the Figure 2 tiny encoders (default: the one `harmon figure2 --preset mini|micro` uses, so "
              "`make demo` results are reused); they are pretrained there when absent.")
SET_HELP = "Override a preset value, KEY=VALUE with dotted keys, e.g. training.steps=400 (repeatable)."
Pope = Annotated[Path | None, typer.Option(help="POPE question file or folder (paper preset).")]
PopeImages = Annotated[Path | None, typer.Option(help="Folder of the POPE images (COCO val2014).")]
Mme = Annotated[Path | None, typer.Option(help="MME_Benchmark_release_version folder (or eval-tool txt folder).")]
MmeImages = Annotated[Path | None, typer.Option(help="MME image folder, only for the eval-tool txt layout.")]
Gqa = Annotated[Path | None, typer.Option(help="GQA testdev_balanced_questions.json (or its folder).")]
GqaImages = Annotated[Path | None, typer.Option(help="Folder of the GQA images.")]
Progress = Annotated[bool, typer.Option(help="Show the training progress bars.")]
Workers = Annotated[int | None, typer.Option(help="Processes training the runs of a small preset at once, one CPU "
                                             "thread each (default: the CPU cores, at most 8). Paper presets "
                                             "train one run at a time.")]
Cache = Annotated[Path | None, typer.Option(help=CACHE_HELP)]
LmmsEval = Annotated[str, typer.Option(
    "--lmms-eval", help="Paper preset: 'run' scores every trained run with lmms-eval on the preset's lmms_eval "
    "columns (needs the eval extra), 'print' prints each run's lmms-eval command and reads results already in "
    "OUT/lmms-eval/, 'off' uses only the --pope/--mme/--gqa files.")]
Sets = Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)]
Table5Preset = Annotated[str, typer.Option(help=PRESET_HELP.format(kind="table5"))]
Table5Out = Annotated[Path | None, typer.Option(help=OUT_HELP.format(kind="table5"))]
Figure6Preset = Annotated[str, typer.Option(help=PRESET_HELP.format(kind="figure6"))]
Figure6Out = Annotated[Path | None, typer.Option(help=OUT_HELP.format(kind="figure6"))]


def _run(action: Callable[[], Any]) -> Any:
    """Known input problems become one clear error line and exit code 2."""
    from harmon.checkpoints import CheckpointError
    from harmon.train.trainer import TrainingStopped

    try:
        return action()
    except (ValueError, FileNotFoundError, CheckpointError, TrainingStopped) as error:
        console.print(error_line(error), soft_wrap=True)
        raise typer.Exit(2) from error


def _ablation(kind: str, cls: type, runner: Callable[..., Any], describe: Callable[[Any, Path], str], preset: str,
              out: Path | None, cache: Path | None, sets: list[str] | None, progress: bool,
              benchmarks: tuple[Path | None, ...], workers: int | None) -> tuple[Any, Path]:
    """The prelude of both commands: load the preset, resolve the output and tiny-encoder folders, announce the
    work and run it (one thread for small presets); returns (results, folder).

    benchmarks: the POPE, MME and GQA question and image paths, in `BenchmarkPaths` order.
    """
    from experiments.ablations.config import load_ablation
    from experiments.ablations.scoring import BenchmarkPaths
    from harmon.checkpoints import cache_dir
    from harmon.utils.files import output_dir
    from harmon.utils.runtime import default_workers

    def action() -> tuple[Any, Path]:
        if workers is not None and workers < 1:
            raise ValueError(f"--workers {workers}: give at least 1 (1 trains the runs one after another)")
        config = load_ablation(cls, kind, preset, sets or [])
        stem = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
        folder = output_dir(out or Path(f"runs/{kind}-{stem}"), "--out")
        small = config.model.small
        root = (cache or cache_dir() / f"figure2-{small.parts}") if small is not None else cache
        if root is not None:
            output_dir(root, "--cache")
        paths = BenchmarkPaths(*benchmarks)
        console.print(describe(config, folder))
        processes = (workers or default_workers(8)) if small is not None else 1
        return _threads(small is not None, lambda: runner(config, folder, root, paths, console, progress,
                                                          processes)), folder

    return _run(action)


def _threads(small: bool, action: Callable[[], Any]) -> Any:
    """Small presets run on one CPU thread, as the mini Figure 2 does (faster on two shared cores)."""
    import torch

    threads = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        return action()
    finally:
        torch.set_num_threads(threads)


def table5(
    preset: Table5Preset = "mini", out: Table5Out = None, cache: Cache = None, set_: Sets = None,
    pope: Pope = None, pope_images: PopeImages = None, mme: Mme = None, mme_images: MmeImages = None,
    gqa: Gqa = None, gqa_images: GqaImages = None, progress: Progress = True, workers: Workers = None,
    lmms_eval: LmmsEval = "run",
) -> None:
    """Table 5: train Harmon for understanding with each visual encoder (SigLIP, VQGAN, VAE, MAR) and compare."""
    from functools import partial

    from experiments.ablations.config import Table5Config
    from experiments.ablations.table5 import run_table5

    def describe(config: Any, folder: Path) -> str:
        return (f"Table 5 ({config.name}): {len(config.encoders)} encoders x {len(config.training.seeds)} "
                f"seed(s), {config.training.steps} understanding iterations each; writing {folder}/")

    results, folder = _ablation("table5", Table5Config, partial(run_table5, lmms_mode=lmms_eval), describe, preset,
                                out, cache, set_, progress, (pope, pope_images, mme, mme_images, gqa, gqa_images),
                                workers)
    console.print(f"Wrote [bold]{folder}/[/]: results.json, table5.csv, table5.md, table5.png/.pdf and report.md "
                  f"({results['timings']['total_s']:.0f} s)")


def figure6(
    preset: Figure6Preset = "mini", out: Figure6Out = None, cache: Cache = None, set_: Sets = None,
    pope: Pope = None, pope_images: PopeImages = None, mme: Mme = None, mme_images: MmeImages = None,
    gqa: Gqa = None, gqa_images: GqaImages = None, progress: Progress = True, workers: Workers = None,
) -> None:
    """Figure 6: und-only, gen-only, unified (shared MAR) and decoupled (SigLIP) training, evaluated on the way."""
    from experiments.ablations.config import Figure6Config
    from experiments.ablations.figure6 import run_figure6

    def describe(config: Any, folder: Path) -> str:
        return (f"Figure 6 ({config.name}): runs {', '.join(config.runs)} x {len(config.training.seeds)} "
                f"seed(s), {config.training.steps} iterations of each task; writing {folder}/")

    results, folder = _ablation("figure6", Figure6Config, run_figure6, describe, preset, out, cache, set_, progress,
                                (pope, pope_images, mme, mme_images, gqa, gqa_images), workers)
    synergy = results["verdicts"]["synergy"] or "not measured"
    console.print(f"The paper's synergy at this scale: {synergy} (see report.md). Wrote [bold]{folder}/[/]: "
                  f"curves.json, figure6.png/.pdf and report.md ({results['timings']['total_s']:.0f} s)")
