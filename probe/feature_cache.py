"""Feature cache: what names a cache, its folder and arrays, the done-masks of resumable extraction.

A cache lives in `cache_root/<encoder>-<split>-<hash>/`, where the hash covers everything that changes the
features (encoder description and weights digest, layer, pooling, preprocessing, dataset identity, split,
subset, compute dtype, token storage, token mask); each layer has its own cache, and one pass can fill several.
It holds `.npy` arrays written row by row through memory maps (features [N, D] float32, labels [N] int64,
optionally tokens [N, T, D] float16), a `manifest.json`, and per-process `done-<host>-<pid>.npy` arrays saved
atomically every few batches (merged into `done.npy` at the end), so a killed extraction resumes where it
stopped. Space for every array is reserved up front, so a full disk fails at the start with a clear error.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.base import Encoder
from harmon.utils.files import atomic_write, short_hash
from probe.datasets import ArrayImageDataset, ImageFolderDataset, LabelledImages, SubsetDataset

FORMAT_VERSION = 1
SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class CacheSpaceError(OSError):
    """The filesystem of the cache has too little room; the message says how much is needed."""


@dataclass(frozen=True)
class CachePlan:
    """Which cache to fill: its root and split, and every setting that changes the cached arrays.

    pooling: None for the encoder's default. dtype: 'fp32', 'bf16' or 'fp16' (autocast compute; features are
    stored as float32), None for fp32. tokens: also store the patch tokens [N, T, D] as float16.
    subset: indices of the dataset to extract (None: all of it). mask_ratio: hide this fraction of the tokens
    from the encoder (`encoders.masking`; encoders with `masks_tokens` only; None or 0: none), each image's mask
    seeded by `mask_seed` and its index in the dataset; stored tokens are then the visible ones.
    """

    cache_root: str | os.PathLike
    split: str
    layer: int | None = None
    pooling: str | None = None
    dtype: str | torch.dtype | None = None
    tokens: bool = False
    dataset_name: str | None = None
    subset: Sequence[int] | np.ndarray | None = None
    mask_ratio: float | None = None
    mask_seed: int = 0


# ------------------------------------------------------------------------------------------------ cache key


def dataset_identity(dataset: LabelledImages) -> dict[str, Any]:
    """What identifies the images of `dataset`: root and file list (size, mtime) for image folders, a hash
    of the pixels for in-memory arrays, the parent's identity plus the indices for subsets, or a `cache_id`
    attribute that any other dataset class can define."""
    if isinstance(dataset, SubsetDataset):
        return {"subset_of": dataset_identity(dataset.dataset),
                "indices": short_hash(np.asarray(dataset.indices, dtype=np.int64).tobytes())}
    if isinstance(dataset, ImageFolderDataset):
        stats = [(path, label, path.stat()) for path, label in dataset.samples]
        listing = [(str(path.relative_to(dataset.root)), label, st.st_size, st.st_mtime_ns) for path, label, st in stats]
        return {"type": "imagefolder", "root": str(dataset.root.resolve()), "files": short_hash(json.dumps(listing).encode())}
    if isinstance(dataset, ArrayImageDataset):
        digest = hashlib.sha256(np.ascontiguousarray(dataset.images).tobytes())
        digest.update(np.asarray(dataset.targets, dtype=np.int64).tobytes())
        return {"type": "array", "shape": list(dataset.images.shape), "pixels": digest.hexdigest()[:16]}
    if isinstance(getattr(dataset, "cache_id", None), str):
        return {"type": type(dataset).__name__, "cache_id": dataset.cache_id}
    raise TypeError(f"cannot identify a dataset of type {type(dataset).__name__} for the feature cache; give it "
                    "a `cache_id` string attribute that changes whenever its images or labels change")


def cache_key(encoder: Encoder, dataset: LabelledImages, plan: CachePlan) -> dict[str, Any]:
    """Everything that changes the cached arrays of `dataset` (already restricted to the subset) under a plan
    whose pooling and dtype are resolved; its hash names the cache folder. A token mask adds a "mask" entry."""
    key = {
        "version": FORMAT_VERSION,
        "encoder": encoder.describe(),
        "weights": encoder.weights_digest(),
        "preprocess": encoder.preprocess.to_dict(),
        "layer": plan.layer,
        "pooling": plan.pooling,
        "dataset": {"name": plan.dataset_name, **dataset_identity(dataset)},
        "split": plan.split,
        "dtype": plan.dtype,
        "tokens": "float16" if plan.tokens else None,
    }
    if plan.mask_ratio:
        key["mask"] = {"ratio": plan.mask_ratio, "seed": plan.mask_seed,
                       "order": "numpy default_rng([seed, image index in the dataset]).permutation"}
    return key


def key_hash(key: dict[str, Any]) -> str:
    return short_hash(json.dumps(key, sort_keys=True).encode())


def cache_path(cache_root: str | os.PathLike, key: dict[str, Any]) -> Path:
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{key['encoder']['name']}-{key['split']}")
    return Path(cache_root) / f"{readable}-{key_hash(key)}"


# ------------------------------------------------------------------------------------------------ files


def _write_atomic(path: Path, data: bytes | str | Callable[[Any], None]) -> None:
    """`atomic_write`, with a full disk reported as CacheSpaceError."""
    try:
        atomic_write(path, data)
    except OSError as error:
        if error.errno in SPACE_ERRNOS:
            raise CacheSpaceError(error.errno, f"no room to write {path} ({error.strerror}, "
                                  f"{_free_mb(path.parent):.1f} MB free there); free space and rerun to resume") from error
        raise


def _free_mb(directory: Path) -> float:
    return shutil.disk_usage(directory).free / 1e6


def save_json(path: Path, data: dict) -> None:
    _write_atomic(path, json.dumps(data, indent=2))


def save_npy(path: Path, array: np.ndarray) -> None:
    _write_atomic(path, lambda handle: np.save(handle, array))


def _array_bytes(shape: Sequence[int], dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def _allocate(directory: Path, arrays: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Create `.npy` files with their full size reserved on disk; on a full disk remove them and raise
    CacheSpaceError with the space the cache needs."""
    created: list[Path] = []
    try:
        for name, (shape, dtype) in arrays.items():
            path = directory / f"{name}.npy"
            created.append(path)
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            offset, size = array.offset, array.nbytes
            del array
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, offset + size)
    except OSError as error:
        for path in created:
            path.unlink(missing_ok=True)
        if error.errno not in SPACE_ERRNOS:
            raise
        needed = sum(_array_bytes(shape, dtype) for shape, dtype in arrays.values())
        raise CacheSpaceError(error.errno, f"not enough space for the feature cache {directory}: it needs "
                              f"{needed / 1e6:.1f} MB and {_free_mb(directory):.1f} MB are free there "
                              f"({error.strerror}); free space or choose another cache root, then rerun: "
                              "finished work is kept") from error


