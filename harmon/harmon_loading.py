"""Load Harmon from official flat `harmon_*.pth` files (or files in that layout); the paper architectures.

Named checkpoints fix the LLM (Qwen2.5-Instruct config and tokenizer from the hub cache) and the MAR variant.
For a file path the LLM is `llm=` (hub id or folder), else guessed from the embedding width; the MAR config is
read off the tensor shapes. The model is built on the meta device and takes the file's tensors (no second copy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase, Qwen2Config

from harmon.checkpoints import KNOWN_FILES, CheckpointError, load_file, offline, tensors_only
from harmon.mar import MARConfig, mar_config
from harmon.mar_loading import infer_mar_config
from harmon.model import Harmon, HarmonConfig
from harmon.tokenizer import load_tokenizer
from harmon.understanding import PluggedEncoder, VisualEncoder
from harmon.vae import load_kl16


@dataclass(frozen=True)
class NamedHarmon:
    """A released Harmon checkpoint: its file (a KNOWN_FILES name), LLM hub id and MAR variant."""

    file: str
    llm: str
    mar: str


QWEN_05B = "Qwen/Qwen2.5-0.5B-Instruct"
QWEN_15B = "Qwen/Qwen2.5-1.5B-Instruct"
NAMED_HARMON = {
    "harmon-0.5b": NamedHarmon("harmon-0.5b", QWEN_05B, "mar_base"),
    "harmon-1.5b": NamedHarmon("harmon-1.5b", QWEN_15B, "mar_huge"),
    "harmon-1.5b-o": NamedHarmon("harmon-1.5b-o", QWEN_15B, "mar_huge"),
}
LLM_BY_WIDTH = {896: QWEN_05B, 1536: QWEN_15B}
# Architecture facts of the Qwen2.5-Instruct configs, to build paper-shaped models without a download.
QWEN_SHAPES = {
    QWEN_05B: dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
    QWEN_15B: dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
}

def load_llm_config(source: str | os.PathLike) -> Qwen2Config:
    """A Qwen2 config from a folder with config.json or a hub id (cache only when HF_HUB_OFFLINE=1)."""
    text = str(source)
    local = Path(text).expanduser()
    try:
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else text, local_files_only=offline())
    except OSError as err:
        raise CheckpointError(
            f"LLM config {text!r} is neither a folder with config.json nor a hub id in the local cache "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it on a connected machine with "
            f"`huggingface-cli download {text} config.json`, or pass a local folder."
        ) from err
    if not isinstance(config, Qwen2Config):
        raise CheckpointError(f"LLM config {text!r} is a {type(config).__name__}; Harmon needs a Qwen2 config")
    return config


def _checkpoint_state(checkpoint: str) -> dict[str, torch.Tensor]:
    is_file = Path(checkpoint).expanduser().is_file() or checkpoint.startswith(("hf://", "http://", "https://"))
    if checkpoint not in NAMED_HARMON and not is_file:
        raise CheckpointError(f"checkpoint {checkpoint!r} is neither a Harmon checkpoint name "
                              f"({', '.join(NAMED_HARMON)}) nor an existing file, hf://owner/repo/file or URL")
    state = load_file(checkpoint if is_file else KNOWN_FILES[NAMED_HARMON[checkpoint].file])
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return tensors_only(state, f"Harmon checkpoint {checkpoint}")


def _infer_mar(state: dict[str, torch.Tensor]) -> MARConfig:
    """MAR config read off the `mar.*` shapes (an absent, unused class_emb counts as the released 1000 rows)."""
    return infer_mar_config({k[len("mar."):]: v for k, v in state.items() if k.startswith("mar.")})


def _materialize(model: Harmon) -> None:
    """Recreate what a meta-device build leaves without data: the LLM's rotary frequencies."""
    rotary = model.llm.model.rotary_emb
    model.llm.model.rotary_emb = type(rotary)(config=model.llm.config)
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors without data after loading: {left[:8]}")


def load_harmon(
    checkpoint: str | os.PathLike = "harmon-0.5b", llm: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None, vae: str | os.PathLike = "kl16",
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, image_size: int = 512,
    understanding_encoder: VisualEncoder | None = None,
) -> Harmon:
    """Load Harmon strictly from a name (`harmon-0.5b`, `harmon-1.5b`, `harmon-1.5b-o`) or an official-layout file.

    `llm`: hub id or folder for the Qwen2 config (default: the named model's, or by embedding width);
    `tokenizer`: hub id, folder or tokenizer object (default: `llm`); `vae`: KL-16 weights (`kl16` or a path).
    Returns the model in eval mode on `device` in `dtype`.
    """
    name = str(checkpoint)
    state = _checkpoint_state(name)
    named = NAMED_HARMON.get(name)
    embed = state.get("llm.model.embed_tokens.weight")
    llm_source = llm or (named.llm if named else LLM_BY_WIDTH.get(embed.shape[1]) if embed is not None else None)
    if llm_source is None:
        width = "no llm.model.embed_tokens.weight" if embed is None else f"LLM width {embed.shape[1]}"
        raise CheckpointError(f"cannot tell which LLM {name} needs ({width}); pass llm= (a hub id or a folder "
                              "with config.json)")
    mar = mar_config(named.mar) if named else _infer_mar(state)
    autoencoder = load_kl16(vae)
    tok = tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else load_tokenizer(tokenizer or llm_source)
    vae_config = {k: v for k, v in autoencoder.config.items() if not k.startswith("_")}
    config = HarmonConfig(llm=load_llm_config(llm_source), mar=mar, vae=vae_config, image_size=image_size)
    with torch.device("meta"):
        model = Harmon(config, tok, vae=autoencoder)
    model.load_official_state(state, what=f"Harmon checkpoint {name}", assign=True)
    del state, embed
    _materialize(model)
    if understanding_encoder is not None:
        model.understanding = PluggedEncoder(understanding_encoder, config.llm.hidden_size)
    return model.to(device=device, dtype=dtype).eval()


def paper_harmon_config(name: str, image_size: int = 256) -> HarmonConfig:
    """The architecture of `harmon-0.5b` or `harmon-1.5b` (Qwen2.5-Instruct shape, MAR-B/H, KL-16), no weights."""
    if name not in ("harmon-0.5b", "harmon-1.5b"):
        raise ValueError(f"{name!r} is not a paper architecture; use harmon-0.5b or harmon-1.5b")
    named = NAMED_HARMON[name]
    llm = Qwen2Config(vocab_size=151936, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                      rope_theta=1e6, tie_word_embeddings=True, **QWEN_SHAPES[named.llm])
    return HarmonConfig(llm=llm, mar=mar_config(named.mar), image_size=image_size)
