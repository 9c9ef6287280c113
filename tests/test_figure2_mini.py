"""The mini Figure 2 at micro scale: tiny pretrainings lower their losses, the pipeline writes every output for
every encoder, and a rerun reuses the saved encoders and feature caches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from experiments.figure2_mini import ENCODERS, PAPER_TOP5, SHAPES_TASKS, run_mini
from experiments.pretrain.data import StreamConfig, load_stream

FAMILIES = ("VAE", "VQGAN", "MAR", "SigLIP")


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> dict:
    """Two micro runs sharing one cache: the first trains, the second should only reuse."""
    root = tmp_path_factory.mktemp("figure2_mini")
    runs = {}
    for name in ("first", "second"):
        start = time.perf_counter()
        results = run_mini(root / name, root / "cache", seed=0, scale="micro", console=Console(quiet=True))
        runs[name] = {"results": results, "seconds": time.perf_counter() - start, "out": root / name}
    return runs


def test_each_tiny_pretraining_lowers_its_loss(micro):
    for family in FAMILIES:
        entry = micro["first"]["results"]["pretraining"][family]
        assert entry["trained"], f"{family} was not trained in the first run"
        record = json.loads((Path(entry["folder"]) / "record.json").read_text())
        curve = np.asarray(record["curves"]["loss"])
        assert len(curve) == record["training"]["optim"]["steps"] >= 100
        first, last = curve[:20].mean(), curve[-20:].mean()
        assert last < 0.75 * first, f"{family}: loss {first:.4f} -> {last:.4f} over {len(curve)} steps"


def test_micro_run_writes_report_results_and_plots_for_every_encoder(micro):
    out, results = micro["first"]["out"], micro["first"]["results"]
    assert set(results["probes"]) >= {task.name for task in SHAPES_TASKS}
    for task, scores in results["probes"].items():
        assert list(scores) == list(ENCODERS), task
        for label, score in scores.items():
            assert 0 <= score["top1"] <= score["top5"] <= 100, (task, label)
        for stem in (f"accuracy-{task}", f"per-class-{task}"):
            assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0
    for label in ENCODERS:
        scores = results["localisation"][label]
        assert 0 <= scores["energy_in_mask"] <= 100 and 0 <= scores["pointing_game"] <= 100
    for stem in ("cams", "pretraining"):
        assert (out / f"{stem}.png").exists() and (out / f"{stem}.pdf").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["ordering"] == results["ordering"] and set(saved["pretraining"]) == set(FAMILIES)
    report = (out / "report.md").read_text()
    for label in ENCODERS:
        assert f"| {label} |" in report
    for number in PAPER_TOP5.values():
        assert f"| {number:.1f} |" in report
    assert "ordering holds on" in report


def test_rerun_reuses_saved_encoders_and_features(micro):
    first, second = micro["first"]["results"], micro["second"]["results"]
    for family in FAMILIES:
        assert not second["pretraining"][family]["trained"], f"{family} was trained again"
        assert second["pretraining"][family]["weights_digest"] == first["pretraining"][family]["weights_digest"]
    for label in ENCODERS:
        assert second["encoders"][label]["weights_digest"] == first["encoders"][label]["weights_digest"]
    for task, scores in second["probes"].items():
        for label, score in scores.items():
            assert score["images_encoded"] == 0, (task, label)
            assert score["top1"] == first["probes"][task][label]["top1"], (task, label)
    assert second["timings"]["pretraining_s"] < first["timings"]["pretraining_s"] / 5


def test_the_stream_is_deterministic_for_a_seed():
    a, b = load_stream(StreamConfig(shapes=6, fashion=6, seed=3)), load_stream(StreamConfig(shapes=6, fashion=6, seed=3))
    other = load_stream(StreamConfig(shapes=6, fashion=6, seed=4))
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, other.images)
    assert a.images.shape[1:] == (3, 64, 64) and a.images.dtype == torch.uint8
