"""Grad-CAM++ maps of a frozen encoder: for a trained linear probe's class logit, or with no classifier for the cosine
similarity of the pooled feature to a reference embedding; constant (blank) maps are detected, never drawn silently."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from encoders.base import Encoder, Preprocess


class ProbeClassifier(nn.Module):
    """pixels -> encoder features as the probe was trained on them -> probe logits.

    features: "pooled" (the encoder's pooled vector with `pooling`) or "tokens" (patch tokens flattened).
    """

    def __init__(self, encoder: Encoder, head: nn.Module, pooling: str | None = None, layer: int | None = None,
                 features: str = "pooled"):
        super().__init__()
        if features not in ("pooled", "tokens"):
            raise ValueError(f"features={features!r}; use 'pooled' or 'tokens'")
        self.encoder, self.head = encoder, head
        self.pooling = pooling or encoder.default_pooling
        self.layer, self.features = layer, features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.encoder(pixels, layer=self.layer, pooling=self.pooling)
        inputs = out.pooled if self.features == "pooled" else out.tokens.flatten(1)
        return self.head(inputs.float())


class PooledFeatures(nn.Module):
    """pixels -> the encoder's pooled vector (what cosine-similarity targets score)."""

    def __init__(self, encoder: Encoder, pooling: str | None = None, layer: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling or encoder.default_pooling
        self.layer = layer
        anchor = next(encoder.parameters(), torch.zeros(0))  # a device for encoders without parameters (pixels)
        self.anchor = nn.Parameter(torch.zeros(0, device=anchor.device), requires_grad=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels, layer=self.layer, pooling=self.pooling).pooled.float()


class CosineTarget:
    """Grad-CAM target: cosine similarity of one image's pooled feature to a reference embedding (D,)."""

    def __init__(self, reference: torch.Tensor):
        self.reference = reference.detach().float().flatten()

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        reference = self.reference.to(output.device)
        return F.cosine_similarity(output.flatten(), reference, dim=0)


def _check_layer(encoder: Encoder, layer: int | None) -> None:
    if layer is not None and layer not in (-1, encoder.num_layers() - 1):
        raise ValueError(f"Grad-CAM++ reads {encoder.name}'s final features, but the probe was trained on "
                         f"layer={layer}; explain a probe trained on the final features (layer=None)")


def constant_maps(maps: np.ndarray, tolerance: float = 1e-6) -> list[int]:
    """Positions of maps that are identically zero or constant (nothing to draw; the target saw no patch)."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    return [i for i, row in enumerate(flat) if not np.isfinite(row).all() or np.ptp(row) <= tolerance]


def run_grad_cam(model: nn.Module, encoder: Encoder, images: torch.Tensor, targets: Sequence, pooling: str | None,
                 batch_size: int = 16) -> np.ndarray:
    """Grad-CAM++ maps [B, H, W] of `model` for one target callable per image, at the encoder's CAM layer for
    `pooling` (see `Encoder.cam_layer_for`). The CAM object is built once and reused for every batch."""
    from pytorch_grad_cam import GradCAMPlusPlus

    if images.ndim != 4:
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets; give one target per image")
    device = next(model.parameters()).device
    height, width = images.shape[-2:]
    layer = encoder.cam_layer_for(pooling or encoder.default_pooling)
    maps: list[np.ndarray] = []
    with torch.enable_grad(), GradCAMPlusPlus(model, [layer], encoder.cam_reshape(height, width)) as cam:
        cam.compute_input_gradient = True  # frozen encoders: make activations require grad through the input
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            maps.append(cam(input_tensor=batch, targets=list(targets[start : start + batch_size])))
            del cam.outputs
    if sum(len(m) for m in maps) != len(images):  # the library's context manager swallows IndexError
        raise RuntimeError(f"Grad-CAM++ returned maps for {sum(len(m) for m in maps)} of {len(images)} images")
    return np.concatenate(maps)


def compute_cams(
    encoder: Encoder,
    head: nn.Module,
    images: torch.Tensor,
    classes: int | Sequence[int],
    pooling: str | None = None,
    layer: int | None = None,
    batch_size: int = 16,
    features: str = "pooled",
) -> np.ndarray:
    """Grad-CAM++ maps [B, H, W] in [0, 1] (each image min-max normalised) for preprocessed `images`
    [B, 3, H, W], each explained for the probe logit of its entry in `classes` (one int applies to all)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.ndim != 4:
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
    targets = [int(classes)] * len(images) if isinstance(classes, (int, np.integer)) else [int(c) for c in classes]
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} classes; give one class per image")
    _check_layer(encoder, layer)
    device = next(encoder.parameters(), next(head.parameters())).device  # the head follows the encoder
    model = ProbeClassifier(encoder, head.to(device), pooling, layer, features)
    return run_grad_cam(model, encoder, images, [ClassifierOutputTarget(c) for c in targets], model.pooling,
                        batch_size)


def compute_similarity_cams(encoder: Encoder, images: torch.Tensor, references: torch.Tensor,
                            pooling: str | None = None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM++ maps [B, H, W] of the cosine similarity between each image's pooled feature and its reference
    embedding (`references` [B, D] or one [D] for all): maps for any encoder, no classifier needed."""
    references = torch.as_tensor(references, dtype=torch.float32)
    references = references.expand(len(images), -1) if references.ndim == 1 else references
    model = PooledFeatures(encoder, pooling)
    with torch.no_grad():
        dim = model(images[:1].to(model.anchor.device)).shape[1]
    if references.shape != (len(images), dim):
        raise ValueError(f"references of shape {tuple(references.shape)} do not match {len(images)} images with "
                         f"{dim}-d pooled features ({encoder.name}, pooling {model.pooling}); pass [B, {dim}] or [{dim}]")
    return run_grad_cam(model, encoder, images, [CosineTarget(r) for r in references], model.pooling, batch_size)


def to_display(pixels: torch.Tensor, preprocess: Preprocess) -> np.ndarray:
    """Undo the preprocessing normalisation: [B, 3, H, W] tensor -> uint8 [B, H, W, 3]."""
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    unit = (pixels.detach().float().cpu() * std + mean).clamp(0, 1)
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def overlay(image: np.ndarray | Image.Image, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped CAM (resized to the image) over an RGB image: uint8 [H, W, 3]."""
    import matplotlib

    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be RGB [H, W, 3], got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        rgb = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    if cam.ndim != 2:
        raise ValueError(f"cam must be one [H, W] map, got shape {cam.shape}")
    if cam.shape != rgb.shape[:2]:
        resized = Image.fromarray(cam.astype(np.float32)).resize(rgb.shape[1::-1], Image.BILINEAR)
        cam = np.asarray(resized)
    heat = matplotlib.colormaps[colormap](np.clip(cam, 0, 1))[..., :3]
    blended = (1 - alpha) * rgb / 255.0 + alpha * heat
    return (blended * 255).round().astype(np.uint8)
