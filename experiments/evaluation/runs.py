"""The generation-evaluation runs behind `harmon geneval`, `harmon fid` and `harmon generate --prompts`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.evaluation.layout import read_flat_images, read_geneval_images
from experiments.evaluation.report import fid_report, geneval_report
from harmon.geneval_rules import read_metadata, summarize
from harmon.utils.files import PathError, atomic_write, output_dir, write_json


def run_geneval(images: Path, metadata: Path, out: Path, detector: str, clip: str, device: str = "cpu",
                label: str = "generated", progress: bool = True) -> dict[str, Any]:
    """Score every image of GenEval's layout against the metadata file: `results.jsonl` (one row per image, the
    published evaluator's fields), `scores.json` and `report.md` in `out`."""
    from PIL import Image
    from rich.progress import Progress

    from experiments.evaluation.geneval import GenEvalScorer, result_row

    specs = read_metadata(metadata)
    prompts = read_geneval_images(images, specs)
    out = output_dir(out, "--out")
    scorer = GenEvalScorer(detector, clip, device)
    scorer.check_classes(specs, str(metadata))
    rows, verdicts = [], []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("GenEval", total=sum(len(p.images) for p in prompts))
        for prompt in prompts:
            for path in prompt.images:
                with Image.open(path) as image:
                    verdict, details = scorer.score(image, prompt.spec)
                verdicts.append(verdict)
                rows.append(result_row(path, prompt.spec, verdict, details))
                bar.advance(task)
    summary = summarize(verdicts)
    scores = {"overall": summary.overall, "per_category": summary.per_category, "counts": summary.counts,
              "images": len(rows), "prompts": len(prompts), "detector": detector, "clip": clip,
              "metadata": str(metadata), "images_folder": str(images)}
    atomic_write(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(out / "scores.json", scores)
    geneval_report(scores, out, label)
    return scores


def run_fid(generated: Path, reference: Path, out: Path, benchmark: str | None, resolution: int = 512,
            batch_size: int = 50, device: str = "cpu", weights: Path | None = None, label: str = "generated",
            progress: bool = True) -> dict[str, Any]:
    """FID of a folder of generated images against a reference folder; `fid.json` and `report.md` in `out`."""
    from experiments.evaluation.fid import frechet_inception_distance

    fake, real = read_flat_images(generated, "generated images folder"), read_flat_images(reference, "--reference")
    for what, paths in (("generated images folder", fake), ("--reference", real)):
        if len(paths) < 2:
            raise PathError(f"{what} holds {len(paths)} image; FID needs at least 2 (the paper uses 30,000)")
    out = output_dir(out, "--out")
    value = frechet_inception_distance(fake, real, resolution, batch_size, device, weights=weights,
                                       progress=progress)
    result = {"fid": value, "benchmark": benchmark, "generated": len(fake), "reference": len(real),
              "resolution": resolution, "label": label, "generated_folder": str(generated),
              "reference_folder": str(reference)}
    fid_report(result, out)
    return result

