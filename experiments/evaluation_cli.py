"""`harmon geneval`, `harmon fid` and `harmon gen-table`: paper-scale generation evaluation (registered by
experiments/cli.py; heavy imports happen inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."
LABEL_HELP = "The name of the evaluated model in report.md."


def geneval(
    images: Annotated[Path, typer.Argument(help="Images in GenEval's layout: <root>/<00000>/metadata.jsonl + "
                                                "samples/<00000>.png (as `harmon generate --prompts` writes).")],
    metadata: Annotated[Path, typer.Option(help="GenEval's prompt metadata file (evaluation_metadata.jsonl); every "
                                                "prompt must have images.")],
    out: Annotated[Path | None, typer.Option(help="Folder for results.jsonl, scores.json and report.md "
                                                  "(default: IMAGES/../geneval).")] = None,
    detector: Annotated[str, typer.Option(help="Mask2Former COCO instance-segmentation checkpoint: hub id or "
                                               "transformers folder.")] = "facebook/mask2former-swin-small-coco-instance",
    clip: Annotated[str, typer.Option(help="CLIP for the colour check: hub id or transformers folder.")
                    ] = "openai/clip-vit-large-patch14",
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    label: Annotated[str, typer.Option(help=LABEL_HELP)] = "generated",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """GenEval (the published protocol) on generated images: Mask2Former detections, CLIP colours, six categories."""
    from experiments.cli_common import device_and_dtype
    from experiments.evaluation.layout import read_geneval_images
    from harmon.geneval_rules import read_metadata

    read_geneval_images(images, read_metadata(metadata))  # a bad input fails here, before torch is imported
    from experiments.evaluation.runs import run_geneval

    dev, _ = device_and_dtype(device, "fp32")
    folder = out or images.parent / "geneval"
    scores = run_geneval(images, metadata, folder, detector, clip, dev, label, progress)
    console.print(f"GenEval overall {scores['overall']:.3f} over {scores['images']} images; wrote {folder}/: "
                  "results.jsonl, scores.json, report.md")


def fid(
    generated: Annotated[Path, typer.Argument(help="Folder of generated images (the flat layout of "
                                                   "`harmon generate --prompts CAPTIONS`).")],
    reference: Annotated[Path, typer.Option(help="Folder of reference images (e.g. the MSCOCO-30K or MJHQ-30K "
                                                 "images).")],
    benchmark: Annotated[str | None, typer.Option(help="MSCOCO-30K or MJHQ-30K: puts the paper's FID beside.")
                         ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for fid.json and report.md (default: GENERATED/../fid-"
                                                  "<benchmark>).")] = None,
    resolution: Annotated[int, typer.Option(help="Both sets are centre-cropped and resized to this square side.")
                          ] = 512,
    batch_size: Annotated[int, typer.Option(help="Images per InceptionV3 batch.")] = 50,
    inception: Annotated[Path | None, typer.Option(help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                                                        "(default: torch's hub cache, else downloaded).")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    label: Annotated[str, typer.Option(help=LABEL_HELP)] = "generated",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """FID of generated images against a reference folder (torchmetrics, torch-fidelity's InceptionV3)."""
    from experiments.cli_common import device_and_dtype
    from experiments.evaluation.report import BENCHMARKS
    from experiments.evaluation.runs import run_fid

    known = {b.lower(): b for b in BENCHMARKS}
    if benchmark is not None and benchmark.lower() not in known:
        raise typer.BadParameter(f"--benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    name = known[benchmark.lower()] if benchmark else None
    dev, _ = device_and_dtype(device, "fp32")
    folder = out or generated.parent / f"fid-{(name or 'reference').lower()}"
    result = run_fid(generated, reference, folder, name, resolution, batch_size, dev, inception, label, progress)
    console.print(f"FID {result['fid']:.2f} ({result['generated']} vs {result['reference']} images); wrote {folder}/")


def gen_table(
    table: Annotated[int, typer.Argument(help="6 (training stages) or 7 (stage-III resolution).")],
    run: Annotated[list[str], typer.Option(help="ROW=FOLDER: an evaluation folder (holding geneval/, "
                                                "fid-mscoco-30k/, fid-mjhq-30k/) for a paper row, e.g. "
                                                "'#3 512 px=runs/eval-512'; repeat.")],
    out: Annotated[Path, typer.Option(help="Folder for table<N>.json and report.md.")] = Path("runs/gen-table"),
) -> None:
    """The generation columns of Table 6 or 7 (MSCOCO-30K FID, MJHQ-30K FID, GenEval), measured beside the paper."""
    from experiments.evaluation.report import table_report
    from harmon.utils.files import output_dir

    if table not in (6, 7):
        raise typer.BadParameter(f"table {table} has no generation columns here; use 6 or 7")
    runs = {}
    for item in run:
        label, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise typer.BadParameter(f"--run {item!r} must be ROW=FOLDER with an existing folder")
        runs[label] = Path(folder)
    path = table_report(table, runs, output_dir(out, "--out"))
    console.print(f"Wrote {path}")
