"""The one place where checkpoints are found, downloaded, safely unpickled and checked key by key.

Sources: a local path, a known name (`harmon checkpoints` lists them), a Hugging Face file `hf://owner/repo/file`,
or an http(s) URL. Downloads are cached (`HARMON_CACHE`, default `~/.cache/harmon-toolkit`; hub files use the
Hugging Face cache) and `HF_HUB_OFFLINE=1` forbids any download. Files are read with safetensors or with
`torch.load(weights_only=True)`; a pickle that needs arbitrary code is refused, never run.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import hashlib
import os
import pickle
import re
import socket
import traceback
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harmon.utils.files import atomic_path

KNOWN_FILES: dict[str, str] = {
    "kl16": "hf://wusize/harmon/kl16.ckpt",
    "harmon-0.5b": "hf://wusize/harmon/harmon_0.5b.pth",
    "harmon-1.5b": "hf://wusize/harmon/harmon_1.5b.pth",
    "harmon-1.5b-o": "hf://wusize/harmon/harmon_1.5b-o.pth",
    "mar-base": "https://www.dropbox.com/scl/fi/f6dpuyjb7fudzxcyhvrhk/checkpoint-last.pth"
    "?rlkey=a6i4bo71vhfo4anp33n9ukujb&dl=1",
    "mar-large": "https://www.dropbox.com/scl/fi/pxacc5b2mrt3ifw4cah6k/checkpoint-last.pth"
    "?rlkey=m48ovo6g7ivcbosrbdaz0ehqt&dl=1",
    "mar-huge": "https://www.dropbox.com/scl/fi/1qmfx6fpy3k7j9vcjjs3s/checkpoint-last.pth"
    "?rlkey=4lae281yzxb406atp32vzc83o&dl=1",
    "kl16-dropbox": "https://www.dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/kl16.ckpt"
    "?rlkey=l44xipsezc8atcffdp4q7mwmh&dl=1",
}

# Plain metadata classes that official files pickle beside their tensors (MAR stores its argparse args).
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint could not be found, read, or does not match the model; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("HARMON_CACHE", Path.home() / ".cache" / "harmon-toolkit"))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve(source: str | os.PathLike) -> Path:
    """Turn a path, known name, `hf://owner/repo/file` or URL into a local file path (downloading if needed)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            raise CheckpointError(f"checkpoint {text!r} is a directory; pass the checkpoint file inside it")
        return path
    if text in KNOWN_FILES:
        return resolve(KNOWN_FILES[text])
    if text.startswith("hf://"):
        return _resolve_hub(text)
    if text.startswith(("http://", "https://")):
        return _resolve_url(text)
    close = difflib.get_close_matches(text, KNOWN_FILES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CheckpointError(
        f"checkpoint {text!r} is not an existing file, a known name ({', '.join(KNOWN_FILES)}), "
        f"an hf://owner/repo/file path or a URL.{hint}"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within `timeout` seconds (checked once per
    endpoint and process), so an unreachable hub fails at once instead of after the hub client's retries."""
    from huggingface_hub import constants

    return _reachable(constants.ENDPOINT, timeout)


@functools.lru_cache(maxsize=8)
def _reachable(endpoint: str, timeout: float) -> bool:
    url = urllib.parse.urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_local_only() -> bool:
    """True when hub files must come from the local cache: HF_HUB_OFFLINE is set or the hub is unreachable."""
    return offline() or not hub_reachable()


def hub_missing(repo_id: str, filename: str | None = None) -> str:
    """The one-line explanation of a hub file that is neither cached nor downloadable."""
    why = (f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}" if offline()
           else "the Hugging Face hub is unreachable")
    what = f"{filename} from {repo_id}" if filename else repo_id
    command = f"huggingface-cli download {repo_id}" + (f" {filename}" if filename else "")
    return (f"{what} is not in the Hugging Face cache and cannot be downloaded ({why}); fetch it on a connected "
            f"machine with `{command}` (then run with HF_HUB_OFFLINE=1), or pass a local path")


def _resolve_hub(uri: str) -> Path:
    parts = uri[len("hf://") :].split("/", 2)
    if len(parts) == 2 and all(parts):
        return _resolve_hub_repo(f"{parts[0]}/{parts[1]}")
    if len(parts) != 3 or not all(parts):
        raise CheckpointError(f"hub path {uri!r} must look like hf://owner/repo/path/to/file or hf://owner/repo")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, filename = f"{parts[0]}/{parts[1]}", parts[2]
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=hub_local_only()))
    except LocalEntryNotFoundError as err:
        raise CheckpointError(hub_missing(repo_id, filename)) from err


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


