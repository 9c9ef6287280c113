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
from pathlib import Path
from typing import Any

import torch

from harmon.checkpoints import save_safetensors
from harmon.shapesworld.export import write_atomically

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


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, json.dumps(data, indent=2).encode())


def save_checkpoint(run_dir: Path, iteration: int, weights: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], scheduler: dict[str, Any], rng: dict[str, Any],
                    state: dict[str, Any], ema: dict[str, torch.Tensor] | None, keep_last: int) -> Path:
    """Write one checkpoint atomically and delete all but the newest `keep_last` (main process only)."""
    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{iteration:08d}"
    tmp = root / f".tmp_{PREFIX}{iteration:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(weights, tmp / "model.safetensors")
    if ema is not None:
        save_safetensors(ema, tmp / "ema.safetensors")
    torch.save(optimizer, tmp / "optimizer.pt")
    torch.save(scheduler, tmp / "scheduler.pt")
    torch.save(rng, tmp / "rng.pt")
    write_json(tmp / "state.json", {**state, "iteration": iteration})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_part(folder: Path, name: str) -> Any:
    """A non-weight part of a checkpoint (tensors and plain containers only)."""
    return torch.load(folder / name, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
