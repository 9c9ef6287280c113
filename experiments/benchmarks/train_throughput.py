"""Training throughput: the Trainer's loop against a bare PyTorch loop on the same batches, model and optimiser.

    python -m experiments.benchmarks.train_throughput --model tiny --steps 40 --batch 8 --image-size 64 --threads 1

Both loops start from the same random init, take the same prebuilt ShapesWorld batches (data loading is timed
by neither) and the same per-iteration random draws, so their losses agree. The bare loop is forward, backward,
clip_grad_norm_, AdamW step, LambdaLR step and zero_grad; the Trainer adds everything else it does per iteration
(reduces, logging, progress, accelerate wrappers). An untimed cycle of batches runs first; then the first
`--warmup` iterations and the last one (which ends in the run's only checkpoint, timed apart) are left out of the
clock; on CUDA the clock waits for the device at every iteration. Peak memory up to the last iteration: CPU, the
resident-set high-water mark above the level before the model is copied; CUDA, max_memory_allocated above the
same point. 'harmon-0.5b' has the release's shapes (Qwen2.5-0.5B vocab and dims, MAR-B, KL-16) with random
weights and a tiny tokenizer. Writes a JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import ctypes
import gc
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from experiments.benchmarks.common import SplitTimer, add_device_options, device_and_dtype
from harmon.harmon_loading import paper_harmon_config
from harmon.model import Harmon
from harmon.tiny import TINY_CORPUS
from harmon.tokenizer import build_tiny_tokenizer
from harmon.train.batch import Batch, Shard
from harmon.train.build import build_model
from harmon.train.config import TrainConfig, load_config, with_changes
from harmon.train.data import MixedStream
from harmon.train.objectives import TrainingModel, enable_gradient_checkpointing, target_token_count
from harmon.train.sources import build_sources
from harmon.train.trainer import Trainer, build_optimizer, iteration_generator, lr_factor, set_trainable
from harmon.utils.strict_yaml import ConfigError

PRESETS = {"tiny": "tiny-shapesworld", "harmon-0.5b": "harmon-0.5b-stage1"}
DEFAULT_IMAGE_SIZE = {"tiny": 64, "harmon-0.5b": 256}
SHAPESWORLD = ("[{task: i2t, format: shapesworld, length: 512, seed: 1}, "
               "{task: t2i, format: shapesworld, length: 512, seed: 2}]")
MB = 2**20


def _status_bytes(field: str) -> int:
    """A `/proc/self/status` memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Probe:
    """Start time of every iteration and the memory peak up to the start of iteration `last`."""

    def __init__(self, device: torch.device, last: int):
        self.device, self.last = device, last
        self.marks: list[float] = []
        self.base = self.peak = self.peak_total = 0

    def begin(self) -> None:
        """Free what earlier runs left, then reset the peak (CPU: trim the heap and clear VmHWM)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            ctypes.CDLL(None).malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_bytes("VmRSS")

    def mark(self, iteration: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append(time.perf_counter())
        if iteration == self.last:
            self.peak_total = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                               else _status_bytes("VmHWM"))
            self.peak = self.peak_total - self.base

    def report(self, batches: list[Batch], warmup: int) -> dict:
        """Samples/s and per-iteration medians over iterations warmup..last-1, and the memory peak."""
        marks, timed = self.marks[warmup:self.last + 1], batches[warmup:self.last]
        steps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        by_task = {t: [s for s, batch in zip(steps, timed, strict=True) if batch.task == t]
                   for t in sorted({batch.task for batch in timed})}
        samples = sum(len(batch) for batch in timed)
        return {
            "timed_iterations": len(steps), "seconds": sum(steps), "samples_per_s": samples / sum(steps),
            "median_iteration_s": statistics.median(steps),
            "median_iteration_s_by_task": {t: statistics.median(s) for t, s in by_task.items()},
            "iteration_s": steps, "peak_memory_mb": self.peak / MB, "peak_memory_total_mb": self.peak_total / MB,
        }


class PrebuiltStream:
    """The Trainer's stream over a fixed list of batches; every fetch marks the start of an iteration."""

    def __init__(self, batches: list[Batch], probe: Probe):
        self.batches, self.probe = batches, probe
        self.skipped: Counter[str] = Counter()

    def batch(self, iteration: int) -> Batch:
        self.probe.mark(iteration)
        return self.batches[iteration]


class PrebuiltTrainer(Trainer):
    """The real Trainer, fed prebuilt batches instead of a MixedStream over its sources."""

    def __init__(self, config: TrainConfig, model: Harmon, batches: list[Batch], probe: Probe):
        super().__init__(config, model=model, sources={}, progress=False)
        self.stream = PrebuiltStream(batches, probe)

    def build_stream(self, shard: Shard) -> PrebuiltStream:
        return self.stream


