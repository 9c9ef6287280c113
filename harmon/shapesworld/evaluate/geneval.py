"""GenEval scoring of ShapesWorld images: the exact detector supplies the detections, `harmon.geneval_rules`
(the published protocol's rules, shared with the detector-based scorer of real images) judges them.

A ShapesWorld spec becomes the GenEval metadata record GenEval would write for it (counting excludes N + 1
objects; position names the second object as the reference). The exact detector is sure of every object, so
each detection gets confidence 1.0; where GenEval judges the most confident objects, ties are broken by area
(largest first), as a detector tends to be surest of the largest object.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from harmon.geneval_rules import Clause, Detection, GenEvalSpec, Summary, Verdict, judge, keep_detections
from harmon.geneval_rules import summarize as summarize_verdicts
from harmon.shapesworld.evaluate.detect import DetectedObject, DetectorConfig, detect_objects
from harmon.shapesworld.prompts import PromptSpec, prompt_text

GenEvalResult = Verdict
GenEvalSummary = Summary


def geneval_spec(spec: PromptSpec) -> GenEvalSpec:
    """The GenEval metadata record of a ShapesWorld spec (classes are shape names)."""
    objects = [Clause(o.shape, o.count, o.color) for o in spec.objects]
    exclude: tuple[Clause, ...] = ()
    if spec.category == "counting":
        exclude = (Clause(objects[0].cls, objects[0].count + 1),)
    if spec.category == "position":
        subject, reference = objects
        objects = [reference, Clause(subject.cls, subject.count, subject.color, (spec.relation, 0))]
    return GenEvalSpec(spec.category, prompt_text(spec), tuple(objects), exclude)


def exact_detections(detections: Iterable[DetectedObject]) -> list[Detection]:
    """The exact detector's objects as GenEval detections: confidence 1, largest first, colour known."""
    ordered = sorted(detections, key=lambda d: -d.area)
    return [Detection(d.shape, tuple(float(v) for v in d.box), 1.0, d.color) for d in ordered]


def score_detections(detections: list[DetectedObject], spec: PromptSpec) -> GenEvalResult:
    """GenEval's verdict on exact detections for a ShapesWorld spec."""
    record = geneval_spec(spec)
    return judge(record, keep_detections(exact_detections(detections), record.tag))


def score_image(
    image: Image.Image | np.ndarray, spec: PromptSpec, detector: DetectorConfig | None = None
) -> GenEvalResult:
    """Detect objects in `image` and score them against `spec`."""
    return score_detections(detect_objects(image, detector), spec)


def summarize(results: Iterable[GenEvalResult]) -> GenEvalSummary:
    """Per-category accuracy over the categories present, and their mean (GenEval's overall score)."""
    return summarize_verdicts(results)
