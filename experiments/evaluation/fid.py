"""FID between a folder of generated images and a folder of reference images (MSCOCO-30K, MJHQ-30K).

torchmetrics' `FrechetInceptionDistance` with torch-fidelity's InceptionV3 (the TensorFlow FID network's weights
converted to PyTorch, resized inside the network as the TensorFlow original does), kept by the PyTorch Lightning
team and used by many papers; clean-fid would be the other choice, but it downloads its own weights file at
first use and adds a second image pipeline. Both sets are read as RGB, centre-cropped to a square and resized to
`resolution` (bicubic) when they are not that size already, then fed as uint8.

The weights file (`weights-inception-2015-12-05-6726825d.pth`) is taken from `--inception`, torch's hub cache
(where torch-fidelity keeps it), or downloaded into `HARMON_CACHE`; it is checked to hold only tensors
(`torch.load(weights_only=True)`) before torch-fidelity reads it. Offline and not cached: one line naming it and
how to fetch it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch
    from torch import nn

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]


def inception_weights(path: str | Path | None = None) -> Path:
    """The InceptionV3 FID weights file, checked to be tensors only (CheckpointError naming it otherwise)."""
    import torch

    from harmon.checkpoints import CheckpointError, read_torch, resolve

    if path is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        path = cached if cached.is_file() else resolve(INCEPTION_URL)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--inception {path} is not a file; pass {INCEPTION_FILE} (from {INCEPTION_URL})")
    state = read_torch(path)
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise CheckpointError(f"{path} is not torch-fidelity's InceptionV3 state dict ({INCEPTION_FILE})")
    return path


def load_square(path: Path, resolution: int) -> np.ndarray:
    """An image as uint8 (3, R, R): RGB, centre-cropped to a square and resized (bicubic) to `resolution`."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    if image.size != (resolution, resolution):
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution),
                                                                        Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def frechet_inception_distance(generated: Sequence[Path], reference: Sequence[Path], resolution: int = 512,
                               batch_size: int = 50, device: str | torch.device = "cpu",
                               feature: nn.Module | None = None, weights: str | Path | None = None,
                               progress: bool = True) -> float:
    """FID of `generated` against `reference`; `feature` replaces the InceptionV3 (a module mapping uint8 images
    to feature rows), else the checked weights file is used."""
    import torch
    from rich.progress import Progress
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is None:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_weights(weights)))
    else:
        metric = FrechetInceptionDistance(feature=feature)
    metric = metric.to(device)
    with Progress(disable=not progress) as bar:
        for real, paths in ((True, reference), (False, generated)):
            task = bar.add_task("reference images" if real else "generated images", total=len(paths))
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                batch = torch.from_numpy(np.stack([load_square(p, resolution) for p in chunk])).to(device)
                metric.update(batch, real=real)
                bar.advance(task, len(chunk))
    return float(metric.compute())
