"""One registry of encoders by name, with aliases; `create_encoder` builds them."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from encoders.base import Encoder


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    family: str  # "pixels", "vae", "vqgan", "siglip", "mar", "timm"
    source: str  # where the default weights come from
    build: Callable[..., Encoder]
    aliases: tuple[str, ...] = ()


_ENTRIES: dict[str, EncoderEntry] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, family: str, source: str, aliases: tuple[str, ...] = ()):
    """Decorator registering a builder `fn(weights=None, **options) -> Encoder` under `name` and its aliases."""

    def wrap(build: Callable[..., Encoder]) -> Callable[..., Encoder]:
        for key in (name, *aliases):
            if key in _ENTRIES or key in _ALIASES:
                raise ValueError(f"encoder name {key!r} is registered twice")
        _ENTRIES[name] = EncoderEntry(name, family, source, build, aliases)
        _ALIASES.update({alias: name for alias in aliases})
        return build

    return wrap


def _load_adapters() -> None:
    from encoders import adapters  # noqa: F401  (importing registers every adapter)


def list_encoders() -> list[EncoderEntry]:
    _load_adapters()
    return list(_ENTRIES.values())


def get_entry(name: str) -> EncoderEntry:
    _load_adapters()
    key = _ALIASES.get(name, name)
    if key.startswith("timm:"):
        key = "timm"
    if key not in _ENTRIES:
        names = sorted([*_ENTRIES, *_ALIASES])
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Closest: {close[0]!r}." if close else ""
        raise ValueError(f"unknown encoder {name!r}.{hint} Known encoders: {', '.join(names)}")
    return _ENTRIES[key]


def create_encoder(name: str, weights: str | None = None, **options) -> Encoder:
    """Build encoder `name` (or an alias, or `timm:<model name>`) in eval mode.

    weights: None for the default source of the entry, a path / hub file / URL, or "random" (no download).
    """
    entry = get_entry(name)
    if name.startswith("timm:"):
        options.setdefault("model_name", name[len("timm:") :])
    return entry.build(weights=weights, **options).eval()
