"""Every benchmark under experiments/benchmarks/ runs at a tiny setting (random tiny models, seconds) and writes
the JSON fields its table reports, so none of them stops working unnoticed. A new benchmark needs an entry in
SMOKE (or a test of its own in TESTED_ELSEWHERE)."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
HELPERS = {"__init__", "common"}
TESTED_ELSEWHERE = {"train_throughput": "tests/test_train_benchmark.py", "gpu_check": "tests/test_gpu_check.py"}


def _timings(timing: dict, repeats: int, warmup: int = 1) -> None:
    """A spread as `common.spread` writes it: every timed run, the warm-ups, the median inside the range."""
    assert len(timing["runs_s"]) == repeats and len(timing["warmup_s"]) == warmup
    assert 0 < timing["min_s"] <= timing["median_s"] <= timing["max_s"] and timing["spread_pct"] >= 0


def _mar_sampling(report: dict, out: Path) -> None:
    assert report["compile"] == "default" and report["threads"] == 1
    assert [(r["batch"], r["variant"]) for r in report["rows"]] == [
        (1, "eager"), (1, "compiled"), (2, "eager"), (2, "compiled")]
    for row in report["rows"]:
        _timings(row["seconds"], repeats=2)
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["seconds"]["median_s"])
        assert set(row["split_s"]) == {"encoder", "decoder", "diffusion"} and row["split_run_s"] > 0
        assert row["max_abs_diff_vs_eager"] <= 1e-4 * row["max_abs_eager"]
        assert row["speedup_over_eager"] > 0 and row["params_m"] > 0


def _mar_sampling_parts(report: dict, out: Path) -> None:
    # 4 steps over 256 tokens: floor(256 cos(pi/2 * s/4)) masked after step s = 236, 181, 97, then none
    assert report["schedule"] == [[0, 20], [20, 55], [75, 84], [159, 97]]
    heads = report["head"]
    assert [row["k"] for row in heads] == [20, 55, 84, 97] and [row["rows"] for row in heads] == [80, 220, 336, 388]
    for row in heads:
        _timings(row["fast_s"], repeats=2)
        _timings(row["reference_s"], repeats=2)
        assert row["max_abs_diff"] <= 1e-5 * row["max_abs"] and row["max_abs"] > 0
        assert 0 < row["fast_flop"] < row["reference_flop"]  # the step embeddings are computed once, not per step
    encdec = report["encoder_decoder"]
    assert [(row["visible"], row["k"]) for row in encdec] == [(0, 20), (159, 97)]  # the first and last steps
    for row in encdec:
        _timings(row["fast_s"], repeats=2)
        _timings(row["reference_s"], repeats=2)
        assert row["max_abs_diff"] <= 1e-5 * row["max_abs"] and row["max_abs"] > 0
        assert 0 < row["fast_flop"] < row["reference_flop"]  # the last block runs at the revealed rows only
    total = report["total"]
    for name in ("fast", "reference"):
        head = sum(row[f"{name}_s"]["median_s"] for row in heads)  # each reveal size occurs once in 4 steps
        assert total[f"head_{name}_s"] == pytest.approx(head)
        first, last = (row[f"{name}_s"]["median_s"] for row in encdec)
        interpolated = [first + (last - first) * v / 159 for v in (0, 20, 75, 159)]
        assert total[f"encoder_decoder_{name}_s"] == pytest.approx(sum(interpolated))
        assert total[f"sampling_{name}_s"] == pytest.approx(head + sum(interpolated))
    assert total["sampling_speedup"] == pytest.approx(total["sampling_reference_s"] / total["sampling_fast_s"])
    assert set(report["matmul_gflops"]) == {"square_2048", "head_modulation", "decoder_mlp"}
    assert all(rate > 0 for rate in report["matmul_gflops"].values())


def _harmon_inference(report: dict, out: Path) -> None:
    assert report["autocast"] is True and report["dtype"] == "float32"
    eager, recompute = report["generation"]
    assert (eager["variant"], recompute["variant"]) == ("eager", "recompute-prompt")
    assert eager["prefill_s"] > 0 and recompute["prefill_s"] is None
    for row in report["generation"]:
        _timings(row["seconds"], repeats=2)
        assert row["images_per_s"] == pytest.approx(1 / row["seconds"]["median_s"])
        assert set(row["split_s"]) == {"llm", "mar_encoder", "mar_decoder", "diffusion", "vae_decode"}
        assert row["llm_per_step_s"] > 0
    (answer,) = report["answering"]
    _timings(answer["first_token_s"], repeats=2)
    _timings(answer["answer_s"], repeats=2)
    assert answer["generated_tokens"] == answer["new_tokens"] == 3 and answer["prompt_tokens"] > 4
    assert answer["tokens_per_s"] == pytest.approx(3 / answer["answer_s"]["median_s"])


def _cam_batched(report: dict, out: Path) -> None:
    assert set(report["seconds"]) == {"batched", "single", "one_object_batch_1", "model_batch_1", "model_batched"}
    for timing in report["seconds"].values():
        _timings(timing, repeats=2)
    assert report["max_abs_difference"] < 1e-5
    assert report["speedup"] == pytest.approx(report["seconds"]["single"]["median_s"]
                                              / report["seconds"]["batched"]["median_s"])


def _probe_vs_sklearn(report: dict, out: Path) -> None:
    assert report["dataset"] == "digits" and report["train_samples"] == 100 and report["threads"] == 1
    for solver in ("sklearn", "sweep"):
        _timings(report[solver]["timings"], repeats=2)
        assert report[solver]["seconds"] == report[solver]["timings"]["median_s"]
        assert 0 <= report[solver]["top1"] <= 100
    assert report["speedup"] == pytest.approx(report["sklearn"]["seconds"] / report["sweep"]["seconds"])


def _extraction_throughput(report: dict, out: Path) -> None:
    _timings(report["bare_seconds"], repeats=2)
    (pipeline,) = report["pipeline"]
    _timings(pipeline["seconds"], repeats=2)
    assert pipeline["workers"] == 0 and pipeline["pipeline_over_bare"] > 0
    assert report["bare_images_per_second"] == pytest.approx(16 / report["bare_seconds"]["median_s"])
    (memory,) = report["memory"]
    assert memory["images"] == 32 and memory["peak_rss_mb"] > 0 and report["rss_growth_mb"] == 0


def _cam_grid_all(report: dict, out: Path) -> None:
    (row,) = report["encoders"].values()
    assert row["encoder"] == "pixels" and row["grid"] == [8, 8]
    assert set(row) >= {"energy_in_mask", "pointing_game", "road", "constant_maps", "cam_layer"}
    assert (out / "cams.png").stat().st_size > 0 and "pixels" in (out / "scores.md").read_text()


def _layers_extraction(report: dict, out: Path) -> None:
    assert report["layers"] == [0, 1] and report["num_layers"] == 2 and report["threads"] == 1
    for case in ("extract_one", "extract_all", "forward_one", "forward_all"):
        assert len(report["seconds"][case]) == 2 and report["median_seconds"][case] > 0
    assert report["extraction_ratio"] > 0 and report["forward_ratio"] > 0


def _cli_startup(report: dict, out: Path) -> None:
    assert [r["command"] for r in report["rows"]] == ["harmon --help", "harmon checkpoints --help"]
    for row in report["rows"]:
        assert row["exit_codes"] == [0] and row["heavy_imports"] == [] and row["median_s"] > 0


# module -> (arguments at a tiny setting given the output path, check of the JSON it wrote)
SMOKE: dict[str, tuple[Callable[[Path], list[str]], Callable[[dict, Path], None]]] = {
    "mar_sampling": (lambda out: [
        "--sizes", "tiny", "--batch-sizes", "1,2", "--num-iter", "2", "--diffusion-steps", "2", "--repeats", "2",
        "--threads", "1", "--device", "cpu", "--compile", "default", "--compile-backend", "aot_eager",
        "--out", str(out)], _mar_sampling),
    "mar_sampling_parts": (lambda out: [
        "--size", "tiny", "--batch", "2", "--num-iter", "4", "--diffusion-steps", "3", "--visible-points", "2",
        "--repeats", "2", "--threads", "1", "--out", str(out)], _mar_sampling_parts),
    "harmon_inference": (lambda out: [
        "--sizes", "tiny", "--batch-sizes", "1", "--steps", "1", "--image-size", "32", "--diffusion-steps", "2",
        "--answer-tokens", "3", "--repeats", "2", "--autocast", "--threads", "1", "--device", "cpu",
        "--out", str(out)], _harmon_inference),
    "cam_batched": (lambda out: [
        "--images", "4", "--batch-size", "2", "--dim", "32", "--depth", "1", "--heads", "2", "--repeats", "2",
        "--out", str(out)], _cam_batched),
    "probe_vs_sklearn": (lambda out: [
        "--dataset", "digits", "--train-per-class", "10", "--val-per-class", "5", "--epochs", "1", "--base-lrs",
        "0.1", "--weight-decays", "0", "--batch-size", "64", "--max-iter", "50", "--repeats", "2", "--threads",
        "1", "--device", "cpu", "--out", str(out)], _probe_vs_sklearn),
    "extraction_throughput": (lambda out: [
        "--images", "16", "--batch-size", "8", "--workers", "0", "--memory-sizes", "32", "--repeats", "2",
        "--out", str(out)], _extraction_throughput),
    "cam_grid_all": (lambda out: [
        "--images", "7", "--train", "7", "--encoders", "pixels", "--threads", "1", "--out", str(out)], _cam_grid_all),
    "layers_extraction": (lambda out: [
        "--model", "vit_tiny_patch16_224", "--layers", "0,1", "--images", "4", "--batch-size", "2", "--repeats", "2",
        "--threads", "1", "--device", "cpu", "--out", str(out)], _layers_extraction),
    "cli_startup": (lambda out: ["--commands", "checkpoints", "--repeats", "1", "--out", str(out)], _cli_startup),
}


def test_every_benchmark_has_a_smoke_run() -> None:
    scripts = {path.stem for path in BENCHMARKS.iterdir() if path.suffix in (".py", ".sh")} - HELPERS
    assert scripts == set(SMOKE) | set(TESTED_ELSEWHERE)
    for test in TESTED_ELSEWHERE.values():
        assert (BENCHMARKS.parents[1] / test).is_file()


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_runs_tiny_and_writes_its_fields(name: str, tmp_path: Path, monkeypatch) -> None:
    arguments, check = SMOKE[name]
    out = tmp_path / ("result" if name == "cam_grid_all" else "result.json")
    monkeypatch.setattr(sys, "argv", [name, *arguments(out)])
    importlib.import_module(f"experiments.benchmarks.{name}").main()  # in this process: no second start-up
    check(json.loads((out / "results.json" if name == "cam_grid_all" else out).read_text()), out)


def test_mar_sampling_parts_counts_every_reveal_size_as_often_as_the_schedule_uses_it() -> None:
    from experiments.benchmarks.mar_sampling_parts import compose

    def median(seconds: float) -> dict:
        return {"median_s": seconds}

    steps = [(0, 2), (2, 3), (5, 3)]  # the second reveal size comes twice
    heads = [{"k": 2, "fast_s": median(1.0), "reference_s": median(1.5), "fast_flop": 10, "reference_flop": 11},
             {"k": 3, "fast_s": median(2.0), "reference_s": median(2.5), "fast_flop": 20, "reference_flop": 22}]
    encdec = [{"visible": 0, "fast_s": median(1.0), "reference_s": median(1.0), "fast_flop": 100,
               "reference_flop": 100},
              {"visible": 10, "fast_s": median(2.0), "reference_s": median(3.0), "fast_flop": 200,
               "reference_flop": 300}]
    total = compose(steps, heads, encdec)
    # head: 1 + 2 * 2 = 5 (reference 1.5 + 2 * 2.5 = 6.5)
    assert total["head_fast_s"] == pytest.approx(5.0) and total["head_reference_s"] == pytest.approx(6.5)
    # encoder+decoder at 0, 2, 5 visible: 1 + 1.2 + 1.5 = 3.7 (reference 1 + 1.4 + 2 = 4.4)
    assert total["encoder_decoder_fast_s"] == pytest.approx(3.7)
    assert total["encoder_decoder_reference_s"] == pytest.approx(4.4)
    assert total["sampling_speedup"] == pytest.approx(10.9 / 8.7) and total["head_speedup"] == pytest.approx(1.3)
    assert total["encoder_decoder_speedup"] == pytest.approx(4.4 / 3.7)
    # FLOP the same way: head 10 + 2 * 20 = 50 (11 + 2 * 22 = 55); encoder+decoder 100 + 120 + 150 = 370
    # (reference 100 + 140 + 200 = 440)
    assert (total["head_fast_flop"], total["head_reference_flop"]) == (50, 55)
    assert total["encoder_decoder_fast_flop"] == pytest.approx(370)
    assert total["encoder_decoder_reference_flop"] == pytest.approx(440)
