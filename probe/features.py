"""Feature extraction: pooled features (and optionally patch tokens) of a dataset, encoded once into a cache;
several layers of an encoder from one pass, one cache per layer; optionally with seeded token masks (MAR).

The cache (`probe.feature_cache`) is resumable: a killed extraction only encodes the rows still missing.
Several processes launched with `torchrun`/`accelerate launch` each extract their share of the missing rows
into the same files; rank 0 then checks that every row was filled.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from encoders.base import Encoder, Preprocess
from encoders.masking import check_mask_ratio, token_masks
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


@dataclass(frozen=True)
class _Target:
    """One cache of a pass: its resolved plan (one layer), key and folder."""

    plan: CachePlan
    key: dict[str, Any]
    directory: Path

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"


def _encode(encoder: Encoder, pixels: torch.Tensor, plans: Sequence[CachePlan],
            mask: torch.Tensor | None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Pooled features (float32) and, when the plans store them, tokens (float16) of every plan's layer, from one
    pass under the plans' autocast."""
    plan = plans[0]
    dtype = DTYPES[plan.dtype]
    with torch.inference_mode(), torch.autocast(pixels.device.type, dtype=dtype, enabled=dtype != torch.float32):
        outs = encoder.layer_features(pixels, [p.layer for p in plans], plan.pooling, mask)
    return [(out.pooled.float().cpu().numpy(), out.tokens.to(torch.float16).cpu().numpy() if plan.tokens else None)
            for out in outs]


def _masks(encoder: Encoder, pixels: torch.Tensor, plan: CachePlan, rows: np.ndarray) -> torch.Tensor | None:
    """The plan's token masks of dataset rows `rows` (seeded by their index in the full dataset), or None."""
    if not plan.mask_ratio:
        return None
    ids = rows if plan.subset is None else np.asarray(plan.subset)[rows]
    h, w = encoder.grid_for(*pixels.shape[-2:])
    return token_masks(ids.tolist(), h * w, plan.mask_ratio, plan.mask_seed)


def _create(targets: Sequence[_Target], encoder: Encoder, data: LabelledImages, device: torch.device) -> None:
    """Create the caches that do not exist yet, with array shapes taken from one encoded image."""
    missing = [t for t in targets if not t.manifest_path.exists()]
    if not missing:
        return
    image, _ = data[0]
    pixels = encoder.preprocess(image)[None].to(device)
    shapes = _encode(encoder, pixels, [t.plan for t in missing], _masks(encoder, pixels, missing[0].plan,
                                                                        np.zeros(1, dtype=np.int64)))
    n = len(data)
    for target, (pooled, patch) in zip(missing, shapes, strict=True):
        arrays = {"features": ((n, pooled.shape[1]), "float32")}
        if target.plan.tokens:
            arrays["tokens"] = ((n, *patch.shape[1:]), "float16")
        with creation_lock(target.directory):
            if not target.manifest_path.exists():  # another run may have created it meanwhile
                create_cache(target.directory, target.key, arrays, data)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled)


def extract_features(encoder: Encoder, dataset: LabelledImages, plan: CachePlan,
                     options: ExtractOptions = ExtractOptions()) -> FeatureCache:
    """Extract (or reuse, or finish) the cached features of `dataset` that `plan` names.

    The encoder is moved to the device and put in eval mode.
    """
    return extract_layer_features(encoder, dataset, plan, [plan.layer], options)[0]


