"""GenEval-style scoring of an image against a prompt spec, using the rule-based detector."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from harmon.shapesworld.evaluate.detect import DetectedObject, DetectorConfig, detect_objects
from harmon.shapesworld.prompts import CATEGORIES, PromptObject, PromptSpec, noun_phrase
from harmon.shapesworld.scene import relation


@dataclass(frozen=True)
class GenEvalResult:
    """Whether one image satisfies its spec, and why not when it does not."""

    category: str
    correct: bool
    reason: str = ""


@dataclass(frozen=True)
class GenEvalSummary:
    """Accuracy per category and overall (the mean of the per-category accuracies, as in GenEval)."""

    per_category: dict[str, float]
    overall: float


def _matches(detections: list[DetectedObject], wanted: PromptObject) -> list[DetectedObject]:
    return [d for d in detections if d.shape == wanted.shape and wanted.color in (None, d.color)]


def score_detections(detections: list[DetectedObject], spec: PromptSpec) -> GenEvalResult:
    """Check detections against a spec.

    Every named object must be present (with its colour when one is named); counting needs the exact
    number; position needs a pair of matching objects in the named relation (judged from centres).
    """
    for wanted in spec.objects:
        found = len(_matches(detections, wanted))
        enough = found == wanted.count if spec.category == "counting" else found >= wanted.count
        if not enough:
            return GenEvalResult(spec.category, False, f"wanted {noun_phrase(wanted)}, found {found}")
    if spec.category == "position":
        subjects, references = (_matches(detections, wanted) for wanted in spec.objects)
        if not any(
            a is not b and relation(a.center, b.center) == spec.relation for a in subjects for b in references
        ):
            return GenEvalResult(
                spec.category, False, f"no {noun_phrase(spec.objects[0])} {spec.relation} the other"
            )
    return GenEvalResult(spec.category, True)


def score_image(
    image: Image.Image | np.ndarray, spec: PromptSpec, detector: DetectorConfig | None = None
) -> GenEvalResult:
    """Detect objects in `image` and score them against `spec`."""
    return score_detections(detect_objects(image, detector), spec)


def summarize(results: Iterable[GenEvalResult]) -> GenEvalSummary:
    """Per-category accuracy over the categories present, and their mean."""
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        outcomes[result.category].append(result.correct)
    if not outcomes:
        raise ValueError("summarize needs at least one GenEvalResult")
    per_category = {c: float(np.mean(outcomes[c])) for c in CATEGORIES if c in outcomes}
    return GenEvalSummary(per_category, float(np.mean(list(per_category.values()))))
