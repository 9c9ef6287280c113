"""Training logs: a CSV of losses, learning rates and throughput (TensorBoard too when installed)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from harmon.utils.files import atomic_write

COLUMNS = ("iteration", "update", "task", "loss", "grad_norm", "samples_per_s", "elapsed_s")


class RunLog:
    """Append-only `metrics.csv`; on resume, rows past the checkpoint are dropped (they will be recomputed)."""

    def __init__(self, run_dir: Path, lr_names: list[str], resume_from: int | None):
        self.path = run_dir / "metrics.csv"
        self.columns = [*COLUMNS, *(f"lr_{n}" for n in lr_names)]
        if resume_from is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["iteration"]) < resume_from]
        else:
            kept = []
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, text.getvalue())
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns)
        self.board = _tensorboard(run_dir)

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: row.get(k, "") for k in self.columns})
        self.file.flush()
        if self.board is not None:
            step = int(row["iteration"])
            self.board.add_scalar(f"loss/{row['task']}", float(row["loss"]), step)
            for key, value in row.items():
                if key.startswith("lr_") or key in ("grad_norm", "samples_per_s"):
                    if value not in ("", None):
                        self.board.add_scalar(key, float(value), step)

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))
