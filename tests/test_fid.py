"""FID through torchmetrics on real image folders: a hand-checkable feature network against the closed form, and
the InceptionV3 weights file's offline error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.evaluation.fid import INCEPTION_FILE, frechet_inception_distance, load_square
from probe.frechet import frechet_distance_features


class ChannelMeans(torch.nn.Module):
    """Features = the mean of each colour channel (uint8 images in, 3 features out)."""

    num_features = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3))


def _folder(root: Path, colours: list[tuple[int, int, int]], size: tuple[int, int] = (24, 16)) -> list[Path]:
    root.mkdir(parents=True)
    paths = []
    for i, colour in enumerate(colours):
        paths.append(root / f"{i:05d}.png")
        Image.new("RGB", size, colour).save(paths[-1])
    return paths


def test_load_square_centre_crops_then_resizes(tmp_path):
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[:, 2:6] = 200  # the centre 4 x 4 square
    Image.fromarray(image).save(tmp_path / "wide.png")
    square = load_square(tmp_path / "wide.png", 4)
    assert square.shape == (3, 4, 4) and (square == 200).all()


def test_fid_matches_the_closed_form_on_flat_colour_images(tmp_path):
    rng = np.random.default_rng(0)
    fake_colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(9)]
    real_colours = [tuple(int(v) for v in rng.integers(40, 200, 3)) for _ in range(7)]
    fake, real = _folder(tmp_path / "fake", fake_colours), _folder(tmp_path / "real", real_colours, (16, 16))
    # a flat image keeps its colour through crop and resize, so its features are its colour exactly
    expected = frechet_distance_features(np.array(fake_colours, float), np.array(real_colours, float))
    got = frechet_inception_distance(fake, real, resolution=8, batch_size=4, feature=ChannelMeans(), progress=False)
    assert got == pytest.approx(expected, rel=1e-6)
    same = frechet_inception_distance(real, real, resolution=8, batch_size=3, feature=ChannelMeans(), progress=False)
    assert same == pytest.approx(0.0, abs=1e-6)


def test_missing_inception_weights_offline_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    from experiments.cli import app

    def fid(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as stop:  # the `harmon` app as the console script runs it
            app(["fid", *args, "--device", "cpu", "--no-progress"], prog_name="harmon")
        return stop.value.code, capsys.readouterr().err

    fake = _folder(tmp_path / "fake", [(1, 2, 3), (4, 5, 6)])[0].parent
    real = _folder(tmp_path / "real", [(7, 8, 9), (10, 11, 12)])[0].parent
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights there
    code, err = fid(str(fake), "--reference", str(real), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert INCEPTION_FILE in err and "curl -L -o" in err
    assert not (tmp_path / "out" / "fid.json").exists()
    code, err = fid(str(real), "--reference", str(tmp_path / "nowhere"))
    assert code == 2 and "--reference" in err and "not a folder of images" in err


def test_table7_report_puts_measured_runs_beside_the_paper_rows(tmp_path):
    from experiments.evaluation.report import table_report

    run = tmp_path / "eval-512"
    for sub, key, value in (("geneval", "scores.json", {"overall": 0.5}), ("fid-mjhq-30k", "fid.json", {"fid": 7.25})):
        (run / sub).mkdir(parents=True)
        (run / sub / key).write_text(json.dumps(value))
    report = table_report(7, {"#3 512 px": run, "mine": run}, tmp_path).read_text()
    assert "| #3 512 px | 8.86 | - | 6.08 | 7.25 | 0.71 | 0.50 |" in report
    assert "| #1 256 px | 11.50 | - | 9.91 | - | 0.68 | - |" in report
    assert "| mine (not a paper row) | - | - | - | 7.25 | - | 0.50 |" in report
