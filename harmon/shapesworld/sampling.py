"""Seeded sampling of random scenes: objects without overlap, optional texture and clutter."""

from __future__ import annotations

import math

import numpy as np

from harmon.shapesworld.scene import TEXTURES, Scene, ShapeObject, ShapesWorldConfig, Stroke, Texture
from harmon.shapesworld.vocab import SIZES

PLACEMENT_ATTEMPTS = 200
LAYOUT_RESTARTS = 100
CLUTTER_STROKES = (3, 7)
TEXTURE_AMPLITUDE = (4.0, 9.0)

RngLike = np.random.Generator | int


def make_rng(rng_or_seed: RngLike) -> np.random.Generator:
    """Use a Generator as is, or seed a new one from an int."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def min_gap(image_size: int) -> float:
    """Smallest distance in pixels kept between the circumcircles of two objects."""
    return 0.045 * image_size


def place_centers(rng: np.random.Generator, radii: list[float], image_size: int) -> list[tuple[float, float]]:
    """Centres for circles of the given radii, inside the image and `min_gap` apart (rejection sampling).

    Raises ValueError when no layout is found within the bounded number of tries.
    """
    gap = min_gap(image_size)
    for _ in range(LAYOUT_RESTARTS):
        centers = np.empty((0, 2))
        for i, radius in enumerate(radii):
            low, high = radius + 1.0, image_size - radius - 1.0
            if low > high:
                break
            candidates = rng.uniform(low, high, (PLACEMENT_ATTEMPTS, 2))
            distances = np.linalg.norm(candidates[:, None, :] - centers[None, :, :], axis=-1)
            fits = np.all(distances >= radius + np.asarray(radii[:i]) + gap, axis=1)
            if not fits.any():
                break
            centers = np.vstack([centers, candidates[fits.argmax()]])
        if len(centers) == len(radii):
            return [(float(x), float(y)) for x, y in centers]
    raise ValueError(
        f"could not place {len(radii)} objects with radii {[round(r, 1) for r in radii]} px without overlap "
        f"in a {image_size} px image; use fewer objects, smaller sizes or a larger image_size"
    )


def _clutter(rng: np.random.Generator, objects: list[ShapeObject], size: int) -> tuple[Stroke, ...]:
    """Short thin grey strokes that keep clear of every object."""
    strokes: list[Stroke] = []
    target = int(rng.integers(*CLUTTER_STROKES, endpoint=True))
    for _ in range(PLACEMENT_ATTEMPTS):
        if len(strokes) == target:
            break
        start = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.05, 0.12) * size
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        width = max(1.0, 0.008 * size)
        clearance = min_gap(size) + width
        if all(_segment_distance(start, end, np.array(o.center)) >= o.radius + clearance for o in objects):
            strokes.append(Stroke(tuple(map(float, start)), tuple(map(float, end)), float(width)))
    return tuple(strokes)


def _segment_distance(start: np.ndarray, end: np.ndarray, point: np.ndarray) -> float:
    direction = end - start
    t = np.clip(np.dot(point - start, direction) / np.dot(direction, direction), 0.0, 1.0)
    return float(np.linalg.norm(start + t * direction - point))


def sample_scene(rng_or_seed: RngLike, config: ShapesWorldConfig | None = None) -> Scene:
    """A random scene drawn from `config`; the same seed (or generator state) gives the same scene."""
    config = config or ShapesWorldConfig()
    rng = make_rng(rng_or_seed)
    size = config.image_size
    count = int(rng.integers(config.min_objects, config.max_objects, endpoint=True))
    shapes = [config.shapes[i] for i in rng.integers(len(config.shapes), size=count)]
    colors = [config.colors[i] for i in rng.integers(len(config.colors), size=count)]
    if config.radius_range is None:
        radii = [SIZES[config.sizes[i]] * size for i in rng.integers(len(config.sizes), size=count)]
    else:
        radii = [float(r) * size for r in rng.uniform(*config.radius_range, size=count)]
    centers = place_centers(rng, radii, size)
    objects = [ShapeObject(s, c, p, r) for s, c, p, r in zip(shapes, colors, centers, radii, strict=True)]
    texture = None
    if config.texture:
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        texture = Texture(kind, float(rng.uniform(*TEXTURE_AMPLITUDE)), int(rng.integers(2**31)))
    clutter = _clutter(rng, objects, size) if config.clutter else ()
    return Scene(size, config.background, tuple(objects), texture, clutter)
