"""Localisation scores of class activation maps (CAMs) against ground-truth object masks (H, W), e.g. the exact
ShapesWorld masks: share of CAM energy inside the mask, and the pointing game."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def resize_cam(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D CAM to (height, width)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam of shape {cam.shape} is not 2-D; squeeze batch/channel axes first")
    if cam.shape == tuple(shape):
        return cam
    resized = Image.fromarray(cam).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(
            f"mask of shape {mask.shape} must be 2-D and contain the object; pass one object's mask"
        )
    return mask


def cam_energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative part of the) CAM, resized to the mask, that falls inside the mask."""
    mask = _check_mask(mask)
    energy = np.clip(resize_cam(cam, mask.shape), 0.0, None)
    total = float(energy.sum())
    return float(energy[mask].sum()) / total if total > 0 else 0.0


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> bool:
    """True when the CAM's maximum (after resizing) lies in the mask or within `tolerance` pixels of it."""
    mask = _check_mask(mask)
    resized = resize_cam(cam, mask.shape)
    y, x = np.unravel_index(int(np.argmax(resized)), resized.shape)
    distance_to_mask = ndimage.distance_transform_edt(~mask)
    return bool(distance_to_mask[y, x] <= tolerance)
