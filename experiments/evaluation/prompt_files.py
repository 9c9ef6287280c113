"""Prompt files for batch generation: GenEval metadata JSONL (images in GenEval's layout), or captions for FID (a
flat folder): a plain text list (one caption per line), MJHQ-30K's `meta_data.json` ({id: {"prompt": ...}}) or a
COCO captions JSON ({"annotations": [{"image_id", "caption"}]}, the first caption of each image, by image id)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harmon.geneval_rules import GenEvalSpec, MetadataError, parse_spec


@dataclass(frozen=True)
class PromptFile:
    """What a prompt file holds: GenEval records (`specs`) or captions; `layout` is "geneval" or "flat"."""

    layout: str
    texts: tuple[str, ...]
    specs: tuple[GenEvalSpec, ...] = ()


def _json_lines(path: Path) -> list[object] | None:
    """Every line of `path` as JSON, or None when the first non-empty line is not a JSON object."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if not records:
                return None
            raise MetadataError(f"{path} line {number} is not JSON ({err.msg}); a GenEval metadata file has one "
                                "JSON object per line") from err
        if not isinstance(records[0], dict):
            return None
    return records


def read_prompt_file(path: str | Path) -> PromptFile:
    """Detect the format of a prompt file and read it; MetadataError naming the file when it fits none."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"prompt file {path} does not exist; pass GenEval's evaluation_metadata.jsonl, a caption "
                            "list (.txt), MJHQ's meta_data.json or a COCO captions JSON")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise MetadataError(f"{path} is not JSON ({err.msg})") from err
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            first: dict[int, str] = {}
            for row in data["annotations"]:
                if isinstance(row, dict) and "image_id" in row and "caption" in row:
                    first.setdefault(row["image_id"], str(row["caption"]).strip())
            texts = tuple(first[k] for k in sorted(first))
        elif isinstance(data, dict) and data and all(isinstance(v, dict) and "prompt" in v for v in data.values()):
            texts = tuple(str(data[k]["prompt"]) for k in sorted(data))
        else:
            raise MetadataError(f"{path} is neither MJHQ's meta_data.json ({{id: {{'prompt': ...}}}}) nor a COCO "
                                "captions file ({'annotations': [{'image_id', 'caption'}]})")
        if not texts:
            raise MetadataError(f"{path} holds no captions")
        return PromptFile("flat", texts)
    records = _json_lines(path) if path.suffix == ".jsonl" else None
    if records is not None:
        specs = tuple(parse_spec(r, f"{path} line {i + 1}") for i, r in enumerate(records))
        if not specs:
            raise MetadataError(f"{path} holds no metadata records")
        return PromptFile("geneval", tuple(s.prompt for s in specs), specs)
    if path.suffix == ".jsonl":
        raise MetadataError(f"{path} is not GenEval metadata (one JSON object per line with tag, include, prompt)")
    texts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not texts:
        raise MetadataError(f"{path} holds no captions (one per line)")
    return PromptFile("flat", texts)
