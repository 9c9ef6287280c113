"""Readers and scorers of the public understanding benchmarks of Table 5: POPE, MME and GQA.

Items are dicts with at least `image` (a Path), `question` (what the model is asked) and `answer`. Scores follow
the benchmarks' own rules: POPE's yes/no metrics averaged over its splits, MME's acc + acc+ per category summed
into perception and cognition, GQA's exact match. Each `score` is on the paper's scale (POPE F1 x 100, MME sums,
GQA accuracy x 100).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from experiments.ablations.evaluate import evaluating, in_batches
from harmon.model import Harmon
from harmon.shapesworld.evaluate import normalize_answer, pope_scores

SHORT_ANSWER = "Answer the question using a single word or phrase."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
POPE_SPLITS = ("adversarial", "popular", "random")
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

POPE_LAYOUT = ("a POPE question file (JSON lines {\"question_id\", \"image\", \"text\", \"label\": \"yes\"/\"no\"}, "
               "e.g. coco_pope_adversarial.json) or a folder of such files, one per split; images: the folder "
               "holding each line's \"image\" (COCO val2014)")
MME_LAYOUT = ("the MME_Benchmark_release_version folder: one folder per category with questions_answers_YN/*.txt "
              "and images/ (or the .txt files beside the images), each .txt line 'question<TAB>answer'; or a folder "
              "of eval-tool files <category>.txt with lines 'image_name<TAB>question<TAB>answer' and images in "
              "images/<category>/ (or images/<category>/images/)")
GQA_LAYOUT = ("testdev_balanced_questions.json ({question_id: {\"imageId\", \"question\", \"answer\"}}) or the "
              "folder holding it; images: the folder with <imageId>.jpg")


def _require(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; expected {layout}")
    return path


def find_image(folder: Path, name: str, what: str, layout: str) -> Path:
    """`folder/name`, or that name (or its stem) with a common image suffix."""
    candidates = [folder / name] + [folder / (base + s) for base in (name, Path(name).stem) for s in IMAGE_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{what}: no image {name!r} in {folder}; expected {layout}")


def with_short_answer(question: str) -> str:
    """The question with LLaVA's short-answer instruction on a new line (unless it already ends with it)."""
    question = question.strip()
    return question if question.endswith(SHORT_ANSWER) else f"{question}\n{SHORT_ANSWER}"


# ------------------------------------------------------------------------------------------------------ POPE


def pope_split_name(path: Path) -> str:
    """The POPE split a question file holds, read from its name (its stem when no split is named)."""
    return next((split for split in POPE_SPLITS if split in path.stem), path.stem)


def load_pope(path: str | os.PathLike, images: str | os.PathLike) -> list[dict[str, Any]]:
    """POPE questions from one file or every *.json / *.jsonl file of a folder (a line's "category", as in LLaVA's
    merged file, overrides the split read from the file name)."""
    path, images = Path(path), Path(images)
    _require(path, "POPE questions", POPE_LAYOUT)
    _require(images, "POPE image folder", POPE_LAYOUT)
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"POPE: no *.json or *.jsonl files in {path}; expected {POPE_LAYOUT}")
    items = []
    for file in files:
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = {"question_id", "image", "text", "label"} - set(record)
            if missing or record["label"] not in ("yes", "no"):
                raise ValueError(f"{file}:{number}: a POPE line needs question_id, image, text and a yes/no label; "
                                 f"got {record}")
            items.append({"id": record["question_id"], "split": record.get("category", pope_split_name(file)),
                          "image": find_image(images, record["image"], "POPE", POPE_LAYOUT),
                          "question": with_short_answer(record["text"]), "answer": record["label"]})
    return items


