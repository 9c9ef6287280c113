"""Reports of the ablations: Table 5 (encoder choice) beside the paper's numbers, Figure 6 (single-task vs unified
training, shared vs decoupled encoders) as curves, and the verdicts of `figure6_claims` in plain words.

Figure 6 curves: {run: {"step": [...], "understanding": [...], "generation": [...]}} for runs "und-only",
"gen-only", "unified" (shared MAR encoder) and "decoupled" (SigLIP for understanding, MAR for generation). A series
is one list (one seed) or a list of equally long lists (one per seed); absent series are skipped.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.ablations.paired import describe
from experiments.paper import PAPER_NOTE, PAPER_TABLE5, TABLE5_COLUMNS
from probe.plots import save_figure

RUNS = {"und-only": "understanding only", "gen-only": "generation only", "unified": "unified (shared MAR)",
        "decoupled": "decoupled (SigLIP und. + MAR gen.)"}
RUN_COLORS = {"und-only": "tab:blue", "gen-only": "tab:green", "unified": "tab:orange", "decoupled": "tab:purple"}
FIGURE6_PANELS = (
    ("(a) understanding: single task vs unified", "understanding", ("und-only", "unified")),
    ("(b) generation: single task vs unified", "generation", ("gen-only", "unified")),
    ("(c) understanding: shared vs decoupled", "understanding", ("unified", "decoupled")),
    ("(d) generation: shared vs decoupled", "generation", ("unified", "decoupled")),
)


# ------------------------------------------------------------------------------------------------------ Table 5


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def table5_measurements(benchmarks: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Table 5 columns from `run_benchmark` results keyed by benchmark ("pope", "mme", "gqa")."""
    row = {}
    if "pope" in benchmarks:
        row["POPE"] = benchmarks["pope"]["score"]
    if "mme" in benchmarks:
        row["MME-P"], row["MME-C"] = benchmarks["mme"]["perception"], benchmarks["mme"]["cognition"]
    if "gqa" in benchmarks:
        row["GQA"] = benchmarks["gqa"]["score"]
    return row


def _table5_layout(results: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None
                   ) -> tuple[list[str], list[str], list[str]]:
    """Encoders (the paper's first, then any others measured), columns, and the columns with measurements."""
    columns = list(columns or TABLE5_COLUMNS)
    encoders = list(PAPER_TABLE5) + [e for e in results if e not in PAPER_TABLE5]
    measured = [c for c in columns if any(c in row for row in results.values())]
    return encoders, columns, measured


def _cell(value: float | None) -> str:
    """As the paper prints: MME sums (100 and above) as integers, the rest with one decimal."""
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def table5_markdown(results: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None) -> str:
    """Table 5 in the paper's layout, each measured column beside the paper's ("–" where there is no value)."""
    encoders, columns, measured = _table5_layout(results, columns)
    head, rule = ["#", "Encoder"], ["---", "---"]
    for column in columns:
        head.append(f"{column}↑ paper")
        head += [f"{column}↑ measured"] if column in measured else []
    rule += ["---:"] * (len(head) - 2)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    for number, encoder in enumerate(encoders, 1):
        paper, ours = PAPER_TABLE5.get(encoder, {}), results.get(encoder, {})
        cells = [str(number), encoder]
        for column in columns:
            cells.append(_cell(paper.get(column)))
            cells += [_cell(ours.get(column))] if column in measured else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", f"Paper numbers: Harmon, Table 5. {PAPER_NOTE}", ""])


def table5_csv(results: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None) -> str:
    """The same table as CSV: encoder, then `<column> paper` and `<column> measured` for every column."""
    encoders, columns, _ = _table5_layout(results, columns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["encoder", *[f"{c} {kind}" for c in columns for kind in ("paper", "measured")]])
    for encoder in encoders:
        paper, ours = PAPER_TABLE5.get(encoder, {}), results.get(encoder, {})
        writer.writerow([encoder, *[source.get(c, "") for c in columns for source in (paper, ours)]])
    return out.getvalue()


