"""Map-style readers of training rows: text-to-image pairs, LLaVA-style conversations, plain text, ShapesWorld.

A reader validates the rows' structure once, when its index is built: a malformed row is left out and counted in
`skipped` (reason -> count). Problems found only when a row is loaded (a missing or corrupt image, a missing
annotation file) raise `BadRow`, which the stream counts and replaces with another row.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from harmon.prompts import IMAGE_TOKEN, to_rgb
from harmon.shapesworld import ShapesWorld, ShapesWorldConfig, describe_scene, questions_for_scene
from harmon.shapesworld.questions import QUESTION_KINDS
from harmon.shapesworld.vocab import require_known

DATA_FORMS = "a .json list, a .jsonl file or a folder of *.json files"
Turns = list[tuple[str, str]]


class BadRow(Exception):
    """A row that cannot be used; `reason` is its key in the `skipped` counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Reader(Protocol):
    """What the stream needs of a reader."""

    skipped: Counter[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> dict[str, Any]: ...


def read_rows(path: str | Path) -> tuple[list[Any], Counter[str], Path]:
    """The rows of a data file or folder, the count of bad JSONL lines, and the folder relative paths start at."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist; expected {DATA_FORMS}")
    skipped: Counter[str] = Counter()
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"data folder {path} holds no *.json files; expected {DATA_FORMS}")
        return [row for file in files for row in _json_list(file)], skipped, path
    if path.suffix == ".jsonl":
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    skipped["malformed line"] += 1
        return rows, skipped, path.parent
    return _json_list(path), skipped, path.parent


def _json_list(file: Path) -> list[Any]:
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); expected {DATA_FORMS}") from err
    if not isinstance(rows, list):
        raise ValueError(f"{file} holds a JSON {type(rows).__name__}, not a list of rows; expected {DATA_FORMS}")
    return rows


def build_index(rows: list[Any], parse: Callable[[dict[str, Any]], Any], skipped: Counter[str]) -> list[Any]:
    """`parse` of every row; rows that are not objects or whose parse raises BadRow are counted and left out."""
    index = []
    for row in rows:
        try:
            if not isinstance(row, dict):
                raise BadRow("missing fields")
            index.append(parse(row))
        except BadRow as bad:
            skipped[bad.reason] += 1
    return index


def open_image(path: Path) -> Image.Image:
    """The image at `path` decoded to RGB; BadRow when it is missing or cannot be decoded."""
    if not path.is_file():
        raise BadRow("missing image file", str(path))
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise BadRow("corrupt image", f"{path}: {err}") from err


def _text(row: dict[str, Any], key: str, empty: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise BadRow("missing fields")
    if not value.strip():
        raise BadRow(empty)
    return value.strip()


def parse_turns(conversations: Any) -> Turns:
    """(user, assistant) pairs of an alternating human/gpt list; `<image>` and the space around it removed."""
    if not isinstance(conversations, list) or not conversations or len(conversations) % 2:
        raise BadRow("bad conversation")
    turns = []
    for user, assistant in zip(conversations[::2], conversations[1::2], strict=True):
        if not (isinstance(user, dict) and isinstance(assistant, dict)):
            raise BadRow("bad conversation")
        if user.get("from") != "human" or assistant.get("from") != "gpt":
            raise BadRow("bad conversation")
        question = user.get("value")
        if not isinstance(question, str):
            raise BadRow("missing fields")
        question = re.sub(rf"\s*{re.escape(IMAGE_TOKEN)}\s*", " ", question).strip()
        turns.append((question, _text(assistant, "value", "empty answer")))
    return turns


class Text2ImageReader:
    """Image-caption pairs: rows {"image", <caption_key>} or the official {"image", "annotation"} layout.

    Relative paths start at `image_root` (default: the data file's folder); annotation files at `caption_root`
    (default: the image root) hold a JSON object with the caption at `caption_key`.
    """

    def __init__(self, path: str | Path, image_root: str | Path | None = None, caption_key: str = "caption",
                 caption_root: str | Path | None = None):
        rows, self.skipped, base = read_rows(path)
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else base
        self.caption_root = Path(caption_root) if caption_root is not None else self.image_root
        self.caption_key = caption_key
        self.rows = build_index(rows, self._parse, self.skipped)

    def _parse(self, row: dict[str, Any]) -> tuple[str, str | None, str | None]:
        image = row.get("image")
        if not isinstance(image, str) or not image:
            raise BadRow("missing fields")
        if isinstance(row.get("annotation"), str) and self.caption_key not in row:
            return image, None, row["annotation"]
        return image, _text(row, self.caption_key, "empty caption"), None

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Text2ImageReader({str(self.path)!r})"

    def load(self, index: int) -> dict[str, Any]:
        image, caption, annotation = self.rows[index]
        if caption is None:
            caption = self._annotation_caption(self.caption_root / annotation)
        return {"image": open_image(self.image_root / image), "caption": caption}

    def _annotation_caption(self, file: Path) -> str:
        if not file.is_file():
            raise BadRow("missing annotation file", str(file))
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadRow("corrupt annotation", f"{file}: {err}") from err
        if not isinstance(record, dict):
            raise BadRow("corrupt annotation", str(file))
        return _text(record, self.caption_key, "empty caption")


class ConversationReader:
    """LLaVA-style rows {"image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}.

    With `require_image` rows without an image are skipped (counted as "no image"); otherwise they load with
    image None. Relative image paths start at `image_root` (default: the data file's folder).
    """

    def __init__(self, path: str | Path, image_root: str | Path | None = None, require_image: bool = True):
        rows, self.skipped, base = read_rows(path)
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else base
        self.require_image = require_image
        self.rows = build_index(rows, self._parse, self.skipped)

    def _parse(self, row: dict[str, Any]) -> tuple[str | None, Turns]:
        image = row.get("image")
        if image is None and self.require_image:
            raise BadRow("no image")
        if image is not None and (not isinstance(image, str) or not image):
            raise BadRow("missing fields")
        return image, parse_turns(row.get("conversations"))

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ConversationReader({str(self.path)!r})"

    def load(self, index: int) -> dict[str, Any]:
        image, turns = self.rows[index]
        return {"image": None if image is None else open_image(self.image_root / image), "turns": list(turns)}


class TextReader:
    """Text-only rows: {"text"} (loss on every token) or {"conversations"} without an image (loss on answers)."""

    def __init__(self, path: str | Path):
        rows, self.skipped, _ = read_rows(path)
        self.path = Path(path)
        self.rows = build_index(rows, self._parse, self.skipped)

    @staticmethod
    def _parse(row: dict[str, Any]) -> dict[str, Any]:
        if row.get("image") is not None:
            raise BadRow("image in text data")
        if "conversations" in row:
            return {"turns": parse_turns(row["conversations"])}
        return {"text": _text(row, "text", "empty text")}

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"TextReader({str(self.path)!r})"

    def load(self, index: int) -> dict[str, Any]:
        return dict(self.rows[index])


class ShapesWorldCaptions:
    """Text-to-image pairs rendered on the fly: scene i of (seed, i) with a true GenEval-style caption."""

    def __init__(self, config: ShapesWorldConfig | None, seed: int, length: int):
        self.world = ShapesWorld(config, seed, length)
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.world)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.world.seed}, length={self.world.length})"

    def load(self, index: int) -> dict[str, Any]:
        item = self.world[index]
        caption = describe_scene(item.scene, self.world.rng(index, "caption")).text
        return {"image": to_rgb(item.image), "caption": caption}


class ShapesWorldQuestions(ShapesWorldCaptions):
    """Image-question-answer triples: one question of `kinds` (default all) drawn for scene i of (seed, i).

    A scene with no question of the requested kinds raises BadRow("no question of the kinds").
    """

    def __init__(self, config: ShapesWorldConfig | None, seed: int, length: int,
                 kinds: tuple[str, ...] | None = None):
        super().__init__(config, seed, length)
        if kinds is not None:
            require_known("question kind", kinds, QUESTION_KINDS)
        self.kinds = tuple(kinds) if kinds is not None else QUESTION_KINDS

    def load(self, index: int) -> dict[str, Any]:
        item = self.world[index]
        rng: np.random.Generator = self.world.rng(index, "questions")
        pairs = [q for q in questions_for_scene(item.scene, rng, self.world.config) if q.kind in self.kinds]
        if not pairs:
            raise BadRow("no question of the kinds", f"scene {index} has none of {self.kinds}")
        pair = pairs[int(rng.integers(len(pairs)))]
        return {"image": to_rgb(item.image), "turns": [(pair.question, pair.answer)]}
