"""Atomic file writes (temporary file, fsync, rename) that name the file and the free space when the disk is
full, output folders checked up front, and content digests of tensors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class DiskFull(OSError):
    """A write failed for lack of space (or quota, or file-size limit); the message names the file, the free
    space and the fix."""


class PathError(ValueError):
    """A path given as input cannot be used as asked; the message names it and the fix."""


def free_space(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free


def disk_full_error(path: str | os.PathLike, error: OSError) -> OSError:
    """`error`, raised while writing `path`, as a one-line DiskFull when it means the disk (or quota) is full;
    any other error unchanged."""
    if isinstance(error, DiskFull) or error.errno not in DISK_FULL_ERRNOS:
        return error
    free = free_space(Path(path).parent)
    return DiskFull(error.errno, f"no space left writing {path} ({os.strerror(error.errno)}; {free / 2**20:.1f} MiB "
                                 f"free there); free some space or write to another disk")


def file_stem(name: str) -> str:
    """`name` as a portable file name: path separators, ':' and other characters Windows and archives reject
    become '-' (e.g. "timm:vit_small" -> "timm-vit_small")."""
    stem = "".join("-" if c in '<>:"/\\|?*' or ord(c) < 32 else c for c in name).strip(" .")
    return stem or "unnamed"


def output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """`path` as a folder, created if needed; a PathError naming `what` when it (or a parent) is a file."""
    path = Path(path)
    blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        where = "is" if blocked == path else f"is inside {blocked}, which is"
        raise PathError(f"{what} {path} {where} an existing file, not a folder; pass a folder path "
                        "(or move the file away)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathError(f"{what} {path} cannot be created ({err.strerror}); pass a folder you can write") from err
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; when the block ends without an error the file is
    fsynced and renamed over `path` (readers see the old file or the whole new one), else it is removed. A full
    disk raises DiskFull naming `path` and the free space."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        translated = disk_full_error(path, err)
        if translated is err:
            raise
        raise translated from err
    finally:
        tmp.unlink(missing_ok=True)


class _WholeWrites:
    """A binary handle whose `write` writes everything or raises (an unbuffered file may write part of a block),
    so that torch's zip writer sees the OSError of a full disk instead of a short write."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        while view:
            view = view[self.raw.write(view) :]
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def write_torch(obj: Any, handle: IO[bytes]) -> None:
    """`torch.save(obj)` into an unbuffered binary handle, letting a write error (ENOSPC...) through as OSError."""
    import torch

    torch.save(obj, _WholeWrites(handle))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)` atomically; a full disk raises DiskFull naming `path` (not torch's
    "inline_container.cc" message)."""
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as handle:
        write_torch(obj, handle)
    return Path(path)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Write `data` (bytes, UTF-8 text, or a callback writing to a binary handle) to `path` atomically (see
    `atomic_path`); returns `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`data` as indented JSON (non-JSON values through `str`), written atomically."""
    return atomic_write(path, json.dumps(data, indent=2, default=str))


def short_hash(data: bytes | str) -> str:
    """The first 16 hex digits of the SHA-256 of `data`."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a state dict: every tensor's name, shape, dtype and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