def plot_table5(results: Mapping[str, Mapping[str, float]], stem: str | os.PathLike,
                columns: Sequence[str] | None = None) -> list[Path]:
    """One bar panel per measured column (every column when nothing is measured): paper and measured per encoder."""
    plt = _pyplot()
    encoders, columns, measured = _table5_layout(results, columns)
    shown = measured or columns
    fig, axes = plt.subplots(1, len(shown), figsize=(2.8 * len(shown), 2.8), squeeze=False)
    x = np.arange(len(encoders))
    for ax, column in zip(axes[0], shown, strict=True):
        paper = [PAPER_TABLE5.get(e, {}).get(column, np.nan) for e in encoders]
        ours = [results.get(e, {}).get(column, np.nan) for e in encoders]
        ax.bar(x - 0.2, paper, 0.4, label="paper", color="lightgray", hatch="//", edgecolor="gray")
        ax.bar(x + 0.2, ours, 0.4, label="measured", color="tab:blue")
        ax.set_xticks(x, encoders, rotation=30, fontsize=8)
        ax.set_title(column, fontsize=9)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8,
               bbox_to_anchor=(0.5, 1.1))
    return save_figure(fig, stem)


# ------------------------------------------------------------------------------------------------------ Figure 6


def _series(curves: Mapping[str, Mapping[str, Sequence]], run: str, metric: str
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps (n,) and values (seeds, n) of one run's metric; None when absent."""
    if run not in curves or not len(curves[run].get(metric, [])):
        return None
    values = np.asarray(curves[run][metric], dtype=float)
    values = values[None] if values.ndim == 1 else values
    steps = np.asarray(curves[run].get("step", np.arange(values.shape[1])), dtype=float)
    if values.ndim != 2 or steps.shape != (values.shape[1],):
        raise ValueError(f"{run} {metric}: {values.shape[-1]} evaluations per seed but {len(steps)} steps; give one "
                         "value per step (or one such list per seed)")
    return steps, values


def plot_figure6(curves: Mapping[str, Mapping[str, Sequence]], stem: str | os.PathLike) -> list[Path]:
    """The four panels of Figure 6 (mean over seeds, ± one standard error shaded when there are several)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(8, 6))
    for ax, (title, metric, runs) in zip(axes.flat, FIGURE6_PANELS, strict=True):
        for run in runs:
            series = _series(curves, run, metric)
            if series is None:
                continue
            steps, values = series
            mean, se = values.mean(0), _standard_error(values)
            ax.plot(steps, mean, marker="o", markersize=3, label=RUNS[run], color=RUN_COLORS[run])
            if len(values) > 1:
                ax.fill_between(steps, mean - se, mean + se, alpha=0.2, color=RUN_COLORS[run])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel(f"{metric} score", fontsize=8)
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem)


def _standard_error(values: np.ndarray) -> np.ndarray:
    """Standard error over seeds (axis 0); zero for a single seed."""
    if len(values) < 2:
        return np.zeros(values.shape[1:])
    return values.std(0, ddof=1) / math.sqrt(len(values))


def synergy_report(claims: Mapping[str, Any], last: int = 1, level: float = 0.95) -> str:
    """Markdown stating, with paired intervals, whether each claim of Figure 6 and the synergy hold here."""
    c = claims["comparisons"]
    at_end = "the final evaluation" if last == 1 else f"the mean of the last {last} evaluations"
    lines = ["## Does the synergy of Figure 6 show at this scale?", "",
             f"Each item (held-out question or generation prompt, shared by every run, the prompts sampled with the "
             f"same seeds) is scored at {at_end} of its run. Differences are paired on those items: per seed a "
             f"paired bootstrap, across seeds a Student-t interval of the per-seed differences ({100 * level:g}%), "
             "so the noise is training-seed variance; with one seed the bootstrap interval is used (exploratory). "
             "Values are points (x 100).", ""]
    titles = {"understanding_kept": f"(1) Unified training keeps understanding: unified - und-only above "
                                    f"-{100 * claims['tolerance']:g} points (paper: yes)",
              "generation_gain": "(2) Understanding supervision boosts generation: unified - gen-only > 0 "
                                 "(paper: yes)",
              "decoupled_loses_generation": "(3) The gain needs the shared encoder: decoupled - unified < 0 on "
                                            "generation (paper: yes)"}
    for key, title in titles.items():
        entry = c[key]
        if entry is None:
            lines.append(f"- {title}: **not measured** (a run is missing).")
        else:
            lines.append(f"- {title}: {entry['a']} - {entry['b']} = {describe(entry)} → **{entry['verdict']}**.")
    for key, what in (("decoupled_vs_unified_understanding", "understanding, decoupled - unified"),
                      ("decoupled_vs_gen_only_generation", "generation, decoupled - gen-only")):
        if c[key] is not None:
            lines.append(f"- For reference, {what}: {describe(c[key])}.")
    synergy = claims["synergy"]
    verdict = ("**The paper's synergy is not measured** (a run is missing)." if synergy is None else
               f"**The paper's synergy at this scale: {synergy}.**")
    return "\n".join([*lines, "", verdict, ""])
