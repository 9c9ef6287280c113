"""Train the runs of a small ablation in worker processes, one CPU thread each, so that every core trains.

Each worker builds the ablation's shared parts from the cache (the parent built them first, so nothing is
pretrained twice) and trains one run into its folder. The parent then goes through the runs as usual and finds
each one finished, so the tables, intervals and reports come from one place whatever the number of workers.
Runs are deterministic per seed, so a run trained in a worker equals the same run trained in the parent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

Runner = Callable[..., Any]


def _train_one(runner: Runner, config: Any, out: Path, cache: Path | None, run: str) -> str:
    import torch

    torch.set_num_threads(1)
    runner(config, out, cache, console=Console(quiet=True), progress=False, only={run})
    return run


def train_in_workers(runner: Runner, config: Any, out: str | os.PathLike, cache: str | os.PathLike | None,
                     runs: list[str], workers: int, console: Console) -> None:
    """Train each of `runs` (run folder names) with `runner(..., only={run})` in `workers` spawned processes."""
    cache = None if cache is None else Path(cache)
    console.print(f"training {len(runs)} runs in {workers} worker processes (one thread each)")
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, runner, config, Path(out), cache, run) for run in runs]
        for done, future in enumerate(as_completed(futures), 1):
            console.print(f"  {future.result()} trained ({done}/{len(runs)})")