def create_cache(directory: Path, key: dict[str, Any], arrays: dict[str, tuple[tuple[int, ...], str]],
                 dataset: LabelledImages) -> None:
    """Reserve the arrays, write the labels and an incomplete manifest (stale done arrays are removed)."""
    for stale in done_files(directory):
        stale.unlink()
    _allocate(directory, arrays)
    save_npy(directory / "labels.npy", np.asarray(dataset.targets, dtype=np.int64))
    manifest = {
        "key": key, "key_hash": key_hash(key), "num_samples": len(dataset), "classes": list(dataset.classes),
        "arrays": {name: {"shape": list(shape), "dtype": dt} for name, (shape, dt) in arrays.items()},
        "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_json(directory / "manifest.json", manifest)


@contextmanager
def creation_lock(directory: Path) -> Iterator[None]:
    """Serialise cache creation between independent runs sharing a cache root."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_rows(path: Path, indices: np.ndarray, values: np.ndarray) -> None:
    """Write rows into an `.npy` file through a short-lived memory map, so memory stays bounded by a batch."""
    array = np.load(path, mmap_mode="r+")
    array[indices] = values
    del array


def fsync_files(paths: Sequence[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ done masks


def done_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("done*.npy"))


def load_done(directory: Path, num_samples: int) -> np.ndarray:
    """Union of the saved done arrays (one per process while running, merged into done.npy at the end)."""
    done = np.zeros(num_samples, dtype=bool)
    for path in done_files(directory):
        try:
            part = np.load(path)
        except FileNotFoundError:  # merged into done.npy by a run that just finished
            continue
        if part.shape != done.shape:
            raise RuntimeError(f"{path} has shape {part.shape}, expected ({num_samples},); delete {directory}")
        done |= part
    return done


def finish_cache(directory: Path, manifest: dict[str, Any]) -> str | None:
    """Merge the processes' done arrays, check every row was filled and mark the manifest complete;
    returns what is missing, or None."""
    done = load_done(directory, manifest["num_samples"])
    if not done.all():
        missing = np.flatnonzero(~done)
        return (f"{len(missing)} of {len(done)} rows of {directory} were not extracted (first: {missing[:5].tolist()}); "
                "rerun to fill them")
    if manifest["complete"] and (directory / "done.npy").exists() and len(done_files(directory)) == 1:
        return None
    save_npy(directory / "done.npy", done)
    for path in done_files(directory):
        if path.name != "done.npy":
            path.unlink(missing_ok=True)
    save_json(directory / "manifest.json", {**manifest, "complete": True,
                                            "completed": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return None


# ------------------------------------------------------------------------------------------------ the cache


@dataclass
class FeatureCache:
    """A finished cache: `features` [N, D] (copy-on-write memmap: edits never reach the file), `labels` [N], optional `tokens` [N, T, D]."""

    path: Path
    manifest: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features: np.memmap = np.load(self.path / "features.npy", mmap_mode="c")
        self.labels: np.ndarray = np.load(self.path / "labels.npy")
        tokens = self.path / "tokens.npy"
        self.tokens: np.memmap | None = np.load(tokens, mmap_mode="c") if tokens.exists() else None

    @property
    def key_hash(self) -> str:
        return self.manifest["key_hash"]

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureCache:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        if not manifest.get("complete"):
            raise RuntimeError(f"feature cache {path} is incomplete; rerun the extraction to finish it")
        return cls(Path(path), manifest)
