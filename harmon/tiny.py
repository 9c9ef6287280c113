"""Tiny random Harmons for tests and offline demos: the tokenizer corpus, a small MAR, the model, and a bundle of
files in the official layouts that `load_harmon` reads without a network."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config

from harmon.mar import MARConfig
from harmon.model import Harmon, HarmonConfig
from harmon.prompts import CFG_PROMPT, DEFAULT_QUESTION, GENERATE_PREFIX
from harmon.tokenizer import build_tiny_tokenizer
from harmon.vae import save_kl16_safetensors, tiny_kl16_config

TINY_CORPUS = [GENERATE_PREFIX + "a red cube on a blue sphere", CFG_PROMPT, DEFAULT_QUESTION,
               "What color is the object? The object is green.", "A small grey cat sits next to a yellow ball."]
TINY_MAR = MARConfig(
    img_size=64, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=1, decoder_embed_dim=64,
    decoder_depth=2, decoder_num_heads=1, diffloss_d=2, diffloss_w=64, class_num=10,
)



def tiny_harmon_config(vocab_size: int, mar: MARConfig = TINY_MAR, image_size: int = 64) -> HarmonConfig:
    """A Harmon of a few hundred thousand parameters: Qwen2 (32 wide, 2 layers), small MAR, tiny KL-16."""
    llm = Qwen2Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=True,
    )
    return HarmonConfig(llm=llm, mar=mar, vae=tiny_kl16_config(), image_size=image_size)


def tiny_harmon(tokenizer: PreTrainedTokenizerBase | None = None, mar: MARConfig = TINY_MAR, seed: int = 0) -> Harmon:
    """A randomly initialised tiny Harmon (tiny tokenizer built on TINY_CORPUS unless given), in eval mode."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer(TINY_CORPUS)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Harmon(tiny_harmon_config(len(tokenizer), mar), tokenizer).eval()


@dataclass(frozen=True)
class TinyBundle:
    """Paths of a tiny Harmon written by `save_tiny_bundle`: pass them as checkpoint/llm/tokenizer/vae."""

    checkpoint: Path
    llm: Path
    vae: Path


def save_tiny_bundle(directory: str | os.PathLike, seed: int = 0) -> TinyBundle:
    """Write a tiny random Harmon: flat official-layout `harmon_tiny.pth`, `llm/` (Qwen2 config + tokenizer) and
    `kl16_tiny.safetensors`; `load_harmon(b.checkpoint, llm=b.llm, vae=b.vae)` loads it offline."""
    directory = Path(directory)
    model = tiny_harmon(seed=seed)
    llm_dir = directory / "llm"
    model.config.llm.save_pretrained(str(llm_dir))
    model.tokenizer.save_pretrained(str(llm_dir))
    checkpoint = directory / "harmon_tiny.pth"
    torch.save({k: v.detach().clone() for k, v in model.official_state_dict().items()}, checkpoint)
    vae = save_kl16_safetensors(model.vae, directory / "kl16_tiny.safetensors")
    return TinyBundle(checkpoint, llm_dir, vae)
