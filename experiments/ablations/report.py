"""Reports of the ablations: Table 5 (encoder choice) beside the paper's numbers, Figure 6 (single-task vs unified
training, shared vs decoupled encoders) as curves, and a plain verdict on whether the synergy shows.

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

from probe.plots import save_figure

TABLE5_COLUMNS = ("Acc", "POPE", "MME-P", "MME-C", "MMB", "SEED", "GQA", "MMMU")
PAPER_TABLE5: dict[str, dict[str, float]] = {  # Harmon paper, Table 5 ('Acc': ImageNet top-5 linear probing)
    "SigLIP": {"Acc": 95.9, "POPE": 85.1, "MME-P": 1203, "MME-C": 258, "MMB": 61.1, "SEED": 63.2, "GQA": 56.1,
               "MMMU": 35.2},
    "VQGAN": {"Acc": 18.2, "POPE": 57.2, "MME-P": 67.3, "MME-C": 21.8, "MMB": 37.3, "SEED": 38.3, "GQA": 38.0,
              "MMMU": 27.7},
    "VAE": {"Acc": 18.5, "POPE": 63.8, "MME-P": 732, "MME-C": 223, "MMB": 44.9, "SEED": 42.5, "GQA": 40.2,
            "MMMU": 30.3},
    "MAR": {"Acc": 83.1, "POPE": 86.1, "MME-P": 1123, "MME-C": 262, "MMB": 60.1, "SEED": 62.2, "GQA": 55.7,
            "MMMU": 33.3},
}
PAPER_NOTE = ("VQGAN's MME-P 67.3 and MME-C 21.8 are as printed in the paper; both lie below what always answering "
              "'yes' scores (500 and 200: acc 50 and acc+ 0 per category), so they are probably 673 and 218.")
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


def final_score(curves: Mapping[str, Mapping[str, Sequence]], run: str, metric: str,
                last: int = 1) -> dict[str, float] | None:
    """Mean over the last `last` evaluations, averaged over seeds, its standard error over seeds and the final step."""
    series = _series(curves, run, metric)
    if series is None:
        return None
    steps, values = series
    per_seed = values[:, -last:].mean(1)
    return {"value": float(per_seed.mean()), "se": float(_standard_error(per_seed[:, None])[0]),
            "step": float(steps[-1]), "seeds": len(per_seed)}


def compare(curves: Mapping[str, Mapping[str, Sequence]], run: str, baseline: str, metric: str, tolerance: float,
            last: int = 1) -> dict[str, Any] | None:
    """`run` minus `baseline` at the end of training; differences within `noise` = max(tolerance, 2 combined
    standard errors) count as no difference."""
    a, b = final_score(curves, run, metric, last), final_score(curves, baseline, metric, last)
    if a is None or b is None:
        return None
    diff = a["value"] - b["value"]
    noise = max(tolerance, 2 * math.hypot(a["se"], b["se"]))
    return {"run": run, "baseline": baseline, "metric": metric, "value": a["value"], "baseline_value": b["value"],
            "diff": diff, "noise": noise, "within_noise": abs(diff) <= noise, "steps": (a["step"], b["step"])}


def synergy_verdicts(curves: Mapping[str, Mapping[str, Sequence]], tolerance: float = 0.02,
                     last: int = 1) -> dict[str, Any]:
    """The three claims of Figure 6 as booleans (None when a run is missing), with the comparisons behind them.

    understanding_kept: unified is not below und-only on understanding; generation_gain: unified is above
    gen-only on generation; gain_disappears_decoupled: with that gain present, decoupled is not above gen-only.
    """
    kept = compare(curves, "unified", "und-only", "understanding", tolerance, last)
    gain = compare(curves, "unified", "gen-only", "generation", tolerance, last)
    decoupled = compare(curves, "decoupled", "gen-only", "generation", tolerance, last)
    verdicts = {
        "understanding_kept": None if kept is None else kept["diff"] >= -kept["noise"],
        "generation_gain": None if gain is None else gain["diff"] > gain["noise"],
        "gain_disappears_decoupled": None if gain is None or decoupled is None else
        gain["diff"] > gain["noise"] and decoupled["diff"] <= decoupled["noise"],
    }
    return {**verdicts, "synergy_shows": all(v is True for v in verdicts.values()),
            "comparisons": {"understanding_kept": kept, "generation_gain": gain, "decoupled_gain": decoupled,
                            "shared_vs_decoupled_generation": compare(curves, "unified", "decoupled", "generation",
                                                                      tolerance, last),
                            "shared_vs_decoupled_understanding": compare(curves, "unified", "decoupled",
                                                                         "understanding", tolerance, last)},
            "tolerance": tolerance, "last": last}


def _numbers(c: Mapping[str, Any]) -> str:
    steps = "" if c["steps"][0] == c["steps"][1] else (f"; final steps differ: {c['steps'][0]:g} vs "
                                                        f"{c['steps'][1]:g}")
    return (f"{c['run']} {c['value']:.3f} vs {c['baseline']} {c['baseline_value']:.3f} (difference "
            f"{c['diff']:+.3f}, noise ±{c['noise']:.3f}{steps})")


def synergy_report(curves: Mapping[str, Mapping[str, Sequence]], tolerance: float = 0.02, last: int = 1) -> str:
    """Markdown stating, with numbers, whether each claim of Figure 6 and the synergy as a whole show here."""
    v = synergy_verdicts(curves, tolerance, last)
    c = v["comparisons"]
    at_end = "the final evaluation" if last == 1 else f"the mean of the last {last} evaluations"
    lines = ["## Does the synergy of Figure 6 show at this scale?", "",
             f"Scores at {at_end} of each run, averaged over seeds; a difference counts only beyond the noise "
             f"(the larger of the tolerance {tolerance:g} and two standard errors over seeds).", ""]

    def claim(title: str, key: str, comparison: Mapping[str, Any] | None, yes: str, no: str) -> None:
        if comparison is None or v[key] is None:
            lines.append(f"- {title}: **not measured** (a run or series is missing).")
        else:
            lines.append(f"- {title}: {_numbers(comparison)} → **{yes if v[key] else no}**.")

    claim("(1) Unified training keeps understanding (paper: yes)", "understanding_kept", c["understanding_kept"],
          "holds: unified matches or beats und-only", "does not hold: unified falls below und-only")
    claim("(2) Understanding supervision boosts generation (paper: yes)", "generation_gain", c["generation_gain"],
          "shows: unified beats gen-only", "does not show: no gain beyond noise")
    if c["decoupled_gain"] is not None and v["gain_disappears_decoupled"] is not None:
        lost = "holds: the decoupled design gains nothing beyond noise while the shared one does"
        if not v["generation_gain"]:
            lost = "does not show: there is no shared-encoder gain to lose"
        elif c["decoupled_gain"]["diff"] > c["decoupled_gain"]["noise"]:
            lost = "does not hold: the decoupled design gains too"
        lines.append(f"- (3) The gain disappears with decoupled encoders (paper: yes): {_numbers(c['decoupled_gain'])}"
                     f" → **{lost}**.")
    else:
        lines.append("- (3) The gain disappears with decoupled encoders (paper: yes): **not measured** (a run or "
                     "series is missing).")
    for key, what in (("shared_vs_decoupled_generation", "generation"),
                      ("shared_vs_decoupled_understanding", "understanding")):
        if c[key] is not None:
            lines.append(f"- Shared vs decoupled, {what}: {_numbers(c[key])}.")
    verdict = ("**The paper's synergy shows at this scale.**" if v["synergy_shows"] else
               "**The paper's synergy does not show at this scale** (see the claims above that do not hold, do not "
               "show or were not measured).")
    return "\n".join([*lines, "", verdict, ""])
