"""Readers for the data sources a TrainConfig names, grouped by task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harmon.train.config import SourceConfig
from harmon.train.data import (
    ConversationReader,
    ShapesWorldCaptions,
    ShapesWorldQuestions,
    Text2ImageReader,
    TextReader,
)


def build_source(source: SourceConfig) -> Any:
    """One reader; paths are checked here (FileNotFoundError names the missing path)."""
    if source.format == "shapesworld":
        if source.task == "t2i":
            return ShapesWorldCaptions(source.shapesworld, seed=source.seed, length=source.length)
        kinds = tuple(source.question_kinds) if source.question_kinds else None
        return ShapesWorldQuestions(source.shapesworld, seed=source.seed, length=source.length, kinds=kinds)
    if source.format == "t2i-json":
        return Text2ImageReader(source.path, image_root=source.image_root, caption_key=source.caption_key,
                                caption_root=source.caption_root)
    if source.format == "conversations":
        return ConversationReader(source.path, image_root=source.image_root, require_image=source.task == "i2t")
    return TextReader(source.path)


def build_sources(sources: Sequence[SourceConfig]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for source in sources:
        grouped.setdefault(source.task, []).append(build_source(source))
    return grouped
