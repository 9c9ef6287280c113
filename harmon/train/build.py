"""Build the Harmon a training stage starts from: a Harmon checkpoint, the released parts, or a tiny random one."""

from __future__ import annotations

import dataclasses

import torch
from transformers import Qwen2ForCausalLM

from harmon.checkpoints import check_keys, hub_format_errors, load_file, tensors_only
from harmon.harmon_loading import NAMED_HARMON, load_harmon
from harmon.mar_loading import load_mar
from harmon.model import Harmon, HarmonConfig
from harmon.tiny import TINY_MAR, tiny_harmon
from harmon.tokenizer import load_tokenizer
from harmon.train.config import ModelConfig
from harmon.vae import load_kl16

PARTS = {"harmon-0.5b": NAMED_HARMON["harmon-0.5b"], "harmon-1.5b": NAMED_HARMON["harmon-1.5b"]}
MAR_FILES = {"mar_base": "mar-base", "mar_huge": "mar-huge"}


def set_mar_dropout(model: Harmon, dropout: float) -> None:
    """Set MAR's attention and projection dropout everywhere (e.g. 0 for exactly reproducible runs)."""
    model.mar.config = dataclasses.replace(model.mar.config, attn_dropout=dropout, proj_dropout=dropout)
    for module in model.mar.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout


def from_parts(config: ModelConfig, image_size: int) -> Harmon:
    """Stage I start: pretrained Qwen2.5-Instruct and MAR, the KL-16 VAE, fresh projectors."""
    named = PARTS[config.architecture]
    llm_source = config.llm or named.llm
    with hub_format_errors(llm_source):
        llm = Qwen2ForCausalLM.from_pretrained(llm_source, torch_dtype=torch.float32)
    mar = load_mar(config.mar or MAR_FILES[named.mar])
    vae = load_kl16(config.vae)
    vae_config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    harmon_config = HarmonConfig(llm=llm.config, mar=mar.config, vae=vae_config, image_size=image_size)
    model = Harmon(harmon_config, load_tokenizer(llm_source), vae=vae)
    model.llm, model.mar = llm, mar
    return model


def load_trainer_weights(model: Harmon, path: str) -> None:
    """Strictly load a flat state dict (official keys, plus `understanding.*` when present) into `model`."""
    state = tensors_only(load_file(path), f"weights {path}")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}
    check_keys(expected, state, f"weights {path}", allow_missing=["mar.class_emb.weight", "llm.lm_head.weight"])
    model.load_state_dict(state, strict=False)
    if model.llm.config.tie_word_embeddings:
        model.llm.tie_weights()


def build_model(config: ModelConfig, image_size: int) -> Harmon:
    """The model a stage trains, in train mode, float32 on CPU (the trainer moves and wraps it)."""
    if config.architecture == "tiny":
        model = tiny_harmon(mar=dataclasses.replace(TINY_MAR, img_size=image_size))
        model.config.image_size = image_size
        if config.init:
            load_trainer_weights(model, config.init)
    elif config.init and config.init.endswith(".safetensors"):
        model = from_parts(config, image_size)
        load_trainer_weights(model, config.init)
    elif config.init:
        model = load_harmon(config.init, llm=config.llm, vae=config.vae, image_size=image_size)
    else:
        model = from_parts(config, image_size)
    if config.mar_dropout is not None:
        set_mar_dropout(model, config.mar_dropout)
    return model.train()
