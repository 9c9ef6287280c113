"""Typed descriptions of a scene (what to draw) and of the generator's configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harmon.shapesworld.vocab import (
    BACKGROUND,
    COLORS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    require_image_size,
    require_known,
    size_name,
)

TEXTURES = ("noise", "stripes")
RELATIONS = ("left of", "right of", "above", "below")
Point = tuple[float, float]


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape: its name, palette colour name, centre (x, y) in pixels and circumradius in pixels."""

    shape: str
    color: str
    center: Point
    radius: float

    def __post_init__(self) -> None:
        require_known("shape", [self.shape], SHAPES)
        require_known("color", [self.color], COLORS)
        if not self.radius > 0:
            raise ValueError(f"radius {self.radius!r} must be a positive number of pixels")


@dataclass(frozen=True)
class Texture:
    """Low-contrast background texture: `kind` is "noise" or "stripes", `amplitude` in RGB units."""

    kind: str
    amplitude: float
    seed: int

    def __post_init__(self) -> None:
        require_known("texture", [self.kind], TEXTURES)


@dataclass(frozen=True)
class Stroke:
    """A thin grey distractor line segment from `start` to `end` (pixels) of `width` pixels."""

    start: Point
    end: Point
    width: float


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image: square side, background RGB, objects, texture, clutter."""

    size: int
    background: tuple[int, int, int] = BACKGROUND
    objects: tuple[ShapeObject, ...] = ()
    texture: Texture | None = None
    clutter: tuple[Stroke, ...] = ()

    def __post_init__(self) -> None:
        require_image_size(self.size)
        object.__setattr__(self, "objects", tuple(self.objects))
        object.__setattr__(self, "clutter", tuple(self.clutter))
        object.__setattr__(self, "background", tuple(int(v) for v in self.background))

    def size_names(self) -> list[str]:
        """Size class (small/medium/large) of each object."""
        return [size_name(obj.radius, self.size) for obj in self.objects]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description that `Scene.from_dict` turns back into an equal scene."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of `to_dict`."""
        texture = data.get("texture")
        return cls(
            size=data["size"],
            background=tuple(data["background"]),
            objects=tuple(
                ShapeObject(o["shape"], o["color"], tuple(o["center"]), o["radius"]) for o in data["objects"]
            ),
            texture=Texture(**texture) if texture else None,
            clutter=tuple(Stroke(tuple(s["start"]), tuple(s["end"]), s["width"]) for s in data["clutter"]),
        )


@dataclass(frozen=True)
class ShapesWorldConfig:
    """What `sample_scene` may draw: image side, object count range, vocabularies, texture, clutter.

    `radius_range` (fractions of the image side, low <= high) replaces the named sizes by a radius drawn uniformly
    from the range, for studies that need objects spanning more tokens or a continuous size to regress.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = MAX_OBJECTS
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    texture: bool = False
    clutter: bool = False
    background: tuple[int, int, int] = BACKGROUND
    radius_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        require_image_size(self.image_size)
        if self.radius_range is not None:
            low, high = self.radius_range
            if not 0 < low <= high < 0.5:
                raise ValueError(f"radius_range={self.radius_range!r} must satisfy 0 < low <= high < 0.5 "
                                 "(fractions of the image side)")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"object counts min_objects={self.min_objects}, max_objects={self.max_objects} are invalid; "
                f"use 1 <= min_objects <= max_objects <= {MAX_OBJECTS}"
            )
        for kind, names, known in (
            ("shape", self.shapes, SHAPES),
            ("color", self.colors, COLORS),
            ("size", self.sizes, SIZES),
        ):
            if not names:
                raise ValueError(f"config lists no {kind}s; give at least one of {list(known)}")
            require_known(kind, names, known)


def relation(a: Point, b: Point) -> str:
    """Where centre `a` lies relative to centre `b`, along the axis of the larger offset."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def is_clear_relation(a: Point, b: Point, ratio: float = 1.5) -> bool:
    """True when the offset along one axis is at least `ratio` times the offset along the other."""
    dx, dy = abs(a[0] - b[0]), abs(a[1] - b[1])
    return max(dx, dy) >= ratio * min(dx, dy) and max(dx, dy) > 0
