"""Outlines of the ShapesWorld shapes as polygons inscribed in a circle (y axis points down)."""

from __future__ import annotations

import math
from functools import cache

from harmon.shapesworld.vocab import SHAPES, require_known

CIRCLE_VERTICES = 128
STAR_INNER_RATIO = 0.45
DIAMOND_HALF_WIDTH = 0.6
CROSS_HALF_WIDTH = 0.34


def _regular(n: int, start_degrees: float, radius: float = 1.0) -> list[tuple[float, float]]:
    step = 2 * math.pi / n
    start = math.radians(start_degrees)
    return [(radius * math.cos(start + k * step), radius * math.sin(start + k * step)) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    outer = _regular(5, -90.0)
    inner = _regular(5, -90.0 + 36.0, STAR_INNER_RATIO)
    return [point for pair in zip(outer, inner, strict=True) for point in pair]


def _cross() -> list[tuple[float, float]]:
    w = CROSS_HALF_WIDTH
    arm = math.sqrt(1.0 - w * w)  # outer corners of the arms lie on the unit circle
    quarter = [(w, -arm), (w, -w), (arm, -w)]
    outline: list[tuple[float, float]] = []
    for turn in range(4):  # rotate the quarter outline by 90 degrees four times
        for x, y in quarter:
            for _ in range(turn):
                x, y = -y, x
            outline.append((x, y))
    return outline


@cache
def unit_outline(shape: str) -> tuple[tuple[float, float], ...]:
    """Vertices of `shape` centred at the origin with circumradius 1."""
    require_known("shape", [shape], SHAPES)
    outlines = {
        "circle": lambda: _regular(CIRCLE_VERTICES, 0.0),
        "square": lambda: _regular(4, 45.0),
        "triangle": lambda: _regular(3, -90.0),
        "star": _star,
        "diamond": lambda: [(0.0, -1.0), (DIAMOND_HALF_WIDTH, 0.0), (0.0, 1.0), (-DIAMOND_HALF_WIDTH, 0.0)],
        "hexagon": lambda: _regular(6, 0.0),
        "cross": _cross,
    }
    return tuple(outlines[shape]())


def outline(shape: str, center: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    """Vertices of `shape` with the given centre and circumradius, in pixel coordinates."""
    cx, cy = center
    return [(cx + radius * x, cy + radius * y) for x, y in unit_outline(shape)]
