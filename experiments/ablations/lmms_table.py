"""Table 5's public-benchmark columns through lmms-eval: the invocation for one run folder, running it, and its
results JSON read back into the paper's columns.

Each run folder is scored by `python -m lmms_eval --model harmon --model_args run=RUN_DIR,...` (under
`accelerate launch --num_processes N` with several GPUs), writing `<out>/<model>/<date>_results.json`; a column's
value is `results[task]["<metric>,none"] x scale`. A folder that already holds results for every task is read,
not rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from experiments.ablations.config import LmmsEvalSection
from harmon.utils.strict_yaml import ConfigError

LMMS_MODES = ("run", "print", "off")
FILTER = "none"  # lmms-eval's name for the unfiltered responses, the suffix of every metric key
# The points of each column that make 1 point of the 0-100 primary score (MME sums over categories: <= 2000 / 800)
POINTS_PER_UNIT = {"MME-P": 20.0, "MME-C": 8.0}


def lmms_tasks(section: LmmsEvalSection) -> list[str]:
    """The lmms-eval tasks the columns need, each once, in column order."""
    return list(dict.fromkeys(column.task for column in section.columns.values()))


def lmms_command(section: LmmsEvalSection, run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """The lmms-eval invocation scoring the run folder `run_dir` on every task, results under `out_dir`."""
    launcher = ([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(section.processes)]
                if section.processes > 1 else [sys.executable])
    command = [*launcher, "-m", "lmms_eval", "--model", "harmon",
               "--model_args", f"run={Path(run_dir).resolve()},dtype={section.dtype}",
               "--tasks", ",".join(lmms_tasks(section)), "--batch_size", str(section.batch_size),
               "--output_path", str(Path(out_dir).resolve()), "--log_samples"]
    if section.limit is not None:
        command += ["--limit", str(section.limit)]
    for path in section.include_path:
        command += ["--include_path", str(Path(path).resolve())]
    return command


def check_tasks(tasks: list[str], include_path: list[str], include_defaults: bool = True) -> None:
    """A ConfigError naming every task lmms-eval does not know (its own task index, with `include_path`)."""
    from lmms_eval.tasks import TaskManager

    known = set(TaskManager("ERROR", include_path=include_path or None, include_defaults=include_defaults).all_tasks)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise ConfigError(f"lmms_eval.columns: lmms-eval knows no task {', '.join(map(repr, unknown))}; name "
                          "tasks from `python -m lmms_eval --tasks list` or add their folder to lmms_eval.include_path")


def results_file(out_dir: str | os.PathLike) -> Path | None:
    """The newest `*_results.json` lmms-eval wrote under `out_dir` (None when there is none)."""
    found = sorted(Path(out_dir).glob("**/*_results.json"), key=lambda p: (p.stat().st_mtime, p.name))
    return found[-1] if found else None


def read_lmms_results(path: str | os.PathLike, section: LmmsEvalSection) -> dict[str, float]:
    """The Table 5 columns of one lmms-eval results file, on the paper's scale."""
    path = Path(path)
    results = json.loads(path.read_text()).get("results")
    if not isinstance(results, dict):
        raise ValueError(f"{path} has no 'results' mapping; pass a results JSON lmms-eval wrote")
    row = {}
    for name, column in section.columns.items():
        key = f"{column.metric},{FILTER}"
        if column.task not in results or key not in results[column.task]:
            held = sorted(results.get(column.task, {}))
            raise ValueError(f"{path}: no {key!r} for task {column.task!r} (column {name}); it holds "
                             f"{', '.join(held) if held else 'no such task'}; rerun lmms-eval or fix "
                             f"lmms_eval.columns.{name}")
        row[name] = float(results[column.task][key]) * column.scale
    return row


def primary_score(row: dict[str, float]) -> float:
    """The mean of the benchmark columns of `row` on a 0-100 scale (MME sums divided by their maxima)."""
    values = [value / POINTS_PER_UNIT.get(name, 1.0) for name, value in row.items()]
    return sum(values) / len(values)


def lmms_scores(section: LmmsEvalSection, run_dir: Path, out_dir: Path, mode: str, console: Console
                ) -> dict[str, float]:
    """The lmms-eval columns of one run folder: read from `out_dir` when it holds them; with `mode` "run"
    lmms-eval scores the run first, with "print" its command is only printed (and {} returned until run)."""
    tasks = lmms_tasks(section)
    found = results_file(out_dir)
    if found is not None and set(tasks) <= set(json.loads(found.read_text()).get("results", {})):
        return read_lmms_results(found, section)
    command = lmms_command(section, run_dir, out_dir)
    shown = " ".join(command)
    if mode == "print":
        console.print(f"lmms-eval for {run_dir.name}: {shown}", soft_wrap=True, markup=False)
        return {}
    console.print(f"lmms-eval on {run_dir.name}: {shown}", soft_wrap=True, markup=False)
    done = subprocess.run(command, check=False)
    found = results_file(out_dir)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"lmms-eval on {run_dir} failed (exit {done.returncode}); its output is above, the "
                           f"command: {shown}")
    return read_lmms_results(found, section)
