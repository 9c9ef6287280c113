"""`harmon probe`, `harmon cam`, `harmon figure2` and `harmon encoders` run end to end as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}



def harmon(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def test_probe_cam_and_encoders_commands(tmp_path: Path) -> None:
    """The three commands run at once (sharing one feature cache), as separate processes."""
    common = ["--encoder", "pixels", "--data", "digits", "--per-class", "20", "--features", "tokens", "--workers", "0",
              "--device", "cpu", "--epochs", "10", "--cache", str(tmp_path / "cache")]
    listing = harmon("encoders")
    probing = harmon("probe", *common, "--sklearn", "--knn", "--out", str(tmp_path / "p"))
    cams = harmon("cam", *common, "--images", "4", "--out", str(tmp_path / "c"))

    code, output = finish(probing)
    assert code == 0, output
    assert "Wrote results.json" in output
    results = json.loads((tmp_path / "p/results.json").read_text())
    pixels = results["encoders"]["pixels"]
    assert results["data"]["train_samples"] == 200 and results["data"]["val_samples"] == 200
    assert pixels["dim"] == 8 * 8 * 3 and pixels["top1"] > 60 and pixels["sklearn"]["top1"] > 60
    assert set(pixels["knn"]) == {"10", "20", "100", "200"} and len(pixels["confusion"]) == 10
    assert set(pixels["timings"]) == {"extract_s", "probe_s", "sklearn_s", "knn_s"}
    report = (tmp_path / "p/report.md").read_text()
    assert f"| pixels | flatten | 192 | {pixels['top1']:.2f} |" in report
    for name in ("topk", "per_class", "confusion-pixels"):
        assert (tmp_path / f"p/{name}.png").stat().st_size > 0 and (tmp_path / f"p/{name}.pdf").stat().st_size > 0
    assert (tmp_path / "p/heads/pixels.safetensors").exists()

    code, output = finish(cams)
    assert code == 0, output
    cam_results = json.loads((tmp_path / "c/cams.json").read_text())
    assert cam_results["targets"] == [0, 1, 2, 3] and len(cam_results["encoders"]["pixels"]["predicted"]) == 4
    maps = np.load(tmp_path / "c/cams-pixels.npy")
    assert maps.shape == (4, 32, 32) and 0 <= maps.min() and maps.max() <= 1 and maps.max() > 0
    assert (tmp_path / "c/cams.png").stat().st_size > 0 and (tmp_path / "c/cams.pdf").exists()
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one train and one val cache, shared by both runs

    code, output = finish(listing)
    assert code == 0, output
    assert "pixels" in output and "raw" in output and "no weights" in output


def test_cli_explains_bad_input_and_plans_figure2(tmp_path: Path) -> None:
    """Input errors stop before any heavy work, so these run in-process."""
    from typer.testing import CliRunner

    from experiments.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["figure2", "--preset", "figure9"])
    assert result.exit_code == 2 and "neither a figure2 preset" in result.output
    assert all(name in result.output for name in ("mini", "micro", "long", "paper"))
    result = runner.invoke(app, ["figure2", "--preset", "micro", "--seeds", "0"])
    assert result.exit_code == 2 and "--seeds" in result.output
    result = runner.invoke(app, ["figure2", "--preset", "micro", "--set", "endpoints.semantic=[colour,bogus]"])
    assert result.exit_code == 2 and "endpoints.semantic" in result.output and "bogus" in result.output
    result = runner.invoke(app, ["probe", "--encoder", "pixels", "--data", "digits", "--weights", "pixels"])
    assert result.exit_code == 2 and "NAME=SOURCE" in result.output
    result = runner.invoke(app, ["probe", "--encoder", "pixels", "--data", "mnist"])
    assert result.exit_code == 2 and "not a dataset spec" in result.output and "imagefolder:PATH" in result.output
    result = runner.invoke(app, ["figure2", "--data", str(tmp_path / "imagenet"), "--dry-run"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    assert [e["name"] for e in config["encoders"]] == ["mar-b", "vae-kl16", "vqgan", "siglip-b16"]
    assert config["data"] == f"imagefolder:{tmp_path / 'imagenet'}" and config["paper_top5"]["SigLIP"] == 95.9
    assert (config["epochs"], config["optimizer"], config["base_lrs"], config["probe_batch_size"]) == (90, "lars", [0.1], 16384)
    assert config["twins"] and config["attentive"], "the paper preset probes random twins and the attentive probe too"
