"""`harmon table5`: which visual encoder serves Harmon's understanding (Table 5 of the paper).

Protocol:
- Every encoder (SigLIP, VQGAN, VAE, MAR) is plugged into the understanding path through `EncoderTokens`, frozen,
  behind a fresh Linear-SiLU-Linear projector (its tokens layer-normalised first when `model.layer_norm`). MAR
  goes through the same bridge as the others (not Harmon's native path), so the runs differ only in the encoder.
  A blind run (`blind`) plugs zeros of one encoder's token shape: what the model learns without the image.
- Understanding-only training (data ratio 0:1:0) of the module groups in `training.trainable` (the LLM and
  the plugged projector), with the same data, iterations, learning rates and seeds for every run.
- Small presets: ShapesWorld questions for training, held-out ShapesWorld QA (another seed) for evaluation, kept
  per question; the verdicts (`table5_claims`) come from paired intervals over the same questions (per seed a
  paired bootstrap, across seeds a t-interval of the per-seed differences) on the primary score fixed in
  `endpoints`. Paper preset: Harmon-0.5B with the paper encoders on the public benchmarks passed by path; there
  only mean scores are kept, so the ordering is compared by `close` / `margin` points and is no paired verdict.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from experiments.ablations.config import LmmsEvalSection, Table5Config
from experiments.ablations.factory import HarmonFactory
from experiments.ablations.lmms_table import LMMS_MODES, check_tasks, lmms_scores, lmms_tasks, primary_score
from experiments.ablations.parallel import train_in_workers
from experiments.ablations.report import plot_table5, table5_csv, table5_markdown
from experiments.ablations.run_model import write_run_record
from experiments.ablations.runs import RunSpec, require_sources, train_config, train_or_reuse
from experiments.ablations.scoring import (
    BenchmarkPaths,
    BenchmarkScorer,
    QAScorer,
    describe_world,
    mean,
    task_world,
)
from experiments.ablations.table5_claims import BLIND, table5_claims
from experiments.ablations.table5_report import claims_markdown
from experiments.paper import TABLE5_COLUMNS
from harmon.shapesworld.questions import QUESTION_KINDS
from harmon.train.config import ModelConfig, TrainConfig
from harmon.utils.files import atomic_write, write_json
from harmon.utils.runtime import rank, world_size
from harmon.utils.strict_yaml import ConfigError, to_dict

QA_KINDS = QUESTION_KINDS
SMALL_COLUMNS = ("Acc", "POPE", "QA", "Primary", "Gain")
BENCHMARK_COLUMNS = {"pope": "POPE", "mme_p": "MME-P", "mme_c": "MME-C", "gqa": "GQA"}


def table_row(evaluation: dict[str, Any], shapesworld: bool, kinds: list[str] | None = None,
              primary: list[str] | None = None) -> dict[str, float]:
    """Table 5 cells of one evaluation: ShapesWorld (x 100; `Primary` is the accuracy over the questions of the
    `primary` kinds, `kinds` giving each question's kind) or benchmark scores, and `score` (the primary; NaN when
    no benchmark file was scored)."""
    if shapesworld:
        row = {"QA": 100 * evaluation["understanding"]}
        row |= {f"QA-{k}": 100 * evaluation[f"qa_{k}"] for k in QA_KINDS if f"qa_{k}" in evaluation}
        if "pope_f1" in evaluation:
            row |= {"POPE": 100 * evaluation["pope_f1"], "POPE-yes-ratio": 100 * evaluation["pope_yes_ratio"]}
        if kinds is not None and primary:
            hits = [c for c, k in zip(evaluation["qa_correct"], kinds, strict=True) if k in primary]
            row["Primary"] = 100 * mean(hits)
        return {**row, "score": row.get("Primary", row["QA"])}
    row = {column: evaluation[key] for key, column in BENCHMARK_COLUMNS.items() if key in evaluation}
    return {**row, "score": 100 * evaluation["understanding"] if "understanding" in evaluation else float("nan")}


def with_lmms(row: dict[str, float], lmms: dict[str, float] | None) -> dict[str, float]:
    """A benchmark row with the lmms-eval columns laid over it (they win where both measured a column); the
    primary score becomes the mean of every column on a 0-100 scale."""
    if not lmms:
        return row
    merged = {**row, **lmms}
    return {**merged, "score": primary_score({k: v for k, v in merged.items() if k in TABLE5_COLUMNS})}


def require_lmms_tasks(section: LmmsEvalSection) -> None:
    """Refuse, before training, an lmms-eval that is not installed or tasks it does not know."""
    try:
        import lmms_eval  # noqa: F401
    except ImportError as error:
        raise ConfigError("lmms_eval: lmms-eval is not installed; install it with `pip install "
                          "'harmon-toolkit[eval]'` or pass --lmms-eval off") from error
    check_tasks(lmms_tasks(section), section.include_path)


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
                    columns: tuple[str, ...], timings: dict[str, Any], claims: dict[str, Any] | None = None) -> str:
    small = config.model.small is not None
    lines = [f"# Table 5 ({config.name}): visual encoders for understanding", "",
             table5_markdown(table, columns)]
    if claims is not None:
        e = config.endpoints
        lines += [f"Measured on held-out ShapesWorld QA, x 100: `QA` is the accuracy over all kinds, `Primary` over "
                  f"the primary kinds ({', '.join(e.primary)}), `Gain` is `Primary` minus the blind run's, `POPE` "
                  "the F1 of the existence questions (balanced yes/no; negatives "
                  f"{', '.join(config.shapesworld.negatives)}). The paper's columns are ImageNet probing and the "
                  "public benchmarks; only the ordering is comparable.", "", *kind_table(table),
                  claims_markdown(claims, e)]
    else:
        scores = ", ".join(f"{label} {table[label]['score']:.1f}" for label in table)
        lines += [("Measured on the public benchmarks passed on the command line." if not small else ""), "",
                  *kind_table(table), "## The paper's ordering (MAR ≈ SigLIP ≫ VQGAN, VAE) on mean scores", "",
                  f"Primary score (mean benchmark score, 0-100): {scores}. Only means are kept here, so this is a "
                  "comparison of means, not a paired verdict."]
        if not verdict["measured"]:
            lines.append("**Not measured**: the run did not include all four encoders.")
        else:
            lines += [f"- MAR - SigLIP = {verdict['mar_minus_siglip']:+.1f} (within {verdict['close_points']:g} "
                      f"points: {'yes' if verdict['close'] else 'no'}).",
                      f"- min(MAR, SigLIP) - max(VQGAN, VAE) = {verdict['gap']:+.1f} (at least "
                      f"{verdict['margin_points']:g} points: {'yes' if verdict['far_above'] else 'no'})."]
    setting = (f"{describe_world(task_world(config.data, 'i2t', config.model.image_size))}; question kinds "
               f"{', '.join(config.shapesworld.kinds)}; {config.shapesworld.items} held-out questions. "
               if small else "")
    norm = "layer-normalised (no affine) before the projector" if config.model.layer_norm else "not normalised"
    lines += ["", f"Setting: {setting}Seeds {config.training.seeds}; {config.training.steps} understanding "
              f"iterations of batch {config.data.batch_size} per run (trained: "
              f"{', '.join(config.training.trainable)}; encoders frozen, their tokens {norm}).",
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


def labels(config: Table5Config) -> list[str]:
    """The runs of the table: every encoder, then the blind run when there is one."""
    return [*config.encoders, *([BLIND] if config.blind is not None else [])]


def plan(config: Table5Config, model: ModelConfig, out: Path) -> list[PlannedRun]:
    """Every run of the table (encoder x seed), with `model` recorded in the TrainConfigs."""
    runs = []
    for label in labels(config):
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
               progress: bool = True, workers: int = 1, only: set[str] | None = None, lmms_mode: str = "run"
               ) -> dict[str, Any] | None:
    """Train and evaluate one understanding-only run per encoder and seed; write the table, plot and report.

    `workers` > 1 trains the runs of a small preset in that many processes first; `only` (run folder names)
    trains just those runs and writes no report (what a worker does). With `config.lmms_eval`, `lmms_mode`
    "run" scores every trained run with lmms-eval, "print" prints the commands (and reads results already
    there), "off" skips it."""
    console = console or Console()
    began = time.perf_counter()
    out = Path(out_dir)
    if lmms_mode not in LMMS_MODES:
        raise ValueError(f"--lmms-eval {lmms_mode!r}: use one of {', '.join(LMMS_MODES)}")
    lmms = config.lmms_eval if lmms_mode != "off" else None
    paths = (benchmarks or BenchmarkPaths()).given(required=lmms is None) if config.benchmarks is not None else None
    require_sources(config.data, {"i2t"})
    if lmms is not None:
        require_lmms_tasks(lmms)
    factory = HarmonFactory(config.model, cache, console)
    size = config.model.image_size
    scorer = (QAScorer(config.shapesworld, task_world(config.data, "i2t", size), size) if paths is None else
              BenchmarkScorer(config.benchmarks, paths, size))
    setup_s = time.perf_counter() - began
    planned = plan(config, factory.record(), out)
    if workers > 1 and only is None and config.model.small is not None:
        train_in_workers(run_table5, config, out, cache, [Path(r.train.out_dir).name for r in planned], workers,
                         console)
    runs: dict[str, dict[int, dict[str, Any]]] = {label: {} for label in labels(config)}
    for run in planned:
        if only is not None and Path(run.train.out_dir).name not in only:
            continue
        console.print(f"[bold]{run.label}[/] (seed {run.spec.seed}): {run.spec.steps} understanding iterations")
        blind = run.label == BLIND
        write_run_record(run.train.out_dir, config, run.label, run.spec.seed, blind, cache)
        outcome = train_or_reuse(
            run.train, lambda r=run, b=blind: factory.build(r.spec.seed, config.blind if b else r.label, blind=b),
            scorer, run.spec.steps, console, progress)
        runs[run.label][run.spec.seed] = {"evaluation": outcome.evaluations[run.spec.steps],
                                          "seconds": outcome.seconds, "reused": outcome.reused,
                                          "run_dir": str(outcome.run_dir)}
        if lmms is not None and only is None and rank() == 0:
            mode = "print" if world_size() > 1 else lmms_mode
            runs[run.label][run.spec.seed]["lmms_eval"] = lmms_scores(
                lmms, outcome.run_dir, out / "lmms-eval" / outcome.run_dir.name, mode, console)
    if only is not None:
        return None
    kinds = [item["kind"] for item in scorer.items] if paths is None else None
    primary = config.endpoints.primary if paths is None else None
    per_seed = {label: [with_lmms(table_row(r["evaluation"], paths is None, kinds, primary), r.get("lmms_eval"))
                        for r in seeds.values()] for label, seeds in runs.items()}
    table = {label: {k: mean([row[k] for row in rows]) for k in rows[0]} for label, rows in per_seed.items()}
    claims = None
    if paths is None:
        claims = table5_claims({label: {s: r["evaluation"]["qa_correct"] for s, r in seeds.items()}
                                for label, seeds in runs.items()}, kinds,
                               {label: {s: r["evaluation"].get("pope_yes_ratio") for s, r in seeds.items()}
                                for label, seeds in runs.items()}, config.endpoints)
        if BLIND in table:
            blind_primary = table[BLIND]["Primary"]
            for row in table.values():
                row["Gain"] = row["Primary"] - blind_primary
    verdict = ordering_verdict({label: row["score"] for label, row in table.items()}, config.close, config.margin)
    columns = SMALL_COLUMNS if paths is None else TABLE5_COLUMNS
    timings = {"setup_s": setup_s, "runs_s": time.perf_counter() - began - setup_s,
               "total_s": time.perf_counter() - began,
               "train_s": {f"{label}-seed{seed}": r["seconds"] for label, seeds in runs.items()
                           for seed, r in seeds.items()}}
    results = {"name": config.name, "config": to_dict(config), "table": table, "verdict": verdict,
               "claims": claims, "runs": runs, "columns": list(columns), "timings": timings,
               "items": [{k: item[k] for k in ("kind", "question", "answer", "pope_split")} for item in scorer.items]
               if paths is None else None}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    atomic_write(out / "table5.csv", table5_csv(table, columns))
    atomic_write(out / "table5.md", table5_markdown(table, columns))
    plot_table5(table, out / "table5", columns)
    atomic_write(out / "report.md", report_markdown(config, table, verdict, columns, timings, claims))
    console.print(summary_table(table, columns))
    return results


def summary_table(table: dict[str, dict[str, float]], columns: tuple[str, ...]) -> Table:
    shown = [c for c in columns if any(c in row for row in table.values())]
    view = Table("encoder", *shown, title="Table 5 (measured)")
    for label, row in table.items():
        view.add_row(label, *(f"{row[c]:.1f}" if c in row else "–" for c in shown))
    return view
