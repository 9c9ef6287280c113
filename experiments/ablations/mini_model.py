"""The Harmons the ablations train: a small one built from the mini Figure 2 parts, and Harmon-0.5B.

Small (mini / micro presets): the Figure 2 tiny VAE, frozen, reads latents as `posterior mode x latent_scale`
(the scale the tiny MAR was pretrained with); Harmon's MAR starts from the tiny MAR's masked-modelling weights,
as the paper starts from MAR; the LLM is a small Qwen2 (random, or pretrained once on ShapesWorld text) with a
byte-level BPE trained on ShapesWorld captions, questions and answers. Variants plug another encoder into the
understanding path through `EncoderTokens` (`with_understanding`): Table 5 plugs each tiny encoder frozen (MAR too, so all four go through
the same bridge and a fresh projector); Figure 6's decoupled run plugs the tiny SigLIP, trainable.

Paper: Harmon-0.5B from Qwen2.5-0.5B-Instruct, MAR-B and KL-16 (`paper_harmon`), or only its architecture with
random weights (`weights=False`, e.g. under `torch.device("meta")`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from rich.console import Console
from transformers import PreTrainedTokenizerBase, Qwen2Config

from encoders.base import Encoder
from encoders.harmon_seam import BlindTokens, EncoderTokens, plug_encoder
from encoders.registry import create_encoder
from experiments.paper import PAPER_ENCODERS, TABLE5_ENCODERS
from experiments.pretrain.zoo import pretrain_encoders, scale_preset, wrap_encoders
from harmon.harmon_loading import paper_harmon_config
from harmon.mar import MARConfig
from harmon.model import Harmon, HarmonConfig
from harmon.prompts import INSTRUCTION
from harmon.shapesworld import (
    CATEGORIES,
    NEGATIVE_STRATEGIES,
    ShapesWorld,
    ShapesWorldConfig,
    describe_scene,
    generate_prompts,
    questions_for_scene,
)
from harmon.tiny import TINY_CORPUS
from harmon.tokenizer import build_tiny_tokenizer
from harmon.train.build import build_model
from harmon.train.config import ModelConfig

CORPUS_SEED = 10_000  # ShapesWorld seed of the tokenizer corpus, apart from the training and evaluation seeds


@dataclass
class SmallLLM:
    """The random Qwen2 of the small Harmon."""

    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    max_position_embeddings: int = 512

    def config(self, vocab_size: int) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=1e-6, tie_word_embeddings=True)


@dataclass
class TinyParts:
    """What the small Harmons are built from: the mini Figure 2 tiny VAE and MAR, and the four encoders."""

    vae: AutoencoderKL
    mar_config: MARConfig
    mar_state: dict[str, torch.Tensor]
    latent_scale: float
    encoders: dict[str, Encoder]
    folders: dict[str, Path]


def load_tiny_parts(scale: str, root: str | os.PathLike, seed: int = 0, console: Console | None = None
                    ) -> TinyParts:
    """Pretrain (or reload from `root`) the Figure 2 tiny models of `scale` ("mini" or "micro")."""
    pretrained, _ = pretrain_encoders(scale_preset(scale, seed), Path(root), console or Console(quiet=True))
    wrapped = wrap_encoders(pretrained)
    mar = pretrained["MAR"]
    return TinyParts(vae=copy.deepcopy(pretrained["VAE"].modules["vae"]),
                     mar_config=MARConfig(**mar.record["architecture"]),
                     mar_state={k: v.clone() for k, v in mar.modules["mar"].state_dict().items()},
                     latent_scale=float(mar.record["latent_scale"]),
                     encoders={label: wrapped[label][0] for label in TABLE5_ENCODERS},
                     folders={label: p.folder for label, p in pretrained.items()})


def shapesworld_corpus(scenes: int = 300, seed: int = CORPUS_SEED) -> list[str]:
    """Texts the small tokenizer is trained on: captions, questions and answers of `scenes` ShapesWorld scenes,
    generation prompts of every category, the chat template and TINY_CORPUS."""
    world, config = ShapesWorld(ShapesWorldConfig(), seed), ShapesWorldConfig()
    texts = list(TINY_CORPUS) + [INSTRUCTION.format(input="")]
    for index in range(scenes):
        scene = world.scene(index)
        texts.append(describe_scene(scene, world.rng(index, "caption")).text)
        strategy = NEGATIVE_STRATEGIES[index % len(NEGATIVE_STRATEGIES)]
        for pair in questions_for_scene(scene, world.rng(index, "questions"), config, strategy):
            texts += [pair.question, pair.answer]
    texts += [p.text for category in CATEGORIES for p in generate_prompts(category, 20, seed)]
    return texts


def small_tokenizer(vocab_size: int) -> PreTrainedTokenizerBase:
    """The byte-level BPE of the small Harmon (deterministic: same corpus, same merges)."""
    return build_tiny_tokenizer(shapesworld_corpus(), vocab_size)


def small_harmon(parts: TinyParts, llm: SmallLLM, tokenizer: PreTrainedTokenizerBase, image_size: int,
                 diffusion_steps: str, seed: int, llm_state: dict[str, torch.Tensor] | None = None) -> Harmon:
    """The small Harmon in train mode: frozen tiny VAE, MAR from its pretraining, the LLM from `llm_state` (its
    text pretraining) or random (from `seed`).

    `diffusion_steps` sets MAR's sampling steps of the diffusion head (a sampling choice, not a weight).
    """
    mar = replace(parts.mar_config, num_sampling_steps=diffusion_steps)
    vae_config = {k: v for k, v in parts.vae.config.items() if not k.startswith("_")}
    config = HarmonConfig(llm=llm.config(len(tokenizer)), mar=mar, vae=vae_config, vae_scale=parts.latent_scale,
                          image_size=image_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Harmon(config, tokenizer, vae=copy.deepcopy(parts.vae))
    model.mar.load_state_dict(parts.mar_state)
    if llm_state is not None:
        model.llm.load_state_dict(llm_state)
    return model.train()


def with_understanding(model: Harmon, encoder: Encoder, trainable: bool, seed: int, layer_norm: bool = False,
                       blind: bool = False) -> Harmon:
    """Plug a copy of `encoder` into the understanding path (fresh projector drawn from `seed`), its tokens
    layer-normalised when `layer_norm`; `blind` plugs zeros of its token shape instead (the blind baseline)."""
    tokens = EncoderTokens(copy.deepcopy(encoder), trainable, layer_norm)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return plug_encoder(model, BlindTokens(tokens) if blind else tokens)


def paper_encoder(name: str, weights: str | None = None, trainable: bool = False, layer_norm: bool = False,
                  **options) -> EncoderTokens:
    """A paper-size encoder by Table 5 label ("SigLIP", "VQGAN", "VAE", "MAR") or registry name; `weights` and
    `options` go to `create_encoder` (weights="random" builds it without downloading)."""
    return EncoderTokens(create_encoder(PAPER_ENCODERS.get(name, name), weights, **options), trainable, layer_norm)


def paper_harmon(setup: ModelConfig, image_size: int, encoder: str | None = None, trainable: bool = False,
                 weights: bool = True, layer_norm: bool = False, blind: bool = False) -> Harmon:
    """Harmon of `setup.architecture` from its released parts (`weights=False`: the architecture only, random,
    with a placeholder tokenizer), with `encoder` (a registry name) plugged for understanding when given (its
    tokens layer-normalised when `layer_norm`; zeros of its token shape when `blind`)."""
    if weights:
        model = build_model(setup, image_size)
    else:
        model = Harmon(paper_harmon_config(setup.architecture, image_size), build_tiny_tokenizer(TINY_CORPUS))
    if encoder is not None:
        tokens = paper_encoder(encoder, weights=None if weights else "random", trainable=trainable,
                               layer_norm=layer_norm)
        plug_encoder(model, BlindTokens(tokens) if blind else tokens)
    return model.train()
