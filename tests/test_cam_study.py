"""`harmon probe` / `harmon cam` with seeded random weights (same model twice, cache and heads reused, the source
named in the reports), cosine targets without a probe, constant maps reported and ROAD scores written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probe.study import EncoderSpec, ProbeStudyConfig, run_cam_study, run_probe_study

ENCODER = "timm:vit_tiny_patch16_224"


def shapes(root: Path) -> str:
    """A tiny image folder: a bright square on the left or on the right."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for label, column in (("left", 4), ("right", 36)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.normal(60, 10, (56, 56, 3))
                pixels[20:36, column : column + 16] = 230
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    data = shapes(root / "data")
    config = ProbeStudyConfig([EncoderSpec(ENCODER, "random")], data, str(root / "run"), cache=str(root / "cache"),
                              workers=0, epochs=5, device="cpu", seed=3, base_lrs=(0.1,), weight_decays=(0.0,))
    first = run_probe_study(config)
    return root, config, first


def test_random_weights_are_seeded_and_reused(probe_run):
    root, config, first = probe_run
    again = run_probe_study(config)
    result, repeat = first["encoders"][ENCODER], again["encoders"][ENCODER]
    assert repeat["weights_digest"] == result["weights_digest"] and repeat["cache"]["computed"] == 0
    assert result["weights_source"] == "random initialisation (seed 3)"
    assert "random initialisation (seed 3)" in (root / "run/report.md").read_text()
    other = run_probe_study(replace(config, seed=4, out=str(root / "run-seed4")))
    assert other["encoders"][ENCODER]["weights_digest"] != result["weights_digest"]


def test_cam_accepts_the_probe_runs_heads_and_reports_road(probe_run):
    root, config, _ = probe_run
    cam_config = ProbeStudyConfig(**{**config.__dict__, "out": str(root / "cams")})
    cams = run_cam_study(cam_config, images=4, heads=str(root / "run"))
    summary = cams["encoders"][ENCODER]
    assert summary["cam_layer"] == "model.blocks.10"  # CLS pooling: the last block's input
    assert summary["weights_source"] == "random initialisation (seed 3)"
    saved = json.loads((root / "cams/cams.json").read_text())
    assert saved["encoders"][ENCODER]["constant_maps"] == summary["constant_maps"]
    scored = [r for r in summary["road_per_image"] if r is not None]
    assert len(scored) == 4 - len(summary["constant_maps"]) and summary["road"] == pytest.approx(np.mean(scored))
    report = (root / "cams/cams.md").read_text()
    assert "ROAD" in report and "random initialisation (seed 3)" in report


def test_cosine_targets_need_no_probe_and_constant_maps_are_reported(probe_run, tmp_path):
    root, config, _ = probe_run
    base = {**config.__dict__, "encoders": [EncoderSpec(ENCODER, "random"), EncoderSpec("pixels")]}
    for target in ("cosine:image:0", "cosine:class-mean"):
        cams = run_cam_study(ProbeStudyConfig(**{**base, "out": str(tmp_path / target)}), images=4, target=target)
        assert cams["target"] == target
        # image 0 against its own feature: cosine 1 is a maximum, no positive gradient -> a constant map
        if target == "cosine:image:0":
            assert 0 in cams["encoders"][ENCODER]["constant_maps"]
            report = (tmp_path / target / "cams.md").read_text()
            assert "Warning: constant maps" in report and f"**{ENCODER}**: images 0" in report
    np.save(tmp_path / "emb.npy", np.ones(7, dtype=np.float32))
    with pytest.raises(ValueError, match="7-d embeddings but pixels pools to"):
        run_cam_study(ProbeStudyConfig(**{**base, "encoders": [EncoderSpec("pixels")], "out": str(tmp_path / "f")}),
                      images=2, target=f"cosine:file:{tmp_path / 'emb.npy'}")
    with pytest.raises(ValueError, match="is not a target"):
        run_cam_study(config, images=2, target="cosine:nope")


def test_twins_and_the_attentive_probe_join_every_encoder(tmp_path):
    """`twins` adds a seeded random-init twin beside each encoder with weights; `attentive` adds the attentive probe
    over the patch tokens, with its token count and width, for every arm."""
    data = shapes(tmp_path / "data")
    config = ProbeStudyConfig([EncoderSpec("pixels"), EncoderSpec(ENCODER, "random", "ViT")], data,
                              str(tmp_path / "run"), cache=str(tmp_path / "cache"), workers=0, epochs=3, device="cpu",
                              seed=1, base_lrs=(0.1,), weight_decays=(0.0,), twins=True, attentive=True,
                              attentive_epochs=2)
    assert [spec.title for spec in config.arms()] == ["pixels", "ViT", "pixels (random)"]
    results = run_probe_study(config)["encoders"]
    assert set(results) == {"pixels", "ViT", "pixels (random)"}
    for label, result in results.items():
        tokens = result["attentive"]
        assert tokens["tokens"] * tokens["input_dim"] > 0 and 0 <= tokens["top1"] <= 100, label
    assert results["ViT"]["attentive"]["tokens"] == (224 // 16) ** 2
    assert "Attentive probe" in (tmp_path / "run/report.md").read_text()
