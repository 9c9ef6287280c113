"""Scene sets for representation probing: large objects, balanced classes by construction, exact labels.

Objects span many tokens (a single object's circumradius is 22-38 % of the side, so at 64 px it touches 8-30 of the
64 tokens of an 8-pixel grid, 19 on median), colours are drawn independently of shapes, and background texture and grey
clutter strokes are nuisances. Item i of a set is a pure function of (seed, set, i); its class is i mod the number
of classes, so every split is balanced without rejection.

- "single": one object. Labels: shape (7 classes), colour (8), centre x and y and circumradius (fractions of the
  side; regression targets).
- "pair": two objects. Label: "same" or "different" shape.
- "count": 1-4 smaller objects. Label: how many.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from harmon.shapesworld.render import render_scene
from harmon.shapesworld.sampling import sample_scene
from harmon.shapesworld.scene import Scene, ShapesWorldConfig
from harmon.shapesworld.vocab import COLORS, SHAPES

SETS = ("single", "pair", "count")
RADIUS_RANGES = {"single": (0.22, 0.38), "pair": (0.15, 0.23), "count": (0.11, 0.17)}
MAX_COUNT = 4


@dataclass(frozen=True)
class ProbeSet:
    """One of `SETS` at an image size, with or without the texture and clutter nuisances."""

    name: str
    image_size: int = 64
    texture: bool = True
    clutter: bool = True

    def __post_init__(self) -> None:
        if self.name not in SETS:
            raise ValueError(f"probe set {self.name!r} is unknown; choose one of {list(SETS)}")

    def classes(self) -> list[str]:
        if self.name == "single":
            return list(SHAPES)
        if self.name == "pair":
            return ["different", "same"]
        return [str(n) for n in range(1, MAX_COUNT + 1)]

    def world_config(self, objects: int) -> ShapesWorldConfig:
        return ShapesWorldConfig(image_size=self.image_size, min_objects=objects, max_objects=objects,
                                 radius_range=RADIUS_RANGES[self.name], texture=self.texture, clutter=self.clutter)

    def scene(self, seed: int, index: int) -> tuple[Scene, int]:
        """Item `index` of the set drawn with `seed`, and its class index."""
        label = index % len(self.classes())
        rng = np.random.default_rng([seed, SETS.index(self.name), index])
        objects = {"single": 1, "pair": 2, "count": label + 1}[self.name]
        scene = sample_scene(rng, self.world_config(objects))
        if self.name == "single":
            scene = replace(scene, objects=(replace(scene.objects[0], shape=SHAPES[label]),))
        elif self.name == "pair":
            first, second = scene.objects
            others = [s for s in SHAPES if s != first.shape]
            shape = first.shape if label == 1 else others[int(rng.integers(len(others)))]
            scene = replace(scene, objects=(first, replace(second, shape=shape)))
        return scene, label


@dataclass
class ProbeImages:
    """Rendered items 0..N-1 of a set: images (N, H, W, 3) uint8, class indices (N,), regression/extra targets."""

    images: np.ndarray
    labels: np.ndarray
    targets: dict[str, np.ndarray]
    masks: list[np.ndarray]  # per item: (objects, H, W) bool


def render_set(probe_set: ProbeSet, seed: int, count: int) -> ProbeImages:
    """Render the first `count` items; targets for "single": shape, colour (indices), x, y, radius (fractions)."""
    if count < len(probe_set.classes()):
        raise ValueError(f"count={count} is below the {len(probe_set.classes())} classes of {probe_set.name!r}")
    images, labels, masks, rows = [], [], [], []
    colours = list(COLORS)
    for index in range(count):
        scene, label = probe_set.scene(seed, index)
        rendered = render_scene(scene)
        images.append(np.asarray(rendered.image.convert("RGB")))
        labels.append(label)
        masks.append(rendered.masks)
        first = scene.objects[0]
        rows.append((colours.index(first.color), first.center[0] / scene.size, first.center[1] / scene.size,
                     first.radius / scene.size))
    table = np.asarray(rows, dtype=np.float64)
    targets = {"class": np.asarray(labels, dtype=np.int64)}
    if probe_set.name == "single":
        targets |= {"colour": table[:, 0].astype(np.int64), "x": table[:, 1], "y": table[:, 2], "radius": table[:, 3]}
    return ProbeImages(np.stack(images), np.asarray(labels, dtype=np.int64), targets, masks)
