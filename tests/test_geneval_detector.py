"""The detector-based GenEval scorer on tiny random Mask2Former and CLIP folders loaded through the real loading
code, the `harmon geneval` command on GenEval's layout, and its bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.evaluation.geneval import GenEvalScorer, Segment, masked_crop
from experiments.evaluation.tiny import save_tiny_clip, save_tiny_mask2former
from harmon.geneval_rules import Detection, parse_spec

ROOT = Path(__file__).parents[1]
DOG = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
CAT = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
DOG_CAT = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
           "prompt": "a photo of a dog and a cat"}
RED_DOG = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A Mask2Former whose class head says "dog" for every query (so every non-empty mask is a dog, with
    confidence = its mean mask probability > 0.5), and a random CLIP."""
    root = tmp_path_factory.mktemp("geneval-models")
    return save_tiny_mask2former(root / "m2f", favour="dog"), save_tiny_clip(root / "clip")


@pytest.fixture(scope="module")
def scorer(models) -> GenEvalScorer:
    return GenEvalScorer(str(models[0]), str(models[1]))


def _layout(root: Path, records: list[dict], samples: int = 2) -> Path:
    """GenEval's layout written by hand: <root>/<00000>/metadata.jsonl + samples/<00000>.png."""
    for i, record in enumerate(records):
        folder = root / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n")
        for s in range(samples):
            Image.new("RGB", (80, 64), (40 * s, 120, 200)).save(folder / "samples" / f"{s:05d}.png")
    return root


def _harmon(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **env}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_masked_crop_paints_outside_the_mask_grey_and_crops_to_the_box():
    image = Image.new("RGB", (6, 4), (255, 0, 0))
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:4] = True
    mask[1, 2] = False
    crop = np.asarray(masked_crop(image, Segment(Detection("dog", (2, 1, 5, 3)), mask)))
    assert crop.shape == (2, 3, 3)
    grey, red = [153, 153, 153], [255, 0, 0]  # #999
    assert crop.tolist() == [[grey, red, grey], [red, red, grey]]


def test_every_candidate_is_a_dog_and_the_rules_judge_them(scorer):
    image = Image.new("RGB", (80, 64), (200, 30, 30))
    segments = scorer.segments(image)
    assert segments and all(s.mask.shape == (64, 80) for s in segments)
    dogs = [s.detection for s in segments if s.detection.score > 0.3]
    assert dogs and {d.cls for d in dogs} == {"dog"} and all(0.5 <= d.score <= 1 for d in dogs)
    assert [d.score for d in dogs] == sorted((d.score for d in dogs), reverse=True)
    for d, s in zip(dogs, segments, strict=False):  # the box is the mask's bounding box
        ys, xs = np.nonzero(s.mask)
        assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert "computer mouse" in scorer.classes and "mouse" not in scorer.classes  # GenEval's object names
    assert scorer.score(image, parse_spec(DOG))[0].correct
    verdict, details = scorer.score(image, parse_spec(CAT))
    assert not verdict.correct and verdict.reason == "expected cat>=1, found 0" and set(details) == {"dog"}
    assert not scorer.score(image, parse_spec(DOG_CAT))[0].correct
    verdict, _ = scorer.score(image, parse_spec(RED_DOG))  # CLIP is random: a colour is chosen, whichever
    assert verdict.correct or "expected red dog>=1, found 0 red" in verdict.reason


def test_geneval_command_scores_the_layout(models, tmp_path):
    metadata = tmp_path / "meta.jsonl"
    metadata.write_text("".join(json.dumps(r) + "\n" for r in (DOG, CAT, DOG_CAT)))
    images = _layout(tmp_path / "images", [DOG, CAT, DOG_CAT])
    result = _harmon("geneval", str(images), "--metadata", str(metadata), "--out", str(tmp_path / "scores"),
                     "--detector", str(models[0]), "--clip", str(models[1]), "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "scores" / "scores.json").read_text())
    # dog right, cat wrong (single_object 2 of 4 images), dog + cat wrong (two_object 0 of 2): overall (0.5 + 0) / 2
    assert scores["per_category"] == {"single_object": 0.5, "two_object": 0.0} and scores["overall"] == 0.25
    rows = [json.loads(line) for line in (tmp_path / "scores" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"} <= set(rows[0])
    assert [r["correct"] for r in rows] == [True, True, False, False, False, False]
    report = (tmp_path / "scores" / "report.md").read_text()
    assert "Harmon-0.5B (paper, Table 4) | 0.99 | 0.80 | 0.57 | 0.87 | 0.55 | 0.48 | 0.71" in report


def test_images_missing_a_prompt_and_bad_metadata_are_one_line_errors(tmp_path):
    metadata = tmp_path / "meta.jsonl"
    metadata.write_text("".join(json.dumps(r) + "\n" for r in (DOG, CAT)))
    images = _layout(tmp_path / "images", [DOG])
    result = _harmon("geneval", str(images), "--metadata", str(metadata), "--device", "cpu")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: images folder") and "00001 'a photo of a cat'" in result.stderr
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"prompt": "a dog", "objects": ["dog"]}) + "\n")
    result = _harmon("geneval", str(images), "--metadata", str(wrong), "--device", "cpu")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{wrong} line 1 lacks tag, include" in result.stderr


def test_an_uncached_hub_detector_offline_names_the_fetch_command(models):
    from harmon.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="huggingface-cli download facebook/mask2former-swin-small-coco-instance"):
        GenEvalScorer(clip=str(models[1]))
    with pytest.raises(CheckpointError, match="huggingface-cli download openai/clip-vit-large-patch14"):
        GenEvalScorer(detector=str(models[0]))


def test_figure6_hook_scores_geneval_prompts_with_the_detector(models, tmp_path):
    from experiments.ablations.config import GenerationEval
    from experiments.ablations.geneval_scoring import DetectorGenerationScorer
    from experiments.evaluation.settings import DetectorGenEval
    from harmon.tiny import tiny_harmon

    metadata = tmp_path / "meta.jsonl"
    metadata.write_text("".join(json.dumps(r) + "\n" for r in (DOG, CAT)))
    config = GenerationEval(steps=2, batch_size=4, geneval=DetectorGenEval(str(metadata), 2, str(models[0]),
                                                                             str(models[1])))
    hook = DetectorGenerationScorer(config, image_size=64, last=5, samples=tmp_path / "samples")
    row = hook(tiny_harmon(), 5)
    # every image holds "dogs" for this detector: the dog prompt's two images are right, the cat prompt's wrong
    assert row["gen_correct"] == [1, 1, 0, 0] and row["generation"] == 0.5 and row["gen_single_object"] == 0.5
    kept = tmp_path / "samples" / "iter_00000005"
    assert json.loads((kept / "00001" / "metadata.jsonl").read_text()) == CAT
    assert sorted(p.name for p in (kept / "00001" / "samples").iterdir()) == ["00000.png", "00001.png"]
    with pytest.raises(Exception, match="generation.geneval.metadata .* does not exist"):
        DetectorGenerationScorer(GenerationEval(geneval=DetectorGenEval(str(tmp_path / "none.jsonl"))), 64, 5)
