"""Map-style datasets yielding (PIL RGB image, int label), plus class-balanced and stratified index helpers.

Every dataset here has `.classes` (names, index = label) and `.targets` (one int label per sample).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from harmon.checkpoints import cache_dir as harmon_cache_dir
from harmon.checkpoints import offline

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FIX = (
    "install the Debian package (`apt-get install -y dataset-fashion-mnist`), or set FASHION_MNIST_DIR to a "
    "folder holding train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) "
    "and t10k-labels-idx1-ubyte(.gz)"
)


class DatasetUnavailable(RuntimeError):
    """The data set's files could not be found or fetched; the message says how to provide them."""


class LabelledImages(Protocol):
    """What the probes need from a dataset."""

    classes: list[str]
    targets: list[int]

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[Image.Image, int]: ...


def _unreadable_reason(path: Path, check: Literal["decode", "header"]) -> str | None:
    """None if PIL can read `path` (fully decoded, or header/structure only), else why not."""
    try:
        with Image.open(path) as image:
            if check == "header":
                image.verify()
            else:
                image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale; still reads the whole stream
                image.load()
    except Exception as error:  # PIL raises many types for broken files
        return f"unreadable image: {type(error).__name__}: {error}"
    return None


class ImageFolderDataset:
    """Images under `root/<split>/<class>/<file>`, classes sorted by folder name.

    Files without an image extension and images PIL cannot read are skipped and listed in
    `.skipped` as (path, reason). `check="decode"` decodes every image once while scanning
    (catches truncated files); `check="header"` only runs PIL's cheaper `verify()`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        check: Literal["decode", "header"] = "decode",
        workers: int = 8,
    ) -> None:
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"split folder {split_dir} does not exist; expected root/<split>/<class>/<image>"
            )
        class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        if not class_dirs:
            raise ValueError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
        self.root = split_dir
        self.classes: list[str] = [d.name for d in class_dirs]
        self.skipped: list[tuple[Path, str]] = []
        candidates: list[tuple[Path, int]] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.rglob("*") if p.is_file())
            if not files:
                raise ValueError(f"class folder {class_dir} is empty; add images or remove the folder")
            for path in files:
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((path, label))
                else:
                    self.skipped.append((path, f"not an image file (extension {path.suffix or 'none'!r})"))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            reasons = list(pool.map(lambda item: _unreadable_reason(item[0], check), candidates))
        self.samples: list[tuple[Path, int]] = []
        for (path, label), reason in zip(candidates, reasons, strict=True):
            if reason is None:
                self.samples.append((path, label))
            else:
                self.skipped.append((path, reason))
        self.skipped.sort()
        self._require_every_class_used(class_dirs)
        self.targets: list[int] = [label for _, label in self.samples]

    def _require_every_class_used(self, class_dirs: list[Path]) -> None:
        counts = np.bincount([label for _, label in self.samples], minlength=len(class_dirs))
        unusable = [str(class_dirs[c]) for c in np.flatnonzero(counts == 0)]
        if unusable:
            raise ValueError(
                f"class folders without a readable image: {', '.join(unusable)}; see the skipped files "
                f"({len(self.skipped)} in this split) and add valid images or remove those folders"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return image.convert("RGB"), label


def check_splits(train: LabelledImages, val: LabelledImages) -> None:
    """Raise ValueError unless both splits have the same classes (labels index the same names)."""
    only_val = sorted(set(val.classes) - set(train.classes))
    only_train = sorted(set(train.classes) - set(val.classes))
    if only_val:
        raise ValueError(
            f"val has classes missing from train: {only_val}; remove them from val or add them to train"
        )
    if only_train:
        raise ValueError(
            f"classes missing from val: {only_train}; labels would not line up, add those folders to val"
        )
    if list(train.classes) != list(val.classes):
        raise ValueError("train and val list the same classes in a different order; sort both the same way")


class ArrayImageDataset:
    """Grayscale uint8 images [N, H, W] in memory, returned as RGB PIL images."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str]) -> None:
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), self.targets[index]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed if the name ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path} holds {len(data) - offset} bytes of data but its header says {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _fashion_mnist_from_dir(directory: Path, prefix: str) -> ArrayImageDataset | None:
    image_file = _idx_file(directory, f"{prefix}-images-idx3-ubyte")
    label_file = _idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    if image_file is None or label_file is None:
        return None
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"{image_file} {images.shape} and {label_file} {labels.shape} do not match")
    return ArrayImageDataset(images, labels.tolist(), FASHION_MNIST_CLASSES)


def _download_fashion_mnist(cache_dir: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(cache_dir), train=True, download=True)
    FashionMNIST(str(cache_dir), train=False, download=True)
    return cache_dir / "FashionMNIST" / "raw"


