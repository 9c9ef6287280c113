"""Generation scoring at paper scale for the ablation runs: GenEval's own prompts judged by the detector-based
GenEval (`experiments.evaluation.geneval`), and FID at the last evaluation. The row keys match ShapesWorld's
`GenerationScorer` (`generation`, `gen_<category>`, `gen_correct`: each image's 0/1 score, in prompt order), so
curves and paired claims read them alike; FID adds `fid_<name>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.ablations.config import GenerationEval
from experiments.ablations.evaluate import evaluating, in_batches
from experiments.evaluation.batch import plan_units, run_units
from experiments.evaluation.prompt_files import PromptFile, read_prompt_file
from harmon.geneval_rules import read_metadata, summarize
from harmon.model import Harmon
from harmon.utils.strict_yaml import ConfigError


def _existing(path: str | None, key: str) -> Path:
    if path is None or not Path(path).exists():
        raise ConfigError(f"generation.{key} {path} does not exist; point it at your copy with --set "
                          f"generation.{key}=PATH")
    return Path(path)


class DetectorGenerationScorer:
    """GenEval prompts generated (batch b seeded with `sample_seed + b`) and scored with Mask2Former + CLIP; the
    images of the last evaluation are kept in GenEval's layout; FID there too when `fid` is given."""

    def __init__(self, config: GenerationEval, image_size: int, last: int, samples: Path | None = None):
        self.config, self.image_size, self.last, self.samples = config, image_size, last, samples
        self.specs = read_metadata(_existing(config.geneval.metadata, "geneval.metadata"))
        self.prompts = PromptFile("geneval", tuple(s.prompt for s in self.specs), tuple(self.specs))
        if config.fid.active:
            _existing(config.fid.captions, "fid.captions")
            _existing(config.fid.reference, "fid.reference")
        self._scorer = None

    def _geneval(self, model: Harmon) -> Any:
        """The detector and CLIP, loaded on the model's device at the first evaluation."""
        if self._scorer is None:
            from experiments.evaluation.geneval import GenEvalScorer

            self._scorer = GenEvalScorer(self.config.geneval.detector, self.config.geneval.clip, model.device)
            self._scorer.check_classes(self.specs, str(self.config.geneval.metadata))
        return self._scorer

    def _generate(self, model: Harmon, texts: list[str]) -> list:
        c = self.config
        return in_batches(len(texts), c.batch_size, lambda rows, number: model.generate(
            texts[rows], steps=c.steps, cfg=c.cfg, temperature=c.temperature, seed=c.sample_seed + number,
            image_size=self.image_size))

    def __call__(self, model: Harmon, iteration: int) -> dict[str, Any]:
        from experiments.evaluation.batch import save_png
        from experiments.evaluation.layout import sample_path, write_metadata

        per = self.config.geneval.per_prompt
        texts = [s.prompt for s in self.specs for _ in range(per)]
        with evaluating(model):
            images = self._generate(model, texts)
        scorer = self._geneval(model)
        verdicts = [scorer.score(image, self.specs[k // per])[0] for k, image in enumerate(images)]
        summary = summarize(verdicts)
        row = {"generation": summary.overall, **{f"gen_{k}": v for k, v in summary.per_category.items()},
               "gen_correct": [int(v.correct) for v in verdicts]}
        if self.samples is not None and iteration == self.last:
            folder = self.samples / f"iter_{iteration:08d}"
            for index, spec in enumerate(self.specs):
                write_metadata(folder, index, spec)
            for k, image in enumerate(images):
                save_png(image, sample_path(folder, k // per, k % per))
            if self.config.fid.active:
                row[f"fid_{self.config.fid.name}"] = self._fid(model, folder.parent / f"fid_{iteration:08d}")
        return row

    def _fid(self, model: Harmon, folder: Path) -> float:
        from experiments.evaluation.fid import frechet_inception_distance
        from experiments.evaluation.layout import read_flat_images

        f, c = self.config.fid, self.config
        captions = read_prompt_file(f.captions)
        units = plan_units(captions, folder, batch_size=c.batch_size, seed=c.sample_seed, limit=f.limit)
        with evaluating(model):
            run_units(lambda texts, seed: model.generate(list(texts), steps=c.steps, cfg=c.cfg,
                                                         temperature=c.temperature, seed=seed,
                                                         image_size=self.image_size),
                      captions, folder, units, progress=False)
        return frechet_inception_distance(read_flat_images(folder, "FID images"),
                                          read_flat_images(Path(f.reference), "generation.fid.reference"),
                                          f.resolution, f.batch_size, model.device, progress=False)
