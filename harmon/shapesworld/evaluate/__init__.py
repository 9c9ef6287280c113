"""Exact evaluators for ShapesWorld: detector, GenEval-style scoring, QA/POPE metrics, CAM localisation."""

from harmon.shapesworld.evaluate.cam import cam_energy_in_mask, pointing_game, resize_cam
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
    "cam_energy_in_mask",
    "classify_shape",
    "detect_objects",
    "normalize_answer",
    "pointing_game",
    "pope_scores",
    "qa_accuracy",
    "resize_cam",
    "score_detections",
    "score_image",
    "shape_descriptor",
    "summarize",
    "to_yes_no",
]
