"""`harmon table5`: which visual encoder serves Harmon's understanding (Table 5 of the paper).

Protocol:
- Every encoder (SigLIP, VQGAN, VAE, MAR) is plugged into the understanding path through `EncoderTokens`, frozen,
  behind a fresh Linear-SiLU-Linear projector. MAR goes through the same bridge as the others (not Harmon's
  native path), so the four runs differ only in the encoder.
- Understanding-only training (data ratio 0:1:0) of the module groups in `training.trainable` (the LLM and
  the plugged projector), with the same data, iterations, learning rates and seeds for every encoder.
- Small presets: ShapesWorld questions for training, held-out ShapesWorld QA (another seed) for evaluation:
  accuracy per question kind and POPE-style F1 / accuracy of the existence questions. Paper preset: Harmon-0.5B
  with the paper encoders, evaluated on the public benchmarks passed by path.
- The paper's ordering (MAR ≈ SigLIP ≫ VQGAN, VAE) shows when MAR and SigLIP lie within `close` points of each
  other and both at least `margin` points above VQGAN and VAE, on the primary score (QA accuracy x 100, or the
  mean benchmark score on a 0-100 scale); scores are averaged over seeds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from experiments.ablations.config import Table5Config
from experiments.ablations.factory import HarmonFactory
from experiments.ablations.report import (
    TABLE5_COLUMNS,
    plot_table5,
    table5_csv,
    table5_markdown,
)
from experiments.ablations.runs import RunSpec, require_sources, train_config, train_or_reuse
from experiments.ablations.scoring import (
    BenchmarkPaths,
    BenchmarkScorer,
    QAScorer,
    describe_world,
    mean,
    task_world,
)
from harmon.train.config import ModelConfig, TrainConfig
from harmon.train.strict import to_dict

QA_KINDS = ("existence", "color", "count", "position")
SMALL_COLUMNS = ("Acc", "POPE", "QA")
BENCHMARK_COLUMNS = {"pope": "POPE", "mme_p": "MME-P", "mme_c": "MME-C", "gqa": "GQA"}


def table_row(evaluation: dict[str, float], shapesworld: bool) -> dict[str, float]:
    """Table 5 cells of one evaluation: ShapesWorld (x 100) or benchmark scores, and `score` (the primary)."""
    if shapesworld:
        row = {"QA": 100 * evaluation["understanding"]}
        row |= {f"QA-{k}": 100 * evaluation[f"qa_{k}"] for k in QA_KINDS if f"qa_{k}" in evaluation}
        if "pope_f1" in evaluation:
            row |= {"POPE": 100 * evaluation["pope_f1"], "POPE-yes-ratio": 100 * evaluation["pope_yes_ratio"]}
        return {**row, "score": row["QA"]}
    row = {column: evaluation[key] for key, column in BENCHMARK_COLUMNS.items() if key in evaluation}
    return {**row, "score": 100 * evaluation["understanding"]}


def ordering_verdict(scores: dict[str, float], close: float, margin: float) -> dict[str, Any]:
    """Whether MAR ≈ SigLIP (within `close`) ≫ VQGAN, VAE (by at least `margin`) on the primary score."""
    semantic, pixel = [scores[e] for e in ("MAR", "SigLIP") if e in scores], \
        [scores[e] for e in ("VQGAN", "VAE") if e in scores]
    if len(semantic) < 2 or len(pixel) < 2:
        return {"measured": False, "shows": None, "close": None, "gap": None}
    gap = min(semantic) - max(pixel)
    near = abs(semantic[0] - semantic[1]) <= close
    return {"measured": True, "mar_minus_siglip": semantic[0] - semantic[1], "gap": gap, "close": near,
            "far_above": gap >= margin, "shows": near and gap >= margin, "close_points": close,
            "margin_points": margin}


def report_markdown(config: Table5Config, table: dict[str, dict[str, float]], verdict: dict[str, Any],
                    columns: tuple[str, ...], timings: dict[str, Any]) -> str:
    small = config.model.small is not None
    scores = ", ".join(f"{label} {table[label]['score']:.1f}" for label in table)
    lines = [f"# Table 5 ({config.name}): visual encoders for understanding", "",
             table5_markdown(table, columns),
             ("Measured on held-out ShapesWorld QA: `QA` is the accuracy over all kinds, `QA-<kind>` per kind, "
              "`POPE` the F1 of the existence questions (POPE protocol: balanced yes/no, random / popular / "
              "adversarial negatives), all x 100. The paper's columns are ImageNet probing and the public "
              "benchmarks; only the ordering is comparable." if small else
              "Measured on the public benchmarks passed on the command line."), "", *kind_table(table),
             "## Does the paper's ordering (MAR ≈ SigLIP ≫ VQGAN, VAE) show at this scale?", "",
             f"Primary score ({'QA accuracy x 100' if small else 'mean benchmark score, 0-100'}): {scores}."]
    ranked = sorted(table, key=lambda label: -table[label]["score"])
    lines.append("Ordering measured here: " + " > ".join(ranked) + ".")
    if not verdict["measured"]:
        lines.append("**Not measured**: the run did not include all four encoders.")
    else:
        lines += [f"- MAR ≈ SigLIP (within {verdict['close_points']:g} points): MAR - SigLIP = "
                  f"{verdict['mar_minus_siglip']:+.1f} → **{'yes' if verdict['close'] else 'no'}**.",
                  f"- Both ≫ VQGAN and VAE (by at least {verdict['margin_points']:g} points): the smaller of MAR "
                  f"and SigLIP minus the larger of VQGAN and VAE = {verdict['gap']:+.1f} → "
                  f"**{'yes' if verdict['far_above'] else 'no'}**.", "",
                  "**The paper's ordering shows at this scale.**" if verdict["shows"] else
                  "**The paper's ordering does not show at this scale.**"]
    setting = (f"{describe_world(task_world(config.data, 'i2t', config.model.image_size))}; question kinds "
               f"{', '.join(config.shapesworld.kinds)}; {config.shapesworld.items} held-out questions. "
               if small else "")
    lines += ["", f"Setting: {setting}Seeds {config.training.seeds}; {config.training.steps} understanding "
              f"iterations of batch {config.data.batch_size} per run (trained: "
              f"{', '.join(config.training.trainable)}; encoders frozen).",
              f"Wall time: {timings['total_s']:.0f} s (encoders and tokenizer {timings['setup_s']:.0f} s, "
              f"runs {timings['runs_s']:.0f} s). Training time of each run (as first trained): "
              + ", ".join(f"{run} {seconds:.0f} s" for run, seconds in timings["train_s"].items()) + ".", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class PlannedRun:
    """One encoder's run of one seed: its spec and TrainConfig."""

    label: str
    spec: RunSpec
    train: TrainConfig


