"""Rule-based object detector for ShapesWorld-style images: palette segmentation + shape geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from harmon.shapesworld.evaluate.shape_features import classify_shape
from harmon.shapesworld.vocab import COLORS, SHAPES, require_known

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DetectorConfig:
    """Detector settings.

    A pixel belongs to a palette colour when that colour is its nearest one and lies within
    `color_threshold` RGB units; connected blobs smaller than `min_area_fraction` of the image
    (and than `min_area_pixels`) are ignored; `margin` pixels around a blob are used to measure its
    anti-aliased outline.
    """

    color_threshold: float = 60.0
    min_area_fraction: float = 0.001
    min_area_pixels: int = 8
    margin: int = 2
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)

    def __post_init__(self) -> None:
        require_known("shape", self.shapes, SHAPES)
        require_known("color", self.colors, COLORS)


@dataclass(frozen=True)
class DetectedObject:
    """A detected object: shape and colour names, centre (x, y), box (x0, y0, x1, y1; x1, y1 exclusive), area in px."""

    shape: str
    color: str
    center: tuple[float, float]
    box: tuple[int, int, int, int]
    area: float


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image of shape {array.shape} is not RGB; pass a PIL image or an H x W x 3 array")
    return array


def _nearest_palette(pixels: np.ndarray, palette: np.ndarray, threshold: float) -> np.ndarray:
    """Index of the nearest palette colour per pixel, or -1 where it is farther than `threshold`."""
    squared = (pixels**2).sum(-1, keepdims=True) - 2 * pixels @ palette.T + (palette**2).sum(-1)
    nearest = squared.argmin(axis=-1)
    nearest[squared.min(axis=-1) > threshold**2] = -1
    return nearest


def _soft_mask(
    pixels: np.ndarray, region: np.ndarray, color: np.ndarray, background: np.ndarray
) -> np.ndarray:
    """Coverage of `color` over `background` inside `region`, by projecting each pixel onto that segment."""
    direction = color - background
    if not direction.any():  # the colour is the background: nothing stands out
        return np.zeros(region.shape)
    alpha = (pixels - background) @ direction / float(direction @ direction)
    return np.where(region, np.clip(alpha, 0.0, 1.0), 0.0)


def _padded(slices: tuple[slice, slice], margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The window `slices` grown by `margin` pixels on every side, clipped to the image."""
    return tuple(
        slice(max(0, s.start - margin), min(size, s.stop + margin))
        for s, size in zip(slices, shape, strict=True)
    )


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def detect_objects(
    image: Image.Image | np.ndarray, config: DetectorConfig | None = None
) -> list[DetectedObject]:
    """Find palette-coloured blobs and name their shapes; objects are listed by colour, then top to bottom."""
    config = config or DetectorConfig()
    pixels = _as_rgb_array(image)
    height, width, _ = pixels.shape
    palette = np.array([COLORS[name] for name in config.colors], dtype=np.float32)
    nearest = _nearest_palette(pixels, palette, config.color_threshold)
    unassigned = nearest < 0
    background = np.median(pixels[unassigned] if unassigned.any() else pixels.reshape(-1, 3), axis=0)
    min_area = max(config.min_area_pixels, config.min_area_fraction * height * width)

    detections: list[DetectedObject] = []
    for index, name in enumerate(config.colors):
        labels, _ = ndimage.label(nearest == index, structure=EIGHT_CONNECTED)
        for label, slices in enumerate(ndimage.find_objects(labels), start=1):
            window = _padded(slices, config.margin, (height, width))
            core = labels[window] == label
            if core.sum() < min_area:
                continue
            region = ndimage.binary_dilation(core, EIGHT_CONNECTED, iterations=config.margin)
            region &= unassigned[window] | core
            alpha = _soft_mask(pixels[window], region, palette[index], background)
            area = float(alpha.sum())
            if area <= 0:  # the blob has the background's colour (e.g. an image of one flat palette colour)
                continue
            ys, xs = np.mgrid[window]
            center = (float((alpha * (xs + 0.5)).sum() / area), float((alpha * (ys + 0.5)).sum() / area))
            solid = alpha >= 0.5
            x0, y0, x1, y1 = _box(solid if solid.any() else core)
            detections.append(
                DetectedObject(
                    shape=classify_shape(alpha, config.shapes),
                    color=name,
                    center=center,
                    box=(
                        x0 + window[1].start,
                        y0 + window[0].start,
                        x1 + window[1].start,
                        y1 + window[0].start,
                    ),
                    area=area,
                )
            )
    return detections