def bench_config(args: argparse.Namespace, dtype: torch.dtype, out_dir: str) -> TrainConfig:
    """The model's preset with ShapesWorld data, the benchmark's sizes and one checkpoint, at the end."""
    overrides = [f"data.sources={SHAPESWORLD}", f"data.batch_size={args.batch}", f"data.image_size={args.image_size}",
                 f"steps={args.steps}", f"save_every={args.steps + 1}", f"out_dir={out_dir}", f"seed={args.seed}",
                 "data.num_workers=0", f"mixed_precision='{'bf16' if dtype == torch.bfloat16 else 'no'}'"]
    overrides += [f"data.ratio=[{args.ratio}]"] if args.ratio else []
    overrides += [f"log_every={args.log_every}"] if args.log_every else []
    overrides += [f"trainable=[{args.trainable}]"] if args.trainable else []
    try:
        return load_config(PRESETS[args.model], overrides)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from err


def build(args: argparse.Namespace, config: TrainConfig) -> Harmon:
    """The benchmark's random model, in train mode on CPU, float32."""
    if args.model == "tiny":
        return build_model(config.model, args.image_size)
    torch.manual_seed(args.seed)
    return Harmon(paper_harmon_config("harmon-0.5b", args.image_size), build_tiny_tokenizer(TINY_CORPUS)).train()


def bare_loop(config: TrainConfig, harmon: Harmon, batches: list[Batch], device: torch.device, dtype: torch.dtype,
              probe: Probe) -> list[float]:
    """Forward, backward, clipping, AdamW and LambdaLR steps, nothing else; returns the losses."""
    if config.model.grad_checkpointing:
        enable_gradient_checkpointing(harmon)
    harmon.to(device).train()
    optimizer, _ = build_optimizer(set_trainable(harmon, config.trainable), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, config))
    objective = TrainingModel(harmon, grad_scale=config.grad_scale)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shard = Shard.whole(config.data.batch_size)
    generators = [iteration_generator(config.seed, i, device) for i in range(len(batches))]
    norms = [None if b.labels is None else float(target_token_count(b)) for b in batches]
    torch.manual_seed(config.seed)
    losses = []
    for i, batch in enumerate(batches):
        probe.mark(i)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = objective(batch, shard, generators[i], norms[i])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return [float(loss) for loss in losses]


def run_bare(args: argparse.Namespace, config: TrainConfig, pristine: Harmon, batches: list[Batch],
             device: torch.device, dtype: torch.dtype) -> dict:
    probe = Probe(device, len(batches) - 1)
    probe.begin()
    losses = bare_loop(config, copy.deepcopy(pristine), batches, device, dtype, probe)
    return {**probe.report(batches, args.warmup), "losses": losses}


def run_trainer(args: argparse.Namespace, config: TrainConfig, pristine: Harmon, batches: list[Batch],
                device: torch.device) -> dict:
    probe = Probe(device, len(batches) - 1)
    probe.begin()
    trainer = PrebuiltTrainer(config, copy.deepcopy(pristine), batches, probe)
    timer = SplitTimer({"checkpoint": (trainer, "_save")}, device)
    trainer.fit(resume=False)
    with (Path(config.out_dir) / "metrics.csv").open(newline="") as f:
        logged = {int(row["iteration"]): row["loss"] for row in csv.DictReader(f)}
    return {**probe.report(batches, args.warmup), "checkpoint_save_s": timer.seconds["checkpoint"],
            "logged_losses": logged}


