"""Anti-aliased rendering of a `Scene` with PIL, plus exact per-object masks and boxes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from harmon.shapesworld.geometry import outline
from harmon.shapesworld.scene import Scene, ShapeObject, Stroke, Texture
from harmon.shapesworld.vocab import CLUTTER_GRAY, COLORS

SUPERSAMPLE = 4
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class RenderedScene:
    """A rendered scene with ground truth.

    `masks[i]` is the H x W boolean mask of object i (pixels at least half covered); `boxes[i]` is its
    tight box (x0, y0, x1, y1) with x1, y1 exclusive.
    """

    scene: Scene
    image: Image.Image
    masks: np.ndarray
    boxes: tuple[Box, ...]


def _coverage(size: int, paths: list[tuple[list[tuple[float, float]], float | None]]) -> np.ndarray:
    """Fraction of each pixel covered by filled polygons (width None) or lines of a width in px."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for points, width in paths:
        # Pixel i spans [i, i + 1); PIL addresses sub-pixel centres, hence the half sub-pixel shift.
        scaled = [(x * SUPERSAMPLE - 0.5, y * SUPERSAMPLE - 0.5) for x, y in points]
        if width is None:
            draw.polygon(scaled, fill=255)
        else:
            draw.line(scaled, fill=255, width=max(1, round(width * SUPERSAMPLE)))
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def object_coverage(obj: ShapeObject, size: int) -> np.ndarray:
    """H x W coverage in [0, 1] of one object in an image of side `size`."""
    return _coverage(size, [(outline(obj.shape, obj.center, obj.radius), None)])


def _clutter_coverage(strokes: tuple[Stroke, ...], size: int) -> np.ndarray:
    return _coverage(size, [([s.start, s.end], s.width) for s in strokes])


def _texture(texture: Texture, size: int) -> np.ndarray:
    """Zero-mean H x W offsets in RGB units."""
    rng = np.random.default_rng(texture.seed)
    if texture.kind == "noise":
        return rng.uniform(-texture.amplitude, texture.amplitude, (size, size)).astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 16)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
    return (texture.amplitude * np.sin(phase)).astype(np.float32)


def _box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def render_scene(scene: Scene) -> RenderedScene:
    """Draw the scene: background (+ texture), grey clutter strokes, then the objects."""
    size = scene.size
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = scene.background
    if scene.texture is not None:
        canvas += _texture(scene.texture, size)[..., None]
    if scene.clutter:
        alpha = _clutter_coverage(scene.clutter, size)[..., None]
        canvas = canvas * (1 - alpha) + np.asarray(CLUTTER_GRAY, np.float32) * alpha
    masks = np.zeros((len(scene.objects), size, size), dtype=bool)
    for i, obj in enumerate(scene.objects):
        coverage = object_coverage(obj, size)
        alpha = coverage[..., None]
        canvas = canvas * (1 - alpha) + np.asarray(COLORS[obj.color], np.float32) * alpha
        masks[i] = coverage >= 0.5
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    return RenderedScene(scene, image, masks, tuple(_box(mask) for mask in masks))
