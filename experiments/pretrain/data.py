"""The pretraining image stream: ShapesWorld renders with their captions, plus Fashion-MNIST when installed.

Every image is stored as 64 x 64 RGB uint8, resized exactly as `PREPROCESS` resizes it at probing time, so the
encoders see the same pixels in pretraining and in probing. Fashion-MNIST images are captioned "a photo of a
{class}": that caption is derived from the label, so on those images the SigLIP-style model gets label-derived
language supervision (ShapesWorld captions describe the rendered scene instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import track

from encoders.base import Preprocess
from harmon.shapesworld import ShapesWorld, ShapesWorldConfig, describe_scene, render_scene
from harmon.shapesworld.probe_sets import SETS, ProbeSet
from probe.datasets import fashion_mnist, fashion_mnist_dir, read_idx

IMAGE_SIZE = 64
STREAM_SEED_OFFSET = 10_000  # probe-set items of the stream never coincide with probe splits (small seeds)
PREPROCESS = Preprocess(image_size=IMAGE_SIZE, crop="center", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@dataclass(frozen=True)
class StreamConfig:
    """How many images of each source the stream holds; `fashion=0` leaves Fashion-MNIST out."""

    shapes: int = 3000
    fashion: int = 3000
    min_objects: int = 1
    max_objects: int = 4
    seed: int = 0
    probe_sets: bool = False  # draw ShapesWorld images from the probe sets' distribution (large objects, nuisances)


@dataclass
class ImageStream:
    """Images (N, 3, 64, 64) uint8, one caption and one source name ("shapesworld", "fashion-mnist") each."""

    images: torch.Tensor
    captions: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, indices: torch.Tensor) -> torch.Tensor:
        """Float pixels in [-1, 1] (the normalisation of `PREPROCESS`) for a batch of indices."""
        return self.images[indices].float() / 127.5 - 1.0

    def counts(self) -> dict[str, int]:
        return {name: self.sources.count(name) for name in sorted(set(self.sources))}


def resized(image: Image.Image) -> np.ndarray:
    """(3, 64, 64) uint8 pixels of `image` after `PREPROCESS`'s resize and crop, before normalisation."""
    unit = PREPROCESS(image) * torch.tensor(PREPROCESS.std).view(3, 1, 1) + torch.tensor(PREPROCESS.mean).view(3, 1, 1)
    return (unit * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def shapes_images(count: int, config: StreamConfig, console: Console | None = None) -> tuple[list[np.ndarray], list[str]]:
    """`count` ShapesWorld scenes and a true caption of each: 1-4 objects of the named sizes, or with
    `config.probe_sets` items of the probe sets in turn (single, pair, count), drawn with a seed of their own."""
    world = ShapesWorld(ShapesWorldConfig(image_size=IMAGE_SIZE, min_objects=config.min_objects,
                                          max_objects=config.max_objects), seed=config.seed)
    sets = [ProbeSet(name, IMAGE_SIZE) for name in SETS]
    images, captions = [], []
    for index in track(range(count), description="rendering ShapesWorld for pretraining", console=console):
        if config.probe_sets:
            scene, _ = sets[index % len(sets)].scene(STREAM_SEED_OFFSET + config.seed, index // len(sets))
        else:
            scene = world.scene(index)
        images.append(np.asarray(render_scene(scene).image.convert("RGB")).transpose(2, 0, 1).copy())
        captions.append(describe_scene(scene, world.rng(index, "caption")).text)
    return images, captions


def fashion_images(count: int, seed: int, console: Console | None = None) -> tuple[list[np.ndarray], list[str]]:
    """`count` random Fashion-MNIST training images, resized to 64 px RGB, captioned from their labels."""
    data = fashion_mnist("train", download=False)
    rng = np.random.default_rng([seed, 1])
    chosen = np.sort(rng.choice(len(data), size=min(count, len(data)), replace=False))
    images, captions = [], []
    for index in track(chosen, description="resizing Fashion-MNIST for pretraining", console=console):
        image, label = data[int(index)]
        images.append(resized(image))
        captions.append(f"a photo of a {data.classes[label].lower()}")
    return images, captions


def stream_sources(config: StreamConfig) -> dict[str, int]:
    """How many images of each source `load_stream(config)` holds on this machine, without building it: the
    identity of anything trained on the stream (Fashion-MNIST counts only where a copy is installed)."""
    directory = fashion_mnist_dir() if config.fashion > 0 else None
    available = 0
    if directory is not None:
        labels = next(directory / name for name in ("train-labels-idx1-ubyte", "train-labels-idx1-ubyte.gz")
                      if (directory / name).is_file())
        available = len(read_idx(labels))
    return {"shapesworld": config.shapes, "fashion-mnist": min(config.fashion, available)}


def identity(config: Any) -> dict[str, Any]:
    """The cache identity of a pretraining config with a `data: StreamConfig`: its fields and the stream's
    actual sources here, so that an encoder pretrained without Fashion-MNIST is not reused once it is installed."""
    return {**asdict(config), "sources": stream_sources(config.data)}


def load_stream(config: StreamConfig, console: Console | None = None) -> ImageStream:
    """Build the stream (deterministic for `config.seed`); without an installed Fashion-MNIST it holds ShapesWorld
    only (nothing is downloaded)."""
    if config.shapes < 1:
        raise ValueError(f"StreamConfig.shapes={config.shapes}; the stream needs at least one ShapesWorld image")
    images, captions = shapes_images(config.shapes, config, console)
    sources = ["shapesworld"] * len(images)
    if config.fashion > 0:
        if fashion_mnist_dir() is None:
            (console or Console()).print("[yellow]Fashion-MNIST is not installed, pretraining on ShapesWorld only[/]")
        else:
            more, texts = fashion_images(config.fashion, config.seed, console)
            images, captions = images + more, captions + texts
            sources += ["fashion-mnist"] * len(more)
    return ImageStream(torch.from_numpy(np.stack(images)), captions, sources)


def batches(size: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """`steps` batches of indices into a stream of `size` images: shuffled epochs, deterministic for `seed`."""
    if batch_size > size:
        raise ValueError(f"batch_size {batch_size} exceeds the {size} images of the stream; lower batch_size")
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(size, generator=generator), 0
    for _ in range(steps):
        if position + batch_size > size:
            order, position = torch.randperm(size, generator=generator), 0
        yield order[position : position + batch_size]
        position += batch_size


@lru_cache(maxsize=1)
def _stream_for(config: StreamConfig, sources: tuple[tuple[str, int], ...], console: Console | None) -> ImageStream:
    stream = load_stream(config, console)
    if tuple(sorted({**dict.fromkeys(dict(sources), 0), **stream.counts()}.items())) != tuple(sorted(sources)):
        raise RuntimeError(f"the pretraining stream holds {stream.counts()} images, not the {dict(sources)} its "
                           "identity promised; check the Fashion-MNIST files (FASHION_MNIST_DIR) and rerun")
    return stream


def cached_stream(config: StreamConfig, console: Console | None = None) -> ImageStream:
    """`load_stream(config)`, built once per process (per set of available sources) and shared by the
    pretrainings that need it."""
    return _stream_for(config, tuple(sorted(stream_sources(config).items())), console)
