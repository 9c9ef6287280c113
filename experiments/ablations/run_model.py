"""A trained Table 5 run folder as a Harmon again: the record `run_table5` leaves in every run folder and the
loader that rebuilds the run's model (its plugged understanding encoder included) from it.

`table5-run.json` holds the Table 5 config, the run's label and seed, whether it is the blind run and the
tiny-encoder cache of small presets. The loader builds the run's architecture as the run did (paper presets:
without downloading any weights; small presets: from the cached tiny parts), then loads `final/model.safetensors`
strictly (every key but the frozen VAE's, which understanding does not read). Paper runs take the tokenizer of
their LLM (`model.paper.llm`, a hub id or folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from experiments.ablations.config import Table5Config
from harmon.checkpoints import CheckpointError
from harmon.harmon_loading import NAMED_HARMON
from harmon.model import Harmon
from harmon.tokenizer import load_tokenizer
from harmon.train.build import load_trainer_weights
from harmon.utils.files import write_json
from harmon.utils.strict_yaml import from_dict, to_dict

RUN_RECORD = "table5-run.json"
FINAL_WEIGHTS = Path("final") / "model.safetensors"


def write_run_record(run_dir: str | os.PathLike, config: Table5Config, label: str, seed: int, blind: bool,
                     cache: str | os.PathLike | None) -> Path:
    """Record what rebuilds the run's model: the config, label, seed, blind flag and tiny-encoder cache."""
    return write_json(Path(run_dir) / RUN_RECORD, {
        "config": to_dict(config), "label": label, "seed": seed, "blind": blind,
        "cache": None if cache is None else str(Path(cache).resolve())})


def read_run_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run record of `run_dir`, or a CheckpointError naming what is missing."""
    run_dir = Path(run_dir)
    record, weights = run_dir / RUN_RECORD, run_dir / FINAL_WEIGHTS
    if not record.is_file():
        raise CheckpointError(f"run={run_dir} is no table5 run folder (no {RUN_RECORD}); pass a folder "
                              "runs/<encoder>-seed<N> of a `harmon table5` output")
    if not weights.is_file():
        raise CheckpointError(f"run={run_dir} has not finished training (no {FINAL_WEIGHTS}); rerun `harmon table5` "
                              "with the same --out to finish it")
    return json.loads(record.read_text())


def run_llm_source(config: Table5Config) -> str:
    """The tokenizer source of a paper run: `model.paper.llm`, else its architecture's Qwen2.5-Instruct."""
    paper = config.model.paper
    return paper.llm or NAMED_HARMON[paper.architecture].llm


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
             ) -> Harmon:
    """The trained Harmon of a Table 5 run folder, in eval mode on `device` in `dtype`."""
    from experiments.ablations.factory import HarmonFactory
    from experiments.ablations.table5_claims import BLIND

    record = read_run_record(run_dir)
    config = from_dict(Table5Config, record["config"], "table5-run.json config")
    label, blind = record["label"], bool(record["blind"])
    factory = HarmonFactory(config.model, record["cache"], Console(quiet=True), weights=False)
    model = factory.build(int(record["seed"]), config.blind if label == BLIND else label, blind=blind)
    load_trainer_weights(model, str(Path(run_dir) / FINAL_WEIGHTS))
    if config.model.paper is not None:
        model.tokenizer = load_tokenizer(run_llm_source(config))
    return model.to(device=device, dtype=dtype).eval()
