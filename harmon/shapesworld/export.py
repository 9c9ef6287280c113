"""Export ShapesWorld items to an image-folder layout or to JSONL, with atomic file writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from harmon.shapesworld.captions import describe_scene
from harmon.shapesworld.dataset import ShapesWorld
from harmon.shapesworld.questions import questions_for_scene
from harmon.shapesworld.render import RenderedScene
from harmon.shapesworld.vocab import require_known
from harmon.utils.files import atomic_write

CLASS_ATTRIBUTES = ("shape", "color", "count")


def save_png(image: Image.Image, path: Path) -> None:
    """Save an image as PNG, atomically."""
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def class_label(item: RenderedScene, attribute: str) -> str:
    """The folder name for an item: the first object's shape or colour, or the number of objects."""
    require_known("class attribute", [attribute], CLASS_ATTRIBUTES)
    if attribute == "count":
        return str(len(item.scene.objects))
    return getattr(item.scene.objects[0], attribute)


def _indices(dataset: ShapesWorld, count: int | None) -> range:
    if count is None:
        if dataset.length is None:
            raise ValueError("the dataset is endless; pass count=... to say how many items to export")
        count = dataset.length
    return range(count)


def export_image_folder(
    dataset: ShapesWorld,
    root: str | Path,
    split: str = "train",
    class_attribute: str = "shape",
    count: int | None = None,
) -> list[Path]:
    """Write item i to `root/<split>/<class>/<i>.png`; returns the written paths."""
    require_known("class attribute", [class_attribute], CLASS_ATTRIBUTES)
    paths = []
    for index in _indices(dataset, count):
        item = dataset[index]
        path = Path(root) / split / class_label(item, class_attribute) / f"{index}.png"
        save_png(item.image, path)
        paths.append(path)
    return paths


def item_record(
    dataset: ShapesWorld, index: int, item: RenderedScene, image_path: str, negative_strategy: str = "random"
) -> dict[str, Any]:
    """The JSON record of item `index` (rendered as `item`): image path, caption, spec, objects, QA pairs, scene."""
    scene = item.scene
    caption = describe_scene(scene, dataset.rng(index, "caption"))
    questions = questions_for_scene(scene, dataset.rng(index, "questions"), dataset.config, negative_strategy)
    objects = [
        {
            "shape": o.shape,
            "color": o.color,
            "size": size,
            "center": list(o.center),
            "radius": o.radius,
            "box": list(box),
        }
        for o, size, box in zip(scene.objects, scene.size_names(), item.boxes, strict=True)
    ]
    return {
        "index": index,
        "image": image_path,
        "caption": caption.text,
        "category": caption.category,
        "spec": caption.spec.to_dict(),
        "objects": objects,
        "qa": [pair.to_dict() for pair in questions],
        "scene": scene.to_dict(),
    }


def export_jsonl(
    dataset: ShapesWorld,
    root: str | Path,
    split: str = "train",
    count: int | None = None,
    negative_strategy: str = "random",
) -> Path:
    """Write images to `root/<split>/<i>.png` and one record per line to `root/<split>.jsonl` (paths relative to root)."""
    root = Path(root)
    lines = []
    for index in _indices(dataset, count):
        item = dataset[index]
        relative = f"{split}/{index}.png"
        save_png(item.image, root / relative)
        lines.append(json.dumps(item_record(dataset, index, item, relative, negative_strategy)) + "\n")
    path = root / f"{split}.jsonl"
    atomic_write(path, "".join(lines))
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
