"""The offline Figure 2 study: probe sets whose labels match their scenes, probes checked against scikit-learn and
closed forms, twins that hold the weights training started from, and verdicts that follow the intervals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from experiments.figure2 import analysis
from experiments.figure2.arms import build_arms, recipes
from experiments.figure2.config import Endpoints, load_figure2_config
from experiments.figure2.measure import (
    pixel_cells,
    reconstruction_scores,
    regression_scores,
    ridge_fit,
)
from experiments.pretrain.mae import build_mae, mae_loss
from harmon.shapesworld.probe_sets import RADIUS_RANGES, ProbeSet, render_set
from harmon.shapesworld.vocab import COLORS, SHAPES
from harmon.utils.strict_yaml import ConfigError

# ------------------------------------------------------------------------------------------------ probe sets


@pytest.mark.parametrize("name", ["single", "pair", "count"])
def test_probe_set_labels_describe_their_scenes(name):
    probe_set = ProbeSet(name)
    counts = np.zeros(len(probe_set.classes()), dtype=int)
    for index in range(56):
        scene, label = probe_set.scene(3, index)
        counts[label] += 1
        shapes = [o.shape for o in scene.objects]
        if name == "single":
            assert len(shapes) == 1 and shapes[0] == SHAPES[label]
        elif name == "pair":
            assert len(shapes) == 2 and (shapes[0] == shapes[1]) == (label == 1)
        else:
            assert len(shapes) == label + 1
        low, high = RADIUS_RANGES[name]
        assert all(low * 64 <= o.radius <= high * 64 for o in scene.objects)
        assert scene.texture is not None and scene.clutter
    assert len(set(counts)) == 1, f"classes are not balanced: {counts}"


def test_single_objects_span_many_tokens_and_colour_is_independent_of_shape():
    rendered = render_set(ProbeSet("single"), 0, 700)
    touched = np.array([m[0].reshape(8, 8, 8, 8).any(axis=(1, 3)).sum() for m in rendered.masks])  # 8 px tokens
    assert touched.min() >= 8 and np.median(touched) >= 16, "objects must span many tokens"
    table = np.zeros((len(SHAPES), len(COLORS)))
    for shape, colour in zip(rendered.targets["class"], rendered.targets["colour"], strict=True):
        table[shape, colour] += 1
    assert scipy_stats.chi2_contingency(table).pvalue > 0.001, "colour must not depend on shape"
    assert np.allclose(rendered.targets["radius"] * 64, [s.objects[0].radius for s in
                                                        (ProbeSet("single").scene(0, i)[0] for i in range(700))])


# ------------------------------------------------------------------------------------------------ probes


def test_ridge_matches_scikit_learn():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)), rng.normal(size=(80, 2))
    weights, bias = ridge_fit(x, y, 3.0)
    reference = Ridge(alpha=3.0).fit(x, y)
    assert np.allclose(weights, reference.coef_.T, atol=1e-10) and np.allclose(bias, reference.intercept_, atol=1e-10)


def test_regression_scores_average_to_r2():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    y = np.stack([x[:, 0] + 0.3 * rng.normal(size=300), x[:, 1] - x[:, 2] + 0.5 * rng.normal(size=300)], 1)
    scores = regression_scores(x[:200], y[:200], x[200:], y[200:], [0.1, 1.0], seed=0)
    standardised = (x - x[:200].mean(0)) / (x[:200].std(0) + 1e-6)
    prediction = Ridge(alpha=0.1).fit(standardised[:200], y[:200]).predict(standardised[200:])
    prediction_1 = Ridge(alpha=1.0).fit(standardised[:200], y[:200]).predict(standardised[200:])
    candidates = [r2_score(y[200:], p, multioutput="uniform_average") for p in (prediction, prediction_1)]
    assert min(abs(scores.mean() - c) for c in candidates) < 1e-9


def test_pixel_read_out_is_exact_for_raw_cells_and_mean_level_for_constant_tokens():
    images = np.random.default_rng(2).integers(0, 256, size=(104, 16, 16, 3), dtype=np.uint8)
    cells = pixel_cells(images, (2, 2)).astype(np.float32)  # raw cells as tokens: (104, 4, 192)
    exact = reconstruction_scores(cells[:100], images[:100], cells[100:], images[100:], (2, 2), [1e-8], seed=0)
    assert exact.min() > 60
    constant = np.ones((104, 4, 3), dtype=np.float32)
    flat = reconstruction_scores(constant[:100], images[:100], constant[100:], images[100:], (2, 2), [1.0], seed=0)
    mean_cell = pixel_cells(images[:100], (2, 2)).reshape(-1, 192).mean(0)
    errors = ((pixel_cells(images[100:], (2, 2)) - mean_cell) ** 2).reshape(4, -1).mean(1)
    assert np.allclose(flat, 10 * np.log10(4 / errors))


def test_mae_loss_is_zero_for_a_perfect_head_and_counts_masked_patches_only():
    from experiments.pretrain.mae import TinyMAEConfig
    from experiments.pretrain.mar import TinyMARConfig

    config = TinyMAEConfig(vit=TinyMARConfig(encoder_embed_dim=16, encoder_depth=1, encoder_num_heads=2,
                                             decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, buffer_size=2))
    mar, head = build_mae(config)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    loss = mae_loss(mar, head, pixels, torch.Generator().manual_seed(0))
    tokens = mar.patchify(pixels)
    target = (tokens - tokens.mean(-1, keepdim=True)) / (tokens.var(-1, keepdim=True) + 1e-6).sqrt()
    # a zero head predicts 0 everywhere: the loss is then the mean square of the normalised targets, ~1
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    zero = mae_loss(mar, head, pixels, torch.Generator().manual_seed(0))
    assert abs(float(zero.detach()) - float(target.pow(2).mean())) < 0.05 and float(loss.detach()) > 0


# ------------------------------------------------------------------------------------------------ arms


def _frozen(recipe):
    """The same recipe with learning rate 0: each model ends exactly where it started."""
    def still(config):  # noqa: ANN001
        return replace(config, optim=replace(config.optim, lr=0.0))

    return replace(recipe, vae=still(recipe.vae), vqgan=still(recipe.vqgan), mar=still(recipe.mar),
                   mae=still(recipe.mae), siglip=still(recipe.siglip))


def _weights(encoder) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The weights the arm's own pretraining moves: not VQ codes (they start from data), not the VAE under MAR."""
    state = encoder.state_dict()
    if "mar.fake_latent" in state:
        return {k: v for k, v in state.items() if k.startswith("mar.")}
    return {k: v for k, v in state.items() if "quantize" not in k and "codebook" not in k}


