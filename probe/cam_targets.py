"""What a CAM study explains: the probe logit of the true class, or, with no classifier, the cosine similarity of
the pooled feature to a reference embedding.

Target specs (`harmon cam --target`):
  logit                 the trained probe's logit of each image's true class (default)
  cosine:image:K        similarity to the pooled feature of the K-th explained image (0-based)
  cosine:class-mean     similarity to the mean pooled train feature of the image's true class (feature cache)
  cosine:file:PATH      similarity to an embedding in PATH (.npy or .safetensors): one [D] vector for every image,
                        or [classes, D] with a row per class, e.g. SigLIP text embeddings of "a photo of a {class}"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TARGET_FORMS = "'logit', 'cosine:image:K', 'cosine:class-mean' or 'cosine:file:PATH' (.npy / .safetensors)"


@dataclass(frozen=True)
class TargetSpec:
    """A parsed `--target`: kind "logit" or "cosine"; for cosine, the reference source and its argument."""

    kind: str
    reference: str | None = None  # "image", "class-mean", "file"
    argument: str | None = None

    @property
    def text(self) -> str:
        return ":".join(p for p in (self.kind, self.reference, self.argument) if p)


def parse_target(text: str) -> TargetSpec:
    """Parse a target spec; one clear error for anything else."""
    if text == "logit":
        return TargetSpec("logit")
    kind, _, rest = text.partition(":")
    reference, _, argument = rest.partition(":")
    if kind == "cosine" and reference == "class-mean" and not argument:
        return TargetSpec("cosine", "class-mean")
    if kind == "cosine" and reference == "image" and argument.isdigit():
        return TargetSpec("cosine", "image", argument)
    if kind == "cosine" and reference == "file" and argument:
        return TargetSpec("cosine", "file", argument)
    raise ValueError(f"--target {text!r} is not a target; use {TARGET_FORMS}")


def load_embedding(path: str) -> torch.Tensor:
    """A [D] or [rows, D] float embedding from a .npy file or a safetensors file (its only tensor)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--target cosine:file:{path}: no such file; pass a .npy or .safetensors embedding")
    if file.suffix == ".npy":
        array = torch.from_numpy(np.load(file, allow_pickle=False)).float()
    elif file.suffix == ".safetensors":
        from harmon.checkpoints import load_file

        tensors = load_file(file)
        if len(tensors) != 1:
            raise ValueError(f"--target cosine:file:{path} holds {len(tensors)} tensors ({', '.join(list(tensors)[:5])}); "
                             "save exactly one [D] or [classes, D] tensor")
        array = next(iter(tensors.values())).float()
    else:
        raise ValueError(f"--target cosine:file:{path}: use a .npy or .safetensors file")
    if array.ndim not in (1, 2):
        raise ValueError(f"--target cosine:file:{path} has shape {tuple(array.shape)}; save [D] or [classes, D]")
    return array


def references_for(spec: TargetSpec, pooled: torch.Tensor, labels: list[int], class_means: torch.Tensor | None,
                   what: str) -> torch.Tensor:
    """[B, D] reference embeddings for the explained images (pooled: their own pooled features)."""
    count, dim = pooled.shape
    if spec.reference == "image":
        index = int(spec.argument)
        if index >= count:
            raise ValueError(f"--target {spec.text}: only {count} images are explained; choose K < {count}")
        return pooled[index].expand(count, -1).clone()
    if spec.reference == "class-mean":
        if class_means is None:
            raise ValueError(f"--target {spec.text} needs the train features of {what}")
        return class_means[labels]
    embedding = load_embedding(spec.argument)
    rows = embedding.expand(count, -1) if embedding.ndim == 1 else None
    if rows is None:
        if max(labels) >= len(embedding):
            raise ValueError(f"--target {spec.text} has {len(embedding)} rows but class {max(labels)} is explained; "
                             "give one row per class")
        rows = embedding[labels]
    if rows.shape[1] != dim:
        raise ValueError(f"--target {spec.text} has {rows.shape[1]}-d embeddings but {what} pools to {dim}-d; "
                         "use an embedding in the same space (e.g. SigLIP text embeddings for a SigLIP image tower)")
    return rows


def class_mean_features(features: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """[classes, D] mean feature per class (zeros for a class without images)."""
    means = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
    for c in range(num_classes):
        members = labels == c
        if members.any():
            means[c] = features[members].mean(0)
    return torch.from_numpy(means).float()
