"""The trainer end to end on a tiny Harmon: CLI runs, SIGKILL + resume, two gloo processes, NaN stop, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from harmon.train.config import load_config
from harmon.train.run_log import read_metrics
from harmon.train.trainer import Trainer, TrainingStopped, lr_factor
from harmon.utils.strict_yaml import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONHASHSEED": "0"}


def _train_cli(out: Path, *sets: str, steps: int = 8, save_every: int = 4) -> subprocess.CompletedProcess:
    args = [PYTHON, "-m", "experiments.train_cli", "tiny-shapesworld", "--no-progress", "--set", f"out_dir={out}",
            "--set", f"steps={steps}", "--set", f"save_every={save_every}", *[a for s in sets for a in ("--set", s)]]
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _losses(run: Path) -> dict[int, float]:
    return {int(r["iteration"]): float(r["loss"]) for r in read_metrics(run)}


def test_cli_run_writes_checkpoints_logs_and_weights(tmp_path):
    out = tmp_path / "run"
    done = _train_cli(out, "keep_last=1", "ema_decay=0.9", steps=6, save_every=2)
    assert done.returncode == 0, done.stderr
    rows = read_metrics(out)
    assert [int(r["iteration"]) for r in rows] == list(range(6))
    assert {r["task"] for r in rows} == {"i2t", "t2i"}
    assert all(float(r["samples_per_s"]) > 0 for r in rows)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["iter_00000006"]  # keep_last=1
    final = load_file(str(out / "final" / "model.safetensors"))
    ema = load_file(str(out / "final" / "model_ema.safetensors"))
    assert "llm.model.embed_tokens.weight" in final and not any(k.startswith("vae.") for k in final)
    assert any(not torch.equal(final[k], ema[k]) for k in final)
    # the final weights start a new run strictly
    again = load_config("tiny-shapesworld", [f"model.init={out / 'final' / 'model.safetensors'}",
                                            f"out_dir={tmp_path / 'next'}", "steps=2", "save_every=2"])
    model = Trainer(again, progress=False).model
    assert torch.equal(model.state_dict()["proj_in.0.weight"], final["proj_in.0.weight"])


def test_sigkill_and_resume_give_the_same_later_losses(tmp_path):
    steps, sets = 12, ("model.mar_dropout=0.1",)
    whole = _train_cli(tmp_path / "whole", *sets, steps=steps)
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "killed"
    args = [PYTHON, "-m", "experiments.train_cli", "tiny-shapesworld", "--no-progress", "--set", f"out_dir={run}",
            "--set", f"steps={steps}", "--set", "save_every=4", "--set", sets[0]]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "iter_00000004" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _train_cli(run, *sets, steps=steps)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _losses(tmp_path / "whole"), _losses(run)
    assert sorted(b) == list(range(steps))
    assert [b[i] for i in range(4, steps)] == [a[i] for i in range(4, steps)]
    fa = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    fb = load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    # accumulate=3: each update sums one i2t and two t2i micro-batches (DDP's no_sync path, unused parameters)
    one = _train_cli(tmp_path / "one", "accumulate=3", steps=6, save_every=6)
    assert one.returncode == 0, one.stderr
    args = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "experiments.train_cli", "tiny-shapesworld",
            "--no-progress", "--set", f"out_dir={tmp_path / 'two'}", "--set", "steps=6", "--set", "save_every=6",
            "--set", "accumulate=3"]
    two = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(6))
    for i in a:
        assert b[i] == pytest.approx(a[i], rel=1e-4, abs=1e-5)
    wa = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)


def _tiny(tmp_path: Path, *overrides: str):
    return load_config("tiny-shapesworld", [f"out_dir={tmp_path / 'run'}", *overrides])


def test_nan_loss_stops_naming_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    trainer = Trainer(_tiny(tmp_path, "steps=8", "save_every=2"), progress=False)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 3 else output

    trainer.model.proj_in.register_forward_hook(poison)  # runs once in every i2t and t2i iteration
    with pytest.raises(TrainingStopped, match=r"at iteration 3; the last good checkpoint is .*iter_00000002"):
        trainer.fit()
    stopped = json.loads((tmp_path / "run" / "stopped.json").read_text())
    assert stopped["iteration"] == 3
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["iter_00000002"]


def test_frozen_groups_stay_fixed_and_learning_rates_follow_the_groups(tmp_path):
    config = _tiny(tmp_path, "trainable=[mar_encoder, mar_decoder, proj_in, proj_out]", "steps=4", "save_every=4",
                   "optim.lr={mar_decoder: 1.0e-3, proj_out: 1.0e-3, mar_encoder: 1.0e-4, proj_in: 1.0e-4}")
    trainer = Trainer(config, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("llm.", "vae.")))
    assert not torch.equal(before["mar.decoder_embed.weight"], after["mar.decoder_embed.weight"])
    assert not torch.equal(before["proj_in.0.weight"], after["proj_in.0.weight"])
    row = read_metrics(tmp_path / "run")[0]
    assert float(row["lr_mar_decoder"]) == pytest.approx(10 * float(row["lr_mar_encoder"]))
    assert "lr_llm" not in row


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = load_config("harmon-0.5b-stage1")
    assert lr_factor(0, config) == pytest.approx(1e-5)
    assert lr_factor(500, config) == pytest.approx(1.0)
    assert lr_factor(250, config) == pytest.approx(0.5, abs=1e-4)
    assert lr_factor(50_000, config) == pytest.approx(0.0, abs=1e-9)
    mid = lr_factor(500 + (50_000 - 500) // 2, config)
    assert mid == pytest.approx(0.5, abs=1e-4)


def test_bad_rows_are_skipped_and_counted(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(6):
        buf = io.BytesIO()
        Image.new("RGB", (40, 32), (40 * i, 90, 200)).save(buf, format="PNG")
        (images / f"{i}.png").write_bytes(buf.getvalue())
        rows.append({"image": f"{i}.png", "caption": f"a blue square number {i}"})
    (images / "2.png").write_bytes(b"\x89PNG broken")
    rows += [{"image": "missing.png", "caption": "gone"}, {"image": "0.png", "caption": ""}]
    data = tmp_path / "t2i.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    config = _tiny(tmp_path, "steps=4", "save_every=4", "data.ratio=[0, 0, 1]",
                   f"data.sources=[{{task: t2i, format: t2i-json, path: {data}, image_root: {images}}}]")
    result = Trainer(config, progress=False).fit()
    assert sum(result.skipped.values()) >= 2  # the empty caption at indexing, the broken/missing files when met
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_rows"] == result.skipped


def test_bad_input_is_refused_with_the_key_or_path_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        Trainer(_tiny(tmp_path, "data.ratio=[0, 0, 1]",
                      f"data.sources=[{{task: t2i, format: t2i-json, path: {tmp_path / 'nowhere.jsonl'}}}]"),
                progress=False)
    with pytest.raises(ConfigError, match="ratio sums to zero"):
        _tiny(tmp_path, "data.ratio=[0, 0, 0]")
    with pytest.raises(ConfigError, match="optim.betas"):
        _tiny(tmp_path, "optim.betas=fast")
    with pytest.raises(ConfigError, match="data.batch_sise"):
        _tiny(tmp_path, "data.batch_sise=3")
    Trainer(_tiny(tmp_path, "steps=2", "save_every=2"), progress=False).fit()
    other = _tiny(tmp_path, "steps=2", "save_every=2", "optim.weight_decay=0.5", "seed=3")
    with pytest.raises(ConfigError, match=r"differing keys: optim.weight_decay, seed"):
        Trainer(other, progress=False).fit()


def test_metrics_csv_is_valid_after_resume(tmp_path):
    out = tmp_path / "run"
    assert _train_cli(out, steps=4, save_every=2).returncode == 0
    assert _train_cli(out, steps=6, save_every=2).returncode != 0  # steps differ: another config
    with (out / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4


def test_harmon_train_command_explains_bad_configs(tmp_path):
    harmon = str(Path(sys.executable).with_name("harmon"))
    shown = subprocess.run([harmon, "train", "--help"], env=_env(), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "harmon-0.5b-stage1" in shown.stdout and "--set" in shown.stdout
    bad = subprocess.run([harmon, "train", "tiny-shapesworld", "--set", "optim.lr.llm=fast",
                          "--set", f"out_dir={tmp_path}"], env=_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "optim.lr.llm: expected a number, got str 'fast'" in bad.stderr
