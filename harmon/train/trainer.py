"""The training loop: one script for one CPU, one GPU, or many GPUs/nodes through `accelerate launch`.

Each iteration takes one task's micro-batch (this process's rows of the global batch), weights its loss, and
the optimiser steps every `accumulate` iterations with clipping, warm-up + cosine learning rates and optional
EMA. Checkpoints are atomic and hold everything a resumed run needs to continue exactly: weights, optimiser,
scheduler, RNG states and the data position (the iteration number, since batches are a pure function of it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, FullyShardedDataParallelPlugin
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors.torch import load_file as load_safetensors

from harmon.checkpoints import save_safetensors
from harmon.model import Harmon
from harmon.train.batch import TASKS, Shard
from harmon.train.build import build_model
from harmon.train.config import RESUMABLE_CHANGES, TrainConfig, config_dict
from harmon.train.data import MixedStream, batches
from harmon.train.objectives import (
    TrainingModel,
    enable_gradient_checkpointing,
    module_groups,
    no_weight_decay,
    target_token_count,
)
from harmon.train.run_checkpoints import (
    latest_checkpoint,
    load_latest,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from harmon.train.run_log import RunLog
from harmon.train.sources import build_sources
from harmon.utils.files import output_dir, write_json
from harmon.utils.runtime import world_size
from harmon.utils.schedules import warmup_cosine
from harmon.utils.strict_yaml import ConfigError, diff

Evaluate = Callable[[Harmon, int], Mapping[str, float]]


class TrainingStopped(RuntimeError):
    """The run stopped before its last iteration (a non-finite loss); the message names the iteration."""


@dataclass
class TrainResult:
    """What a finished run leaves: its folder, the last iteration, final weights, skipped rows and timings."""

    run_dir: Path
    iteration: int
    weights: Path
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    evaluations: list[dict[str, float]] = field(default_factory=list)


def lr_factor(update: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rates after `update` optimiser updates: linear warm-up, then cosine."""
    total = config.total_updates
    warmup = round(config.optim.warmup_ratio * total)
    return warmup_cosine(update, total, warmup, start=config.optim.warmup_start, floor=config.optim.min_lr_ratio)


def iteration_generator(seed: int, iteration: int, device: torch.device) -> torch.Generator:
    """The generator of one iteration's random draws, seeded from the run's seed and the iteration alone."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + iteration)


def set_trainable(model: Harmon, trainable: Sequence[str]) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Freeze everything but the named module groups; returns the trainable groups."""
    groups = module_groups(model)
    unknown = [g for g in trainable if g not in groups]
    if unknown:
        raise ConfigError(f"trainable lists {unknown} but this model has no such module group "
                          f"(it has {', '.join(groups)})")
    model.requires_grad_(False)
    chosen = {g: groups[g] for g in trainable}
    for params in chosen.values():
        for _, p in params:
            p.requires_grad_(True)
    return chosen


