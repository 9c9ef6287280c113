"""lmms-eval's entry point for the Harmon model (group `lmms_eval.models` in pyproject.toml): `--model harmon`."""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest

MODEL_NAME = "harmon"
MANIFEST = ModelManifest(model_id=MODEL_NAME, simple_class_path="experiments.evaluation.lmms_adapter.HarmonLMMS")
