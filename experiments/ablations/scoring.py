"""The evaluation hooks the ablation runs hand to the trainer, and the benchmark paths of the paper presets.

Every hook returns one evaluations.jsonl row: ShapesWorld QA gives `understanding` (accuracy), `qa_<kind>`, the
POPE-style `pope_f1` / `pope_accuracy` / `pope_yes_ratio` of its existence questions and `qa_correct` (each held-out
item's 0/1 correctness, in item order); generation gives `generation` (GenEval-style overall), `gen_<category>` and
`gen_correct` (each prompt's 0/1 score, in prompt order); the public benchmarks give `pope` (F1 x 100),
`mme_p`, `mme_c`, `gqa` (x 100) and `understanding`, the mean of those given on a 0-1 scale (MME-P / 2000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.ablations.benchmarks import run_benchmark
from experiments.ablations.config import BenchmarkEval, DataSection, GenerationEval, QAEval
from experiments.ablations.evaluate import (
    evaluate_generation,
    evaluate_understanding,
    generation_prompts,
    qa_eval_set,
)
from harmon.model import Harmon
from harmon.shapesworld import ShapesWorldConfig
from harmon.utils.strict_yaml import ConfigError

MME_PERCEPTION_MAX = 2000.0  # ten perception categories of at most 200 points


def task_world(data: DataSection, task: str, image_size: int) -> ShapesWorldConfig:
    """The ShapesWorld scenes a task trains on (its first ShapesWorld source), rendered at `image_size`; the
    evaluation draws held-out scenes of the same kind."""
    for source in data.sources:
        if source.task == task and source.format == "shapesworld":
            config = source.shapesworld
            return ShapesWorldConfig(**{**vars(config), "image_size": image_size})
    return ShapesWorldConfig(image_size=image_size)


def describe_world(world: ShapesWorldConfig) -> str:
    """One line on the ShapesWorld scenes a run sees."""
    objects = (f"{world.min_objects}" if world.min_objects == world.max_objects else
               f"{world.min_objects}-{world.max_objects}")
    return (f"ShapesWorld scenes of {objects} object{'s' * (world.max_objects > 1)}, sizes {', '.join(world.sizes)}, "
            f"{world.image_size} px")


class QAScorer:
    """Held-out ShapesWorld QA items, answered greedily and scored."""

    def __init__(self, config: QAEval, world: ShapesWorldConfig, image_size: int):
        self.config, self.image_size = config, image_size
        self.items = qa_eval_set(world, config.seed, config.items, config.kinds, config.negatives)

    def __call__(self, model: Harmon, iteration: int) -> dict[str, Any]:
        result = evaluate_understanding(model, self.items, batch_size=self.config.batch_size,
                                        image_size=self.image_size, max_new_tokens=self.config.max_new_tokens)
        row = {"understanding": result["accuracy"], **{f"qa_{k}": v for k, v in result["per_kind"].items()},
               "qa_correct": result["correct"]}
        if result["pope"] is not None:
            row |= {"pope_f1": result["pope"]["f1"], "pope_accuracy": result["pope"]["accuracy"],
                    "pope_yes_ratio": result["pope"]["yes_ratio"]}
        return row


class GenerationScorer:
    """GenEval-style ShapesWorld prompts, generated and checked; the images of the last evaluation are kept."""

    def __init__(self, config: GenerationEval, world: ShapesWorldConfig, image_size: int, last: int,
                 samples: Path | None = None):
        self.config, self.image_size, self.last, self.samples = config, image_size, last, samples
        self.prompts = generation_prompts(config.per_category, config.seed, world, config.categories)

    def __call__(self, model: Harmon, iteration: int) -> dict[str, Any]:
        c = self.config
        keep = self.samples / f"iter_{iteration:08d}" if self.samples is not None and iteration == self.last else None
        result = evaluate_generation(model, self.prompts, steps=c.steps, cfg=c.cfg, seed=c.sample_seed,
                                     image_size=self.image_size, batch_size=c.batch_size, temperature=c.temperature,
                                     out_dir=keep)
        return {"generation": result["overall"], **{f"gen_{k}": v for k, v in result["per_category"].items()},
                "gen_correct": result["correct"]}


@dataclass(frozen=True)
class BenchmarkPaths:
    """Benchmark files from the command line (None: not given)."""

    pope: Path | None = None
    pope_images: Path | None = None
    mme: Path | None = None
    mme_images: Path | None = None
    gqa: Path | None = None
    gqa_images: Path | None = None

    def given(self, required: bool = True) -> dict[str, tuple[Path, Path | None]]:
        """Benchmark -> (questions, images), after checking that what is given is complete and exists; none
        given is an error when `required` (no lmms-eval columns)."""
        pairs = {"pope": (self.pope, self.pope_images, True), "mme": (self.mme, self.mme_images, False),
                 "gqa": (self.gqa, self.gqa_images, True)}
        chosen = {}
        for name, (questions, images, needs_images) in pairs.items():
            if questions is None and images is None:
                continue
            if questions is None:
                raise ConfigError(f"--{name}-images is given without --{name} (the {name.upper()} question file)")
            if needs_images and images is None:
                raise ConfigError(f"--{name} is given without --{name}-images (the folder of its images)")
            for option, path in ((f"--{name}", questions), (f"--{name}-images", images)):
                if path is not None and not path.exists():
                    raise ConfigError(f"{option} {path} does not exist")
            chosen[name] = (questions, images)
        if not chosen and required:
            raise ConfigError("the paper preset evaluates on the public benchmarks: pass at least one of --pope PATH "
                              "--pope-images DIR, --mme DIR, --gqa PATH --gqa-images DIR (none was given)")
        return chosen


class BenchmarkScorer:
    """The given public benchmarks through `run_benchmark`; Table 5 columns plus `understanding`."""

    def __init__(self, config: BenchmarkEval, paths: dict[str, tuple[Path, Path | None]], image_size: int):
        self.config, self.paths, self.image_size = config, paths, image_size

    def __call__(self, model: Harmon, iteration: int) -> dict[str, float]:
        c, row, unit = self.config, {}, []
        for name, (questions, images) in self.paths.items():
            result = run_benchmark(model, name, questions, images, limit=c.limit, batch_size=c.batch_size,
                                   max_new_tokens=c.max_new_tokens, image_size=self.image_size)
            if name == "mme":
                row |= {"mme_p": result["perception"], "mme_c": result["cognition"]}
                unit.append(result["perception"] / MME_PERCEPTION_MAX)
            else:
                row[name] = result["score"]
                unit.append(result["score"] / 100)
        return {**row, "understanding": sum(unit) / len(unit)} if unit else row


def combine(*scorers: Any) -> Any:
    """One hook running each scorer and merging their rows."""
    def evaluate(model: Harmon, iteration: int) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for scorer in scorers:
            row |= scorer(model, iteration)
        return row

    return evaluate


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
