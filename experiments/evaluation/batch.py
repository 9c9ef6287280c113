"""Batch generation over a prompt file, in the layout the scorers read, resumable and spread over processes.

Work is cut into units that do not depend on the number of processes: in GenEval's layout one unit is one
prompt and its `per_prompt` samples (one call, seed `seed + prompt index`); in the flat layout one unit is
`batch_size` consecutive captions (seed `seed + unit index`). Rank r of N (accelerate's process state, under
`accelerate launch` or `torchrun`) takes units r, r + N, ...; a unit whose images all exist is skipped, and every
image is written atomically, so an interrupted run resumes where it stopped and gives the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from experiments.evaluation.layout import flat_path, sample_path, write_metadata
from experiments.evaluation.prompt_files import PromptFile
from harmon.utils.files import atomic_path, output_dir

if TYPE_CHECKING:
    from rich.console import Console

    from harmon.model import Harmon

Generate = Callable[[Sequence[str], int], list[Image.Image]]


@dataclass(frozen=True)
class Unit:
    """One generation call: the prompts, the seed, and the file each image goes to."""

    index: int
    prompts: tuple[str, ...]
    seed: int
    paths: tuple[Path, ...]


def plan_units(prompts: PromptFile, out: Path, per_prompt: int = 4, batch_size: int = 16, seed: int = 0,
               limit: int | None = None) -> list[Unit]:
    """Every unit of the run (all ranks), in order."""
    texts = prompts.texts[:limit] if limit else prompts.texts
    if prompts.layout == "geneval":
        return [Unit(i, (text,) * per_prompt, seed + i, tuple(sample_path(out, i, s) for s in range(per_prompt)))
                for i, text in enumerate(texts)]
    units = []
    for u, start in enumerate(range(0, len(texts), batch_size)):
        chunk = texts[start:start + batch_size]
        units.append(Unit(u, tuple(chunk), seed + u, tuple(flat_path(out, start + k) for k in range(len(chunk)))))
    return units


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def run_units(generate: Generate, prompts: PromptFile, out: Path, units: list[Unit], rank: int = 0,
              world: int = 1, progress: bool = True) -> dict[str, int]:
    """Generate this rank's units that are not complete; counts of images written and skipped."""
    from rich.progress import Progress

    out = output_dir(out, "--out")
    mine = [u for u in units if u.index % world == rank]
    if prompts.layout == "geneval":
        for unit in mine:
            write_metadata(out, unit.index, prompts.specs[unit.index])
    todo = [u for u in mine if not all(p.exists() for p in u.paths)]
    written = 0
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"rank {rank}: generating", total=sum(len(u.paths) for u in todo))
        for unit in todo:
            images = generate(unit.prompts, unit.seed)
            for image, path in zip(images, unit.paths, strict=True):
                if not path.exists():
                    save_png(image, path)
                    written += 1
            bar.advance(task, len(unit.paths))
    return {"written": written, "skipped": sum(len(u.paths) for u in mine) - written, "units": len(mine)}


def generate_batch(model: Harmon, prompts: PromptFile, out: Path, per_prompt: int = 4, batch_size: int = 16,
                   limit: int | None = None, seed: int = 0, steps: int = 64, cfg: float = 3.0,
                   cfg_schedule: str = "constant", temperature: float = 1.0, image_size: int = 512,
                   autocast: bool = False, console: Console | None = None) -> dict[str, int]:
    """`harmon generate --prompts`: plan the units and generate this process's share."""
    from accelerate import PartialState

    from harmon.generation import generate_images
    from harmon.images import to_pil
    from harmon.utils.runtime import bf16_autocast, local_rank, world_size

    state = PartialState(cpu=model.device.type == "cpu") if world_size() > 1 else None
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    units = plan_units(prompts, Path(out), per_prompt, batch_size, seed, limit)

    def generate(texts: Sequence[str], unit_seed: int) -> list[Image.Image]:
        with bf16_autocast(model.device, autocast):
            images = generate_images(model, list(texts), steps=steps, cfg=cfg, cfg_schedule=cfg_schedule,
                                     temperature=temperature, seed=unit_seed, image_size=image_size)
        return to_pil(images, rounding="harmon")

    counts = run_units(generate, prompts, Path(out), units, rank, world, progress=local_rank() == 0)
    if state:
        state.wait_for_everyone()
    if console is not None:
        console.print(f"rank {rank}/{world}: wrote {counts['written']} image(s), "
                      f"{counts['skipped']} already there, in {out} ({prompts.layout} layout)")
    return counts
