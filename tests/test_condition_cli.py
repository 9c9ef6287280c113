"""`harmon probe --layers/--mask-ratio` as subprocesses on digits with tiny random encoders, `harmon align` per
layer and mask ratio, and one-line errors (exit code 2) naming the option for bad layers, ratios and encoders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from experiments.cli import app
from tests.test_encoders import TINY_KL, TINY_MAR
from tests.test_probe_cli import finish, harmon

VIT = "timm:test_vit.r160_in1k"  # timm's 6-block test ViT (64 wide, 160 px), random weights
MAR_OPTIONS = json.dumps({"config": TINY_MAR, "vae_config": TINY_KL})  # a 2-block MAR over a tiny KL-16
COMMON = ["--data", "digits", "--per-class", "10", "--epochs", "3", "--workers", "0", "--device", "cpu"]


def test_probe_mask_ratios_and_layers_as_a_subprocess(tmp_path: Path) -> None:
    masked = harmon("probe", "--encoder", "mar-b", "--weights", "mar-b=random", "--encoder-options",
                    f"mar-b={MAR_OPTIONS}", "--layers", "0,-1", "--mask-ratio", "0,0.5", *COMMON,
                    "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"))
    code, output = finish(masked)
    assert code == 0, output
    assert "Wrote results.json, results.csv, report.md and plots" in output
    results = json.loads((tmp_path / "run/results.json").read_text())
    runs = results["encoders"]["mar-b"]["runs"]
    assert [(r["layer"], r["mask_ratio"], r["hidden_tokens"]) for r in runs] == [
        (0, 0.0, 0), (1, 0.0, 0), (0, 0.5, 8), (1, 0.5, 8)]
    assert all(r["dim"] == 32 and 0 <= r["top1"] <= 100 and r["cache"]["computed"] == 200 for r in runs)
    assert results["encoders"]["mar-b"]["pooling"] == "mean" and results["config"]["encoders"][0]["options"]
    assert len(list((tmp_path / "cache").iterdir())) == 8  # a cache per layer, ratio and split
    rows = list(csv.DictReader((tmp_path / "run/results.csv").open()))
    assert [(row["layer"], row["mask_ratio"]) for row in rows] == [("0", "0.0"), ("1", "0.0"), ("0", "0.5"),
                                                                    ("1", "0.5")]
    assert float(rows[3]["top1"]) == pytest.approx(runs[3]["top1"])
    assert f"| mar-b | 1 | 0.5 | 8 / 16 | mean | 32 | {runs[3]['top1']:.2f} |" in (tmp_path / "run/report.md").read_text()
    for name in ("layers", "mask-ratio"):
        assert (tmp_path / f"run/{name}.png").stat().st_size > 1000 and (tmp_path / f"run/{name}.pdf").exists()


def test_probe_every_layer_of_a_vit(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["probe", "--encoder", VIT, "--weights", f"{VIT}=random", "--layers", "all",
                                      *COMMON, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "run/results.json").read_text())["encoders"][VIT]["runs"]
    assert [(r["layer"], r["mask_ratio"]) for r in runs] == [(k, 0.0) for k in range(6)]
    assert len({r["cache"]["train"] for r in runs}) == 6 and len(list((tmp_path / "cache").iterdir())) == 12
    assert f"| {VIT} | 5 | 0 | 0 / 100 | cls | 64 | {runs[5]['top1']:.2f} |" in (tmp_path / "run/report.md").read_text()
    assert (tmp_path / "run/layers.png").stat().st_size > 1000 and (tmp_path / "run/layers.pdf").exists()
    assert not (tmp_path / "run/mask-ratio.png").exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--encoder", "pixels", "--layers", "0,3"], "--layers 3: pixels has 1 block; pass layers in 0..0"),
    (["--encoder", "pixels", "--layers", "first"], "--layers 'first': use 'all' or comma-separated block"),
    (["--encoder", "pixels", "--layer", "0", "--layers", "0"], "--layer 0 and --layers 0: pass one of them"),
    (["--encoder", "mar-b", "--mask-ratio", "0,1"], "--mask-ratio: mask ratio 1.0 is outside [0, 1)"),
    (["--encoder", "mar-b", "--mask-ratio", "-0.5"], "--mask-ratio: mask ratio -0.5 is outside [0, 1)"),
    (["--encoder", "mar-b", "--mask-ratio", "half"], "--mask-ratio 'half': use comma-separated fractions"),
    (["--encoder", "mar-b", "--encoder", "pixels", "--mask-ratio", "0.5"],
     "--mask-ratio: pixels cannot hide tokens; token masks are for MAR-family encoders"),
])
def test_bad_layers_and_ratios_end_in_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["probe", *arguments, "--data", "digits", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


def test_align_scores_every_layer_and_ratio_against_the_reference(tmp_path: Path) -> None:
    """`mar` is an alias of `mar-b`: the same seeded random model, so its unmasked last block aligns perfectly."""
    options = ["--weights", "mar-b=random", "--weights", "mar=random", "--encoder-options", f"mar-b={MAR_OPTIONS}",
               "--encoder-options", f"mar={MAR_OPTIONS}"]
    common = ["align", "--encoder", "mar-b", "--encoder", "mar", *options, "--data", "digits", "--max-images", "40",
              "--k", "5", "--workers", "0", "--device", "cpu", "--cache", str(tmp_path / "cache")]
    runner = CliRunner()
    result = runner.invoke(app, [*common, "--reference", "mar", "--layers", "all", "--mask-ratio", "0,0.75",
                                 "--metric", "mutual_knn", "--metric", "linear_cka", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run/alignment.json").read_text())
    assert saved["n"] == 40 and saved["k"] == 5 and saved["reference"] == "mar"
    scores = {(s["layer"], s["mask_ratio"]): s for s in saved["scores"]}
    assert set(scores) == {(0, 0.0), (1, 0.0), (0, 0.75), (1, 0.75)}
    assert scores[1, 0.0]["mutual_knn"] == 1.0 and scores[1, 0.0]["linear_cka"] == pytest.approx(1.0, abs=1e-9)
    assert scores[1, 0.75]["linear_cka"] < 1 - 1e-6 and scores[0, 0.0]["linear_cka"] < 1 - 1e-6
    for name in ("alignment-layers-mutual_knn", "alignment-mask-ratio-linear_cka"):
        assert (tmp_path / f"run/{name}.png").stat().st_size > 1000 and (tmp_path / f"run/{name}.pdf").exists()
    assert "| mar-b | 1 | 0.75 |" in (tmp_path / "run/report.md").read_text()
    result = runner.invoke(app, [*common, "--layers", "all", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "pass --reference NAME" in result.output
