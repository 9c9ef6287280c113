"""Named timm encoders with their pretrained tags: DINOv2 (with and without registers), MAE, SigLIP 2.

Each registry entry passes `model_name` (a name from `timm.list_models(pretrained=True)`); the weights default to
the tag's hub file and preprocessing comes from its pretrained cfg. Tokens: CLS (+ 4 registers for `_reg4_`)
as prefix, then the patch grid (DINOv2: patch 14, 16 x 16 at the default 224 px; MAE: patch 16 at 224; SigLIP 2:
no prefix, 16 x 16 at 256). Poolings follow the model: "cls"/"mean" for DINOv2 and MAE, "map"/"mean" for SigLIP 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from encoders.adapters.timm_generic import TimmEncoder, create_timm


def build_timm_named(weights: str | None = None, name: str = "timm", model_name: str = "",
                     image_size: int | None = None, config: Mapping[str, Any] | None = None) -> TimmEncoder:
    """A timm encoder under a registry name; image_size sets timm's img_size (position embeddings are
    resampled when pretrained weights are loaded); config: further create_model keyword arguments."""
    if not model_name:
        raise ValueError(f"{name}: the registry entry names no timm model (options model_name=...)")
    options = dict(config or {})
    if image_size is not None:
        options.setdefault("img_size", image_size)
    return TimmEncoder(name, create_timm(model_name, weights, options), model_name)