def build_optimizer(groups: Mapping[str, list[tuple[str, torch.nn.Parameter]]], config: TrainConfig
                    ) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with one (decay, no-decay) pair of parameter groups per trainable module group."""
    param_groups, names = [], []
    for group, params in groups.items():
        for decay in (True, False):
            chosen = [p for n, p in params if no_weight_decay(n, p) != decay]
            if chosen:
                param_groups.append({"params": chosen, "lr": config.optim.lr[group], "base_lr": config.optim.lr[group],
                                     "weight_decay": config.optim.weight_decay if decay else 0.0, "group": group})
                names.append(group)
    return torch.optim.AdamW(param_groups, betas=config.optim.betas), names


class EMA:
    """Exponential moving average of the trainable parameters (float32)."""

    def __init__(self, named: Mapping[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.params = dict(named)
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach().float(), 1 - self.decay)


def _accelerator(config: TrainConfig) -> Accelerator:
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    fsdp = None
    if config.distributed == "fsdp" and torch.cuda.is_available() and world_size() > 1:
        fsdp = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["Qwen2DecoderLayer", "Block"], state_dict_type="FULL_STATE_DICT")
    # cpu=True lets torchrun / accelerate launch start several gloo processes on a machine without a GPU
    return Accelerator(mixed_precision=precision, fsdp_plugin=fsdp, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    differing = [k for k in diff(saved, config_dict(config)) if k not in RESUMABLE_CHANGES]
    if differing:
        raise ConfigError(f"run folder {run_dir} belongs to another config; differing keys: {', '.join(differing)}. "
                          "Use a new out_dir, or the config the folder was made with.")


def _gather_rng(accelerator: Accelerator) -> list[dict[str, Any]]:
    state = rng_state()
    if accelerator.num_processes == 1:
        return [state]
    gathered: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, state)
    return gathered


@dataclass
class RunState:
    """What the loop of one run works on: the prepared model and optimiser, the schedule, EMA, data and log."""

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    ema: EMA | None
    stream: MixedStream
    shard: Shard
    start: int
    weights: dict[str, float]
    log: RunLog | None
    last_good: Path | None
    evaluations: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains a Harmon under a TrainConfig. `model` overrides `config.model` (e.g. a Harmon with a plugged
    understanding encoder); `sources` overrides the readers built from `config.data.sources`."""

    def __init__(self, config: TrainConfig, model: Harmon | None = None,
                 sources: Mapping[str, Sequence[Any]] | None = None, console: Console | None = None,
                 progress: bool = True):
        self.config = config
        self.accelerator = _accelerator(config)
        self.console = console or Console(stderr=True)
        self.progress = progress and self.accelerator.is_main_process
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(config.seed + self.accelerator.process_index)
        self.model = model if model is not None else build_model(config.model, config.data.image_size)
        self.sources = sources if sources is not None else build_sources(config.data.sources)
        self.run_dir = Path(config.out_dir)

    def build_stream(self, shard: Shard) -> MixedStream:
        """This process's micro-batches; `fit` reads them through `batch(iteration)` and `skipped`."""
        data = self.config.data
        return MixedStream(self.sources, self.model.tokenizer, data.ratio, data.batch_size, shard, data.image_size,
                           data.max_length, data.caption_drop, self.config.seed)

    def _elapsed(self) -> float:
        """Seconds of training in this run folder: this invocation's plus those before the checkpoint resumed."""
        return self._elapsed_before + time.perf_counter() - self._began

    def _log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            self.console.print(message)

    def fit(self, resume: bool = True, evaluate: Evaluate | None = None, eval_every: int = 0) -> TrainResult:
        """Train to `config.steps` iterations, resuming from the run folder's latest checkpoint when present.

        `evaluate(model, iteration)` runs on the main process every `eval_every` iterations and at the end.
        Raises TrainingStopped on a non-finite loss, keeping the last good checkpoint.
        """
        config, acc = self.config, self.accelerator
        world, rank = acc.num_processes, acc.process_index
        if config.data.batch_size % world:
            raise ConfigError(f"data.batch_size={config.data.batch_size} must be divisible by the {world} processes")
        local = config.data.batch_size // world
        shard = Shard(rank * local, local, config.data.batch_size)
        output_dir(self.run_dir, "out_dir")
        _check_resume_config(self.run_dir, config)
        point = load_latest(self.run_dir, self._log, move_aside=acc.is_main_process) if resume else None
        acc.wait_for_everyone()
        checkpoint = None if point is None else point.folder
        self._elapsed_before = 0.0 if point is None else float(point.state.get("elapsed_s", 0.0))
        start = 0
        harmon = self.model
        if checkpoint is not None:
            state = point.weights
            missing, unexpected = harmon.load_state_dict(state, strict=False)
            optional = ("vae.", "llm.lm_head.") if harmon.llm.config.tie_word_embeddings else ("vae.",)
            wrong = [k for k in missing if not k.startswith(optional)] + list(unexpected)
            if wrong:
                raise ConfigError(f"checkpoint {checkpoint} does not fit the model: {sorted(wrong)[:10]}")
            start = int(point.state["iteration"])
        if config.model.grad_checkpointing:
            enable_gradient_checkpointing(harmon)
        harmon.train()
        groups = set_trainable(harmon, config.trainable)
        optimizer, lr_names = build_optimizer(groups, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(u, config))
        ema = EMA({n: p for params in groups.values() for n, p in params}, config.ema_decay) \
            if config.ema_decay else None
        if checkpoint is not None:
            optimizer.load_state_dict(point.optimizer)
            scheduler.load_state_dict(point.scheduler)
            if ema is not None:
                ema.shadow = point.ema
            rng = point.rng
            if len(rng) == world:
                restore_rng(rng[rank])
            self._log(f"resuming {self.run_dir} from iteration {start} ({checkpoint.name})")
        if acc.is_main_process:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
        objective = TrainingModel(harmon, grad_scale=config.grad_scale)
        model, optimizer = acc.prepare(objective, optimizer)
        stream = self.build_stream(shard)
        log = RunLog(self.run_dir, sorted(set(lr_names)), start) if acc.is_main_process else None
        weights = {t: config.loss_weights.get(t, 1.0) for t in TASKS}
        run = RunState(model, optimizer, scheduler, ema, stream, shard, start, weights, log, checkpoint)
        self._began = time.perf_counter()
        try:
            self._loop(run, evaluate, eval_every)
        finally:
            if log is not None:
                log.close()
        final = self._export(ema)
        skipped = self._skipped(stream)
        if acc.is_main_process:
            write_json(self.run_dir / "summary.json", {"iterations": config.steps, "skipped_rows": skipped,
                                                       "seconds": self._elapsed()})
        return TrainResult(self.run_dir, config.steps, final, skipped, self._elapsed(),
                           run.evaluations)

    def _loop(self, run: RunState, evaluate: Evaluate | None, eval_every: int) -> None:
        config, acc = self.config, self.accelerator
        device = acc.device
        model, optimizer, log, start = run.model, run.optimizer, run.log, run.start
        params = [p for group in optimizer.param_groups for p in group["params"]]
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, disable=not self.progress)
        tick = time.perf_counter()
        with progress:
            bar = progress.add_task(config.name, total=config.steps, completed=start, loss="-")
            for iteration, batch in enumerate(batches(run.stream, start, config.steps, config.data.num_workers),
                                              start=start):
                batch = batch.to(device)
                generator = iteration_generator(config.seed, iteration, device)
                token_norm = None
                if batch.labels is not None:
                    kept = torch.tensor(float(target_token_count(batch)), device=device)
                    token_norm = float(acc.reduce(kept, "sum")) / acc.num_processes
                update_now = (iteration + 1) % config.accumulate == 0
                sync = contextlib.nullcontext() if update_now else acc.no_sync(model)
                with sync:
                    with acc.autocast():
                        loss = model(batch, run.shard, generator, token_norm)
                    mean_loss = float(acc.reduce(loss.detach().float(), "mean"))
                    if not math.isfinite(mean_loss):
                        where = f"; the last good checkpoint is {run.last_good}" if run.last_good else \
                            "; no checkpoint was written yet"
                        message = (f"non-finite {batch.task} loss ({mean_loss}) at iteration {iteration}{where}. "
                                   "Lower the learning rates or check the data, then resume from the checkpoint.")
                        if acc.is_main_process:
                            write_json(self.run_dir / "stopped.json", {"iteration": iteration, "task": batch.task,
                                                                        "loss": str(mean_loss),
                                                                        "last_checkpoint": str(run.last_good)})
                        raise TrainingStopped(message)
                    acc.backward(loss * run.weights[batch.task] / config.accumulate)
                grad_norm = None
                if update_now:
                    if config.optim.grad_clip is not None:
                        grad_norm = float(acc.clip_grad_norm_(params, config.optim.grad_clip))
                    optimizer.step()
                    run.scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if run.ema is not None:
                        run.ema.update()
                done = iteration + 1
                now = time.perf_counter()
                if log is not None and (done % config.log_every == 0 or done == config.steps):
                    lrs = {f"lr_{g['group']}": g["lr"] for g in optimizer.param_groups}
                    log.write({"iteration": iteration, "update": done // config.accumulate, "task": batch.task,
                               "loss": f"{mean_loss:.6f}", "grad_norm": "" if grad_norm is None else f"{grad_norm:.5f}",
                               "samples_per_s": f"{run.shard.global_size / max(now - tick, 1e-9):.3f}",
                               "elapsed_s": f"{self._elapsed():.3f}", **lrs})
                tick = now
                progress.update(bar, completed=done, loss=f"{mean_loss:.4f}")
                if done % config.save_every == 0 or done == config.steps:
                    run.last_good = self._save(run, done)
                if evaluate is not None and eval_every and (done % eval_every == 0 or done == config.steps):
                    run.evaluations.append(self._evaluate(model, evaluate, done))

    def _weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state without the frozen VAE (and without lm_head when it is tied to the embeddings)."""
        state = self.accelerator.get_state_dict(model)
        prefix = "harmon."
        tied = self.model.llm.config.tie_word_embeddings
        return {k[len(prefix):]: v.detach().to("cpu").contiguous() for k, v in state.items()
                if k.startswith(prefix) and not k.startswith(prefix + "vae.")
                and not (tied and k == prefix + "llm.lm_head.weight")}

    def _skipped(self, stream: MixedStream) -> dict[str, int]:
        counts = [dict(stream.skipped)]
        if self.accelerator.num_processes > 1:
            counts = [None] * self.accelerator.num_processes
            torch.distributed.all_gather_object(counts, dict(stream.skipped))
        total: Counter[str] = Counter()
        for c in counts:
            total.update(c)
        return dict(total)

    def _save(self, run: RunState, done: int) -> Path:
        acc = self.accelerator
        weights = self._weights(run.model)
        rng = _gather_rng(acc)
        skipped = self._skipped(run.stream)
        path = self.run_dir / "checkpoints" / f"iter_{done:08d}"
        if acc.is_main_process:
            path = save_checkpoint(self.run_dir, done, weights, run.optimizer.state_dict(), run.scheduler.state_dict(),
                                   rng, {"skipped_rows": skipped, "name": self.config.name,
                                         "elapsed_s": self._elapsed()},
                                   None if run.ema is None else run.ema.shadow, self.config.keep_last)
        acc.wait_for_everyone()
        return path

    def _evaluate(self, model: torch.nn.Module, evaluate: Evaluate, done: int) -> dict[str, float]:
        acc = self.accelerator
        result: dict[str, float] = {}
        if acc.is_main_process:
            harmon = acc.unwrap_model(model).harmon
            harmon.eval()
            devices = list(range(torch.cuda.device_count()))
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                result = {"iteration": float(done), **evaluate(harmon, done)}
            harmon.train()
            with (self.run_dir / "evaluations.jsonl").open("a") as f:
                f.write(json.dumps(result) + "\n")
        acc.wait_for_everyone()
        return result

    def _export(self, ema: EMA | None) -> Path:
        """Final weights as safetensors (the EMA weights too when EMA is on)."""
        acc = self.accelerator
        latest = latest_checkpoint(self.run_dir)
        target = self.run_dir / "final" / "model.safetensors"
        if acc.is_main_process and latest is not None:
            weights = load_safetensors(str(latest / "model.safetensors"))
            save_safetensors(weights, target, metadata={"name": self.config.name, "format": "harmon-toolkit"})
            if ema is not None:
                save_safetensors({**weights, **ema.shadow}, target.with_name("model_ema.safetensors"))
        acc.wait_for_everyone()
        return target
