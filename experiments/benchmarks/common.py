"""What every benchmark shares: device, dtype and CPU-thread options, the compile / autocast options of the
sampling benchmarks, interleaved repeated timing with medians and spread, and a split timer."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from harmon.compile import COMPILE_BACKENDS, COMPILE_CHOICES
from harmon.utils.runtime import cpu_count, resolve_device


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """`--threads`: torch's CPU threads, set explicitly (default: `default`, else the cores available)."""
    default = default or cpu_count()
    parser.add_argument("--threads", type=int, default=default, help=f"torch CPU threads (default {default})")


def set_threads(threads: int) -> int:
    """Set torch's CPU threads; returns the number set."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--dtype", default="auto", help="'auto' (bf16 on CUDA, fp32 on CPU), 'fp32' or 'bf16'")
    add_threads_option(parser)


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Apply --threads and resolve --device/--dtype."""
    set_threads(args.threads)
    device = resolve_device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def add_repeat_options(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="timed runs of each variant, interleaved A B A B ...; medians are reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant at the timed setting")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="off",
                        help="also time a copy compiled with this torch.compile mode, interleaved with the eager one")
    parser.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default="inductor",
                        help="torch.compile backend (aot_eager: traces only, for quick checks)")
    parser.add_argument("--autocast", action="store_true", help="sample under bf16 autocast (meant for CUDA)")


def machine() -> dict[str, Any]:
    """Where a benchmark ran: processor, cores, load and torch's threads."""
    return {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "threads": torch.get_num_threads()}


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def spread(seconds: list[float]) -> dict[str, Any]:
    """Median, fastest, slowest and the range as a share of the median, of repeated timings."""
    median = statistics.median(seconds)
    return {"median_s": median, "min_s": min(seconds), "max_s": max(seconds),
            "spread_pct": 100 * (max(seconds) - min(seconds)) / median, "runs_s": seconds}


@dataclass
class Interleaved:
    """Timings of variants run in turn: each variant's seconds, first (warm-up) seconds and last result."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    warmup_s: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def spread(self, name: str) -> dict[str, Any]:
        return {**spread(self.seconds[name]), "warmup_s": self.warmup_s[name]}


def interleave(variants: dict[str, Callable[[], Any]], repeats: int, device: str | torch.device = "cpu",
               warmup: int = 1) -> Interleaved:
    """Run every variant `warmup` times untimed, then `repeats` rounds of A B C ... with the clock waiting for
    the device around each call."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats ({repeats}) must be >= 1 and warmup ({warmup}) >= 0")
    timings = Interleaved({name: [] for name in variants}, {name: [] for name in variants})
    for name, run in variants.items():
        for _ in range(warmup):
            seconds, timings.results[name] = timed(run, device)
            timings.warmup_s[name].append(seconds)
    for _ in range(repeats):
        for name, run in variants.items():
            seconds, timings.results[name] = timed(run, device)
            timings.seconds[name].append(seconds)
    return timings


def timed(run: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[float, Any]:
    """Seconds of one call of `run` (device work included) and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - start, result


class SplitTimer:
    """Wall time per named part, by wrapping methods: `parts` maps a name to (object, method name).

    On CUDA the clock waits for the device at every boundary, which changes how work overlaps: time totals in
    runs without a SplitTimer. `calls[name]` keeps each call's duration; `restore()` unwraps the methods.
    """

    def __init__(self, parts: dict[str, tuple[object, str]], device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, list[float]] = defaultdict(list)
        self._wrapped: list[tuple[object, str, Any]] = []
        for name, (owner, attribute) in parts.items():
            self._wrap(owner, attribute, name)

    def _wrap(self, owner: object, attribute: str, name: str) -> None:
        fn = getattr(owner, attribute)
        self._wrapped.append((owner, attribute, vars(owner).get(attribute)))

        def timed_part(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        setattr(owner, attribute, timed_part)

    def restore(self) -> None:
        """Put the wrapped methods back (an attribute the object held itself, e.g. a compiled forward, too)."""
        for owner, attribute, own in reversed(self._wrapped):
            if own is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)
        self._wrapped.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    @contextmanager
    def part(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.seconds[name] += elapsed
        self.calls[name].append(elapsed)
