"""The probe images of the offline Figure 2: the three probe sets rendered once per (set, split, size) and kept as
`.npz` arrays in the cache, plus the dataset class the feature cache reads them through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from experiments.figure2.config import Figure2Config
from experiments.pretrain.data import IMAGE_SIZE
from harmon.shapesworld.probe_sets import ProbeSet, render_set
from harmon.utils.files import atomic_write, short_hash

SPLIT_SEEDS = {"train": 1, "val": 2}  # the pretraining stream draws from seed 10,000 + s, never these


class RGBArrays:
    """RGB uint8 images (N, H, W, 3) with class indices; `cache_id` names them for the feature cache."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, classes: list[str], cache_id: str):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        self.images, self.targets, self.classes, self.cache_id = images, [int(t) for t in targets], classes, cache_id

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), self.targets[index]


@dataclass
class SplitData:
    """One split of one probe set: the dataset, every target array and the first object's mask (Grad-CAM++)."""

    dataset: RGBArrays
    targets: dict[str, np.ndarray]
    masks: list[np.ndarray]


def load_split(name: str, split: str, count: int, root: Path) -> SplitData:
    """Render (or reload) the first `count` items of probe set `name` for `split`."""
    probe_set = ProbeSet(name, IMAGE_SIZE)
    key = short_hash(f"{probe_set}-{SPLIT_SEEDS[split]}-{count}-v1")
    path = root / f"{name}-{split}-{key}.npz"
    if not path.exists():
        rendered = render_set(probe_set, SPLIT_SEEDS[split], count)
        masks = np.stack([item[0] for item in rendered.masks])
        arrays = {"images": rendered.images, "masks": masks,
                  **{f"target_{k}": v for k, v in rendered.targets.items()}}
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
    with np.load(path) as stored:
        targets = {k.removeprefix("target_"): stored[k] for k in stored.files if k.startswith("target_")}
        images, masks = stored["images"], stored["masks"]
    dataset = RGBArrays(images, targets["class"], probe_set.classes(), f"figure2-{name}-{split}-{key}")
    return SplitData(dataset, targets, list(masks))


def load_sets(config: Figure2Config, root: Path) -> dict[str, dict[str, SplitData]]:
    """set name -> split -> data, at the preset's sizes."""
    root.mkdir(parents=True, exist_ok=True)
    return {name: {split: load_split(name, split, getattr(size, split), root) for split in ("train", "val")}
            for name, size in config.sets.items()}
