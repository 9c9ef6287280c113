"""GenEval-style prompts: a structured spec of what an image must show, its text, random prompts, and a
scene that satisfies a spec.

Categories follow GenEval: single_object ("a circle"), two_object ("a circle and a square"),
counting ("three stars"), colors ("a yellow triangle"), position ("a red circle to the left of a
blue square") and color_attr ("a red circle and a green star", where each colour must sit on its shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harmon.geneval_rules import CATEGORIES
from harmon.shapesworld.sampling import RngLike, make_rng, place_centers
from harmon.shapesworld.scene import (
    RELATIONS,
    Scene,
    ShapeObject,
    ShapesWorldConfig,
    is_clear_relation,
    relation,
)
from harmon.shapesworld.vocab import COLORS, MAX_OBJECTS, SHAPES, SIZES, require_known

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
LAYOUT_TRIES = 200


@dataclass(frozen=True)
class PromptObject:
    """An object a prompt asks for: a shape, optionally a colour (None = any), and how many."""

    shape: str
    color: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        require_known("shape", [self.shape], SHAPES)
        if self.color is not None:
            require_known("color", [self.color], COLORS)
        if not 1 <= self.count <= MAX_OBJECTS:
            raise ValueError(f"count {self.count} is out of range; use 1 to {MAX_OBJECTS}")


@dataclass(frozen=True)
class PromptSpec:
    """What an image must contain. For "position", objects[0] must be `relation` objects[1]."""

    category: str
    objects: tuple[PromptObject, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        require_known("category", [self.category], CATEGORIES)
        object.__setattr__(self, "objects", tuple(self.objects))
        expected = 1 if self.category in ("single_object", "counting", "colors") else 2
        if len(self.objects) != expected:
            raise ValueError(f"a {self.category} spec needs {expected} object(s), got {len(self.objects)}")
        if (self.category == "position") != (self.relation is not None):
            raise ValueError(f"relation {self.relation!r} must be given exactly for position specs")
        if self.relation is not None:
            require_known("relation", [self.relation], RELATIONS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, inverted by `PromptSpec.from_dict`."""
        objects = [{"shape": o.shape, "color": o.color, "count": o.count} for o in self.objects]
        return {"category": self.category, "objects": objects, "relation": self.relation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSpec:
        return cls(data["category"], tuple(PromptObject(**o) for o in data["objects"]), data.get("relation"))


@dataclass(frozen=True)
class Prompt:
    """A prompt text with its structured spec."""

    text: str
    spec: PromptSpec

    @property
    def category(self) -> str:
        return self.spec.category


def plural(shape: str) -> str:
    """English plural of a shape name."""
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def noun_phrase(obj: PromptObject) -> str:
    """ "a red circle", "an orange star", "three squares", "two green stars"."""
    words = ([obj.color] if obj.color else []) + [obj.shape if obj.count == 1 else plural(obj.shape)]
    if obj.count > 1:
        return " ".join([NUMBER_WORDS[obj.count], *words])
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def prompt_text(spec: PromptSpec) -> str:
    """The caption for a spec."""
    phrases = [noun_phrase(obj) for obj in spec.objects]
    if spec.category == "position":
        return f"{phrases[0]} {RELATION_PHRASES[spec.relation]} {phrases[1]}"
    return " and ".join(phrases)


def _pick(rng: np.random.Generator, names: tuple[str, ...], k: int, kind: str) -> list[str]:
    if len(names) < k:
        raise ValueError(
            f"this prompt category needs {k} different {kind}s; the config lists only {list(names)}"
        )
    return [names[i] for i in rng.choice(len(names), size=k, replace=False)]


def random_spec(category: str, rng_or_seed: RngLike, config: ShapesWorldConfig | None = None) -> PromptSpec:
    """A random spec of `category` over the shapes, colours and object counts of `config`."""
    require_known("category", [category], CATEGORIES)
    config = config or ShapesWorldConfig()
    rng = make_rng(rng_or_seed)
    if category == "single_object":
        return PromptSpec(category, (PromptObject(_pick(rng, config.shapes, 1, "shape")[0]),))
    if category == "two_object":
        return PromptSpec(category, tuple(PromptObject(s) for s in _pick(rng, config.shapes, 2, "shape")))
    if category == "counting":
        if config.max_objects < 2:
            raise ValueError("counting prompts need max_objects >= 2 in the config")
        number = int(rng.integers(2, config.max_objects, endpoint=True))
        return PromptSpec(category, (PromptObject(_pick(rng, config.shapes, 1, "shape")[0], None, number),))
    if category == "colors":
        shape, color = _pick(rng, config.shapes, 1, "shape")[0], _pick(rng, config.colors, 1, "color")[0]
        return PromptSpec(category, (PromptObject(shape, color),))
    shapes = _pick(rng, config.shapes, 2, "shape")
    if category == "position":
        colors = [config.colors[i] for i in rng.integers(len(config.colors), size=2)]
        objects = tuple(PromptObject(s, c) for s, c in zip(shapes, colors, strict=True))
        return PromptSpec(category, objects, RELATIONS[int(rng.integers(len(RELATIONS)))])
    colors = _pick(rng, config.colors, 2, "color")
    return PromptSpec(category, tuple(PromptObject(s, c) for s, c in zip(shapes, colors, strict=True)))


def generate_prompts(
    category: str, count: int, seed: int = 0, config: ShapesWorldConfig | None = None
) -> list[Prompt]:
    """`count` random prompts of one category with their specs, reproducible from `seed`."""
    require_known("category", [category], CATEGORIES)
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    specs = [random_spec(category, rng, config) for _ in range(count)]
    return [Prompt(prompt_text(spec), spec) for spec in specs]


def scene_for_prompt(
    spec: PromptSpec, rng_or_seed: RngLike, config: ShapesWorldConfig | None = None
) -> Scene:
    """A scene showing exactly the objects of `spec` (free colours and sizes drawn from `config`)."""
    config = config or ShapesWorldConfig()
    rng = make_rng(rng_or_seed)
    wanted = [(obj.shape, obj.color) for obj in spec.objects for _ in range(obj.count)]
    colors = [color or config.colors[int(rng.integers(len(config.colors)))] for _, color in wanted]
    radii = [
        SIZES[config.sizes[i]] * config.image_size for i in rng.integers(len(config.sizes), size=len(wanted))
    ]
    for _ in range(LAYOUT_TRIES):
        centers = place_centers(rng, radii, config.image_size)
        if spec.relation is None or (
            relation(centers[0], centers[1]) == spec.relation and is_clear_relation(centers[0], centers[1])
        ):
            objects = tuple(
                ShapeObject(shape, color, center, radius)
                for (shape, _), color, center, radius in zip(wanted, colors, centers, radii, strict=True)
            )
            return Scene(config.image_size, config.background, objects)
    raise ValueError(
        f"found no layout with the first object {spec.relation} the second; use a larger image_size"
    )
