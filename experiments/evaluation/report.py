"""Reports of the generation evaluations, the paper's numbers beside: GenEval (Table 4), FID (Table 3), and the
generation columns of Tables 6 and 7 assembled from evaluation folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.paper import GENEVAL_COLUMNS, PAPER_FID, PAPER_GENEVAL, PAPER_TABLE6, PAPER_TABLE7
from harmon.utils.files import atomic_write, write_json

BENCHMARKS = ("MSCOCO-30K", "MJHQ-30K")


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def geneval_report(scores: dict[str, Any], out: Path, label: str) -> Path:
    """`report.md`: the measured GenEval scores in Table 4's layout, the paper's Harmon rows beside."""
    header = "| model | " + " | ".join(GENEVAL_COLUMNS) + " |"
    lines = [f"# GenEval: {label}", "", f"{scores['images']} images of {scores['prompts']} prompts, scored by "
             f"{scores['detector']} + {scores['clip']} (the published rules; see `experiments/evaluation/geneval.py` "
             "for where this differs from the mmdet harness).", "", header,
             "|" + "---|" * (len(GENEVAL_COLUMNS) + 1)]
    measured = {**scores["per_category"], "overall": scores["overall"]}
    lines.append(f"| {label} (measured) | " + " | ".join(_cell(measured.get(c)) for c in GENEVAL_COLUMNS) + " |")
    for model, row in PAPER_GENEVAL.items():
        lines.append(f"| {model} (paper, Table 4) | " + " | ".join(_cell(row[c]) for c in GENEVAL_COLUMNS) + " |")
    lines += ["", "Images per category: " + ", ".join(f"{c} {n}" for c, n in scores["counts"].items()) + "."]
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"


def fid_report(result: dict[str, Any], out: Path) -> Path:
    """`fid.json` and `report.md`: the measured FID, the paper's Harmon numbers for the benchmark beside."""
    write_json(out / "fid.json", result)
    bench = result["benchmark"]
    lines = [f"# FID: {result['label']} on {bench or 'a reference folder'}", "",
             f"{result['generated']} generated vs {result['reference']} reference images at {result['resolution']} px "
             "(torchmetrics FrechetInceptionDistance, torch-fidelity InceptionV3, 2048 features).", "",
             "| model | FID |", "|---|---|", f"| {result['label']} (measured) | {result['fid']:.2f} |"]
    if bench in BENCHMARKS:
        lines += [f"| {model} (paper, Table 3) | {row[bench]:.2f} |" for model, row in PAPER_FID.items()]
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"


def read_run(folder: Path) -> tuple[float | None, float | None, float | None]:
    """(MSCOCO-30K FID, MJHQ-30K FID, GenEval overall) from an evaluation folder: `geneval/scores.json`,
    `fid-mscoco-30k/fid.json`, `fid-mjhq-30k/fid.json`, each optional."""
    def value(path: Path, key: str) -> float | None:
        return float(json.loads(path.read_text())[key]) if path.is_file() else None

    return (value(folder / "fid-mscoco-30k" / "fid.json", "fid"), value(folder / "fid-mjhq-30k" / "fid.json", "fid"),
            value(folder / "geneval" / "scores.json", "overall"))


def table_report(table: int, runs: dict[str, Path], out: Path) -> Path:
    """Table 6 or 7's generation columns: the paper's rows, and each measured run beside the row it names."""
    paper = PAPER_TABLE6 if table == 6 else PAPER_TABLE7
    rows = {label: read_run(folder) for label, folder in runs.items()}
    lines = [f"# Table {table}: generation columns", "", "| row | MSCOCO-30K FID (paper) | measured | MJHQ-30K FID "
             "(paper) | measured | GenEval (paper) | measured |", "|---|---|---|---|---|---|---|"]
    for label, numbers in paper.items():
        got = rows.get(label, (None, None, None))
        lines.append(f"| {label} | {numbers[0]:.2f} | {_cell(got[0])} | {numbers[1]:.2f} | {_cell(got[1])} | "
                     f"{numbers[2]:.2f} | {_cell(got[2])} |")
    for label, got in rows.items():
        if label not in paper:
            lines.append(f"| {label} (not a paper row) | - | {_cell(got[0])} | - | {_cell(got[1])} | - | "
                         f"{_cell(got[2])} |")
    write_json(out / f"table{table}.json", {label: dict(zip(("mscoco_fid", "mjhq_fid", "geneval"), got, strict=True))
                                           for label, got in rows.items()})
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"
