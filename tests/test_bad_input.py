"""Every bad input ends in one line on stderr that names the input and the fix, with exit code 2, and loses
nothing: bad checkpoints, non-checkpoints, YAML syntax errors, outputs that are files, layers out of range, a
full disk, a corrupt newest training checkpoint."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harmon.checkpoints import CheckpointError, load_file
from harmon.train.config import load_config
from harmon.train.run_log import read_metrics
from harmon.train.trainer import Trainer
from harmon.utils.files import DiskFull, atomic_write, disk_full_error, save_torch, write_torch

ROOT = Path(__file__).resolve().parents[1]
HARMON = [sys.executable, "-m", "experiments.cli"]


def _harmon(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    return subprocess.run([*HARMON, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a failed command (no traceback)."""
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-2000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert len(lines) == 1, done.stdout + done.stderr
    return lines[0]


class _Evil:
    """Unpickling this runs code: it would create the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------------------------------ checkpoints


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad files for --checkpoint and the words the error must contain."""
    marker = folder / "pwned"
    torch.save({"model": _Evil(marker)}, folder / "evil.pth")
    (folder / "notes.pth").write_text("these are my notes, not a checkpoint\n")
    save_file({"w": torch.zeros(64)}, str(folder / "cut.safetensors"))
    data = (folder / "cut.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    torch.save({"model": {"linear.weight": torch.zeros(2, 2)}}, folder / "resnet.pth")
    return {"code-carrying pickle": (folder / "evil.pth", "refusing to load"),
            "text file": (folder / "notes.pth", "not a PyTorch checkpoint"),
            "truncated safetensors": (folder / "cut.safetensors", "not a readable safetensors file"),
            "wrong model kind": (folder / "resnet.pth", "pass a MAR checkpoint")}


@pytest.mark.parametrize("case", ["code-carrying pickle", "text file", "truncated safetensors", "wrong model kind"])
def test_mar_sample_reports_a_bad_checkpoint_in_one_line(tmp_path: Path, case: str) -> None:
    path, words = _bad_checkpoints(tmp_path)[case]
    done = _harmon("mar-sample", "1", "--checkpoint", str(path), "--out", str(tmp_path / "grid.png"))
    line = _one_error_line(done)
    assert str(path) in line and words in line
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "grid.png").exists()


def test_every_loader_names_a_text_file_as_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("hello\n")
    with pytest.raises(CheckpointError, match=r"notes.pth is not a PyTorch checkpoint"):
        load_file(tmp_path / "notes.pth")


# ------------------------------------------------------------------------------------------------ configs, paths


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "stage.yaml"
    config.write_text("name: mine\nsteps: [1, 2\nout_dir: runs/x\n")
    line = _one_error_line(_harmon("train", str(config)))
    assert f"{config}, line 3 column 8: YAML syntax error" in line and "fix the YAML" in line


