"""`harmon generate` and `harmon ask` as subprocesses on a tiny offline Harmon bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmon.generation import generate_images
from harmon.images import to_uint8

ROOT = Path(__file__).parents[1]



@pytest.fixture(scope="module")
def bundle_args(bundle) -> list[str]:
    return ["--checkpoint", str(bundle.checkpoint), "--llm", str(bundle.llm), "--tokenizer", str(bundle.llm),
            "--vae", str(bundle.vae), "--device", "cpu"]


def _harmon(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_generate_writes_the_seeded_grid(loaded, bundle_args, tmp_path):
    out = tmp_path / "cube.png"
    result = _harmon("generate", "a red cube", *bundle_args, "--out", str(out), "--image-size", "64",
                     "--steps", "4", "--grid", "2", "--seed", "1")
    assert result.returncode == 0, result.stderr
    images = generate_images(loaded, ["a red cube"] * 4, steps=4, seed=1, image_size=64)
    expected = to_uint8(images, rounding="harmon")
    with Image.open(out) as image:
        grid = np.asarray(image.convert("RGB"))
    assert grid.shape == (128, 128, 3)
    tiles = [grid[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] for r in range(2) for c in range(2)]
    assert all(np.array_equal(tile, want) for tile, want in zip(tiles, expected, strict=True))


def test_ask_prints_the_answer(loaded, bundle_args, tmp_path):
    picture = tmp_path / "gray.png"
    Image.new("LA", (50, 30), (90, 255)).save(picture)
    result = _harmon("ask", str(picture), "What color is it?", *bundle_args, "--image-size", "256",
                     "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    with Image.open(picture) as image:
        expected = loaded.answer(image, "What color is it?", max_new_tokens=4, image_size=256)[0]
    assert result.stdout == expected + "\n", (result.stdout, expected, result.stderr)


def test_unknown_checkpoint_is_reported(tmp_path):
    from typer.testing import CliRunner

    from experiments.cli import app

    picture = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(picture)
    result = CliRunner().invoke(app, ["ask", str(picture), "hi", "--checkpoint", "harmon-7b", "--device", "cpu"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "harmon-0.5b, harmon-1.5b, harmon-1.5b-o" in result.stderr
