"""The `harmon` CLI for the foundation: demo, checkpoints and MAR sampling, run as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from harmon.mar import MAR
from harmon.vae import build_kl16, save_kl16_safetensors, tiny_kl16_config


def _harmon(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HARMON_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_help_explains_every_command(tmp_path):
    out = _harmon("--help", tmp_path=tmp_path)
    assert out.returncode == 0
    for command in ("mar-demo", "figure2", "checkpoints", "mar-sample"):
        assert command in out.stdout
    sample_help = _harmon("mar-sample", "--help", tmp_path=tmp_path).stdout
    for option in ("--checkpoint", "--vae", "--num-iter", "--cfg-schedule", "--temperature", "--seed", "--dtype"):
        assert option in sample_help


def test_checkpoints_lists_known_names(tmp_path):
    out = _harmon("checkpoints", tmp_path=tmp_path)
    assert out.returncode == 0 and "mar-base" in out.stdout and "kl16" in out.stdout


def test_demo_micro_run_writes_outputs(tmp_path):
    out = _harmon("mar-demo", "--dataset", "digits", "--steps", "20", "--per-class", "10", "--out",
                  str(tmp_path / "demo"), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["dataset"] == "digits" and results["config"]["steps"] == 20
    for name in ("samples.png", "samples.pdf", "loss.png", "loss.pdf", "report.md"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "Outputs in" in out.stdout


def test_mar_sample_from_official_layout_files(tmp_path, tiny_mar_config):
    mar = MAR(tiny_mar_config)
    torch.save({"model": mar.state_dict(), "model_ema": mar.state_dict(), "epoch": 1}, tmp_path / "mar.pth")
    save_kl16_safetensors(build_kl16(tiny_kl16_config()), tmp_path / "vae.safetensors")
    target = tmp_path / "grid.png"
    out = _harmon("mar-sample", "1,2,3", "--checkpoint", str(tmp_path / "mar.pth"), "--vae",
                  str(tmp_path / "vae.safetensors"), "--num-iter", "3", "--diffusion-steps", "5", "--per-class", "2",
                  "--device", "cpu", "--out", str(target), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(target).size == (3 * 64, 2 * 64)


def test_mar_sample_rejects_bad_input(tmp_path):
    out = _harmon("mar-sample", "1,x", "--checkpoint", "nope.pth", tmp_path=tmp_path)
    assert out.returncode != 0 and "comma-separated integers" in out.stderr
    out = _harmon("mar-sample", "1", "--checkpoint", "mar-bas", tmp_path=tmp_path)
    assert out.returncode != 0 and "Did you mean 'mar-base'" in (out.stderr + out.stdout)


def test_figure2_micro_preset_is_what_make_demo_runs(tmp_path):
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "harmon figure2 --preset mini" in makefile.split("demo:")[1].split("\n\n")[0]
    out = _harmon("figure2", "--preset", "micro", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                  tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    report = (tmp_path / "run" / "report.md").read_text()
    for encoder in ("MAR", "VAE", "VQGAN", "SigLIP", "pixels"):
        assert encoder in report
    assert json.loads((tmp_path / "run" / "results.json").read_text())