def test_an_existing_file_as_out_dir_of_train_is_refused(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    line = _one_error_line(_harmon("train", "tiny-shapesworld", "--set", f"out_dir={taken}", "--no-progress"))
    assert f"out_dir {taken} is an existing file" in line and "pass a folder path" in line
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("option", ["--out", "--cache"])
def test_probe_refuses_an_existing_file_as_its_folders(tmp_path: Path, option: str) -> None:
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    folders = {"--out": str(tmp_path / "out"), "--cache": str(tmp_path / "cache"), option: str(taken)}
    done = _harmon("probe", "--encoder", "pixels", "--data", "digits", "--per-class", "2", "--workers", "0",
                   *[a for item in folders.items() for a in item])
    line = _one_error_line(done)
    assert f"{option} {taken} is an existing file" in line and taken.read_text() == "keep me"


def test_probe_names_the_valid_layers(tmp_path: Path) -> None:
    done = _harmon("probe", "--encoder", "pixels", "--data", "digits", "--per-class", "2", "--workers", "0",
                   "--layer", "99", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    line = _one_error_line(done)
    assert "--layer 99: pixels has 1 block; pass a layer in 0..0" in line  # the pixel baseline is one block


# ------------------------------------------------------------------------------------------------ full disk

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to fill")


@needs_dev_full
def test_a_full_disk_while_writing_names_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    def plot(handle) -> None:  # a writer whose device is full (what savefig meets on a full disk)
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"\x89PNG" * 4096)

    target = tmp_path / "plots" / "topk.png"
    with pytest.raises(DiskFull, match=r"no space left writing .*topk.png \(No space left on device; .* MiB free "
                                       r"there\); free some space"):
        atomic_write(target, plot)
    assert list(target.parent.iterdir()) == []


SAFETENSORS_OVER_THE_LIMIT = """
import resource, signal, sys, torch
from harmon.checkpoints import save_safetensors
from harmon.utils.files import DiskFull
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_safetensors({"w": torch.zeros(100_000)}, sys.argv[1])
except DiskFull as error:
    print("DiskFull:", error)
"""


def test_a_safetensors_write_past_the_file_size_limit_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    """safetensors raises its own error type for a failed write; it must become the one-line DiskFull."""
    target = tmp_path / "final" / "model.safetensors"
    done = subprocess.run([sys.executable, "-c", SAFETENSORS_OVER_THE_LIMIT, str(target)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"DiskFull: [Errno {errno.EFBIG}] no space left writing {target}"), done.stdout
    assert "free some space" in done.stdout and list(target.parent.iterdir()) == []


@needs_dev_full
def test_torch_saves_surface_the_disk_full_error_not_a_zip_writer_message(tmp_path: Path) -> None:
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError) as caught:
        write_torch({"exp_avg": torch.zeros(50_000)}, full)
    assert caught.value.errno == errno.ENOSPC  # torch's own writer says "inline_container.cc ... unexpected pos"
    translated = disk_full_error(tmp_path / "optimizer.pt", caught.value)
    assert isinstance(translated, DiskFull) and "optimizer.pt" in str(translated)
    other = OSError(errno.EACCES, "Permission denied")
    assert disk_full_error(tmp_path / "x", other) is other
    saved = save_torch({"a": torch.arange(5.0)}, tmp_path / "ok.pt")  # and the same path works on a good disk
    assert torch.equal(torch.load(saved, weights_only=True)["a"], torch.arange(5.0))


# ------------------------------------------------------------------------------------------------ training resume


def _trainer(out: Path) -> Trainer:
    config = load_config("tiny-shapesworld", [f"out_dir={out}", "steps=6", "save_every=2", "keep_last=3"])
    return Trainer(config, progress=False)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_and_time_continues(tmp_path: Path,
                                                                                       capsys) -> None:
    out = tmp_path / "run"
    _trainer(out).fit()
    first = {int(r["iteration"]): float(r["elapsed_s"]) for r in read_metrics(out)}
    seconds = json.loads((out / "summary.json").read_text())["seconds"]
    assert 0 < first[0] <= first[5] <= seconds  # time since the run started, not the process clock
    newest = out / "checkpoints" / "iter_00000006"
    data = (newest / "optimizer.pt").read_bytes()
    (newest / "optimizer.pt").write_bytes(data[: len(data) // 3])  # as a crash or a full disk leaves it
    result = _trainer(out).fit()
    said = "".join(capsys.readouterr().err.split())  # the console wraps long lines, even inside a path
    assert "warning:checkpoint" in said and "iter_00000006isunreadable" in said
    assert "resuming" in said and "fromiteration4(iter_00000004)" in said
    assert (out / "checkpoints" / "corrupt-iter_00000006" / "optimizer.pt").stat().st_size == len(data) // 3
    assert (newest / "optimizer.pt").stat().st_size > len(data) // 3  # written again, whole
    again = {int(r["iteration"]): float(r["elapsed_s"]) for r in read_metrics(out)}
    assert sorted(again) == list(range(6)) and all(again[i] == first[i] for i in range(4))
    assert again[3] <= again[4] <= again[5]  # continued across the resume, not restarted at zero
    total = json.loads((out / "summary.json").read_text())["seconds"]
    assert total >= again[5] and result.seconds == pytest.approx(total, abs=1.0)


def test_resume_refuses_a_code_carrying_pickle_in_a_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    _trainer(out).fit()
    marker = tmp_path / "pwned"
    torch.save({"cpu": _Evil(marker)}, out / "checkpoints" / "iter_00000006" / "rng.pt")
    _trainer(out).fit()
    said = "".join(capsys.readouterr().err.split())
    assert "refusingtoload" in said and "rng.pt" in said and "fromiteration4(iter_00000004)" in said
    assert not marker.exists()