def score_pope(items: Sequence[dict[str, Any]], predictions: Sequence[str]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and yes-ratio per split and their mean over splits; score = mean F1 x 100."""
    _check(items, predictions)
    by_split: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for item, prediction in zip(items, predictions, strict=True):
        by_split[item["split"]][0].append(prediction)
        by_split[item["split"]][1].append(item["answer"])
    splits = {split: asdict(pope_scores(p, a)) for split, (p, a) in by_split.items()}
    mean = {metric: float(np.mean([s[metric] for s in splits.values()])) for metric in next(iter(splits.values()))}
    return {**mean, "score": 100 * mean["f1"], "splits": splits, "count": len(items)}


# ------------------------------------------------------------------------------------------------------ MME


def mme_answer(prediction: str) -> str:
    """MME's reading of a reply: "yes"/"no" when it is exactly that, else the first of them in its first four
    characters, else "other" (always wrong)."""
    text = prediction.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def _mme_lines(file: Path, fields: int) -> list[list[str]]:
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split("\t")]
        if len(parts) < fields:
            raise ValueError(f"{file}:{number}: expected {fields} tab-separated fields; expected {MME_LAYOUT}")
        rows.append(parts[:fields])
    return rows


def load_mme(path: str | os.PathLike, images: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """MME questions from the release folder (images inside it; `images` unused) or from eval-tool txt files
    (`path` holds <category>.txt, `images` the per-category image folders)."""
    root = _require(Path(path), "MME folder", MME_LAYOUT)
    items = []
    tool_files = sorted(p for p in root.glob("*.txt") if p.stem in MME_PERCEPTION + MME_COGNITION)
    if tool_files:
        image_root = _require(Path(images) if images is not None else root, "MME image folder", MME_LAYOUT)
        for file in tool_files:
            folder = image_root / file.stem
            folder = folder / "images" if (folder / "images").is_dir() else folder
            for name, question, answer in _mme_lines(file, 3):
                items.append({"category": file.stem, "image_name": name, "question": question,
                              "answer": answer.lower(), "image": find_image(folder, name, "MME", MME_LAYOUT)})
        return items
    for category in MME_PERCEPTION + MME_COGNITION:
        folder = root / category
        if not folder.is_dir():
            continue
        questions = folder / "questions_answers_YN"
        texts, pictures = (questions, folder / "images") if questions.is_dir() else (folder, folder)
        for file in sorted(texts.glob("*.txt")):
            image = find_image(pictures, file.stem, "MME", MME_LAYOUT)
            for question, answer in _mme_lines(file, 2):
                items.append({"category": category, "image_name": image.name, "question": question,
                              "answer": answer.lower(), "image": image})
    if not items:
        raise FileNotFoundError(f"MME: no category folders or <category>.txt files in {root}; expected {MME_LAYOUT}")
    return items


def score_mme(items: Sequence[dict[str, Any]], predictions: Sequence[str]) -> dict[str, Any]:
    """Per category acc (questions right, %) + acc+ (images with every question right, %); perception and
    cognition are the sums over their categories present (the full sets: at most 2000 and 800)."""
    _check(items, predictions)
    per_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for item, prediction in zip(items, predictions, strict=True):
        per_image[item["category"]][item["image_name"]].append(mme_answer(prediction) == item["answer"])
    categories = {}
    for category, images in per_image.items():
        hits = [hit for image in images.values() for hit in image]
        acc, acc_plus = 100 * float(np.mean(hits)), 100 * float(np.mean([all(i) for i in images.values()]))
        categories[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "questions": len(hits)}
    perception = sum(categories[c]["score"] for c in MME_PERCEPTION if c in categories)
    cognition = sum(categories[c]["score"] for c in MME_COGNITION if c in categories)
    return {"perception": perception, "cognition": cognition, "score": perception, "categories": categories,
            "missing": [c for c in MME_PERCEPTION + MME_COGNITION if c not in categories], "count": len(items)}


# ------------------------------------------------------------------------------------------------------ GQA


def load_gqa(path: str | os.PathLike, images: str | os.PathLike) -> list[dict[str, Any]]:
    """GQA questions (testdev-balanced by default when `path` is a folder) with the short-answer instruction."""
    path, images = Path(path), Path(images)
    file = path / "testdev_balanced_questions.json" if path.is_dir() else path
    _require(file, "GQA questions", GQA_LAYOUT)
    _require(images, "GQA image folder", GQA_LAYOUT)
    questions = json.loads(file.read_text())
    return [{"id": qid, "image": find_image(images, f"{q['imageId']}.jpg", "GQA", GQA_LAYOUT),
             "question": with_short_answer(q["question"]), "answer": q["answer"]} for qid, q in questions.items()]


def score_gqa(items: Sequence[dict[str, Any]], predictions: Sequence[str]) -> dict[str, Any]:
    """Exact match after normalisation (case, punctuation, articles, number words); score = accuracy x 100."""
    _check(items, predictions)
    hits = [normalize_answer(p) == normalize_answer(item["answer"]) for item, p in zip(items, predictions, strict=True)]
    accuracy = float(np.mean(hits))
    return {"accuracy": accuracy, "score": 100 * accuracy, "count": len(items)}


# ------------------------------------------------------------------------------------------------------ running


BENCHMARKS: dict[str, tuple[Callable[..., list[dict[str, Any]]], Callable[..., dict[str, Any]], Callable]] = {
    "pope": (load_pope, score_pope, lambda item: item["id"]),
    "mme": (load_mme, score_mme, lambda item: (item["category"], item["image_name"])),
    "gqa": (load_gqa, score_gqa, lambda item: item["id"]),
}


def _check(items: Sequence[dict[str, Any]], predictions: Sequence[str]) -> None:
    if len(items) != len(predictions) or not items:
        raise ValueError(f"got {len(predictions)} predictions for {len(items)} items; pass equally long, "
                         "non-empty lists")


def subsample(items: Sequence[dict[str, Any]], limit: int, key: Callable[[dict[str, Any]], Any]
              ) -> list[dict[str, Any]]:
    """At most `limit` items from evenly spaced groups (items sharing `key`, e.g. an MME image's question pair,
    stay together), so every split and category keeps its share."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    ordered = list(groups.values())
    wanted = min(len(ordered), math.ceil(limit * len(ordered) / len(items)))
    picks = np.unique(np.linspace(0, len(ordered) - 1, wanted).round().astype(int))
    return [item for i in picks for item in ordered[i]][:limit]


def run_benchmark(model: Harmon, name: str, path: str | os.PathLike, images: str | os.PathLike | None = None,
                  limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 16,
                  image_size: int | None = None) -> dict[str, Any]:
    """Load benchmark `name` ("pope", "mme", "gqa"), answer greedily, score; `limit` keeps a spread subset."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}; keep at least one item (or None for all)")
    load, score, key = BENCHMARKS[name]
    items = load(path, images)
    if limit is not None:
        items = subsample(items, limit, key)

    def answer(rows: slice, _: int) -> list[str]:
        pictures = []
        for item in items[rows]:
            with Image.open(item["image"]) as image:
                pictures.append(image.convert("RGB"))
        return model.answer(pictures, [item["question"] for item in items[rows]], max_new_tokens=max_new_tokens,
                            image_size=image_size)

    with evaluating(model):
        predictions = in_batches(len(items), batch_size, answer)
    return {**score(items, predictions), "benchmark": name, "predictions": predictions}