def _resolve_hub_repo(repo_id: str) -> Path:
    """`hf://owner/repo`: the one checkpoint file of a hub repo (for repos that hold a single weights file)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [f"*{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=hub_local_only()))
    except LocalEntryNotFoundError as err:
        raise CheckpointError(hub_missing(repo_id)) from err
    found = sorted(p for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found) or "none"
        raise CheckpointError(f"hf://{repo_id} holds {len(found)} checkpoint files ({names}); name one as "
                              f"hf://{repo_id}/FILE")
    return found[0]


def _resolve_url(url: str) -> Path:
    name = Path(url.split("?", 1)[0]).name or "download"
    target = cache_dir() / "urls" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.exists():
        return target
    if offline():
        raise CheckpointError(
            f"{url} is not cached at {target} and HF_HUB_OFFLINE=1 forbids downloading; fetch it on a connected "
            f"machine with `curl -L -o {target.name} '{url}'` and pass the local path"
        )
    _download(url, target)
    return target


def _download(url: str, target: Path) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "Wget/1.16 (linux-gnu)"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn()) as bar:
                task = bar.add_task(f"download {target.name}", total=total)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(task, advance=len(chunk))
        os.replace(partial, target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"downloading {url} failed ({err}); download it yourself and pass the path") from err


def load_file(source: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, or torch.load(weights_only=True) with only plain metadata allowed."""
    path = resolve(source)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(str(path))
        except SafetensorError as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); re-download it") from err
    state = read_torch(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def read_torch(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` (tensors, plain containers and `SAFE_GLOBALS` only); a one-line
    CheckpointError for a code-carrying pickle, a truncated file or one that is not a PyTorch file at all."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(err).__name__)
        raise CheckpointError(
            f"refusing to load {path}: unpickling it would need code other than tensors and plain metadata "
            f"({detail}). Only load files you trust; convert trusted files to safetensors "
            "(safetensors.torch.save_file) and pass that file instead."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({str(err).splitlines()[0]}); delete it and download it again"
        ) from err
    except Exception as err:  # a file that is no pickle at all fails anywhere inside the unpickler
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(err).__name__}: {err}); pass a .pth/.pt/.ckpt file "
            "written by torch.save, or a .safetensors file"
        ) from err


def _causes(err: BaseException) -> Iterator[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


@contextlib.contextmanager
def hub_format_errors(source: str | os.PathLike) -> Iterator[None]:
    """Around a diffusers / transformers `from_pretrained` of `source`: a pickled weight file that needs code, or
    a corrupt one, ends in a one-line CheckpointError (the libraries themselves load `.bin` files with
    `weights_only=True`, so nothing is executed; this only names the problem)."""
    try:
        yield
    except Exception as err:
        chain = list(_causes(err))
        refused = next((c for c in chain if isinstance(c, pickle.UnpicklingError)), None)
        if refused is not None:
            lines = [line.strip() for line in str(refused).splitlines() if "GLOBAL" in line]
            raise CheckpointError(
                f"refusing to load {source}: a pickled weight file in it would need code to unpickle"
                f"{' (' + lines[0] + ')' if lines else ''}. Only load folders you trust; re-save them with "
                "safe_serialization=True (model.safetensors) and pass that folder instead.") from err
        if any(isinstance(c, (EOFError, zipfile.BadZipFile)) or type(c).__name__ == "SafetensorError"
               or (isinstance(c, RuntimeError) and "PytorchStreamReader" in str(c)) for c in chain) or any(
                frame.f_code.co_name == "load_state_dict" for frame, _ in traceback.walk_tb(err.__traceback__)):
            raise CheckpointError(f"a weight file in {source} is corrupt or truncated "
                                  f"({(str(chain[-1]).splitlines() or [type(chain[-1]).__name__])[0]}); "
                                  "download the folder again") from err
        raise


def tensors_only(state: Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    """Check that a mapping holds only tensors and return it as a dict."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what}: entries {bad[:5]} are not tensors; is this the right part of the file?")
    return dict(state)


def unwrap_state(
    state: Mapping[str, Any], what: str, wrappers: Iterable[str] = ("model", "state_dict"),
    prefixes: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Take the first wrapper entry present (e.g. `{"model": ...}`), strip the first prefix any key has."""
    for wrapper in wrappers:
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    for prefix in prefixes:
        if any(name.startswith(prefix) for name in state):
            state = {name[len(prefix) :]: v for name, v in state.items() if name.startswith(prefix)}
            break
    return tensors_only(state, what)


def read_metadata(source: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} for other formats)."""
    path = resolve(source)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _shapes(expected: nn.Module | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    items = expected.state_dict().items() if isinstance(expected, nn.Module) else expected.items()
    return {k: tuple(v.shape) for k, v in items}


def format_keys(title: str, names: list[str], limit: int = 12) -> str:
    """An indented listing of key names, the first `limit` shown, for error messages."""
    shown = "\n    ".join(names[:limit])
    more = f"\n    ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"  {title} ({len(names)}):\n    {shown}{more}"


def check_keys(
    expected: nn.Module | Mapping[str, Any], state: Mapping[str, torch.Tensor], what: str,
    allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = (), looks_like: str | None = None,
) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys (strict loading, explained)."""
    want = _shapes(expected)
    allow_missing, allow_unexpected = set(allow_missing), set(allow_unexpected)
    missing = sorted(k for k in want if k not in state and k not in allow_missing)
    unexpected = sorted(k for k in state if k not in want and k not in allow_unexpected)
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {want[k]}"
        for k in want if k in state and tuple(state[k].shape) != want[k]
    )
    if not (missing or unexpected or misshaped):
        return
    parts = [f"{what} does not match the model:"]
    for title, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            parts.append(format_keys(title, names))
    if looks_like:
        parts.append(f"  the file looks like: {looks_like}")
    raise CheckpointError("\n".join(parts))


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write tensors atomically (see `harmon.utils.files.atomic_path`). safetensors reports a failed write as its
    own error carrying the OS error number; it is raised as that OSError, so a full disk names `path`."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        except SafetensorError as error:
            code = re.search(r"os error (\d+)", str(error))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from error
    return Path(path)
