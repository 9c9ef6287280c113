"""`harmon compare`: the micro preset as a subprocess writes report.md / results.json with every section and figure
and a second run reads the same feature cache; bad input (unknown encoder, reconstruction asked of an encoder
without a decoder, LPIPS offline) ends in one `error:` line with exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from experiments.cli import app
from tests.test_probe_cli import finish, harmon

MICRO = ["--preset", "micro", "--workers", "1"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--encoder", "no-such-encoder", "--data", "digits"], "no-such-encoder"),
    (["--preset", "micro", "--reconstruct", "mar"], "'mar-b' (MAR) cannot reconstruct images"),
    (["--preset", "micro", "--reconstruct", "pixels"], "'pixels' has no decoder"),
    (["--preset", "micro", "--lpips"], "alexnet-owt-7be5be79.pth"),
    (["--preset", "micro", "--set", "alignment.reference=nobody"], "alignment.reference 'nobody'"),
])
def test_bad_input_is_one_error_line(arguments, message, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compare", *arguments, "--cache", str(tmp_path / "cache"),
                                      "--out", str(tmp_path / "run")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_compare_micro_as_a_subprocess(tmp_path: Path) -> None:
    cache = ["--cache", str(tmp_path / "cache")]
    run = harmon("compare", *MICRO, *cache, "--out", str(tmp_path / "run"))
    code, output = finish(run, timeout=900)
    assert code == 0, output
    folder = tmp_path / "run"
    results = json.loads((folder / "results.json").read_text())
    assert {"encoders", "alignment", "pareto", "figures", "reconstructing", "fd_encoder", "timings"} <= set(results)
    assert list(results["encoders"]) == ["vae", "vqgan", "mar", "pixels"]
    assert results["reconstructing"] == ["vae", "vqgan"]  # the two with a decoder, by default
    for label, r in results["encoders"].items():
        assert {"top1", "top5", "knn", "cam", "layers", "weights_digest"} <= set(r), label
        assert ("reconstruction" in r) == (label in ("vae", "vqgan")), label
    vae = results["encoders"]["vae"]
    assert list(vae["layers"]) == ["0", "2"]  # "0,-1" of three stages
    recon = vae["reconstruction"]
    assert recon["images"] == 12 and len(recon["psnr_per_image"]) == 12 and "lpips" not in recon
    assert recon["frechet"] >= 0 and recon["frechet_dim"] == 64  # timm's test ViT: 64 wide
    # one Pareto point per reconstructing encoder and per probed layer, each flagged
    labels = [p["label"] for p in results["pareto"]["points"]]
    assert labels == ["vae", "vae L0", "vae L2", "vqgan", "vqgan L0", "vqgan L2"]
    assert any(p["non_dominated"] for p in results["pareto"]["points"])
    assert results["alignment"]["reference"] == "vae" and results["alignment"]["n"] == 60
    report = (folder / "report.md").read_text()
    for name in results["figures"]:
        assert (folder / name).stat().st_size > 0 and (folder / name).with_suffix(".pdf").stat().st_size > 0, name
        assert f"]({name})" in report, name
    assert {"probes.png", "layers.png", "cams.png", "pareto.png", "reconstructions-vae.png"} <= set(results["figures"])
    assert "alignment/alignment-cknna.png" in results["figures"]
    assert re.search(r"\| vae \| 12 \| [\d.]+ \|", report)
    assert "Not reconstructed (no decoder): mar, pixels." in report
    # controls: a seeded random twin per encoder but pixels, Δ top-1 vs twin and vs pixels with interval and verdict
    assert list(results["twins"]) == ["vae (random)", "vqgan (random)", "mar (random)"]
    controls = results["controls"]
    assert list(controls["vs_twin"]) == ["vae", "vqgan", "mar"] and controls["pixels"] == "pixels"
    assert list(controls["vs_pixels"]) == ["vae", "vqgan", "mar"] and controls["seeds"] == 1
    for label in ("vae", "vqgan", "mar"):
        twin, top1 = results["twins"][f"{label} (random)"], results["encoders"][label]["top1"]
        assert twin["twin_of"] == label and twin["weights"] == "random initialisation (seed 0)"
        for c, other in ((controls["vs_twin"][label], twin["top1"]),
                         (controls["vs_pixels"][label], results["encoders"]["pixels"]["top1"])):
            assert {"delta", "low", "high", "mcnemar_p", "verdict", "tie"} <= set(c) and c["images"] == 60
            assert c["delta"] == pytest.approx(top1 - other, abs=1e-9) and c["low"] <= c["delta"] <= c["high"]
        assert re.search(rf"\| {label} \(random\) \| random initialisation \(seed 0\) \|", report)
        assert re.search(rf"\| {label} \| {label} \(random\) \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \[", report)
    assert "no seed variance" in report
    # a second run reads the same feature cache instead of encoding again
    cheap = ["--set", "cam_images=0", "--set", "reconstruction.encoders=[]", "--set", "alignment.metrics=[linear_cka]"]
    again = harmon("compare", *MICRO, *cheap, *cache, "--out", str(tmp_path / "again"))
    code, output = finish(again, timeout=900)
    assert code == 0, output
    reused = json.loads((tmp_path / "again" / "results.json").read_text())["encoders"]
    assert all(r["cache"]["computed"] == 0 and r["cache"]["reused"] > 0 for r in reused.values())
