"""Options every benchmark shares: device, dtype and CPU threads."""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from harmon.utils.runtime import resolve_device


def add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--dtype", default="auto", help="'auto' (bf16 on CUDA, fp32 on CPU), 'fp32' or 'bf16'")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Apply --threads and resolve --device/--dtype."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


class SplitTimer:
    """Wall time per named part, by wrapping methods: `parts` maps a name to (object, method name).

    On CUDA the clock waits for the device at every boundary. `calls[name]` keeps each call's duration.
    """

    def __init__(self, parts: dict[str, tuple[object, str]], device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, list[float]] = defaultdict(list)
        for name, (owner, attribute) in parts.items():
            self._wrap(owner, attribute, name)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, owner: object, attribute: str, name: str) -> None:
        fn = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        setattr(owner, attribute, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    @contextmanager
    def part(self, name: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        elapsed = time.perf_counter() - start
        self.seconds[name] += elapsed
        self.calls[name].append(elapsed)
