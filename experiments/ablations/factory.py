"""Builds the Harmon of every ablation run from a `ModelSection`, loading the shared parts once."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from rich.console import Console

from experiments.ablations.config import ModelSection
from experiments.ablations.mini_model import (
    load_tiny_parts,
    paper_harmon,
    small_harmon,
    small_tokenizer,
    with_understanding,
)
from experiments.pretrain.text_llm import pretrain_llm
from harmon.model import Harmon
from harmon.train.config import ModelConfig


class HarmonFactory:
    """Small presets: the Figure 2 tiny parts (pretrained under `cache`/pretrain, or reloaded), the small
    tokenizer and, with `text_pretrain`, the text-pretrained LLM, built once; paper presets: Harmon from its released parts for every run (`weights=False`: its
    architecture only, random, e.g. under `torch.device("meta")`)."""

    def __init__(self, model: ModelSection, cache: str | os.PathLike | None, console: Console,
                 weights: bool = True):
        self.model, self.weights = model, weights
        self.parts = self.tokenizer = self.llm_state = self.llm_folder = None
        small = model.small
        if small is not None:
            if cache is None:
                raise ValueError("the small Harmon needs the cache folder of the Figure 2 tiny encoders")
            self.parts = load_tiny_parts(small.parts, Path(cache) / "pretrain", console=console)
            self.tokenizer = small_tokenizer(small.llm.vocab_size)
            if small.text_pretrain is not None:
                llm, pretrained = pretrain_llm(small.text_pretrain, small.llm.config(len(self.tokenizer)),
                                               self.tokenizer, Path(cache) / "pretrain", console)
                self.llm_state, self.llm_folder = llm.state_dict(), pretrained.folder

    def build(self, seed: int, encoder: str | None = None, trainable: bool = False, blind: bool = False) -> Harmon:
        """The run's Harmon (train mode); `encoder`, a Table 5 label, is plugged for understanding (with
        `blind`: zeros of its token shape, the blind baseline)."""
        small, norm = self.model.small, self.model.layer_norm
        if small is None:
            name = self.model.encoders[encoder] if encoder is not None else None
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                return paper_harmon(self.model.paper, self.model.image_size, name, trainable, self.weights, norm,
                                    blind)
        model = small_harmon(self.parts, small.llm, self.tokenizer, self.model.image_size, small.diffusion_steps,
                             seed, self.llm_state)
        if encoder is not None:
            with_understanding(model, self.parts.encoders[encoder], trainable, seed, norm, blind)
        return model.train()

    def record(self) -> ModelConfig:
        """What each run's config.yaml records of the model: the paper ModelConfig, or for the small Harmon the
        cache folders of the tiny MAR and VAE it starts from, and of its text-pretrained LLM when it has one (the
        trainer is handed the model itself)."""
        if self.model.paper is not None:
            return self.model.paper
        folders = self.parts.folders
        llm = self.llm_folder.name if self.llm_folder is not None else None
        return ModelConfig(architecture="tiny", llm=llm, mar=folders["MAR"].name, vae=folders["VAE"].name)