def compare(bare: dict, trainer: dict) -> dict:
    """Overhead of the Trainer and whether both loops logged the same losses (at the Trainer's 6 decimals)."""
    logged = trainer["logged_losses"]
    return {
        "overhead_pct": 100 * (bare["samples_per_s"] - trainer["samples_per_s"]) / bare["samples_per_s"],
        "losses_equal": all(f"{bare['losses'][i]:.6f}" == loss for i, loss in logged.items()),
        "max_abs_loss_diff": max(abs(bare["losses"][i] - float(loss)) for i, loss in logged.items()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(PRESETS), default="tiny",
                        help="random model; its settings come from the preset " + ", ".join(PRESETS.values()))
    parser.add_argument("--steps", type=int, default=40, help="iterations per loop, warm-up included")
    parser.add_argument("--warmup", type=int, default=5, help="first iterations left out of the clock")
    parser.add_argument("--batch", type=int, default=8, help="rows per iteration")
    parser.add_argument("--image-size", type=int, help="pixels (default: 64 tiny, 256 harmon-0.5b)")
    parser.add_argument("--ratio", help="text,i2t,t2i iterations per cycle, e.g. 0,1,2 (default: the preset's)")
    parser.add_argument("--log-every", type=int, help="Trainer log interval (default: the preset's)")
    parser.add_argument("--trainable", help="comma list of module groups (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=1, help="bare + Trainer pairs; the order alternates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/benchmarks/train_throughput.json", help="JSON output path")
    add_device_options(parser)
    args = parser.parse_args()
    args.image_size = args.image_size or DEFAULT_IMAGE_SIZE[args.model]
    if args.steps < args.warmup + 2:
        raise SystemExit(f"error: --steps ({args.steps}) must be at least --warmup ({args.warmup}) + 2")
    device, dtype = device_and_dtype(args)
    if device.type != ("cuda" if torch.cuda.is_available() else "cpu"):
        raise SystemExit("error: the Trainer trains on CUDA exactly when it is available; "
                         "set CUDA_VISIBLE_DEVICES= to time the CPU")
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(args, dtype, tmp)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        pristine = build(args, config)
        data = config.data
        stream = MixedStream(build_sources(data.sources), pristine.tokenizer, data.ratio, data.batch_size,
                             Shard.whole(data.batch_size), data.image_size, data.max_length, data.caption_drop,
                             config.seed)
        batches = [stream.batch(i) for i in range(config.steps)]
        # one untimed cycle first, so the process's one-time allocations land in neither loop's peak
        bare_loop(config, copy.deepcopy(pristine), batches[:len(stream.cycle)], device, dtype, Probe(device, -1))
        repeats = []
        for r in range(args.repeats):
            order = ("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")
            row: dict = {"order": list(order)}
            for kind in order:
                row[kind] = (run_bare(args, config, pristine, batches, device, dtype) if kind == "bare" else
                             run_trainer(args, with_changes(config, out_dir=f"{tmp}/run{r}"), pristine, batches,
                                         device))
            repeats.append({**row, **compare(row["bare"], row["trainer"])})

    report = {
        "model": args.model, "preset": PRESETS[args.model], "device": str(device), "dtype": str(dtype),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "args": vars(args),
        "params_m": {part: sum(p.numel() for p in getattr(pristine, part).parameters()) / 1e6
                     for part in ("llm", "mar", "vae", "proj_in", "proj_out")},
        "config": {"batch": data.batch_size, "image_size": data.image_size, "ratio": list(data.ratio),
                   "max_length": data.max_length, "steps": config.steps, "warmup": args.warmup,
                   "log_every": config.log_every, "trainable": config.trainable,
                   "grad_checkpointing": config.model.grad_checkpointing, "mixed_precision": config.mixed_precision,
                   "deterministic": config.deterministic},
        "median": {"bare_samples_per_s": statistics.median(r["bare"]["samples_per_s"] for r in repeats),
                   "trainer_samples_per_s": statistics.median(r["trainer"]["samples_per_s"] for r in repeats),
                   "overhead_pct": statistics.median(r["overhead_pct"] for r in repeats)},
        "repeats": repeats,
    }
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    Console().print(f"wrote {out}")


def print_table(report: dict) -> None:
    c = report["config"]
    memory = "peak RSS" if report["device"] == "cpu" else "peak allocated"
    table = Table("repeat", "loop", "samples/s", "median iter s", "by task (s)", f"{memory} MB", "checkpoint s",
                  "overhead %", "losses equal",
                  title=f"{report['model']} training, batch {c['batch']}, {c['image_size']} px, ratio {c['ratio']}, "
                        f"{c['steps']} steps ({c['warmup']} warm-up), on {report['device']} "
                        f"({report['dtype'].removeprefix('torch.')}, {report['threads']} threads)")
    for r, row in enumerate(report["repeats"]):
        for kind in row["order"]:
            run = row[kind]
            tasks = ", ".join(f"{t} {s:.4f}" for t, s in run["median_iteration_s_by_task"].items())
            save = f"{run['checkpoint_save_s']:.3f}" if kind == "trainer" else "-"
            table.add_row(str(r), kind, f"{run['samples_per_s']:.2f}", f"{run['median_iteration_s']:.4f}", tasks,
                          f"{run['peak_memory_mb']:.0f}", save,
                          f"{row['overhead_pct']:.2f}" if kind == "trainer" else "",
                          str(row["losses_equal"]) if kind == "trainer" else "")
    Console(width=180).print(table)

if __name__ == "__main__":
    main()
