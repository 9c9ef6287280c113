"""`harmon figure6`: single-task vs unified training, and shared vs decoupled encoding (Figure 6 of the paper).

Protocol:
- Four runs per seed from the same starting Harmon: und-only (data ratio 0:1:0), gen-only (0:0:1), unified
  (0:1:1, i2t and t2i alternating) with the shared MAR encoder, and decoupled: unified with `decoupled_encoder`
  (SigLIP) plugged, trainable, for understanding while MAR still serves generation.
- Every curve is plotted against the iterations of its own task: a unified run takes 2 x `training.steps`
  iterations so that it sees as many understanding and as many generation batches as the single-task runs,
  and it is evaluated every 2 x `eval_every` iterations. Each run's schedule (warm-up, cosine) spans its own
  iterations.
- All runs train the module groups of `training.trainable` with the same learning rates (a group a task does
  not reach gets no gradient); the decoupled run also trains `understanding` (its encoder and projector).
- Understanding is scored on held-out ShapesWorld QA (accuracy; paper: the mean of the public benchmarks given),
  generation on ShapesWorld GenEval-style prompts (overall score, checked by the exact ShapesWorld detector), or,
  with `generation.geneval.metadata` (the paper preset), on GenEval's own prompts scored by the published protocol
  (Mask2Former + CLIP, `experiments/ablations/geneval_scoring.py`), plus FID with `generation.fid`;
  und-only is scored on understanding only, gen-only on generation only.
- Every evaluation keeps each question's and each prompt's score; the verdicts (`figure6_claims`) pair the runs
  on those shared items (the mean of the last `last` evaluations per item): per seed a paired bootstrap, across
  seeds a t-interval of the per-seed differences (`endpoints`).
- The decoupled SigLIP trains at the shared MAR encoder's learning rate (`training.lr.understanding` equal to
  `training.lr.mar_encoder` in the presets), so the two designs differ in the encoder, not its rate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from experiments.ablations.config import Figure6Config
from experiments.ablations.factory import HarmonFactory
from experiments.ablations.figure6_claims import per_item, synergy_claims
from experiments.ablations.geneval_scoring import DetectorGenerationScorer
from experiments.ablations.parallel import train_in_workers
from experiments.ablations.report import RUNS, plot_figure6, synergy_report
from experiments.ablations.runs import (
    RunSpec,
    evaluation_points,
    require_sources,
    train_config,
    train_or_reuse,
)
from experiments.ablations.scoring import (
    BenchmarkPaths,
    BenchmarkScorer,
    GenerationScorer,
    QAScorer,
    combine,
    describe_world,
    task_world,
)
from harmon.train.batch import TASKS
from harmon.train.config import ModelConfig, TrainConfig
from harmon.utils.files import atomic_write, write_json
from harmon.utils.strict_yaml import to_dict

RATIOS = {"und-only": (0, 1, 0), "gen-only": (0, 0, 1), "unified": (0, 1, 1), "decoupled": (0, 1, 1)}
METRICS = {"und-only": ("understanding",), "gen-only": ("generation",), "unified": ("understanding", "generation"),
           "decoupled": ("understanding", "generation")}


@dataclass(frozen=True)
class PlannedRun:
    """One run of one seed: its spec, the encoder plugged for understanding (None: the shared MAR), its
    TrainConfig and the iterations between evaluations."""

    spec: RunSpec
    encoder: str | None
    train: TrainConfig
    eval_every: int


def plan(config: Figure6Config, model: ModelConfig, out: Path) -> list[PlannedRun]:
    """Every run (seed x run name), with `model` recorded in the TrainConfigs."""
    runs, trainable = [], tuple(config.training.trainable)
    for seed in config.training.seeds:
        for name in config.runs:
            decoupled = name == "decoupled"
            spec = RunSpec(name, seed, RATIOS[name], (*trainable, "understanding") if decoupled else trainable,
                           config.training.steps)
            train = train_config(spec, model, config.data, config.training, config.model.image_size,
                                 out / "runs" / f"{name}-seed{seed}", f"{config.name} {name} seed {seed}")
            runs.append(PlannedRun(spec, config.decoupled_encoder if decoupled else None, train,
                                   config.eval_every * spec.tasks_per_cycle))
    return runs


def curves_of(runs: dict[str, dict[int, dict[int, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per run: `step` (iterations of each task), one list per seed of every metric, and the full rows."""
    curves = {}
    for name, seeds in runs.items():
        points = sorted(next(iter(seeds.values())))
        per_task = sum(RATIOS[name])
        entry: dict[str, Any] = {"step": [p / per_task for p in points]}
        for metric in METRICS[name]:
            entry[metric] = [[seeds[s][p][metric] for p in points] for s in seeds]
        entry["rows"] = {str(s): [seeds[s][p] for p in points] for s in seeds}
        curves[name] = entry
    return curves


def final_cells(entry: dict[str, Any]) -> list[str]:
    """Understanding and generation at a run's last evaluation, averaged over seeds ("–" when not scored)."""
    cells = []
    for metric in ("understanding", "generation"):
        values = [seed[-1] for seed in entry.get(metric, [])]
        cells.append(f"{sum(values) / len(values):.3f}" if values else "–")
    return cells


def final_table(curves: dict[str, dict[str, Any]]) -> Table:
    view = Table("run", "understanding", "generation", title="Figure 6: final evaluation (mean over seeds)")
    for name, entry in curves.items():
        view.add_row(RUNS[name], *final_cells(entry))
    return view


