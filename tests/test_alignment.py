"""Alignment metrics against plain-loop definitions, known cases, bad input, and the alignment study's files."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from probe import cka
from probe.alignment import (
    MAX_KNN_IMAGES,
    against_reference,
    alignment_matrix,
    check_knn_size,
    cknna,
    debiased_cka,
    mutual_knn,
    unbiased_hsic,
)

# ------------------------------------------------------------------------------ brute-force definitions


def unit_rows(x: np.ndarray) -> list[list[float]]:
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x.tolist()]


def gram(rows: list[list[float]]) -> list[list[float]]:
    return [[sum(a * b for a, b in zip(r, s, strict=True)) for s in rows] for r in rows]


def neighbour_sets(kernel: list[list[float]], k: int) -> list[set[int]]:
    n = len(kernel)
    return [set(sorted((j for j in range(n) if j != i), key=lambda j: -kernel[i][j])[:k]) for i in range(n)]


def loop_hsic(a: list[list[float]], b: list[list[float]]) -> float:
    """The unbiased-HSIC formula spelled out over i != j (diagonals never enter)."""
    n = len(a)
    off = [(i, j) for i in range(n) for j in range(n) if i != j]
    trace = sum(a[i][j] * b[j][i] for i, j in off)
    sum_a, sum_b = sum(a[i][j] for i, j in off), sum(b[i][j] for i, j in off)
    cross = 0.0
    for i, m, j in itertools.product(range(n), repeat=3):
        if i != m and m != j:
            cross += a[i][m] * b[m][j]
    return (trace + sum_a * sum_b / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def masked(kernel: list[list[float]], keep) -> list[list[float]]:
    n = len(kernel)
    return [[kernel[i][j] if keep(i, j) else 0.0 for j in range(n)] for i in range(n)]


def brute_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    nx, ny = neighbour_sets(gram(unit_rows(x)), k), neighbour_sets(gram(unit_rows(y)), k)
    return sum(len(a & b) / k for a, b in zip(nx, ny, strict=True)) / len(nx)


def brute_cknna_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    kx, ly = gram(unit_rows(x)), gram(unit_rows(y))
    nx, ny = neighbour_sets(kx, k), neighbour_sets(ly, k)
    both = lambda i, j: j in nx[i] and j in ny[i]  # noqa: E731
    kk, ll = masked(kx, lambda i, j: j in nx[i]), masked(ly, lambda i, j: j in ny[i])
    return loop_hsic(masked(kx, both), masked(ly, both)) / math.sqrt(loop_hsic(kk, kk) * loop_hsic(ll, ll))


def brute_cknna_paper(x: np.ndarray, y: np.ndarray, k: int) -> float:
    kx, ly = gram(unit_rows(x)), gram(unit_rows(y))
    n = len(kx)
    nx, ny = neighbour_sets(kx, k), neighbour_sets(ly, k)

    def align(a, b, keep) -> float:
        return sum((a[i][j] - sum(a[i]) / n) * (b[i][j] - sum(b[i]) / n)
                   for i in range(n) for j in range(n) if i != j and keep(i, j))

    return align(kx, ly, lambda i, j: j in nx[i] and j in ny[i]) / math.sqrt(
        align(kx, kx, lambda i, j: j in nx[i]) * align(ly, ly, lambda i, j: j in ny[i]))


def brute_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    kx, ly = gram(x.tolist()), gram(y.tolist())
    return loop_hsic(kx, ly) / math.sqrt(loop_hsic(kx, kx) * loop_hsic(ly, ly))


def u_statistic_hsic(a: np.ndarray, b: np.ndarray) -> float:
    """Song et al. 2012: HSIC₁ is the U-statistic of K_st L_st + K_st L_uv - 2 K_st L_su over distinct (s, t, u, v)."""
    tuples = list(itertools.permutations(range(len(a)), 4))
    return sum(a[s, t] * b[s, t] + a[s, t] * b[u, v] - 2 * a[s, t] * b[s, u] for s, t, u, v in tuples) / len(tuples)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6))
    y = x[:, :4] @ rng.normal(size=(4, 5)) + 0.8 * rng.normal(size=(30, 5))  # related, not identical
    return x, y


# ------------------------------------------------------------------------------ against the definitions


@pytest.mark.parametrize("k", [1, 5, 10])
def test_knn_metrics_match_brute_force(pair, k: int) -> None:
    x, y = pair
    assert mutual_knn(x, y, k) == pytest.approx(brute_mutual_knn(x, y, k), abs=1e-12)
    assert cknna(x, y, k) == pytest.approx(brute_cknna_reference(x, y, k), rel=1e-9)
    assert cknna(x, y, k, form="paper") == pytest.approx(brute_cknna_paper(x, y, k), rel=1e-9)
    assert 0 < brute_mutual_knn(x, y, k) < 1  # the case is not degenerate


def test_unbiased_hsic_is_the_u_statistic() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 5))
    rbf = np.exp(-((y[:, None] - y[None]) ** 2).sum(-1) / 4)
    for a, b in [(x @ x.T, rbf), (x @ x.T, x @ x.T), (rbf, x @ x.T + 1)]:
        assert unbiased_hsic(a, b) == pytest.approx(u_statistic_hsic(a, b), rel=1e-9, abs=1e-12)
    assert unbiased_hsic(torch.from_numpy(rbf), x @ x.T) == pytest.approx(u_statistic_hsic(rbf, x @ x.T), rel=1e-9)


def test_debiased_cka_matches_brute_force(pair) -> None:
    x, y = pair
    shifted = x + 5.0  # HSIC₁ ignores a shift of the features; the loop definition sees the raw kernel
    assert debiased_cka(x, y) == pytest.approx(brute_debiased_cka(x, y), rel=1e-9)
    assert debiased_cka(shifted, torch.from_numpy(y)) == pytest.approx(brute_debiased_cka(shifted, y), rel=1e-9)


# ------------------------------------------------------------------------------ known cases


def test_identical_rotated_and_scaled_features_align_perfectly(pair) -> None:
    x, _ = pair
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(6, 6)))
    for y in (x, 3.7 * x @ rotation):
        assert mutual_knn(x, y) == 1.0
        for value in (cknna(x, y), cknna(x, y, form="paper"), debiased_cka(x, y), cka.linear_cka(x, y)):
            assert value == pytest.approx(1.0, abs=1e-9)


def test_independent_noise_debiased_cka_near_zero_and_mutual_knn_at_chance() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(200, 500)), rng.normal(size=(200, 500))
    assert cka.linear_cka(x, y) > 0.5  # the upward bias of biased CKA at n < d
    assert abs(debiased_cka(x, y)) < 0.05
    assert mutual_knn(x, y, k=10) == pytest.approx(10 / 199, abs=0.02)


def test_full_neighbourhood_cknna_is_debiased_cka(pair) -> None:
    x, y = pair
    unit = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in pair]
    assert cknna(x, y, k=len(x) - 1) == pytest.approx(debiased_cka(*unit), rel=1e-9)
    assert cknna(x, y, k=len(x) - 1) != pytest.approx(debiased_cka(x, y), rel=1e-3)  # the rows are normalised


def test_matrix_and_reference_hold_the_pairwise_values(pair) -> None:
    x, y = pair
    features = {"a": x, "b": torch.from_numpy(y), "c": x[:, ::-1].copy()}
    result = alignment_matrix(features, k=5)
    assert set(result) == {"mutual_knn", "cknna", "debiased_cka", "linear_cka"}
    assert result["mutual_knn"]["names"] == ["a", "b", "c"] and result["cknna"]["form"] == "reference"
    assert result["cknna"]["n"] == 30 and result["cknna"]["k"] == 5 and "k" not in result["linear_cka"]
    assert result["mutual_knn"]["matrix"][0][1] == pytest.approx(brute_mutual_knn(x, y, 5), abs=1e-12)
    assert result["cknna"]["matrix"][1][0] == pytest.approx(brute_cknna_reference(y, x, 5), rel=1e-9)
    assert result["debiased_cka"]["matrix"][0][1] == pytest.approx(brute_debiased_cka(x, y), rel=1e-9)
    assert result["linear_cka"]["matrix"][0][2] == pytest.approx(1.0)  # permuted columns
    assert [result["mutual_knn"]["matrix"][i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    versus = against_reference(features, "a", metrics=("mutual_knn", "cknna"), k=5, form="paper")
    assert set(versus["cknna"]["values"]) == {"b", "c"}
    assert versus["cknna"]["values"]["b"] == pytest.approx(brute_cknna_paper(y, x, 5), rel=1e-9)


# ------------------------------------------------------------------------------ bad input


def test_bad_input_names_the_argument(pair) -> None:
    x, y = pair
    with pytest.raises(ValueError, match="--k 30 .*n - 1 = 29"):
        mutual_knn(x, y, k=30)
    with pytest.raises(ValueError, match="--k 0"):
        cknna(x, y, k=0)
    with pytest.raises(ValueError, match="x has 30 rows but y has 29"):
        cknna(x, y[:-1])
    with pytest.raises(ValueError, match="x has 30 rows but y has 29"):
        debiased_cka(x, y[:-1])
    with pytest.raises(ValueError, match="--max-images"):
        check_knn_size(MAX_KNN_IMAGES + 1, 10)
    check_knn_size(MAX_KNN_IMAGES, MAX_KNN_IMAGES - 1)
    with pytest.raises(ValueError, match="x and y have 3 rows"):
        debiased_cka(x[:3], y[:3])
    with pytest.raises(ValueError, match="x and y have 3 rows"):
        cknna(x[:3], y[:3], k=2)
    with pytest.raises(ValueError, match="k and l are 3 x 3"):
        unbiased_hsic(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="form='cka'"):
        cknna(x, y, form="cka")
    with pytest.raises(ValueError, match="--reference 'z'"):
        against_reference({"a": x, "b": y}, "z")
    with pytest.raises(ValueError, match="different numbers of images"):
        alignment_matrix({"a": x, "b": y[:-1]})


# ------------------------------------------------------------------------------ the study and its command


def test_run_alignment_writes_json_heatmaps_and_report(pair, tmp_path: Path) -> None:
    from experiments.align import run_alignment

    x, y = pair
    extra = np.vstack([x, x[:5]])  # rows beyond n_images are ignored
    results = run_alignment({"a": extra, "b": y}, tmp_path, k=4, reference="b", n_images=30)
    saved = json.loads((tmp_path / "alignment.json").read_text())
    assert saved["n"] == 30 and saved["k"] == 4 and saved["cknna_form"] == "reference"
    assert saved["metrics"] == json.loads(json.dumps(results["metrics"]))
    metrics = saved["metrics"]
    assert metrics["mutual_knn"]["matrix"][0][1] == pytest.approx(mutual_knn(x, y, 4), abs=1e-12)
    assert metrics["cknna"]["matrix"][0][1] == pytest.approx(cknna(x, y, 4), rel=1e-12)
    assert metrics["debiased_cka"]["matrix"][1][0] == pytest.approx(debiased_cka(y, x), rel=1e-12)
    assert metrics["linear_cka"]["matrix"][0][1] == pytest.approx(cka.linear_cka(x, y), rel=1e-9)
    assert saved["against_reference"]["cknna"]["values"] == {"a": pytest.approx(cknna(x, y, 4), rel=1e-12)}
    assert {(p["metric"], p["x"], p["y"], p["n"], p["k"]) for p in saved["pairs"]} >= {("cknna", "a", "b", 30, 4)}
    assert len(saved["pairs"]) == 4 * 4
    for metric in ("mutual_knn", "cknna", "debiased_cka", "linear_cka"):
        for suffix in ("png", "pdf"):
            assert (tmp_path / f"alignment-{metric}.{suffix}").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "## CKNNA (n = 30, k = 4, reference form)" in report and "## linear CKA (n = 30)" in report
    assert f"| a | 1.000 | {metrics['mutual_knn']['matrix'][0][1]:.3f} |" in report
    with pytest.raises(ValueError, match="fewer than 40 rows; lower --max-images"):
        run_alignment({"a": x, "b": y}, tmp_path, k=4, reference=None, n_images=40)
    with pytest.raises(ValueError, match="--k 30"):
        run_alignment({"a": x, "b": y}, tmp_path, k=30, reference=None, n_images=30)


def test_align_command_scores_pixel_encoders_and_explains_bad_options(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from experiments.align_cli import align

    app = typer.Typer()
    app.command()(align)
    app.command("noop")(lambda: None)  # two commands: `align` is addressed by name as under `harmon`
    runner = CliRunner()
    common = ["align", "--encoder", "pixels", "--encoder", "raw", "--data", "digits", "--workers", "0",
              "--device", "cpu", "--cache", str(tmp_path / "cache")]
    result = runner.invoke(app, [*common, "--max-images", "40", "--k", "5", "--reference", "raw", "--metric",
                                 "mutual_knn", "--metric", "cknna", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run/alignment.json").read_text())
    assert saved["n"] == 40 and len(saved["config"]["val_positions"]) == 40
    assert saved["config"]["encoders"]["pixels"]["dim"] == 192
    assert saved["metrics"]["mutual_knn"]["matrix"] == [[1.0, 1.0], [1.0, 1.0]]  # one encoder under two names
    assert saved["against_reference"]["cknna"]["values"]["pixels"] == pytest.approx(1.0)
    assert set(saved["metrics"]) == {"mutual_knn", "cknna"} and (tmp_path / "run/alignment-cknna.pdf").exists()
    result = runner.invoke(app, [*common, "--reference", "vae", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--reference 'vae' is not among --encoder" in result.output
    result = runner.invoke(app, [*common, "--max-images", "20", "--k", "20", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--k 20 is out of range for 20 images" in result.output
    result = runner.invoke(app, [*common, "--metric", "svcca", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--metric 'svcca' is not a metric" in result.output
    assert not (tmp_path / "bad").exists()
