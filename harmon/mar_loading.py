"""Build MAR models from official `checkpoint-last.pth` files (or any state dict in the official layout)."""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import replace
from typing import Any

import torch

from harmon.checkpoints import CheckpointError, check_keys, load_file, tensors_only
from harmon.mar import MAR, MAR_VARIANTS, MARConfig, mar_config

MAR_ANCHOR = "encoder_pos_embed_learned"


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def infer_mar_config(state: dict[str, torch.Tensor], **overrides: Any) -> MARConfig:
    """Read a MARConfig off the tensor shapes of an official-layout state dict.

    Head counts are not visible in shapes: they come from the matching released variant, else dim // 64.
    Token size: patch 1 and vae_embed_dim = z_proj input width unless overridden. Without `class_emb`
    (Harmon never uses it) the released 1000 classes are assumed.
    """
    needed = ["z_proj.weight", MAR_ANCHOR, "diffusion_pos_embed_learned", "decoder_embed.weight",
              "diffloss.net.input_proj.weight"]
    absent = [k for k in needed if k not in state]
    if absent:
        raise CheckpointError(f"this is not a MAR state dict: keys {absent} are missing")
    enc_dim, token_dim = state["z_proj.weight"].shape
    dec_dim = state["decoder_embed.weight"].shape[0]
    seq_len = state["diffusion_pos_embed_learned"].shape[1]
    side = math.isqrt(seq_len)
    found = dict(
        encoder_embed_dim=enc_dim, encoder_depth=_count(state, r"encoder_blocks\.(\d+)\."),
        decoder_embed_dim=dec_dim, decoder_depth=_count(state, r"decoder_blocks\.(\d+)\."),
        vae_embed_dim=token_dim, patch_size=1, img_size=side * 16, vae_stride=16,
        buffer_size=state[MAR_ANCHOR].shape[1] - seq_len,
        class_num=state["class_emb.weight"].shape[0] if "class_emb.weight" in state else 1000,
        diffloss_w=state["diffloss.net.input_proj.weight"].shape[0],
        diffloss_d=_count(state, r"diffloss\.net\.res_blocks\.(\d+)\."),
        mlp_ratio=state["encoder_blocks.0.mlp.fc1.weight"].shape[0] / enc_dim if enc_dim else 4.0,
    )
    base = next((v for v in MAR_VARIANTS.values() if v.encoder_embed_dim == enc_dim), None)
    found["encoder_num_heads"] = base.encoder_num_heads if base else max(1, enc_dim // 64)
    found["decoder_num_heads"] = base.decoder_num_heads if base else max(1, dec_dim // 64)
    if base is None and not {"encoder_num_heads", "decoder_num_heads"} <= set(overrides):
        warnings.warn(
            f"head counts are not stored in a MAR state dict and width {enc_dim} matches no released variant; "
            "assuming 64 channels per head. Pass encoder_num_heads= and decoder_num_heads= if that is wrong.",
            stacklevel=2,
        )
    return replace(MARConfig(), **{**found, **overrides})


def describe(config: MARConfig) -> str:
    """One line naming the variant a config matches, with its sizes."""
    sizes = (f"encoder {config.encoder_embed_dim}x{config.encoder_depth}, decoder {config.decoder_embed_dim}x"
             f"{config.decoder_depth}, DiffLoss {config.diffloss_d}x{config.diffloss_w}")
    keys = ("encoder_embed_dim", "encoder_depth", "decoder_embed_dim", "decoder_depth", "diffloss_d", "diffloss_w")
    for name, variant in MAR_VARIANTS.items():
        if all(getattr(variant, k) == getattr(config, k) for k in keys):
            return f"{name} ({sizes})"
    return f"a custom MAR ({sizes})"


def mar_state_from_file(state: dict[str, Any], ema: bool = True) -> dict[str, torch.Tensor]:
    """Pick the MAR weights out of a loaded file: `model_ema` (default) or `model`, a bare dict, or `mar.*` keys."""
    if "model_ema" in state or "model" in state:
        key = "model_ema" if ema and "model_ema" in state else "model"
        if ema and key == "model":
            warnings.warn("the file has no 'model_ema' entry; using the plain 'model' weights", stacklevel=3)
        if key not in state:
            raise CheckpointError("ema=False asks for the 'model' entry, but the file only has 'model_ema'")
        return tensors_only(state[key], f"the '{key}' entry")
    if MAR_ANCHOR not in state and f"mar.{MAR_ANCHOR}" in state:
        return {k[len("mar.") :]: v for k, v in state.items() if k.startswith("mar.")}
    return tensors_only(state, "the checkpoint")


def load_mar(
    source: str | os.PathLike = "mar-base", variant: str | None = None, ema: bool = True, **overrides: Any,
) -> MAR:
    """Load a MAR model strictly from a checkpoint (path, known name, hf:// or URL), in eval mode.

    With `variant` ('mar_base' ...), the file must match that variant; otherwise the config is read off the file.
    `overrides` set non-structural fields such as `num_sampling_steps` or `grad_checkpointing`.
    """
    state = mar_state_from_file(load_file(source), ema=ema)
    with warnings.catch_warnings():
        if variant:
            warnings.simplefilter("ignore")
        try:
            inferred = infer_mar_config(state, **overrides)
        except CheckpointError as err:
            raise CheckpointError(f"MAR checkpoint {source}: {err}; pass a MAR checkpoint (mar-base, mar-large, "
                                  "mar-huge, or a file MAR's training wrote)") from err
    config = mar_config(variant, **overrides) if variant else inferred
    with torch.device("meta"):
        skeleton = MAR(config)
    check_keys(skeleton, state, f"MAR checkpoint {source}", looks_like=describe(inferred))
    model = MAR(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