def test_twins_hold_the_weights_training_started_from(tmp_path):
    steps = [f"pretraining.steps.{name}=3" for name in ("VAE", "VQGAN", "MAR", "MAE", "SigLIP")]
    config = load_figure2_config("micro", [*steps, "pretraining.stream_images=48"])
    recipe = recipes(config, seed=5)
    still = build_arms(_frozen(recipe), tmp_path / "still", seed=5)
    moved = build_arms(recipe, tmp_path / "moved", seed=5)
    for label in ("VAE", "VQGAN", "MAR", "MAE", "SigLIP"):
        twin = _weights(moved[f"{label} (random)"].encoder)
        unchanged, trained = _weights(still[label].encoder), _weights(moved[label].encoder)
        assert twin.keys() == unchanged.keys()
        assert all(torch.equal(twin[k], unchanged[k]) for k in twin), f"{label}: twin is not the starting point"
        assert any(not torch.equal(twin[k], trained[k]) for k in twin), f"{label}: training changed nothing"
        a, b = moved[label].encoder, moved[f"{label} (random)"].encoder
        assert a.preprocess == b.preprocess and a.default_pooling == b.default_pooling and type(a) is type(b)
    mar_vae, twin_vae = moved["MAR"].encoder.vae.state_dict(), moved["MAR (random)"].encoder.vae.state_dict()
    assert all(torch.equal(mar_vae[k], twin_vae[k]) for k in mar_vae), "MAR's twin must read the same trained VAE"


# ------------------------------------------------------------------------------------------------ analysis


def _scores(values: dict[str, list[np.ndarray]]) -> analysis.Scores:
    """seed -> arm -> shape -> linear -> scores, from per-seed arrays."""
    seeds = len(next(iter(values.values())))
    return {s: {arm: {"shape": {"linear": {"scores": per_seed[s], "kind": "accuracy", "input_dim": 4}}}
                for arm, per_seed in values.items()} for s in range(seeds)}


def test_seed_interval_of_a_difference_is_the_t_interval_of_per_seed_means():
    rng = np.random.default_rng(0)
    a = [rng.random(50) < p for p in (0.8, 0.7, 0.75)]
    b = [rng.random(50) < p for p in (0.5, 0.6, 0.55)]
    entry = analysis.difference(_scores({"A": a, "B": b}), "A", "B", "shape", "linear", Endpoints(bootstrap=50))
    diffs = [x.mean() - y.mean() for x, y in zip(a, b, strict=True)]
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(diffs), scale=scipy_stats.sem(diffs))
    assert np.isclose(entry["interval"]["low"], low) and np.isclose(entry["interval"]["high"], high)
    assert not entry["exploratory"] and len(entry["mcnemar"]) == 3


