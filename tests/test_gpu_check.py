"""experiments/benchmarks/gpu_check.sh in its tiny mode on the CPU: every step runs or is recorded as failed,
the benchmarks' JSON and the summary are written, and a spent budget skips steps instead of overrunning.
On a loaded CPU the tiny run takes minutes: most of it is starting Python and importing torch five times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmarks" / "gpu_check.sh"
STEPS = ["cuda", "cuda-tests", "mar-sampling", "harmon-sampling", "extraction-vit"]


def _gpu_check(out: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_TINY": "1", "OMP_NUM_THREADS": "1",
           **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd="/", env=env, capture_output=True, text=True,
                          timeout=2600)  # above the tiny mode's budget


def test_tiny_run_writes_every_result_and_records_the_missing_gpu(tmp_path):
    done = _gpu_check(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {step["name"]: step["status"] for step in summary["steps"]}
    assert list(status) == STEPS, done.stdout + done.stderr
    cuda = torch.cuda.is_available()
    assert status == {**dict.fromkeys(STEPS, "ok"), "cuda": "ok" if cuda else "failed"}, done.stdout
    assert done.returncode == (0 if cuda else 1) and summary["passed"] is cuda and summary["mode"] == "tiny"
    mar = json.loads((tmp_path / "mar_sampling.json").read_text())
    assert [(r["batch"], r["variant"]) for r in mar["rows"]] == [(1, "eager"), (1, "compiled"), (2, "eager"),
                                                                  (2, "compiled")]
    harmon = json.loads((tmp_path / "harmon_inference.json").read_text())
    assert [r["variant"] for r in harmon["generation"]] == ["eager", "compiled"] and harmon["answering"]
    vit = json.loads((tmp_path / "extraction_vit.json").read_text())
    assert vit["vit"] == "small" and vit["memory"] == [] and vit["pipeline"][0]["images_per_second"] > 0
    tests = summary["results"]["cuda_tests"]
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] == (0 if cuda else tests["tests"])
    assert len(summary["results"]["mar_sampling"]) == 4 and summary["results"]["extraction"]
    text = (tmp_path / "summary.txt").read_text()
    assert all(name in text for name in STEPS) and "=== harmon-sampling" in (tmp_path / "gpu-check.log").read_text()


def test_a_spent_budget_skips_the_steps_and_still_writes_the_summary(tmp_path):
    (tmp_path / "mar_sampling.json").write_text('{"rows": []}')  # an earlier run's result must not be reported
    done = _gpu_check(tmp_path, GPU_CHECK_BUDGET="19")  # 15 s are kept for the summary: under 5 s per step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [(name, "skipped") for name in STEPS]
    assert done.returncode == 1 and not summary["passed"] and summary["results"]["mar_sampling"] == []
    assert not (tmp_path / "mar_sampling.json").exists()
