"""Rotation-invariant shape descriptors from a soft (anti-aliased) object mask, and shape classification.

The descriptor of a mask with coverage weights a(p) and centroid c is
  * h_k for k = 2..6: the strength of the k-fold angular harmonic of the mass distribution,
    |sum a |p - c|^2 e^{-ik angle(p - c)}| / sum a |p - c|^2 (a k-cornered outline peaks at k),
  * compactness: polar moment of inertia over that of a disc of the same area (1 for a circle),
  * solidity: area over the area of its convex hull.
A mask is assigned the shape whose ideal outline has the nearest descriptor.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from harmon.shapesworld.render import object_coverage
from harmon.shapesworld.scene import ShapeObject
from harmon.shapesworld.vocab import SHAPES, require_known

HARMONICS = (2, 3, 4, 5, 6)
PROTOTYPE_RADIUS = 40.0


def _solidity(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:  # a single row or column of pixels
        return 1.0
    return float(len(xs) / hull_area)


def shape_descriptor(alpha: np.ndarray) -> np.ndarray:
    """Descriptor [h_2..h_6, compactness, solidity] of a soft H x W mask with values in [0, 1]."""
    ys, xs = np.nonzero(alpha > 0)
    weights = alpha[ys, xs].astype(np.float64)
    area = weights.sum()
    if area <= 0:
        raise ValueError("shape_descriptor needs a mask with at least one non-zero pixel")
    x, y = xs + 0.5, ys + 0.5
    offsets = (x - (weights * x).sum() / area) + 1j * (y - (weights * y).sum() / area)
    radial = weights * np.abs(offsets) ** 2
    angles = np.angle(offsets)
    polar_moment = radial.sum()
    harmonics = [abs((radial * np.exp(-1j * k * angles)).sum()) / max(polar_moment, 1e-12) for k in HARMONICS]
    # A pixel spreads its weight over a unit square, adding 1/6 to its squared distance on average.
    compactness = 2 * np.pi * (polar_moment - area / 6) / area**2
    return np.array([*harmonics, compactness, _solidity(alpha >= 0.5)])


@cache
def _prototype(shape: str) -> np.ndarray:
    size = int(2 * PROTOTYPE_RADIUS + 8)
    coverage = object_coverage(ShapeObject(shape, "white", (size / 2, size / 2), PROTOTYPE_RADIUS), size)
    return shape_descriptor(coverage)


def classify_shape(alpha: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> str:
    """The shape in `shapes` whose ideal outline has the descriptor nearest to that of `alpha`."""
    require_known("shape", shapes, SHAPES)
    descriptor = shape_descriptor(alpha)
    return min(shapes, key=lambda shape: float(np.linalg.norm(descriptor - _prototype(shape))))
