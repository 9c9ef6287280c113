"""True captions of a rendered scene in the six GenEval categories."""

from __future__ import annotations

from collections import Counter
from itertools import permutations

from harmon.shapesworld.prompts import CATEGORIES, Prompt, PromptObject, PromptSpec, prompt_text
from harmon.shapesworld.sampling import RngLike, make_rng
from harmon.shapesworld.scene import Scene, ShapeObject, is_clear_relation, relation
from harmon.shapesworld.vocab import require_known


def _specs(scene: Scene, category: str) -> list[PromptSpec]:
    """Every spec of `category` that the scene satisfies (and, for position, describes unambiguously)."""
    objects = scene.objects
    shape_counts = Counter(o.shape for o in objects)
    identity_counts = Counter((o.shape, o.color) for o in objects)
    pairs: list[tuple[ShapeObject, ShapeObject]] = list(permutations(objects, 2))
    if category == "single_object":
        return [PromptSpec(category, (PromptObject(shape),)) for shape in shape_counts]
    if category == "colors":
        return [PromptSpec(category, (PromptObject(shape, color),)) for shape, color in identity_counts]
    if category == "counting":
        return [PromptSpec(category, (PromptObject(s, None, n),)) for s, n in shape_counts.items() if n >= 2]
    if category == "two_object":
        return [
            PromptSpec(category, (PromptObject(a), PromptObject(b))) for a, b in permutations(shape_counts, 2)
        ]
    if category == "color_attr":
        return [
            PromptSpec(category, (PromptObject(a.shape, a.color), PromptObject(b.shape, b.color)))
            for a, b in pairs
            if a.shape != b.shape and a.color != b.color
        ]
    return [
        PromptSpec(
            category,
            (PromptObject(a.shape, a.color), PromptObject(b.shape, b.color)),
            relation(a.center, b.center),
        )
        for a, b in pairs
        if identity_counts[(a.shape, a.color)] == 1
        and identity_counts[(b.shape, b.color)] == 1
        and (a.shape, a.color) != (b.shape, b.color)
        and is_clear_relation(a.center, b.center)
    ]


def applicable_categories(scene: Scene) -> list[str]:
    """The categories for which `describe_scene` can caption this scene."""
    return [category for category in CATEGORIES if _specs(scene, category)]


def describe_scene(scene: Scene, rng_or_seed: RngLike, category: str | None = None) -> Prompt:
    """A true caption of the scene with its spec, in `category` or in a random applicable category."""
    rng = make_rng(rng_or_seed)
    if category is None:
        options = applicable_categories(scene)
        if not options:
            raise ValueError("the scene has no objects to describe; sample scenes with min_objects >= 1")
        category = options[int(rng.integers(len(options)))]
    require_known("category", [category], CATEGORIES)
    specs = _specs(scene, category)
    if not specs:
        raise ValueError(
            f"the scene cannot be captioned as {category!r}; choose one of {applicable_categories(scene)}"
        )
    spec = specs[int(rng.integers(len(specs)))]
    return Prompt(prompt_text(spec), spec)
