"""Atomic, resumable training checkpoints: weights as safetensors, everything else loaded with weights_only.

A checkpoint is a folder `checkpoints/iter_XXXXXXXX/` holding `model.safetensors` (the trained model's state
without the frozen VAE), `ema.safetensors` (when EMA is on), `optimizer.pt`, `scheduler.pt`, `rng.pt` (this
process's torch RNG states) and `state.json` (iteration = data position, counters). It is written under a
temporary name and renamed when complete, so a killed run never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harmon.checkpoints import CheckpointError, load_file, read_torch, save_safetensors
from harmon.utils.files import save_torch, write_json

PREFIX = "iter_"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, iteration: int, weights: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], scheduler: dict[str, Any], rng: dict[str, Any],
                    state: dict[str, Any], ema: dict[str, torch.Tensor] | None, keep_last: int) -> Path:
    """Write one checkpoint atomically and delete all but the newest `keep_last` (main process only)."""
    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{iteration:08d}"
    tmp = root / f".tmp_{PREFIX}{iteration:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_safetensors(weights, tmp / "model.safetensors")
        if ema is not None:
            save_safetensors(ema, tmp / "ema.safetensors")
        save_torch(optimizer, tmp / "optimizer.pt")
        save_torch(scheduler, tmp / "scheduler.pt")
        save_torch(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", {**state, "iteration": iteration})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoints stay as they are
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_part(folder: Path, name: str) -> Any:
    """A non-weight part of a checkpoint (tensors and plain containers only; code-carrying pickles are refused)."""
    return read_torch(folder / name)


@dataclass
class ResumePoint:
    """Everything read from one complete, readable checkpoint."""

    folder: Path
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: Any
    state: dict[str, Any]


def read_checkpoint(folder: Path) -> ResumePoint:
    """Read every part of `folder`; CheckpointError naming the part when one is unreadable."""
    try:
        state = json.loads((folder / "state.json").read_text())
        int(state["iteration"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{folder / 'state.json'} is unreadable ({err})") from err
    ema = load_file(folder / "ema.safetensors") if (folder / "ema.safetensors").exists() else None
    return ResumePoint(folder, load_file(folder / "model.safetensors"), ema, load_part(folder, "optimizer.pt"),
                       load_part(folder, "scheduler.pt"), load_part(folder, "rng.pt"), state)


def load_latest(run_dir: Path, warn: Callable[[str], None], move_aside: bool = True) -> ResumePoint | None:
    """The newest readable checkpoint of `run_dir`, or None. An unreadable newer one (truncated by a full disk or
    a crash) is skipped with a warning and, with `move_aside` (the main process), renamed `corrupt-iter_...`:
    kept for inspection, never picked again."""
    for folder in reversed(checkpoint_dirs(run_dir)):
        try:
            return read_checkpoint(folder)
        except CheckpointError as err:
            aside = folder.with_name(f"corrupt-{folder.name}")
            if move_aside:
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(folder, aside)
            warn(f"warning: checkpoint {folder} is unreadable ({' '.join(str(err).split())}); moved it to "
                 f"{aside.name} and resuming from the previous checkpoint")
    return None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
