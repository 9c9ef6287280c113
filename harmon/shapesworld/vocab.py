"""The closed ShapesWorld vocabulary: shapes, named palette colours, size classes, background."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")

# Bright, saturated colours at least ~90 RGB units from each other and far from the dark background.
COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 200, 50),
    "blue": (40, 70, 235),
    "yellow": (245, 225, 40),
    "purple": (160, 50, 210),
    "orange": (250, 135, 20),
    "cyan": (40, 215, 225),
    "white": (245, 245, 245),
}

# Circumradius of an object as a fraction of the image side.
SIZES: Mapping[str, float] = {"small": 0.10, "medium": 0.14, "large": 0.18}

BACKGROUND: tuple[int, int, int] = (24, 24, 28)
CLUTTER_GRAY: tuple[int, int, int] = (120, 120, 120)

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 256
MAX_OBJECTS = 4


def require_known(kind: str, names: Iterable[str], known: Iterable[str]) -> None:
    """Raise a ValueError naming every entry of `names` that is not in `known`."""
    known = tuple(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; choose from {list(known)}")


def require_image_size(size: int) -> None:
    """Raise a ValueError unless `size` is an int within the supported square image sizes."""
    if not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image size {size!r} is not supported; use an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px"
        )


def size_name(radius: float, image_size: int) -> str:
    """The size class whose radius fraction is closest to `radius / image_size`."""
    fraction = radius / image_size
    return min(SIZES, key=lambda name: abs(SIZES[name] - fraction))
