"""ShapesWorld evaluation of a Harmon: exact QA / POPE scores for understanding, GenEval-style scores for generation.

Scoring is split from inference (`score_answers`, `score_generations`) so it can be checked on known predictions.
Yes/no questions (existence, position) are read with `to_yes_no`, as POPE reads free-form replies; the other
kinds need an exact match after `normalize_answer`.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harmon.model import Harmon
from harmon.shapesworld import (
    CATEGORIES,
    NEGATIVE_STRATEGIES,
    Prompt,
    PromptSpec,
    ShapesWorld,
    ShapesWorldConfig,
    generate_prompts,
    prompt_text,
    questions_for_scene,
    render_scene,
)
from harmon.shapesworld.evaluate import (
    GenEvalResult,
    normalize_answer,
    pope_scores,
    score_image,
    summarize,
    to_yes_no,
)
from harmon.shapesworld.export import save_png
from harmon.shapesworld.questions import QUESTION_KINDS
from harmon.shapesworld.vocab import require_known

YES_NO_KINDS = ("existence", "position")
SCENES_PER_ITEM = 100  # how many scenes per asked item `qa_eval_set` may scan before giving up on a kind


def qa_eval_set(config: ShapesWorldConfig, seed: int, count: int, kinds: Sequence[str] | None = None,
                negatives: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`count` QA items split evenly over `kinds` (default: all), at most one per kind and scene.

    Scene i asks existence questions with the negative strategy negatives[i % len(negatives)] (its POPE split;
    default: all of NEGATIVE_STRATEGIES); yes/no kinds alternate "yes" and "no" answers so each kind is balanced.
    Items: image (PIL), question, answer, kind, negative_strategy (of a "no" existence answer), pope_split
    (existence only) and scene (its index).
    """
    kinds = tuple(kinds or QUESTION_KINDS)
    negatives = tuple(negatives or NEGATIVE_STRATEGIES)
    require_known("question kind", kinds, QUESTION_KINDS)
    require_known("negative strategy", negatives, NEGATIVE_STRATEGIES)
    if count < 1:
        raise ValueError(f"count={count}; ask for at least one item")
    quota = {kind: count // len(kinds) + (i < count % len(kinds)) for i, kind in enumerate(kinds)}
    world, taken, items = ShapesWorld(config, seed), Counter(), []
    for index in range(SCENES_PER_ITEM * count):
        if all(taken[kind] >= quota[kind] for kind in kinds):
            return items
        scene, split = world.scene(index), negatives[index % len(negatives)]
        rng = world.rng(index, "questions")
        pairs = questions_for_scene(scene, rng, config, split)
        image = None
        for kind in kinds:
            options = [p for p in pairs if p.kind == kind]
            if kind in YES_NO_KINDS:
                wanted = "yes" if taken[kind] % 2 == 0 else "no"
                options = [p for p in options if p.answer == wanted]
            if taken[kind] >= quota[kind] or not options:
                continue
            pair = options[int(rng.integers(len(options)))]
            if image is None:
                image = render_scene(scene).image
            items.append({"image": image, "question": pair.question, "answer": pair.answer, "kind": kind,
                          "negative_strategy": pair.negative_strategy,
                          "pope_split": split if kind == "existence" else None, "scene": index})
            taken[kind] += 1
    short = {kind: f"{taken[kind]}/{quota[kind]}" for kind in kinds if taken[kind] < quota[kind]}
    raise ValueError(f"found too few questions of some kinds in {SCENES_PER_ITEM * count} scenes: {short}; this "
                     "config cannot ask them (position needs max_objects >= 2), leave those kinds out")


def is_correct(prediction: str, answer: str) -> bool:
    """Yes/no answers compare `to_yes_no` readings; others compare normalised text exactly."""
    if answer in ("yes", "no"):
        return to_yes_no(prediction) == answer
    return normalize_answer(prediction) == normalize_answer(answer)


def score_answers(items: Sequence[dict[str, Any]], predictions: Sequence[str]) -> dict[str, Any]:
    """Accuracy overall and per kind, POPE scores of the existence items overall and per split, and `correct`:
    each item's 0/1 correctness (for paired comparisons on the same items)."""
    if len(items) != len(predictions) or not items:
        raise ValueError(f"got {len(predictions)} predictions for {len(items)} items; pass equally long, "
                         "non-empty lists")
    hits = [is_correct(p, item["answer"]) for item, p in zip(items, predictions, strict=True)]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for item, hit in zip(items, hits, strict=True):
        by_kind[item["kind"]].append(hit)
    existence = [(item, p) for item, p in zip(items, predictions, strict=True) if item["kind"] == "existence"]
    splits: dict[str, list[tuple[dict[str, Any], str]]] = defaultdict(list)
    for item, p in existence:
        if item.get("pope_split"):
            splits[item["pope_split"]].append((item, p))

    def pope(pairs: list[tuple[dict[str, Any], str]]) -> dict[str, float]:
        return asdict(pope_scores([p for _, p in pairs], [item["answer"] for item, _ in pairs]))

    return {
        "accuracy": float(np.mean(hits)), "count": len(items), "correct": [int(hit) for hit in hits],
        "per_kind": {kind: float(np.mean(v)) for kind, v in by_kind.items()},
        "counts": {kind: len(v) for kind, v in by_kind.items()},
        "pope": pope(existence) if existence else None,
        "pope_splits": {split: pope(pairs) for split, pairs in splits.items()},
    }


@contextmanager
def evaluating(model: Harmon) -> Iterator[Harmon]:
    """Eval mode for the block, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def in_batches(count: int, batch_size: int, run: Callable[[slice, int], list]) -> list:
    """The outputs of `run(rows, batch_number)` over consecutive batches of `count` rows, concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    out: list = []
    for number, start in enumerate(range(0, count, batch_size)):
        out += run(slice(start, start + batch_size), number)
    return out


def evaluate_understanding(model: Harmon, items: Sequence[dict[str, Any]], batch_size: int = 16,
                           image_size: int | None = None, max_new_tokens: int = 8) -> dict[str, Any]:
    """Greedy `model.answer` on every item, scored by `score_answers`; the replies are under "predictions"."""
    with evaluating(model):
        predictions = in_batches(len(items), batch_size, lambda rows, _: model.answer(
            [item["image"] for item in items[rows]], [item["question"] for item in items[rows]],
            max_new_tokens=max_new_tokens, image_size=image_size))
    return {**score_answers(items, predictions), "predictions": predictions}


def generation_prompts(per_category: int, seed: int, config: ShapesWorldConfig | None = None,
                       categories: Sequence[str] = CATEGORIES) -> list[Prompt]:
    """`per_category` GenEval-style prompts of each category, reproducible from `seed`."""
    return [p for category in categories for p in generate_prompts(category, per_category, seed, config)]


def safe_score(image: Image.Image, spec: PromptSpec) -> GenEvalResult:
    """`score_image`, with an image the detector cannot read (e.g. one filled by a palette colour, which leaves
    no background) scored as wrong."""
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            return score_image(image, spec)
    except ValueError as error:
        return GenEvalResult(spec.category, False, f"the detector could not read the image: {error}")


def score_generations(specs: Sequence[PromptSpec], images: Sequence[Image.Image]) -> dict[str, Any]:
    """Detect objects in each image and score it against its spec: GenEval's overall (mean over categories) and
    per-category accuracy, each image's verdict, and `correct`: each image's 0/1 score in prompt order."""
    if len(specs) != len(images) or not specs:
        raise ValueError(f"got {len(images)} images for {len(specs)} specs; pass equally long, non-empty lists")
    results = [safe_score(image, spec) for spec, image in zip(specs, images, strict=True)]
    summary = summarize(results)
    return {"overall": summary.overall, "per_category": summary.per_category, "count": len(results),
            "correct": [int(r.correct) for r in results],
            "results": [{"prompt": prompt_text(spec), "category": r.category, "correct": r.correct,
                         "reason": r.reason} for spec, r in zip(specs, results, strict=True)]}


def evaluate_generation(model: Harmon, prompts: Sequence[Prompt | PromptSpec], steps: int = 16, cfg: float = 3.0,
                        seed: int = 0, image_size: int | None = None, batch_size: int = 8,
                        temperature: float = 1.0, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Generate one image per prompt (batch b seeded with `seed + b`) and score it with `score_generations`.

    With `out_dir`, images go to `<index>-<category>.png` beside `scores.jsonl` (one verdict per image).
    """
    specs = [p.spec if isinstance(p, Prompt) else p for p in prompts]
    texts = [prompt_text(spec) for spec in specs]
    with evaluating(model):
        images = in_batches(len(texts), batch_size, lambda rows, number: model.generate(
            texts[rows], steps=steps, cfg=cfg, temperature=temperature, seed=seed + number, image_size=image_size))
    scores = score_generations(specs, images)
    if out_dir is not None:
        folder = Path(out_dir)
        for index, (image, spec) in enumerate(zip(images, specs, strict=True)):
            save_png(image, folder / f"{index:04d}-{spec.category}.png")
        lines = [json.dumps({"index": i, **r, "spec": spec.to_dict()})
                 for i, (r, spec) in enumerate(zip(scores["results"], specs, strict=True))]
        (folder / "scores.jsonl").write_text("\n".join(lines) + "\n")
    return scores
