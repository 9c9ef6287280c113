"""Exact evaluators for ShapesWorld: detector, GenEval-style scoring, QA/POPE metrics (CAM localisation scores live in
`probe.localisation`)."""

from harmon.shapesworld.evaluate.detect import DetectedObject, DetectorConfig, detect_objects
from harmon.shapesworld.evaluate.geneval import (
    GenEvalResult,
    GenEvalSummary,
    score_detections,
    score_image,
    summarize,
)
from harmon.shapesworld.evaluate.qa import PopeScores, normalize_answer, pope_scores, qa_accuracy, to_yes_no
from harmon.shapesworld.evaluate.shape_features import classify_shape, shape_descriptor

__all__ = [
    "DetectedObject",
    "DetectorConfig",
    "GenEvalResult",
    "GenEvalSummary",
    "PopeScores",
    "classify_shape",
    "detect_objects",
    "normalize_answer",
    "pope_scores",
    "qa_accuracy",
    "score_detections",
    "score_image",
    "shape_descriptor",
    "summarize",
    "to_yes_no",
]
