"""The notebooks are documentation that runs: execute each at the micro setting."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("notebook", "outputs"),
    [("01_figure2_probing.ipynb", ["probe_bars.png", "probe_bars.pdf"]),
     ("02_attribution.ipynb", ["cam_grid.png", "cam_grid.pdf"]),
     ("03_ablations.ipynb", ["table5.png", "table5.pdf", "figure6.png", "figure6.pdf"]),
     ("04_compare.ipynb", ["pareto.png", "pareto.pdf", "compare-micro/report.md", "compare-micro/results.json"])],
)
def test_notebook_runs_at_micro_scale(notebook, outputs, tmp_path, monkeypatch):
    monkeypatch.setenv("HARMON_NOTEBOOK_SCALE", "micro")
    monkeypatch.setenv("HARMON_NOTEBOOK_OUT", str(tmp_path))
    book = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
