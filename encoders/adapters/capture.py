"""Record what chosen blocks of a network output during one forward pass (forward hooks, removed on exit)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def block_outputs(blocks: Sequence[nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """While open, `outputs[i]` is the latest output of `blocks[i]` (the first element where a block returns a
    tuple, as transformers layers do)."""
    outputs: dict[int, torch.Tensor] = {}

    def recorder(position: int):
        def record(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            outputs[position] = output[0] if isinstance(output, tuple) else output

        return record

    handles = [block.register_forward_hook(recorder(i)) for i, block in enumerate(blocks)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
