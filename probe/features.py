"""Feature extraction: pooled features (and optionally patch tokens) of a dataset, encoded once into a cache.

The cache (`probe.feature_cache`) is resumable: a killed extraction only encodes the rows still missing.
Several processes launched with `torchrun`/`accelerate launch` each extract their share of the missing rows
into the same files; rank 0 then checks that every row was filled.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from encoders.base import Encoder, Preprocess
from harmon.utils.runtime import DTYPES, default_workers, dtype_name, rank, resolve_device, world_size
from probe.datasets import LabelledImages, SubsetDataset
from probe.feature_cache import (
    CachePlan,
    FeatureCache,
    cache_key,
    cache_path,
    create_cache,
    creation_lock,
    finish_cache,
    fsync_files,
    key_hash,
    load_done,
    save_npy,
    write_rows,
)


@dataclass(frozen=True)
class ExtractOptions:
    """How to extract (nothing here changes the features).

    device: None for CUDA when present (the rank's GPU under torchrun/accelerate), else CPU.
    checkpoint_every: batches between saves of the done array (the most work a kill can lose).
    """

    batch_size: int = 64
    num_workers: int = field(default_factory=default_workers)  # up to 4, at most the CPU cores
    device: str | torch.device | None = None
    checkpoint_every: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.checkpoint_every < 1 or self.num_workers < 0:
            raise ValueError(f"batch_size ({self.batch_size}) and checkpoint_every ({self.checkpoint_every}) must "
                             f"be >= 1 and num_workers ({self.num_workers}) >= 0")


class _Ranks:
    """This process's place among the extraction processes (one unless launched with torchrun/accelerate)."""

    def __init__(self, cpu: bool) -> None:
        self.state = None
        self.rank, self.world = rank(), world_size()
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=cpu)

    def barrier(self) -> None:
        if self.state:
            self.state.wait_for_everyone()

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if not self.state:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


class _Indexed:
    """(index, PIL image, label) items of a dataset, for the DataLoader."""

    def __init__(self, dataset: LabelledImages) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Image.Image, int]:
        image, label = self.dataset[index]
        return index, image, label