def report_markdown(config: Figure6Config, curves: dict[str, dict[str, Any]], timings: dict[str, Any],
                    claims: dict[str, Any]) -> str:
    small = config.model.small is not None
    rows = ["| run | task iterations | understanding | generation |", "|---|---:|---:|---:|"]
    for name, entry in curves.items():
        cells = final_cells(entry)
        rows.append(f"| {RUNS[name]} | {entry['step'][-1]:g} | {cells[0]} | {cells[1]} |")
    setting = (f"{describe_world(task_world(config.data, 'i2t', config.model.image_size))}; "
               if small else "")
    understanding = ("held-out ShapesWorld QA accuracy" if small else
                     "mean of the public benchmark scores given (0-1; MME-P / 2000)")
    g = config.generation
    lines = [f"# Figure 6 ({config.name}): single task vs unified, shared vs decoupled", "",
             f"Understanding: {understanding}. Generation: ShapesWorld GenEval-style overall score of "
             f"{len(g.categories) * g.per_category} prompts ({', '.join(g.categories)}; {g.steps} MAR steps, CFG "
             f"{g.cfg:g}). Curves are plotted against the iterations of each run's own task "
             "(a unified run alternates i2t and t2i, so it runs twice as many iterations).", "",
             "Final evaluation (mean over seeds):", "", *rows, "",
             synergy_report(claims, config.last, config.endpoints.level),
             f"Setting: {setting}seeds {config.training.seeds}; batch {config.data.batch_size}; "
             f"{config.training.steps} iterations of each task, evaluated every {config.eval_every}.",
             f"Wall time: {timings['total_s']:.0f} s (encoders and tokenizer {timings['setup_s']:.0f} s, runs "
             f"{timings['runs_s']:.0f} s). Training time of each run (as first trained): "
             + ", ".join(f"{run} {seconds:.0f} s" for run, seconds in timings["train_s"].items()) + ".",
             "Figure: `figure6.png` / `figure6.pdf`; numbers: `curves.json`.", ""]
    return "\n".join(lines)


def run_figure6(config: Figure6Config, out_dir: str | os.PathLike, cache: str | os.PathLike | None,
                benchmarks: BenchmarkPaths | None = None, console: Console | None = None,
                progress: bool = True, workers: int = 1, only: set[str] | None = None) -> dict[str, Any] | None:
    """Train (or reuse / resume) the four runs per seed with evaluations on the way; write curves, figure, report.

    `workers` > 1 trains the runs of a small preset in that many processes first; `only` (run folder names)
    trains just those runs and writes nothing else (what a worker does)."""
    console = console or Console()
    began = time.perf_counter()
    out = Path(out_dir)
    paths = (benchmarks or BenchmarkPaths()).given() if config.benchmarks is not None else None
    require_sources(config.data, {t for name in config.runs for t, n in zip(TASKS, RATIOS[name], strict=True) if n})
    factory = HarmonFactory(config.model, cache, console)
    size = config.model.image_size
    understanding = (QAScorer(config.shapesworld, task_world(config.data, "i2t", size), size) if paths is None else
                     BenchmarkScorer(config.benchmarks, paths, size))
    setup_s = time.perf_counter() - began
    runs: dict[str, dict[int, dict[int, dict[str, Any]]]] = {name: {} for name in config.runs}
    seconds: dict[str, float] = {}
    planned = plan(config, factory.record(), out)
    if workers > 1 and only is None and config.model.small is not None:
        train_in_workers(run_figure6, config, out, cache, [Path(r.train.out_dir).name for r in planned], workers,
                         console)
    for run in planned:
        if only is not None and Path(run.train.out_dir).name not in only:
            continue
        spec = run.spec
        samples = Path(run.train.out_dir) / "samples"
        generation = (DetectorGenerationScorer(config.generation, size, spec.steps, samples)
                      if config.generation.geneval.metadata is not None else
                      GenerationScorer(config.generation, task_world(config.data, "t2i", size), size, spec.steps,
                                       samples))
        hooks = {"understanding": understanding, "generation": generation}
        evaluate = combine(*(hooks[m] for m in METRICS[spec.name]))
        console.print(f"[bold]{RUNS[spec.name]}[/] (seed {spec.seed}): {spec.steps} iterations, evaluated every "
                      f"{run.eval_every}")
        outcome = train_or_reuse(run.train, lambda r=run: factory.build(r.spec.seed, r.encoder, trainable=True),
                                 evaluate, run.eval_every, console, progress)
        points = evaluation_points(spec.steps, run.eval_every)
        runs[spec.name][spec.seed] = {p: outcome.evaluations[p] for p in points}
        seconds[f"{spec.name}-seed{spec.seed}"] = outcome.seconds
    if only is not None:
        return None
    curves = curves_of(runs)
    timings = {"setup_s": setup_s, "runs_s": time.perf_counter() - began - setup_s,
               "total_s": time.perf_counter() - began, "train_s": seconds}
    out.mkdir(parents=True, exist_ok=True)
    plot_figure6(curves, out / "figure6")
    verdicts = synergy_claims(per_item(runs, METRICS, config.last), config.endpoints)
    write_json(out / "curves.json", {"name": config.name, "curves": curves, "verdicts": verdicts,
                                     "config": to_dict(config), "timings": timings})
    atomic_write(out / "report.md", report_markdown(config, curves, timings, verdicts))
    console.print(final_table(curves))
    return {"curves": curves, "verdicts": verdicts, "timings": timings}
