"""The training-throughput benchmark on the tiny model: both loops run, report, and do the same work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bare_and_trainer_loops_report_and_reach_the_same_losses(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    args = [sys.executable, "-m", "experiments.benchmarks.train_throughput", "--model", "tiny", "--steps", "5",
            "--warmup", "1", "--batch", "2", "--image-size", "32", "--ratio", "0,1,1", "--threads", "1",
            "--device", "cpu", "--out", str(out)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"] == {**report["config"], "batch": 2, "image_size": 32, "ratio": [0, 1, 1], "steps": 5,
                                "log_every": 1, "mixed_precision": "no"}
    (run,) = report["repeats"]
    for kind in ("bare", "trainer"):
        loop = run[kind]
        assert loop["timed_iterations"] == 3 and len(loop["iteration_s"]) == 3
        assert loop["samples_per_s"] > 0 and loop["peak_memory_mb"] > 0
        assert set(loop["median_iteration_s_by_task"]) == {"i2t", "t2i"}
    assert run["trainer"]["checkpoint_save_s"] > 0
    logged = run["trainer"]["logged_losses"]
    assert sorted(map(int, logged)) == list(range(5))  # log_every 1: every iteration's loss
    assert run["losses_equal"] and run["max_abs_loss_diff"] < 1e-6
    assert [f"{loss:.6f}" for loss in run["bare"]["losses"]] == [logged[str(i)] for i in range(5)]
    assert report["median"]["overhead_pct"] == run["overhead_pct"]
