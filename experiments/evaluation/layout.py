"""The image layouts the scorers read and `harmon generate --prompts` writes.

GenEval (as its published generation scripts write it and its evaluator reads it): `<root>/<00000>/metadata.jsonl`
(the prompt's metadata record, one JSON line) and `<root>/<00000>/samples/<00000>.png`, one folder per prompt in
metadata order (five-digit folder and sample numbers; the evaluator accepts any `<digits>.png`). FID: one flat
folder of `<00000>.png`, one image per caption.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from harmon.geneval_rules import GenEvalSpec, parse_spec
from harmon.utils.files import PathError, atomic_path

SAMPLE_NAME = re.compile(r"\d+\.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def prompt_folder(root: Path, index: int) -> Path:
    return root / f"{index:05d}"


def sample_path(root: Path, index: int, sample: int) -> Path:
    return prompt_folder(root, index) / "samples" / f"{sample:05d}.png"


def flat_path(root: Path, index: int) -> Path:
    return root / f"{index:05d}.png"


def write_metadata(root: Path, index: int, spec: GenEvalSpec) -> None:
    """The prompt folder's `metadata.jsonl` (atomic; rewritten only when it differs)."""
    path = prompt_folder(root, index) / "metadata.jsonl"
    text = json.dumps(spec.to_dict()) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@dataclass(frozen=True)
class PromptImages:
    """One prompt folder: its index, metadata and sample images."""

    index: int
    spec: GenEvalSpec
    images: tuple[Path, ...]


def _folder_spec(folder: Path) -> GenEvalSpec:
    path = folder / "metadata.jsonl"
    if not path.is_file():
        raise PathError(f"{folder} has no metadata.jsonl; GenEval's layout is <root>/<00000>/metadata.jsonl + "
                        "samples/<00000>.png (write it with `harmon generate --prompts METADATA --out ROOT`)")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        record = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError as err:
        raise PathError(f"{path} is not JSON ({err.msg}); it must hold the prompt's GenEval metadata record") from err
    return parse_spec(record, str(path))


def read_geneval_images(root: Path, expected: list[GenEvalSpec]) -> list[PromptImages]:
    """The prompt folders under `root` for `expected` (the metadata file's records): every prompt must have its
    folder, holding the same record and at least one image, else one PathError naming the first missing one."""
    root = Path(root)
    if not root.is_dir():
        raise PathError(f"images folder {root} does not exist; pass the folder `harmon generate --prompts` wrote")
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        images = tuple(sorted(p for p in (folder / "samples").glob("*.png") if SAMPLE_NAME.fullmatch(p.name)))
        found[int(folder.name)] = PromptImages(int(folder.name), _folder_spec(folder), images)
    missing = [i for i in range(len(expected)) if i not in found or not found[i].images]
    if missing:
        first = missing[0]
        raise PathError(f"images folder {root} lacks the images of {len(missing)} of the {len(expected)} prompts "
                        f"(first: {first:05d} {expected[first].prompt!r}); generate them with `harmon generate "
                        f"--prompts METADATA --out {root}` (it skips the images already there)")
    for index, spec in enumerate(expected):
        if (found[index].spec.prompt, found[index].spec.tag) != (spec.prompt, spec.tag):
            raise PathError(f"{prompt_folder(root, index)}/metadata.jsonl is the prompt {found[index].spec.prompt!r}, "
                            f"not {spec.prompt!r} (line {index + 1} of the metadata); the folder was written for "
                            "another metadata file")
    return [found[i] for i in range(len(expected))]


def read_flat_images(root: Path, what: str) -> list[Path]:
    """Every image file directly in `root` (sorted); a PathError naming `what` when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise PathError(f"{what} {root} is not a folder of images")
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise PathError(f"{what} {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images
