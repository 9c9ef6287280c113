"""Feature cache: pooled features (and optionally patch tokens) of a dataset, extracted once and reused.

A cache lives in `cache_root/<encoder>-<split>-<hash>/`, where the hash covers everything that changes the
features (encoder description and weights digest, layer, pooling, preprocessing, dataset identity, split,
subset, compute dtype, token storage). It holds `.npy` arrays written row by row through memory maps
(features [N, D] float32, labels [N] int64, optionally tokens [N, T, D] float16), a `manifest.json`, and
per-process `done-<host>-<pid>.npy` arrays saved atomically every few batches (merged into `done.npy` at the
end), so a killed extraction resumes where it stopped. Space for every array is reserved up front, so a full
disk fails at the start with a clear error.

Several processes launched with `torchrun`/`accelerate launch` each extract their share of the missing rows
into the same files; rank 0 then checks that every row was filled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from encoders.base import Encoder, Preprocess
from probe.datasets import ArrayImageDataset, ImageFolderDataset, LabelledImages, SubsetDataset

FORMAT_VERSION = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class CacheSpaceError(OSError):
    """The filesystem of the cache has too little room; the message says how much is needed."""


# ------------------------------------------------------------------------------------------------ cache key


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def dataset_identity(dataset: LabelledImages) -> dict[str, Any]:
    """What identifies the images of `dataset`: root and file list (size, mtime) for image folders, a hash
    of the pixels for in-memory arrays, the parent's identity plus the indices for subsets, or a `cache_id`
    attribute that any other dataset class can define."""
    if isinstance(dataset, SubsetDataset):
        return {"subset_of": dataset_identity(dataset.dataset),
                "indices": _sha(np.asarray(dataset.indices, dtype=np.int64).tobytes())}
    if isinstance(dataset, ImageFolderDataset):
        stats = [(path, label, path.stat()) for path, label in dataset.samples]
        listing = [(str(path.relative_to(dataset.root)), label, st.st_size, st.st_mtime_ns) for path, label, st in stats]
        return {"type": "imagefolder", "root": str(dataset.root.resolve()), "files": _sha(json.dumps(listing).encode())}
    if isinstance(dataset, ArrayImageDataset):
        digest = hashlib.sha256(np.ascontiguousarray(dataset.images).tobytes())
        digest.update(np.asarray(dataset.targets, dtype=np.int64).tobytes())
        return {"type": "array", "shape": list(dataset.images.shape), "pixels": digest.hexdigest()[:16]}
    if isinstance(getattr(dataset, "cache_id", None), str):
        return {"type": type(dataset).__name__, "cache_id": dataset.cache_id}
    raise TypeError(f"cannot identify a dataset of type {type(dataset).__name__} for the feature cache; give it "
                    "a `cache_id` string attribute that changes whenever its images or labels change")


def dtype_name(dtype: str | torch.dtype | None) -> str:
    """'fp32', 'bf16' or 'fp16' for a name or torch dtype (None means fp32)."""
    if dtype is None:
        return "fp32"
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
        return names[dtype]
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return dtype


def cache_key(encoder: Encoder, dataset: LabelledImages, split: str, layer: int | None, pooling: str,
              dtype: str, tokens: bool, dataset_name: str | None = None) -> dict[str, Any]:
    """Everything that changes the cached arrays; its hash names the cache folder."""
    return {
        "version": FORMAT_VERSION,
        "encoder": encoder.describe(),
        "weights": encoder.weights_digest(),
        "preprocess": encoder.preprocess.to_dict(),
        "layer": layer,
        "pooling": pooling,
        "dataset": {"name": dataset_name, **dataset_identity(dataset)},
        "split": split,
        "dtype": dtype,
        "tokens": "float16" if tokens else None,
    }


def key_hash(key: dict[str, Any]) -> str:
    return _sha(json.dumps(key, sort_keys=True).encode())


def cache_path(cache_root: str | os.PathLike, key: dict[str, Any]) -> Path:
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{key['encoder']['name']}-{key['split']}")
    return Path(cache_root) / f"{readable}-{key_hash(key)}"


# ------------------------------------------------------------------------------------------------ files


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through `write(handle)` into a temporary file, fsync it, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno in SPACE_ERRNOS:
            raise CacheSpaceError(error.errno, f"no room to write {path} ({error.strerror}, "
                                  f"{_free_mb(path.parent):.1f} MB free there); free space and rerun to resume") from error
        raise


def _free_mb(directory: Path) -> float:
    return shutil.disk_usage(directory).free / 1e6


def save_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))


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


def _write_rows(path: Path, indices: np.ndarray, values: np.ndarray) -> None:
    """Write rows into an `.npy` file through a short-lived memory map, so memory stays bounded by a batch."""
    array = np.load(path, mmap_mode="r+")
    array[indices] = values
    del array


def _fsync(paths: Sequence[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _done_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("done*.npy"))


def load_done(directory: Path, num_samples: int) -> np.ndarray:
    """Union of the saved done arrays (one per process while running, merged into done.npy at the end)."""
    done = np.zeros(num_samples, dtype=bool)
    for path in _done_files(directory):
        try:
            part = np.load(path)
        except FileNotFoundError:  # merged into done.npy by a run that just finished
            continue
        if part.shape != done.shape:
            raise RuntimeError(f"{path} has shape {part.shape}, expected ({num_samples},); delete {directory}")
        done |= part
    return done


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


class _Ranks:
    """This process's place among the extraction processes (one unless launched with torchrun/accelerate)."""

    def __init__(self, cpu: bool) -> None:
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=cpu)
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1

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


