"""`harmon --help` and `harmon <command> --help` start without importing torch or any other heavy library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks.cli_startup import HEAVY, commands, run_help

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"ask", "cam", "checkpoints", "encoders", "figure2", "figure6", "generate", "mar-demo", "mar-sample",
            "probe", "table5", "train"}  # the README's command table


def test_every_documented_command_is_registered() -> None:
    assert EXPECTED <= set(commands())


@pytest.mark.parametrize("command", [None, *commands()])
def test_help_imports_no_heavy_library(command: str | None) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    _, code, heavy, text = run_help(argv)
    assert code == 0 and "Usage" in text, text
    assert heavy == [], f"`harmon {' '.join(argv)}` imported {heavy}"


def test_train_module_help_imports_no_heavy_library() -> None:
    probe = ("import sys, runpy; sys.argv = ['train_cli', '--help']\n"
             "try:\n    runpy.run_module('experiments.train_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "tiny-shapesworld" in done.stdout  # the presets are listed without importing the trainer
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


def test_default_workers_never_exceed_the_cores_available() -> None:
    import os

    from probe.features import ExtractOptions
    from probe.study import ProbeStudyConfig

    cores = len(os.sched_getaffinity(0))
    assert ExtractOptions().num_workers == min(4, cores)
    assert ProbeStudyConfig.__dataclass_fields__["workers"].default_factory() == min(4, cores)
    _, _, _, text = run_help(["probe", "--help"])
    assert f"[default: {min(4, cores)}]" in " ".join(text.split()) or f"default: {min(4, cores)}" in text
