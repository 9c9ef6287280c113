"""SigLIP image towers through timm (WebLI weights, SigLIP 1).

B/16 and L/16 at 256 px by default: a 16 x 16 token grid like the MAR, VQGAN and KL-16 encoders (MAR works at
256 px; the paper's SigLIP resolution is not known). Other timm SigLIP names (224/384/512, `.v2_webli`, `_gap_`)
via `model_name=`. Tokens: 256 patch tokens, no prefix; poolings ("map", "mean"), default "map" (the attention-pool
head output). Preprocessing from timm's pretrained cfg (mean = std = 0.5, bicubic, centre crop with its crop_pct).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from encoders.adapters.timm_generic import TimmEncoder, create_timm

SIGLIP_B16 = "vit_base_patch16_siglip_256.webli"
SIGLIP_L16 = "vit_large_patch16_siglip_256.webli"


def build_siglip(name: str, model_name: str, weights: str | None, config: Mapping[str, Any] | None) -> TimmEncoder:
    if "siglip" not in model_name:
        raise ValueError(f"{name}: {model_name!r} is not a timm SigLIP model (see timm.list_models('*siglip*', "
                         "pretrained=True)); use the 'timm' encoder for other models")
    return TimmEncoder(name, create_timm(model_name, weights, config), model_name)


def build_siglip_b16(weights: str | None = None, model_name: str = SIGLIP_B16,
                     config: Mapping[str, Any] | None = None) -> TimmEncoder:
    """SigLIP B/16 (92.9 M parameters); config: timm create_model kwargs (e.g. img_size=384)."""
    return build_siglip("siglip-b16", model_name, weights, config)


def build_siglip_l16(weights: str | None = None, model_name: str = SIGLIP_L16,
                     config: Mapping[str, Any] | None = None) -> TimmEncoder:
    """SigLIP L/16 (316 M parameters); config: timm create_model kwargs."""
    return build_siglip("siglip-l16", model_name, weights, config)