def _resolve_device(device: str | torch.device | None, ranks_state: Any) -> torch.device:
    """The requested device; None means CUDA when present, else CPU. Under a multi-process launch, None or a
    bare 'cuda' means this rank's GPU."""
    chosen = None if device is None else torch.device(device)
    if ranks_state is not None and (chosen is None or (chosen.type == "cuda" and chosen.index is None)):
        return ranks_state.device
    if chosen is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return chosen


def _encode(encoder: Encoder, pixels: torch.Tensor, layer: int | None, pooling: str, dtype: torch.dtype,
            tokens: bool) -> tuple[np.ndarray, np.ndarray | None]:
    with torch.inference_mode(), torch.autocast(pixels.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = encoder(pixels, layer=layer, pooling=pooling)
    pooled = out.pooled.float().cpu().numpy()
    return pooled, (out.tokens.to(torch.float16).cpu().numpy() if tokens else None)


@contextmanager
def _creation_lock(directory: Path) -> Iterator[None]:
    """Serialise cache creation between independent runs sharing a cache root."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _create(directory: Path, key: dict, encoder: Encoder, dataset: LabelledImages, layer: int | None,
            pooling: str, dtype: torch.dtype, tokens: bool, device: torch.device) -> None:
    """Allocate the arrays (shapes from one image), write labels and an incomplete manifest."""
    for stale in _done_files(directory):
        stale.unlink()
    image, _ = dataset[0]
    pooled, patch = _encode(encoder, encoder.preprocess(image)[None].to(device), layer, pooling, dtype, tokens)
    n = len(dataset)
    arrays = {"features": ((n, pooled.shape[1]), "float32")}
    if tokens:
        arrays["tokens"] = ((n, *patch.shape[1:]), "float16")
    _allocate(directory, arrays)
    save_npy(directory / "labels.npy", np.asarray(dataset.targets, dtype=np.int64))
    manifest = {
        "key": key, "key_hash": key_hash(key), "num_samples": n, "classes": list(dataset.classes),
        "arrays": {name: {"shape": list(shape), "dtype": dt} for name, (shape, dt) in arrays.items()},
        "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_json(directory / "manifest.json", manifest)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled)


def extract_features(
    encoder: Encoder,
    dataset: LabelledImages,
    cache_root: str | os.PathLike,
    split: str,
    layer: int | None = None,
    pooling: str | None = None,
    batch_size: int = 64,
    num_workers: int = 4,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    subset: Sequence[int] | np.ndarray | None = None,
    tokens: bool = False,
    dataset_name: str | None = None,
    checkpoint_every: int = 20,
    progress: bool = True,
) -> FeatureCache:
    """Extract (or reuse, or finish) the cached features of `dataset` (restricted to `subset` indices).

    device: None for CUDA when present (the rank's GPU under torchrun/accelerate), else CPU.
    dtype: 'fp32', 'bf16' or 'fp16' (autocast compute; features are stored as float32).
    tokens: also store the patch tokens [N, T, D] as float16.
    checkpoint_every: batches between saves of the done array (the most work a kill can lose).
    The encoder is moved to the device and put in eval mode.
    """
    if batch_size < 1 or checkpoint_every < 1 or num_workers < 0:
        raise ValueError(f"batch_size ({batch_size}) and checkpoint_every ({checkpoint_every}) must be >= 1 "
                         f"and num_workers ({num_workers}) >= 0")
    pooling = pooling or encoder.default_pooling
    if pooling not in encoder.poolings:
        raise ValueError(f"pooling {pooling!r} is not available for {encoder.name!r}; choose one of {encoder.poolings}")
    data = SubsetDataset(dataset, subset) if subset is not None else dataset
    if len(data) == 0:
        raise ValueError(f"the {split} dataset is empty; nothing to extract")
    compute = dtype_name(dtype)
    ranks = _Ranks(cpu=(device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available())
    dev = _resolve_device(device, ranks.state)
    encoder = encoder.to(dev).eval()
    key = cache_key(encoder, data, split, layer, pooling, compute, tokens, dataset_name)
    directory = cache_path(cache_root, key)
    manifest_path = directory / "manifest.json"

    error = None
    if ranks.rank == 0 and not manifest_path.exists():
        try:
            with _creation_lock(directory):
                if not manifest_path.exists():  # another run may have created it meanwhile
                    _create(directory, key, encoder, data, layer, pooling, DTYPES[compute], tokens, dev)
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
    n = manifest["num_samples"]
    done = load_done(directory, n)
    reused = int(done.sum())
    mine = np.array_split(np.flatnonzero(~done), ranks.world)[ranks.rank]
    computed = _extract_rows(encoder, data, directory, mine, done, layer, pooling, DTYPES[compute],
                             tokens, dev, batch_size, num_workers, checkpoint_every,
                             progress and ranks.rank == 0, f"{encoder.name} {split}")
    ranks.barrier()
    failure = _finish(directory, manifest) if ranks.rank == 0 else None
    failure = ranks.from_main(failure)
    if failure is not None:
        raise RuntimeError(failure)
    seconds = time.perf_counter() - start
    stats = {"computed": computed, "reused": reused, "seconds": seconds, "rank": ranks.rank, "world": ranks.world,
             "device": str(dev), "images_per_second": computed / seconds if seconds > 0 and computed else None}
    return FeatureCache(directory, json.loads(manifest_path.read_text()), stats)


def _extract_rows(encoder: Encoder, data: LabelledImages, directory: Path, rows: np.ndarray, done: np.ndarray,
                  layer: int | None, pooling: str, dtype: torch.dtype, tokens: bool, device: torch.device,
                  batch_size: int, num_workers: int, checkpoint_every: int, progress: bool, title: str) -> int:
    """Encode `rows` of `data`, writing features (and tokens) by index; returns how many were computed."""
    if len(rows) == 0:
        return 0
    from torch.utils.data import DataLoader

    labels = np.load(directory / "labels.npy")
    batches = [rows[i : i + batch_size].tolist() for i in range(0, len(rows), batch_size)]
    loader = DataLoader(_Indexed(data), batch_sampler=batches, num_workers=num_workers,
                        collate_fn=_Collate(encoder.preprocess), pin_memory=device.type == "cuda")
    arrays = [directory / "features.npy", *([directory / "tokens.npy"] if tokens else [])]
    done_path = directory / f"done-{socket.gethostname()}-{os.getpid()}.npy"

    def checkpoint() -> None:
        _fsync(arrays)
        save_npy(done_path, done)

    computed = 0
    with _progress(progress) as bar:
        task = bar.add_task(f"extracting {title}", total=len(rows))
        try:
            for step, (indices, pixels, batch_labels) in enumerate(loader, start=1):
                idx = indices.numpy()
                if not np.array_equal(batch_labels.numpy(), labels[idx]):
                    raise RuntimeError(f"the dataset's labels differ from those cached in {directory}; the dataset "
                                       "changed under the same identity: delete that folder")
                pooled, patch = _encode(encoder, pixels.to(device, non_blocking=True), layer, pooling, dtype, tokens)
                _write_rows(arrays[0], idx, pooled)
                if tokens:
                    _write_rows(arrays[1], idx, patch)
                done[idx] = True
                computed += len(idx)
                if step % checkpoint_every == 0:
                    checkpoint()
                bar.update(task, advance=len(idx))
        finally:  # also on errors and Ctrl-C: keep what was finished
            checkpoint()
    return computed


def _finish(directory: Path, manifest: dict[str, Any]) -> str | None:
    """Merge the processes' done arrays, check every row was filled and mark the manifest complete."""
    done = load_done(directory, manifest["num_samples"])
    if not done.all():
        missing = np.flatnonzero(~done)
        return (f"{len(missing)} of {len(done)} rows of {directory} were not extracted (first: {missing[:5].tolist()}); "
                "rerun to fill them")
    if manifest["complete"] and (directory / "done.npy").exists() and len(_done_files(directory)) == 1:
        return None
    save_npy(directory / "done.npy", done)
    for path in _done_files(directory):
        if path.name != "done.npy":
            path.unlink(missing_ok=True)
    save_json(directory / "manifest.json", {**manifest, "complete": True,
                                            "completed": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return None
