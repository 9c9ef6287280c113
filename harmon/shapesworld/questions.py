"""Question-answer pairs with exact answers from a scene's ground truth.

Existence questions are POPE-style: one "yes" per distinct (colour, shape) in the scene and as many
"no" questions about absent objects, drawn by a negative strategy:
  * random: any absent colour-shape pair of the vocabulary;
  * popular: absent pairs sharing the shape or the colour with an object in the image;
  * adversarial: the colour of one object bound to the shape of another (a swapped attribute binding).
When a strategy runs out of candidates the next weaker one (adversarial -> popular -> random) fills in.
Shape questions ("What shape is the <colour> object?") name a colour that occurs once and ask for the shape, so
answering needs the binding of colour to shape, not the colour alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from itertools import permutations
from typing import Any

import numpy as np

from harmon.shapesworld.prompts import PromptObject, noun_phrase, plural
from harmon.shapesworld.sampling import RngLike, make_rng
from harmon.shapesworld.scene import Scene, ShapesWorldConfig, is_clear_relation, relation
from harmon.shapesworld.vocab import require_known

QUESTION_KINDS = ("existence", "color", "count", "position", "shape")
NEGATIVE_STRATEGIES = ("random", "popular", "adversarial")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
Identity = tuple[str, str]  # (shape, color)


@dataclass(frozen=True)
class QAPair:
    """A question, its normalised answer, its kind, and for "no" existence questions the negative strategy used."""

    kind: str
    question: str
    answer: str
    negative_strategy: str | None = None

    def __post_init__(self) -> None:
        require_known("question kind", [self.kind], QUESTION_KINDS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _negative_candidates(present: set[Identity], strategy: str, config: ShapesWorldConfig) -> list[Identity]:
    absent = [(s, c) for s in config.shapes for c in config.colors if (s, c) not in present]
    if strategy == "random":
        return absent
    shapes, colors = {s for s, _ in present}, {c for _, c in present}
    if strategy == "popular":
        return [(s, c) for s, c in absent if s in shapes or c in colors]
    swapped = {(a[0], b[1]) for a, b in permutations(present, 2)}
    return [identity for identity in absent if identity in swapped]


def existence_questions(
    scene: Scene, rng: np.random.Generator, config: ShapesWorldConfig, strategy: str = "random"
) -> list[QAPair]:
    """Balanced yes/no "Is there a <colour> <shape> in the image?" questions."""
    require_known("negative strategy", [strategy], NEGATIVE_STRATEGIES)
    present = sorted({(o.shape, o.color) for o in scene.objects})
    negatives: list[tuple[Identity, str]] = []
    weaker = NEGATIVE_STRATEGIES[: NEGATIVE_STRATEGIES.index(strategy) + 1][::-1]
    for level in weaker:
        taken = {identity for identity, _ in negatives}
        candidates = [c for c in _negative_candidates(set(present), level, config) if c not in taken]
        take = min(len(present) - len(negatives), len(candidates))
        negatives += [(candidates[i], level) for i in rng.choice(len(candidates), size=take, replace=False)]

    def ask(identity: Identity) -> str:
        return f"Is there {noun_phrase(PromptObject(identity[0], identity[1]))} in the image?"

    pairs = [QAPair("existence", ask(identity), "yes") for identity in present]
    pairs += [QAPair("existence", ask(identity), "no", level) for identity, level in negatives]
    return [pairs[i] for i in rng.permutation(len(pairs))]


def color_questions(scene: Scene) -> list[QAPair]:
    """ "What color is the <shape>?" for every shape that occurs exactly once."""
    counts = Counter(o.shape for o in scene.objects)
    return [
        QAPair("color", f"What color is the {o.shape}?", o.color)
        for o in scene.objects
        if counts[o.shape] == 1
    ]


def shape_questions(scene: Scene) -> list[QAPair]:
    """ "What shape is the <colour> object?" for every colour that occurs exactly once (answer: the shape)."""
    counts = Counter(o.color for o in scene.objects)
    return [
        QAPair("shape", f"What shape is the {o.color} object?", o.shape)
        for o in scene.objects
        if counts[o.color] == 1
    ]


def count_questions(scene: Scene, rng: np.random.Generator, config: ShapesWorldConfig) -> list[QAPair]:
    """ "How many <shapes> are there?" for every shape present and for one absent shape (answer "0")."""
    counts = Counter(o.shape for o in scene.objects)
    absent = [s for s in config.shapes if s not in counts]
    if absent:
        counts[absent[int(rng.integers(len(absent)))]] = 0
    return [QAPair("count", f"How many {plural(s)} are there?", str(n)) for s, n in counts.items()]


def position_questions(scene: Scene) -> list[QAPair]:
    """ "Is the <a> left of the <b>?" with a true ("yes") and the opposite ("no") relation per clear pair.

    Only shapes that occur once are asked about, and only pairs whose relation is unambiguous.
    """
    counts = Counter(o.shape for o in scene.objects)
    unique = [o for o in scene.objects if counts[o.shape] == 1]
    pairs: list[QAPair] = []
    for a, b in permutations(unique, 2):
        if a.shape < b.shape and is_clear_relation(a.center, b.center):
            truth = relation(a.center, b.center)
            for rel, answer in ((truth, "yes"), (OPPOSITE[truth], "no")):
                pairs.append(QAPair("position", f"Is the {a.shape} {rel} the {b.shape}?", answer))
    return pairs


def questions_for_scene(
    scene: Scene,
    rng_or_seed: RngLike,
    config: ShapesWorldConfig | None = None,
    negative_strategy: str = "random",
) -> list[QAPair]:
    """All question kinds for a scene; `config` gives the vocabulary that absent objects come from."""
    config = config or ShapesWorldConfig(image_size=scene.size)
    rng = make_rng(rng_or_seed)
    return [
        *existence_questions(scene, rng, config, negative_strategy),
        *color_questions(scene),
        *count_questions(scene, rng, config),
        *position_questions(scene),
        *shape_questions(scene),
    ]