@dataclass(frozen=True)
class _Collate:
    """Preprocess PIL images (in the loader workers) and stack them."""

    preprocess: Preprocess

    def __call__(self, items: list[tuple[int, Image.Image, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices, images, labels = zip(*items, strict=True)
        return torch.tensor(indices), torch.stack([self.preprocess(im) for im in images]), torch.tensor(labels)


def _encode(encoder: Encoder, pixels: torch.Tensor, plan: CachePlan) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled features (float32) and, when the plan stores them, tokens (float16) under the plan's autocast."""
    dtype = DTYPES[plan.dtype]
    with torch.inference_mode(), torch.autocast(pixels.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = encoder(pixels, layer=plan.layer, pooling=plan.pooling)
    pooled = out.pooled.float().cpu().numpy()
    return pooled, (out.tokens.to(torch.float16).cpu().numpy() if plan.tokens else None)


def _create(directory: Path, key: dict, encoder: Encoder, data: LabelledImages, plan: CachePlan,
            device: torch.device) -> None:
    """Create the cache with array shapes taken from one encoded image."""
    image, _ = data[0]
    pooled, patch = _encode(encoder, encoder.preprocess(image)[None].to(device), plan)
    n = len(data)
    arrays = {"features": ((n, pooled.shape[1]), "float32")}
    if plan.tokens:
        arrays["tokens"] = ((n, *patch.shape[1:]), "float16")
    create_cache(directory, key, arrays, data)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled)


def extract_features(encoder: Encoder, dataset: LabelledImages, plan: CachePlan,
                     options: ExtractOptions = ExtractOptions()) -> FeatureCache:
    """Extract (or reuse, or finish) the cached features of `dataset` that `plan` names.

    The encoder is moved to the device and put in eval mode.
    """
    pooling = plan.pooling or encoder.default_pooling
    if pooling not in encoder.poolings:
        raise ValueError(f"pooling {pooling!r} is not available for {encoder.name!r}; choose one of {encoder.poolings}")
    plan = replace(plan, pooling=pooling, dtype=dtype_name(plan.dtype))
    data = SubsetDataset(dataset, plan.subset) if plan.subset is not None else dataset
    if len(data) == 0:
        raise ValueError(f"the {plan.split} dataset is empty; nothing to extract")
    dev = resolve_device(options.device)
    ranks = _Ranks(cpu=dev.type == "cpu")
    encoder = encoder.to(dev).eval()
    key = cache_key(encoder, data, plan)
    directory = cache_path(plan.cache_root, key)
    manifest_path = directory / "manifest.json"

    error = None
    if ranks.rank == 0 and not manifest_path.exists():
        try:
            with creation_lock(directory):
                if not manifest_path.exists():  # another run may have created it meanwhile
                    _create(directory, key, encoder, data, plan, dev)
        except Exception as caught:  # every rank must learn that rank 0 failed, then rank 0 re-raises
            error = caught
    message = ranks.from_main(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 could not create the feature cache: {message}")
    manifest = json.loads(manifest_path.read_text())
    if manifest["key_hash"] != key_hash(key):
        raise RuntimeError(f"{manifest_path} belongs to another key (hash collision or edited file); delete {directory}")

    start = time.perf_counter()
    done = load_done(directory, manifest["num_samples"])
    reused = int(done.sum())
    mine = np.array_split(np.flatnonzero(~done), ranks.world)[ranks.rank]
    shown = replace(options, progress=options.progress and ranks.rank == 0)
    computed = _extract_rows(encoder, data, directory, mine, done, plan, shown, dev)
    ranks.barrier()
    failure = finish_cache(directory, manifest) if ranks.rank == 0 else None
    failure = ranks.from_main(failure)
    if failure is not None:
        raise RuntimeError(failure)
    seconds = time.perf_counter() - start
    stats = {"computed": computed, "reused": reused, "seconds": seconds, "rank": ranks.rank, "world": ranks.world,
             "device": str(dev), "images_per_second": computed / seconds if seconds > 0 and computed else None}
    return FeatureCache(directory, json.loads(manifest_path.read_text()), stats)


def _extract_rows(encoder: Encoder, data: LabelledImages, directory: Path, rows: np.ndarray, done: np.ndarray,
                  plan: CachePlan, options: ExtractOptions, device: torch.device) -> int:
    """Encode `rows` of `data`, writing features (and tokens) by index; returns how many were computed."""
    if len(rows) == 0:
        return 0
    from torch.utils.data import DataLoader

    labels = np.load(directory / "labels.npy")
    size = options.batch_size
    batches = [rows[i : i + size].tolist() for i in range(0, len(rows), size)]
    loader = DataLoader(_Indexed(data), batch_sampler=batches, num_workers=options.num_workers,
                        collate_fn=_Collate(encoder.preprocess), pin_memory=device.type == "cuda")
    arrays = [directory / "features.npy", *([directory / "tokens.npy"] if plan.tokens else [])]
    done_path = directory / f"done-{socket.gethostname()}-{os.getpid()}.npy"

    def checkpoint() -> None:
        fsync_files(arrays)
        save_npy(done_path, done)

    computed = 0
    with _progress(options.progress) as bar:
        task = bar.add_task(f"extracting {encoder.name} {plan.split}", total=len(rows))
        try:
            for step, (indices, pixels, batch_labels) in enumerate(loader, start=1):
                idx = indices.numpy()
                if not np.array_equal(batch_labels.numpy(), labels[idx]):
                    raise RuntimeError(f"the dataset's labels differ from those cached in {directory}; the dataset "
                                       "changed under the same identity: delete that folder")
                pooled, patch = _encode(encoder, pixels.to(device, non_blocking=True), plan)
                write_rows(arrays[0], idx, pooled)
                if plan.tokens:
                    write_rows(arrays[1], idx, patch)
                done[idx] = True
                computed += len(idx)
                if step % options.checkpoint_every == 0:
                    checkpoint()
                bar.update(task, advance=len(idx))
        finally:  # also on errors and Ctrl-C: keep what was finished
            checkpoint()
    return computed