def _study(mar_gain: float) -> analysis.Scores:
    rng = np.random.default_rng(1)
    arms = ["VAE", "VQGAN", "MAR", "MAE", "SigLIP", "pixels"]
    base = {arm: [(rng.random(400) < 0.5).astype(float) for _ in range(3)] for arm in arms}
    base |= {f"{arm} (random)": [(rng.random(400) < 0.5).astype(float) for _ in range(3)] for arm in arms[:5]}
    base["MAR"] = [(rng.random(400) < 0.5 + mar_gain).astype(float) for _ in range(3)]
    return _scores(base)


def test_gate_closed_when_mar_does_not_beat_its_twin_and_nothing_is_ranked():
    endpoints = Endpoints(semantic=["shape"], controls=[], bootstrap=100)
    scores = _study(0.0)
    gains = analysis.twin_gains(scores, endpoints, ["shape"])
    result = analysis.claims(scores, gains, endpoints)
    assert result["gate"]["shape"]["verdict"] != "holds" and not result["gate_open_tasks"]
    assert all(entry["verdict"] == analysis.GATED for entry in result["semantic"]) and not result["rankings"]


def test_gate_open_when_mar_clearly_beats_its_twin_then_claims_follow_intervals():
    endpoints = Endpoints(semantic=["shape"], controls=[], bootstrap=100)
    scores = _study(0.4)
    result = analysis.claims(scores, analysis.twin_gains(scores, endpoints, ["shape"]), endpoints)
    assert result["gate"]["shape"]["open"]
    verdicts = {entry["claim"]: entry["verdict"] for entry in result["semantic"]}
    assert verdicts["MAR > VAE"] == "holds" and verdicts["MAR > VQGAN"] == "holds"
    assert verdicts["VAE ≈ VQGAN"] in ("holds", "cannot tell at this scale", "does not hold")
    tiers = result["rankings"]["shape"]
    assert tiers[0] == ["MAR"], "MAR alone leads; the others (all at chance) stay tied below it"
    assert sorted(tiers[1]) == sorted(["VAE", "VQGAN", "MAE", "SigLIP", "pixels"])


def test_one_seed_is_exploratory_and_uses_the_image_bootstrap():
    endpoints = Endpoints(semantic=["shape"], controls=[], bootstrap=100)
    rng = np.random.default_rng(3)
    scores = _scores({"A": [rng.random(80) < 0.6], "B": [rng.random(80) < 0.4]})
    entry = analysis.difference(scores, "A", "B", "shape", "linear", endpoints)
    assert entry["exploratory"] and entry["interval"]["method"] == "paired bootstrap"


def test_endpoints_naming_unknown_tasks_are_refused():
    with pytest.raises(ConfigError, match="endpoints.semantic.*bogus"):
        load_figure2_config("micro", ["endpoints.semantic=[bogus]"])


# ------------------------------------------------------------------------------------------------ end to end


def test_figure2_micro_two_seeds_from_the_command_line(tmp_path):
    """`harmon figure2 --preset micro --seeds 2` writes every output; its verdict intervals are the seed
    t-intervals of the per-seed scores it lists in results.csv."""
    import csv
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "experiments.cli", "figure2", "--preset", "micro", "--seeds", "2",
                           "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")],
                          cwd=root, env=env, text=True, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    for name in ("report.md", "results.json", "results.csv", *(f"{stem}.{ext}" for stem in
                 ("twin-gains", "scores", "cams", "pretraining") for ext in ("png", "pdf"))):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == 2 and set(results["summary"]) == {
        *ENCODER_LABELS, *(f"{label} (random)" for label in ENCODER_LABELS), "pixels"}
    rows = {(r["arm"], r["task"], r["probe"]): r for r in csv.DictReader((out / "results.csv").open())}
    per_seed = [float(rows[("MAR", "shape", "linear")][f"seed_{s}"]) - float(rows[("MAR (random)", "shape",
                                                                                     "linear")][f"seed_{s}"])
                for s in range(2)]
    half = scipy_stats.t.ppf(0.975, df=1) * np.std(per_seed, ddof=1) / np.sqrt(2)  # by hand: equal seeds give 0
    low, high = np.mean(per_seed) - half, np.mean(per_seed) + half
    gate = results["claims"]["gate"]["shape"]
    assert np.isclose(gate["interval"]["low"], low, atol=1e-6) and np.isclose(gate["interval"]["high"], high, atol=1e-6)
    allowed = {"holds", "does not hold", "cannot tell at this scale", analysis.GATED}
    assert all(entry["verdict"] in allowed for entry in results["claims"]["semantic"] + results["claims"]["controls"])
    report = (out / "report.md").read_text()
    assert "## Gate" in report and "random" in report and "Student-t interval over 2 seeds" in report


ENCODER_LABELS = ("VAE", "VQGAN", "MAR", "MAE", "SigLIP")
