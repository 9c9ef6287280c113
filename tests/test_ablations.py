"""`harmon table5` and `harmon figure6` end to end at micro scale (CLI subprocesses on cached micro encoders),
reuse and resume of figure6 runs, and the paper presets built exactly without training."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from encoders.registry import get_entry
from experiments.ablations import figure6, table5
from experiments.ablations.config import Figure6Config, Table5Config, load_ablation
from experiments.ablations.factory import HarmonFactory
from experiments.ablations.mini_model import load_tiny_parts
from experiments.ablations.scoring import BenchmarkPaths
from harmon.checkpoints import CheckpointError
from harmon.utils.strict_yaml import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HARMON = str(Path(sys.executable).with_name("harmon"))
ENCODERS = ["SigLIP", "VQGAN", "VAE", "MAR"]
RUN_NAMES = ["und-only", "gen-only", "unified", "decoupled"]


def harmon(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([HARMON, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The micro Figure 2 tiny encoders, pretrained once into a cache laid out as `harmon figure2` lays it out."""
    root = tmp_path_factory.mktemp("figure2-micro")
    load_tiny_parts("micro", root / "pretrain")
    return root


@pytest.fixture(scope="module")
def table5_out(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("table5") / "out"
    done = harmon("table5", "--preset", "micro", "--out", str(out), "--cache", str(cache), "--no-progress",
                  "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training 5 runs in 2 worker processes" in done.stdout
    return out


@pytest.fixture(scope="module")
def figure6_out(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figure6") / "out"
    done = harmon("figure6", "--preset", "micro", "--out", str(out), "--cache", str(cache), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    return out


# ------------------------------------------------------------------------------------------------ Table 5


def test_table5_micro_writes_every_output(table5_out, cache):
    results = json.loads((table5_out / "results.json").read_text())
    assert list(results["table"]) == [*ENCODERS, "blind"]
    for label, row in results["table"].items():
        for column in ("QA", "POPE", "QA-existence", "QA-color", "QA-count", "QA-position", "QA-shape", "Primary",
                       "score"):
            assert 0 <= row[column] <= 100, (label, column)
        assert row["score"] == row["Primary"] and row["Gain"] == pytest.approx(row["Primary"] -
                                                                              results["table"]["blind"]["Primary"])
    kinds = [item["kind"] for item in results["items"]]
    for label, seeds in results["runs"].items():
        correct = seeds["0"]["evaluation"]["qa_correct"]
        assert len(correct) == len(kinds) == 16 and set(correct) <= {0, 1}
        primary = [c for c, k in zip(correct, kinds, strict=True) if k in ("existence", "shape", "count")]
        assert results["table"][label]["Primary"] == pytest.approx(100 * sum(primary) / len(primary))
    assert {i["pope_split"] for i in results["items"] if i["kind"] == "existence"} <= {"popular", "adversarial"}
    claims = results["claims"]
    assert set(claims["gains"]) == set(ENCODERS) and claims["ordering"] in ("holds", "does not hold",
                                                                           "cannot tell at this scale")
    assert sorted(label for tier in claims["ranking"] for label in tier) == sorted([*ENCODERS, "blind"])
    assert all(g["primary"]["exploratory"] for g in claims["gains"].values())  # one seed
    assert results["timings"]["total_s"] > 0
    rows = list(csv.DictReader(io.StringIO((table5_out / "table5.csv").read_text())))
    assert [r["encoder"] for r in rows] == [*ENCODERS, "blind"]
    assert all(float(r["POPE paper"]) > 0 and 0 <= float(r["QA measured"]) <= 100 for r in rows[:4])
    markdown = (table5_out / "table5.md").read_text()
    assert "| 4 | MAR | 83.1 | 86.1 |" in markdown and "Gain↑ measured" in markdown
    report = (table5_out / "report.md").read_text()
    assert "MAR ≈ SigLIP ≫ VQGAN, VAE" in report and "Wall time:" in report and "| QA-shape |" in report
    assert f"**The paper's ordering: {claims['ordering']}.**" in report and "gain over blind" in report
    assert "Ranking on the primary score, ties kept" in report and "layer-normalised" in report
    for suffix in (".png", ".pdf"):
        assert (table5_out / f"table5{suffix}").stat().st_size > 0
    parts = load_tiny_parts("micro", cache / "pretrain")
    blind = load_file(str(table5_out / "runs" / "blind-seed0" / "final" / "model.safetensors"))
    assert not any(k.startswith("understanding.encoder.") for k in blind) and "understanding.proj.0.weight" in blind
    for label in ENCODERS:
        run = table5_out / "runs" / f"{label}-seed0"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["data"]["ratio"] == [0, 1, 0] and config["trainable"] == ["llm", "understanding"]
        evaluations = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
        assert [e["iteration"] for e in evaluations] == [config["steps"]]
        final = load_file(str(run / "final" / "model.safetensors"))
        frozen = {k[len("understanding.encoder.encoder."):]: v for k, v in final.items()
                  if k.startswith("understanding.encoder.encoder.")}
        assert frozen.keys() == parts.encoders[label].state_dict().keys()
        assert all(torch.equal(v, parts.encoders[label].state_dict()[k]) for k, v in frozen.items()), label
        start = load_file(str(run / "checkpoints" / "iter_00000003" / "model.safetensors"))
        assert not torch.equal(start["understanding.proj.0.weight"], final["understanding.proj.0.weight"])


def test_a_table5_run_folder_loads_back_and_answers_as_it_did_after_training(table5_out):
    from experiments.ablations.run_model import load_run
    from experiments.ablations.scoring import QAScorer, task_world

    config = load_ablation(Table5Config, "table5", "micro")
    size = config.model.image_size
    scorer = QAScorer(config.shapesworld, task_world(config.data, "i2t", size), size)
    models = {}
    for label in ("MAR", "blind"):
        run = table5_out / "runs" / f"{label}-seed0"
        recorded = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()][-1]
        models[label] = model = load_run(run)
        assert type(model.understanding.encoder).__name__ == ("BlindTokens" if label == "blind" else "EncoderTokens")
        assert scorer(model, config.training.steps)["qa_correct"] == recorded["qa_correct"], label
    with pytest.raises(CheckpointError, match="no table5-run.json"):
        load_run(table5_out)
    lmms_eval = pytest.importorskip("lmms_eval.models", reason="lmms-eval is the `eval` extra")
    from lmms_eval.api.instance import Instance

    lm = lmms_eval.get_model("harmon").create_from_arg_string(f"run={table5_out / 'runs' / 'MAR-seed0'}",
                                                              {"device": "cpu", "batch_size": 4})
    item = scorer.items[0]
    lm.task_dict = {"shapes": {"test": [item]}}
    request = Instance("generate_until", (item["question"], {"max_new_tokens": 3}, lambda doc: [doc["image"]], 0,
                                          "shapes", "test"), 0, {"task": "shapes", "doc_id": 0, "repeats": 1})
    assert lm.image_size == size
    assert lm.generate_until([request]) == models["MAR"].answer(item["image"], item["question"], max_new_tokens=3,
                                                                image_size=size)


# ------------------------------------------------------------------------------------------------ Figure 6


def test_runs_trained_in_workers_equal_runs_trained_in_one_process(table5_out, cache, tmp_path):
    config = load_ablation(Table5Config, "table5", "micro")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker trains
    try:
        alone = table5.run_table5(config, tmp_path / "alone", cache, console=Console(quiet=True), progress=False)
    finally:
        torch.set_num_threads(threads)
    parallel = json.loads((table5_out / "results.json").read_text())
    for label, seeds in alone["runs"].items():
        assert not seeds[0]["reused"]
        assert seeds[0]["evaluation"] == parallel["runs"][label]["0"]["evaluation"], label
        digest = [load_file(Path(d) / "final" / "model.safetensors") for d in
                  (seeds[0]["run_dir"], parallel["runs"][label]["0"]["run_dir"])]
        assert all(torch.equal(digest[0][k], digest[1][k]) for k in digest[0]), label


def test_workers_below_one_are_refused_in_one_line(cache, tmp_path):
    done = harmon("table5", "--preset", "micro", "--out", str(tmp_path), "--cache", str(cache), "--workers", "0")
    assert done.returncode == 2 and "--workers 0" in done.stdout and "Traceback" not in done.stdout + done.stderr


def test_figure6_micro_writes_curves_figure_and_report(figure6_out):
    out = figure6_out
    saved = json.loads((out / "curves.json").read_text())
    curves = saved["curves"]
    assert list(curves) == RUN_NAMES
    metrics = {name: sorted(k for k in entry if k in ("understanding", "generation")) for name, entry in curves.items()}
    assert metrics == {"und-only": ["understanding"], "gen-only": ["generation"],
                       "unified": ["generation", "understanding"], "decoupled": ["generation", "understanding"]}
    for name, entry in curves.items():
        assert entry["step"] == [2, 4], name  # iterations of each run's own task
        for metric in metrics[name]:
            assert len(entry[metric]) == 1 and len(entry[metric][0]) == 2
            assert all(0 <= v <= 1 for v in entry[metric][0]), (name, metric)
    verdicts = saved["verdicts"]
    assert set(verdicts) >= {"understanding_kept", "generation_gain", "decoupled_loses_generation", "synergy",
                             "synergy_shows"}
    gain = verdicts["comparisons"]["generation_gain"]
    assert gain["exploratory"] and gain["interval"]["n"] == 6  # one seed: bootstrap over the 6 shared prompts
    unified, gen_only = curves["unified"]["rows"]["0"][-1], curves["gen-only"]["rows"]["0"][-1]
    assert gain["interval"]["estimate"] == pytest.approx(np.mean(unified["gen_correct"]) -
                                                         np.mean(gen_only["gen_correct"]))
    for name, iterations in (("und-only", [2, 4]), ("unified", [4, 8]), ("decoupled", [4, 8])):
        run = out / "runs" / f"{name}-seed0"
        evaluations = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
        assert [e["iteration"] for e in evaluations] == iterations
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["steps"] == iterations[-1] and ("understanding" in config["trainable"]) == (name == "decoupled")
    assert yaml.safe_load((out / "runs" / "gen-only-seed0" / "config.yaml").read_text())["data"]["ratio"] == [0, 0, 1]
    assert len(list((out / "runs" / "unified-seed0" / "samples" / "iter_00000008").glob("*.png"))) == 6
    for suffix in (".png", ".pdf"):
        assert (out / f"figure6{suffix}").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Does the synergy of Figure 6 show at this scale?" in report and "Wall time:" in report
    assert f"**The paper's synergy at this scale: {verdicts['synergy']}.**" in report


def test_figure6_rerun_reuses_finished_runs_and_resumes_a_stopped_one(figure6_out, cache, tmp_path):
    out = figure6_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = json.loads((copy / "curves.json").read_text())["curves"]
    stopped = copy / "runs" / "unified-seed0"  # as if killed while evaluating iteration 4: checkpoint, no eval
    shutil.rmtree(stopped / "checkpoints" / "iter_00000008")
    shutil.rmtree(stopped / "final")
    (stopped / "summary.json").unlink()
    (stopped / "evaluations.jsonl").write_text("")
    finished = copy / "runs" / "und-only-seed0" / "metrics.csv"
    stamp = finished.stat().st_mtime_ns
    done = harmon("figure6", "--preset", "micro", "--out", str(copy), "--cache", str(cache), "--no-progress",
                  "--workers", "1")  # one process, so that every run's reuse / resume line is printed here
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("reusing the finished run") == 3
    said = " ".join(done.stdout.split())  # the console wraps long lines
    assert said.count("resuming ") == 1 and "from iteration 4 (iter_00000004)" in said  # not from scratch
    after = json.loads((copy / "curves.json").read_text())["curves"]
    assert after == before and finished.stat().st_mtime_ns == stamp
    assert [json.loads(line)["iteration"] for line in (stopped / "evaluations.jsonl").read_text().splitlines()] \
        == [4, 8]
    changed = load_ablation(Figure6Config, "figure6", "micro", ["training.lr.llm=0.001"])
    with pytest.raises(ConfigError, match=r"made with another config \(differing: optim.lr.llm\)"):
        figure6.run_figure6(changed, copy, cache, console=Console(quiet=True), progress=False)


# ------------------------------------------------------------------------------------------------ paper presets


def test_paper_presets_give_table1_train_configs(tmp_path):
    t5 = load_ablation(Table5Config, "table5", "paper")
    runs = table5.plan(t5, t5.model.paper, tmp_path)
    assert [(r.label, r.spec.seed) for r in runs] == [(e, 0) for e in ENCODERS]
    for run in runs:
        c = run.train
        assert (c.model.architecture, c.model.llm, c.model.mar, c.model.vae) == (
            "harmon-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", "mar-base", "kl16")
        assert (c.data.ratio, c.data.batch_size, c.data.image_size, c.steps, c.accumulate) == ((0, 1, 0), 4096, 256,
                                                                                            10_000, 1)
        assert c.optim.lr == {"llm": 1e-5, "understanding": 1e-5} and c.trainable == ["llm", "understanding"]
        assert (c.optim.betas, c.optim.weight_decay, c.optim.warmup_ratio, c.optim.grad_clip) == ((0.9, 0.95), 0.02,
                                                                                                 0.01, 1.0)
        assert {s.task for s in c.data.sources} == {"i2t"}
        assert c.out_dir == str(tmp_path / "runs" / f"{run.label}-seed0")
    f6 = load_ablation(Figure6Config, "figure6", "paper")
    runs = {r.spec.name: r for r in figure6.plan(f6, f6.model.paper, tmp_path)}
    assert list(runs) == RUN_NAMES
    assert {n: (r.train.data.ratio, r.train.steps, r.eval_every) for n, r in runs.items()} == {
        "und-only": ((0, 1, 0), 10_000, 2000), "gen-only": ((0, 0, 1), 10_000, 2000),
        "unified": ((0, 1, 1), 20_000, 4000), "decoupled": ((0, 1, 1), 20_000, 4000)}
    stage2 = {"mar_decoder": 1e-4, "proj_out": 1e-4, "mar_encoder": 1e-5, "proj_in": 1e-5, "llm": 1e-5}
    assert runs["unified"].train.optim.lr == stage2 and runs["unified"].encoder is None
    assert runs["decoupled"].train.optim.lr == {**stage2, "understanding": 1e-5}
    assert runs["decoupled"].encoder == "SigLIP"
    assert {s.task for s in runs["gen-only"].train.data.sources} == {"t2i"}
    assert all(r.train.data.image_size == 256 and r.train.data.batch_size == 4096 for r in runs.values())


def test_paper_encoders_plug_into_harmon_05b_on_meta():
    config = load_ablation(Table5Config, "table5", "paper")
    assert {label: get_entry(name).family for label, name in config.model.encoders.items()} == {
        "SigLIP": "siglip", "VQGAN": "vqgan", "VAE": "vae", "MAR": "mar"}
    factory = HarmonFactory(config.model, None, Console(quiet=True), weights=False)
    widths = {}
    with torch.device("meta"):
        for label in ENCODERS:
            model = factory.build(0, label)
            widths[label] = model.understanding.encoder.embed_dim
            assert model.llm.config.hidden_size == 896 and model.llm.config.num_hidden_layers == 24
            assert model.mar.config.encoder_embed_dim == 768 and model.understanding.proj[-1].out_features == 896
    assert widths == {"SigLIP": 768, "VQGAN": 256, "VAE": 16, "MAR": 768}


def test_paper_preset_refuses_missing_benchmarks(tmp_path):
    done = harmon("table5", "--preset", "paper", "--out", str(tmp_path / "t5"), "--lmms-eval", "off")
    assert done.returncode == 2 and "--pope" in done.stdout and "none was given" in done.stdout
    done = harmon("table5", "--preset", "paper", "--out", str(tmp_path / "t5"))  # lmms-eval gives the columns
    assert done.returncode == 2 and "data.sources[0].path" in done.stdout and "none was given" not in done.stdout
    (tmp_path / "pope.jsonl").write_text("")
    done = harmon("figure6", "--preset", "paper", "--out", str(tmp_path / "f6"), "--pope", str(tmp_path / "pope.jsonl"))
    assert done.returncode == 2 and "--pope-images" in done.stdout
    with pytest.raises(ConfigError, match="--gqa .*nowhere.json does not exist"):
        BenchmarkPaths(gqa=tmp_path / "nowhere.json", gqa_images=tmp_path).given()
    config = load_ablation(Table5Config, "table5", "paper")
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path = data/stage2/infinity_mm.json does not exist"):
        table5.run_table5(config, tmp_path / "t5", None, BenchmarkPaths(mme=tmp_path), Console(quiet=True))


def test_ablation_configs_are_strict():
    with pytest.raises(ConfigError, match="training.step: unknown key"):
        load_ablation(Table5Config, "table5", "micro", ["training.step=3"])
    with pytest.raises(ConfigError, match="eval_every"):
        load_ablation(Figure6Config, "figure6", "micro", ["eval_every=3"])
    with pytest.raises(ConfigError, match="neither a table5 preset"):
        load_ablation(Table5Config, "table5", "huge")
