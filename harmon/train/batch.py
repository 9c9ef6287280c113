"""What flows from the data pipeline into the losses: one task's micro-batch, and this process's share of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TASKS = ("text", "i2t", "t2i")  # the order of Table 1's data ratio: text : image-to-text : text-to-image
IMAGE_TOKEN_INDEX = -200  # input_ids slot that receives one visual feature
IGNORE_INDEX = -100  # label of a position without a loss


@dataclass
class Batch:
    """Rows of one task, right-padded.

    text / i2t: `input_ids` (B, T) with, for i2t, exactly one IMAGE_TOKEN_INDEX slot per row (the model splices
    the image's N visual features there);
    `labels` (B, T) with IGNORE_INDEX where no loss is taken. t2i: `input_ids` is the prompt turn ("Generate an
    image: <caption>" or the unconditional prompt) and `labels` is None. `pixels` (B, 3, S, S) in [-1, 1] for i2t
    and t2i, None for text. `sample_ids` are the rows' global positions in the run's stream (for logs and tests).
    """

    task: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    sample_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(self.task, move(self.input_ids), move(self.attention_mask), move(self.labels),
                     move(self.pixels), self.sample_ids)


@dataclass(frozen=True)
class Shard:
    """This process's rows of the global batch: rows [offset, offset + size) of `global_size`.

    Random draws (MAR orders, diffusion timesteps and noise) are made for the whole global batch from a generator
    seeded identically on every process and then sliced, so N processes reproduce one process with the same
    global batch.
    """

    offset: int
    size: int
    global_size: int

    @staticmethod
    def whole(size: int) -> Shard:
        return Shard(0, size, size)

    def rows(self) -> slice:
        return slice(self.offset, self.offset + self.size)
