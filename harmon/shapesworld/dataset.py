"""A stream of seeded scenes: scene i is a function of (seed, i), so nothing is stored on disk."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import numpy as np

from harmon.shapesworld.render import RenderedScene, render_scene
from harmon.shapesworld.sampling import sample_scene
from harmon.shapesworld.scene import Scene, ShapesWorldConfig

STREAMS = ("scene", "caption", "questions")


class ShapesWorld:
    """Rendered random scenes with ground truth, indexable (`dataset[i]`) and iterable.

    With `length=None` iteration never ends and `len()` is undefined; with a length it also works as a
    map-style dataset (e.g. for a torch DataLoader with a collate function for `RenderedScene`).
    """

    def __init__(self, config: ShapesWorldConfig | None = None, seed: int = 0, length: int | None = None):
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed {seed!r} must be a non-negative int")
        if length is not None and length < 0:
            raise ValueError(f"length {length!r} must be None (endless) or a non-negative int")
        self.config = config or ShapesWorldConfig()
        self.seed = seed
        self.length = length

    def rng(self, index: int, stream: str = "scene") -> np.random.Generator:
        """The generator for item `index` and one of the independent streams (scene, caption, questions)."""
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; choose from {list(STREAMS)}")
        return np.random.default_rng([self.seed, index, STREAMS.index(stream)])

    def scene(self, index: int) -> Scene:
        """The description of item `index`, without rendering it."""
        self._check_index(index)
        return sample_scene(self.rng(index), self.config)

    def __getitem__(self, index: int) -> RenderedScene:
        return render_scene(self.scene(index))

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless ShapesWorld has no length; pass length=... to the constructor")
        return self.length

    def __iter__(self) -> Iterator[RenderedScene]:
        indices = count() if self.length is None else range(self.length)
        return (self[i] for i in indices)

    def _check_index(self, index: int) -> None:
        if (
            not isinstance(index, (int, np.integer))
            or index < 0
            or (self.length is not None and index >= self.length)
        ):
            raise IndexError(f"index {index!r} is outside this ShapesWorld (length {self.length})")
