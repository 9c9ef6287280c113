"""Transformers models and processors by hub id or local folder, with the project's offline behaviour: the Hugging
Face cache, `HF_HUB_OFFLINE=1` (or an unreachable hub) failing at once with one line naming what to fetch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harmon.checkpoints import CheckpointError, hub_local_only, hub_missing


def _source(source: str) -> tuple[str, bool]:
    local = Path(source).expanduser()
    return (str(local), False) if local.is_dir() else (source, hub_local_only())


def load_pretrained(cls: Any, source: str, what: str) -> Any:
    """`cls.from_pretrained(source)` in eval mode, refusing missing or unexpected weights (`what` names the role,
    e.g. "GenEval detector")."""
    path, local_only = _source(source)
    try:
        model, info = cls.from_pretrained(path, local_files_only=local_only, output_loading_info=True)
    except OSError as err:
        if not local_only and Path(source).expanduser().is_dir():
            raise CheckpointError(f"{what}: {source} is not a transformers {cls.__name__} folder "
                                  f"({str(err).splitlines()[0]})") from err
        raise CheckpointError(f"{what}: {hub_missing(source)}") from err
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise CheckpointError(f"{what}: {source} does not match {cls.__name__}: {problems}")
    return model.eval().requires_grad_(False)


def load_processor(cls: Any, source: str, what: str) -> Any:
    """`cls.from_pretrained(source)` for a processor / tokenizer, with the same offline behaviour."""
    path, local_only = _source(source)
    try:
        return cls.from_pretrained(path, local_files_only=local_only)
    except OSError as err:
        raise CheckpointError(f"{what}: {hub_missing(source)} (its processor files)") from err