def extract_layer_features(encoder: Encoder, dataset: LabelledImages, plan: CachePlan,
                           layers: Sequence[int | None], options: ExtractOptions = ExtractOptions()) -> list[FeatureCache]:
    """The caches of `layers`, in order: each is the cache that `replace(plan, layer=layer)` names (so
    `extract_features` reuses it), and one pass over the images fills every one that is not complete."""
    pooling = plan.pooling or encoder.default_pooling
    if pooling not in encoder.poolings:
        raise ValueError(f"pooling {pooling!r} is not available for {encoder.name!r}; choose one of {encoder.poolings}")
    if plan.mask_ratio:
        check_mask_ratio(plan.mask_ratio)
        encoder.require_token_masks()
    plan = replace(plan, pooling=pooling, dtype=dtype_name(plan.dtype), mask_ratio=plan.mask_ratio or None)
    data = SubsetDataset(dataset, plan.subset) if plan.subset is not None else dataset
    if len(data) == 0:
        raise ValueError(f"the {plan.split} dataset is empty; nothing to extract")
    dev = resolve_device(options.device)
    ranks = _Ranks(cpu=dev.type == "cpu")
    encoder = encoder.to(dev).eval()
    shared = cache_key(encoder, data, plan)  # the weights digest and dataset identity, computed once
    targets = []
    for layer in dict.fromkeys(layers):
        key = {**shared, "layer": layer}
        targets.append(_Target(replace(plan, layer=layer), key, cache_path(plan.cache_root, key)))

    error = None
    if ranks.rank == 0 and not all(t.manifest_path.exists() for t in targets):
        try:
            _create(targets, encoder, data, dev)
        except Exception as caught:  # every rank must learn that rank 0 failed, then rank 0 re-raises
            error = caught
    message = ranks.from_main(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 could not create the feature cache: {message}")
    manifests = [json.loads(t.manifest_path.read_text()) for t in targets]
    for target, manifest in zip(targets, manifests, strict=True):
        if manifest["key_hash"] != key_hash(target.key):
            raise RuntimeError(f"{target.manifest_path} belongs to another key (hash collision or edited file); "
                               f"delete {target.directory}")

    start = time.perf_counter()
    dones = [load_done(t.directory, m["num_samples"]) for t, m in zip(targets, manifests, strict=True)]
    reused = [int(done.sum()) for done in dones]
    missing = [~done for done in dones]
    pending = [i for i, done in enumerate(dones) if not done.all()]
    todo = np.logical_or.reduce([missing[i] for i in pending]) if pending else np.zeros(len(data), dtype=bool)
    mine = np.array_split(np.flatnonzero(todo), ranks.world)[ranks.rank]
    shown = replace(options, progress=options.progress and ranks.rank == 0)
    _extract_rows(encoder, data, [targets[i] for i in pending], mine, [dones[i] for i in pending], shown, dev)
    ranks.barrier()
    failures = [finish_cache(t.directory, m) for t, m in zip(targets, manifests, strict=True)] if ranks.rank == 0 else []
    failure = ranks.from_main(next((f for f in failures if f is not None), None))
    if failure is not None:
        raise RuntimeError(failure)
    seconds = time.perf_counter() - start
    caches = {}
    for target, was_missing, count in zip(targets, missing, reused, strict=True):
        computed = int(was_missing[mine].sum())
        stats = {"computed": computed, "reused": count, "seconds": seconds, "rank": ranks.rank, "world": ranks.world,
                 "device": str(dev), "images_per_second": computed / seconds if seconds > 0 and computed else None}
        caches[target.plan.layer] = FeatureCache(target.directory, json.loads(target.manifest_path.read_text()), stats)
    return [caches[layer] for layer in layers]


def _extract_rows(encoder: Encoder, data: LabelledImages, targets: Sequence[_Target], rows: np.ndarray,
                  dones: Sequence[np.ndarray], options: ExtractOptions, device: torch.device) -> None:
    """Encode `rows` of `data` once for every target, writing each target's missing rows (features, tokens) by
    index and marking them in its done array."""
    if len(rows) == 0:
        return
    from torch.utils.data import DataLoader

    labels = np.load(targets[0].directory / "labels.npy")
    size = options.batch_size
    batches = [rows[i : i + size].tolist() for i in range(0, len(rows), size)]
    loader = DataLoader(_Indexed(data), batch_sampler=batches, num_workers=options.num_workers,
                        collate_fn=_Collate(encoder.preprocess), pin_memory=device.type == "cuda")
    stores = [("features.npy", "tokens.npy") if t.plan.tokens else ("features.npy",) for t in targets]
    arrays = [[t.directory / name for name in names] for t, names in zip(targets, stores, strict=True)]
    done_name = f"done-{socket.gethostname()}-{os.getpid()}.npy"

    def checkpoint() -> None:
        fsync_files([path for paths in arrays for path in paths])
        for target, done in zip(targets, dones, strict=True):
            save_npy(target.directory / done_name, done)

    plans = [t.plan for t in targets]
    with _progress(options.progress) as bar:
        layers = ", ".join("final" if p.layer is None else str(p.layer) for p in plans)
        task = bar.add_task(f"extracting {encoder.name} {plans[0].split} (layers {layers})", total=len(rows))
        try:
            for step, (indices, pixels, batch_labels) in enumerate(loader, start=1):
                idx = indices.numpy()
                if not np.array_equal(batch_labels.numpy(), labels[idx]):
                    raise RuntimeError(f"the dataset's labels differ from those cached in {targets[0].directory}; "
                                       "the dataset changed under the same identity: delete that folder")
                pixels = pixels.to(device, non_blocking=True)
                outs = _encode(encoder, pixels, plans, _masks(encoder, pixels, plans[0], idx))
                for paths, done, (pooled, patch) in zip(arrays, dones, outs, strict=True):
                    new = ~done[idx]
                    write_rows(paths[0], idx[new], pooled[new])
                    if len(paths) > 1:
                        write_rows(paths[1], idx[new], patch[new])
                    done[idx] = True
                if step % options.checkpoint_every == 0:
                    checkpoint()
                bar.update(task, advance=len(idx))
        finally:  # also on errors and Ctrl-C: keep what was finished
            checkpoint()