def _local_fashion_mnist_dirs() -> list[Path]:
    """Where an installed copy is looked for: $FASHION_MNIST_DIR alone when set, else the Debian package's folder
    and an earlier download in $HARMON_CACHE."""
    if os.environ.get("FASHION_MNIST_DIR"):
        return [Path(os.environ["FASHION_MNIST_DIR"])]
    return [FASHION_MNIST_SYSTEM_DIR, harmon_cache_dir() / "fashion-mnist" / "FashionMNIST" / "raw"]


def fashion_mnist_dir() -> Path | None:
    """The local folder holding all four Fashion-MNIST IDX files, or None; never downloads."""
    stems = [f"{prefix}-{kind}-idx{dims}-ubyte" for prefix in ("train", "t10k") for kind, dims in (("images", 3),
                                                                                                    ("labels", 1))]
    for directory in _local_fashion_mnist_dirs():
        if all(_idx_file(directory, stem) is not None for stem in stems):
            return directory
    return None


def fashion_mnist(
    split: Literal["train", "val", "test"], root: str | Path | None = None, download: bool = True
) -> ArrayImageDataset:
    """Fashion-MNIST 28x28 images as RGB; "val" and "test" both mean the 10k t10k split.

    An explicit `root` must hold the IDX files. Without it, looks in $FASHION_MNIST_DIR (only there when it is
    set), else in /usr/share/datasets/fashion-mnist and $HARMON_CACHE/fashion-mnist; then, with `download` and
    unless HF_HUB_OFFLINE=1, downloads with torchvision into $HARMON_CACHE/fashion-mnist. Raises
    DatasetUnavailable if none works.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    if root is not None:
        dataset = _fashion_mnist_from_dir(Path(root), prefix)
        if dataset is None:
            raise DatasetUnavailable(f"no Fashion-MNIST {prefix} IDX files in {root}; {FASHION_MNIST_FIX}")
        return dataset
    tried: list[str] = []
    for directory in _local_fashion_mnist_dirs():
        dataset = _fashion_mnist_from_dir(directory, prefix)
        if dataset is not None:
            return dataset
        tried.append(str(directory))
    if not download or offline():
        why = "HF_HUB_OFFLINE=1 forbids downloading" if download else "downloading was not asked for"
        raise DatasetUnavailable(f"Fashion-MNIST not found in {tried} and {why}; {FASHION_MNIST_FIX}")
    cache_dir = harmon_cache_dir() / "fashion-mnist"
    try:
        dataset = _fashion_mnist_from_dir(_download_fashion_mnist(cache_dir), prefix)
    except Exception as error:  # network, mirror or file errors all mean "not available here"
        raise DatasetUnavailable(
            f"Fashion-MNIST not found in {tried} and the download into {cache_dir} failed "
            f"({type(error).__name__}: {error}); {FASHION_MNIST_FIX}"
        ) from error
    if dataset is None:
        raise DatasetUnavailable(
            f"torchvision's download left no IDX files in {cache_dir}; {FASHION_MNIST_FIX}"
        )
    return dataset


def stratified_split(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out) with about `fraction` of every class held out (at least one
    per class with two or more samples); deterministic for a seed."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels_np = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held_out: list[np.ndarray] = []
    for label in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == label))
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        held_out.append(members[:count])
    held = np.sort(np.concatenate(held_out))
    kept = np.setdiff1d(np.arange(len(labels_np)), held)
    return kept, held


def sklearn_digits(
    split: Literal["train", "val"], val_fraction: float = 0.2, seed: int = 0
) -> ArrayImageDataset:
    """scikit-learn's 8x8 digits (16 gray levels scaled to 0..255) with a stratified, seeded split."""
    from sklearn.datasets import load_digits

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, val_idx = stratified_split(digits.target, val_fraction, seed)
    indices = train_idx if split == "train" else val_idx
    return ArrayImageDataset(images[indices], digits.target[indices].tolist(), [str(d) for d in range(10)])


def balanced_subset(labels: Sequence[int] | np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices with exactly `per_class` samples of every class, chosen deterministically for a seed."""
    labels_np = np.asarray(labels)
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(labels_np):
        members = np.flatnonzero(labels_np == label)
        if len(members) < per_class:
            raise ValueError(
                f"class {label} has only {len(members)} samples, fewer than per_class={per_class}"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


class SubsetDataset:
    """A view of `dataset` restricted to `indices`, keeping `.classes` and matching `.targets`."""

    def __init__(self, dataset: LabelledImages, indices: Sequence[int] | np.ndarray) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.classes = list(dataset.classes)
        self.targets = [dataset.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.dataset[self.indices[index]]