def plan(config: Table5Config, model: ModelConfig, out: Path) -> list[PlannedRun]:
    """Every run of the table (encoder x seed), with `model` recorded in the TrainConfigs."""
    runs = []
    for label in config.encoders:
        for seed in config.training.seeds:
            spec = RunSpec(label, seed, (0, 1, 0), tuple(config.training.trainable), config.training.steps)
            train = train_config(spec, model, config.data, config.training, config.model.image_size,
                                 out / "runs" / f"{label}-seed{seed}", f"{config.name} {label} seed {seed}")
            runs.append(PlannedRun(label, spec, train))
    return runs


def kind_table(table: dict[str, dict[str, float]]) -> list[str]:
    """Markdown lines of the ShapesWorld accuracy per question kind and the share of 'yes' answers to the
    existence questions (none for benchmark results)."""
    names = [f"QA-{k}" for k in QA_KINDS] + ["POPE-yes-ratio"]
    shown = [n for n in names if any(n in row for row in table.values())]
    if not shown:
        return []
    lines = ["| Encoder | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for label, row in table.items():
        lines.append(f"| {label} | " + " | ".join(f"{row.get(n, float('nan')):.1f}" for n in shown) + " |")
    return ["Accuracy per question kind (QA-existence is also the POPE-style accuracy) and the share of 'yes' "
            "answers to the existence questions (x 100):", "", *lines, ""]


def run_table5(config: Table5Config, out_dir: str | os.PathLike, cache: str | os.PathLike | None,
               benchmarks: BenchmarkPaths | None = None, console: Console | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one understanding-only run per encoder and seed; write the table, plot and report."""
    console = console or Console()
    began = time.perf_counter()
    out = Path(out_dir)
    paths = (benchmarks or BenchmarkPaths()).given() if config.benchmarks is not None else None
    require_sources(config.data, {"i2t"})
    factory = HarmonFactory(config.model, cache, console)
    size = config.model.image_size
    scorer = (QAScorer(config.shapesworld, task_world(config.data, "i2t", size), size) if paths is None else
              BenchmarkScorer(config.benchmarks, paths, size))
    setup_s = time.perf_counter() - began
    runs: dict[str, dict[int, dict[str, Any]]] = {label: {} for label in config.encoders}
    for run in plan(config, factory.record(), out):
        console.print(f"[bold]{run.label}[/] (seed {run.spec.seed}): {run.spec.steps} understanding iterations")
        outcome = train_or_reuse(run.train, lambda r=run: factory.build(r.spec.seed, r.label), scorer,
                                 run.spec.steps, console, progress)
        runs[run.label][run.spec.seed] = {"evaluation": outcome.evaluations[run.spec.steps],
                                          "seconds": outcome.seconds, "reused": outcome.reused,
                                          "run_dir": str(outcome.run_dir)}
    per_seed = {label: [table_row(r["evaluation"], paths is None) for r in seeds.values()]
                for label, seeds in runs.items()}
    table = {label: {k: mean([row[k] for row in rows]) for k in rows[0]} for label, rows in per_seed.items()}
    verdict = ordering_verdict({label: row["score"] for label, row in table.items()}, config.close, config.margin)
    columns = SMALL_COLUMNS if paths is None else TABLE5_COLUMNS
    timings = {"setup_s": setup_s, "runs_s": time.perf_counter() - began - setup_s,
               "total_s": time.perf_counter() - began,
               "train_s": {f"{label}-seed{seed}": r["seconds"] for label, seeds in runs.items()
                           for seed, r in seeds.items()}}
    results = {"name": config.name, "config": to_dict(config), "table": table, "verdict": verdict,
               "runs": runs, "columns": list(columns), "timings": timings}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "table5.csv").write_text(table5_csv(table, columns))
    (out / "table5.md").write_text(table5_markdown(table, columns))
    plot_table5(table, out / "table5", columns)
    (out / "report.md").write_text(report_markdown(config, table, verdict, columns, timings))
    console.print(summary_table(table, columns))
    return results


def summary_table(table: dict[str, dict[str, float]], columns: tuple[str, ...]) -> Table:
    shown = [c for c in columns if any(c in row for row in table.values())]
    view = Table("encoder", *shown, title="Table 5 (measured)")
    for label, row in table.items():
        view.add_row(label, *(f"{row[c]:.1f}" if c in row else "–" for c in shown))
    return view
