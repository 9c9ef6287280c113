"""Table 5 and Figure 6 verdicts from per-item scores built by hand: gains over blind, ties kept as one tier,
yes-ratio flags, intervals equal to scipy's t-interval of per-seed differences; the blind and layer-normalised
encoder seams; strict endpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from encoders.adapters.pixels import PixelEncoder
from encoders.base import Preprocess
from encoders.harmon_seam import BlindTokens, EncoderTokens, plug_encoder
from experiments.ablations.config import (
    Figure6Config,
    Figure6Endpoints,
    Table5Config,
    Table5Endpoints,
    load_ablation,
)
from experiments.ablations.evaluate import evaluate_understanding, qa_eval_set, score_answers
from experiments.ablations.figure6_claims import per_item, synergy_claims
from experiments.ablations.paired import yes_ratio_flags
from experiments.ablations.report import synergy_report
from experiments.ablations.table5_claims import table5_claims
from experiments.ablations.table5_report import claims_markdown
from harmon.shapesworld import ShapesWorldConfig
from harmon.tiny import tiny_harmon
from harmon.utils.strict_yaml import ConfigError

SEEDS = (0, 1, 2)


def t_interval(differences: list[float]) -> tuple[float, float]:
    """scipy's 95% Student-t interval of the mean of `differences`."""
    values = np.asarray(differences)
    return stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))


def hits(right: int, total: int = 20, shift: int = 0) -> list[int]:
    """`right` correct answers out of `total`, rotated by `shift` (so runs differ on which items they get)."""
    row = [1] * right + [0] * (total - right)
    return row[shift:] + row[:shift]


# ------------------------------------------------------------------------------------------------ seams


def pixels_tokens(layer_norm: bool = False) -> EncoderTokens:
    encoder = PixelEncoder(image_size=16, patch=2)
    encoder.preprocess = Preprocess(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return EncoderTokens(encoder, layer_norm=layer_norm)


def test_blind_tokens_are_zeros_of_the_encoder_shape_and_the_model_still_answers():
    tokens = pixels_tokens()
    blind = BlindTokens(tokens)
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    out = blind(pixels)
    assert out.shape == tokens(pixels).shape == (3, 64, 3) and blind.embed_dim == 3
    assert torch.count_nonzero(out) == 0 and not list(blind.parameters())
    model = plug_encoder(tiny_harmon(seed=0), blind)
    first, second = (model.visual_features(torch.full((1, 3, 64, 64), v)) for v in (-1.0, 1.0))
    torch.testing.assert_close(first, second)  # the image does not reach the LLM
    items = qa_eval_set(ShapesWorldConfig(), seed=0, count=3)
    assert len(evaluate_understanding(model, items, batch_size=3, max_new_tokens=2)["correct"]) == 3


def test_layer_norm_normalises_each_token_without_parameters():
    plain, normed = pixels_tokens(), pixels_tokens(layer_norm=True)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    raw = plain(pixels)
    expected = (raw - raw.mean(-1, keepdim=True)) / torch.sqrt(raw.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(normed(pixels), expected, atol=1e-5, rtol=1e-5)
    assert normed.state_dict().keys() == plain.state_dict().keys()


# ------------------------------------------------------------------------------------------------ Table 5


def test_yes_ratio_flags_runs_stuck_at_the_answer_prior():
    items = [{"kind": "existence", "answer": a, "pope_split": "popular"} for a in ("yes", "no") * 5]
    always_yes = score_answers(items, ["yes"] * 10)["pope"]
    mostly_no = score_answers(items, ["no"] * 9 + ["yes"])["pope"]
    balanced = score_answers(items, ["yes", "no"] * 5)["pope"]
    assert (always_yes["f1"], always_yes["yes_ratio"]) == (pytest.approx(2 / 3), 1.0)
    ratios = {"VAE": {0: always_yes["yes_ratio"], 1: balanced["yes_ratio"]}, "MAR": {0: mostly_no["yes_ratio"]},
              "SigLIP": {0: balanced["yes_ratio"], 1: None}}
    flags = yes_ratio_flags(ratios, (0.1, 0.9))
    assert [(f["run"], f["seed"]) for f in flags] == [("VAE", 0)]  # 0.1 lies on the bound: not flagged
    assert [(f["run"], f["seed"]) for f in yes_ratio_flags(ratios, (0.2, 0.8))] == [("VAE", 0), ("MAR", 0)]


def test_a_four_way_tie_is_one_tier_and_the_ordering_cannot_be_told():
    kinds = ["shape"] * 20
    # per-seed accuracies whose means differ (SigLIP .60 > VQGAN .583 > VAE .567 > MAR .55) but not beyond seed noise
    accuracy = {"SigLIP": (14, 10, 12), "VQGAN": (10, 14, 11), "VAE": (12, 9, 13), "MAR": (9, 13, 11),
                "blind": (10, 10, 10)}
    correct = {label: {s: hits(r, shift=3 * i) for s, r in zip(SEEDS, rights, strict=True)}
               for i, (label, rights) in enumerate(accuracy.items())}
    endpoints = Table5Endpoints(primary=["shape"], control=[])
    claims = table5_claims(correct, kinds, {label: {s: 0.5 for s in SEEDS} for label in correct}, endpoints)
    assert claims["ranking"] == [["SigLIP", "VQGAN", "VAE", "MAR", "blind"]]
    assert claims["gate_open"] is False and claims["ordering"] == "cannot tell at this scale"
    assert {c["verdict_ignoring_gate"] for c in claims["claims"]} <= {"cannot tell at this scale", "does not hold"}
    report = claims_markdown(claims, endpoints)
    assert "SigLIP = VQGAN = VAE = MAR = blind" in report and ">" not in report.split("ties kept")[1].split("\n")[0]
    assert "**The paper's ordering: cannot tell at this scale.**" in report and "closed" in report


def test_gains_over_blind_use_the_t_interval_of_per_seed_differences():
    kinds = ["shape"] * 10 + ["color"] * 10
    rights = {"MAR": (9, 9, 10), "SigLIP": (10, 9, 9), "VQGAN": (5, 5, 6), "VAE": (5, 6, 5), "blind": (3, 3, 3)}
    correct = {label: {s: hits(r, 10) + hits(10, 10) for s, r in zip(SEEDS, row, strict=True)}
               for label, row in rights.items()}
    endpoints = Table5Endpoints(primary=["shape"], control=["color"], tie_margin=30.0)
    claims = table5_claims(correct, kinds, {label: {s: 0.5 for s in SEEDS} for label in correct}, endpoints)
    for label, row in rights.items():
        if label == "blind":
            continue
        differences = [(a - b) / 10 for a, b in zip(row, rights["blind"], strict=True)]
        interval = claims["gains"][label]["primary"]["interval"]
        assert (interval["low"], interval["high"]) == pytest.approx(t_interval(differences))
        assert interval["estimate"] == pytest.approx(np.mean(differences)) and interval["n"] == 3
        assert claims["gains"][label]["primary"]["verdict"] == "holds"
        assert claims["gains"][label]["control"]["interval"]["estimate"] == 0.0  # every run answers colour
        assert claims["gains"][label]["control"]["verdict"] == "does not hold"
    assert claims["gate_open"] is True and claims["items"] == {"primary": 10, "control": 10}
    verdicts = {c["claim"]: c["verdict"] for c in claims["claims"]}
    assert verdicts == {"MAR ≈ SigLIP": "holds", "MAR > VQGAN": "holds", "MAR > VAE": "holds",
                        "SigLIP > VQGAN": "holds", "SigLIP > VAE": "holds"}
    assert claims["ordering"] == "holds" and claims["ranking"][0] == ["MAR", "SigLIP"]
    assert claims["scores"]["MAR"]["primary"]["per_seed"] == [0.9, 0.9, 1.0]


# ------------------------------------------------------------------------------------------------ Figure 6


def rows(scores: list[list[int]], key: str) -> dict[int, dict[str, list[int]]]:
    """Evaluation rows at iterations 10, 20, ... holding one per-item list each."""
    return {10 * (i + 1): {key: s} for i, s in enumerate(scores)}


def test_figure6_pairs_runs_on_the_shared_prompts_with_seed_noise():
    n = 10
    gen = {"gen-only": (3, 4, 2), "unified": (6, 6, 5), "decoupled": (3, 4, 2)}
    und = {"und-only": (7, 6, 7), "unified": (7, 7, 6), "decoupled": (8, 7, 7)}
    runs = {name: {s: {} for s in SEEDS} for name in ("und-only", "gen-only", "unified", "decoupled")}
    for name, row in gen.items():
        for s, right in zip(SEEDS, row, strict=True):
            runs[name][s] = rows([[0] * n, hits(right, n)], "gen_correct")  # early evaluation first, then final
    for name, row in und.items():
        for s, right in zip(SEEDS, row, strict=True):
            for point, evaluation in rows([[0] * n, hits(right, n)], "qa_correct").items():
                runs[name][s].setdefault(point, {}).update(evaluation)
    metrics = {"und-only": ("understanding",), "gen-only": ("generation",),
               "unified": ("understanding", "generation"), "decoupled": ("understanding", "generation")}
    items = per_item(runs, metrics, last=1)
    assert items["unified"]["generation"][0] == hits(6, n)
    assert per_item(runs, metrics, last=2)["unified"]["generation"][0] == [0.5] * 6 + [0.0] * 4
    claims = synergy_claims(items, Figure6Endpoints(tolerance=0.05))
    gain = claims["comparisons"]["generation_gain"]
    differences = [(u - g) / n for u, g in zip(gen["unified"], gen["gen-only"], strict=True)]
    assert (gain["interval"]["low"], gain["interval"]["high"]) == pytest.approx(t_interval(differences))
    assert gain["differences"] == pytest.approx(differences) and len(gain["per_seed"]) == 3
    assert claims["generation_gain"] == "holds" and claims["decoupled_loses_generation"] == "holds"
    assert claims["understanding_kept"] == "cannot tell at this scale"  # +0.0 [-24.8, +24.8] points crosses -5
    assert claims["synergy"] == "cannot tell at this scale" and not claims["synergy_shows"]
    report = synergy_report(claims, last=1)
    assert "unified - gen-only = +26.7" in report and "t-interval over 3 seeds" in report
    assert "**The paper's synergy at this scale: cannot tell at this scale.**" in report
    # the same prompts, one seed: the paired bootstrap decides and the comparison is exploratory
    one = {name: {metric: {0: values[0]} for metric, values in by_metric.items()} for name, by_metric in items.items()}
    single = synergy_claims(one, Figure6Endpoints())["comparisons"]["generation_gain"]
    assert single["exploratory"] and single["interval"]["method"] == "paired bootstrap"
    missing = synergy_claims({k: v for k, v in items.items() if k != "decoupled"}, Figure6Endpoints())
    assert missing["synergy"] is None and missing["decoupled_loses_generation"] is None


# ------------------------------------------------------------------------------------------------ endpoints


def test_endpoints_and_rates_are_checked_with_the_option_named():
    with pytest.raises(ConfigError, match=r"endpoints.primary: unknown question kind\(s\) \['size'\]"):
        load_ablation(Table5Config, "table5", "micro", ["endpoints.primary=[size]"])
    with pytest.raises(ConfigError, match=r"endpoints.control: \['position'\] are not asked"):
        load_ablation(Table5Config, "table5", "mini", ["endpoints.control=[position]"])
    with pytest.raises(ConfigError, match="shapesworld.negatives"):
        load_ablation(Table5Config, "table5", "mini", ["shapesworld.negatives=[rare]"])
    with pytest.raises(ConfigError, match="blind"):
        load_ablation(Table5Config, "table5", "mini", ["blind=CLIP"])
    with pytest.raises(ConfigError, match="training.lr.understanding .* must equal training.lr.mar_encoder"):
        load_ablation(Figure6Config, "figure6", "mini", ["training.lr.understanding=0.001"])
    mini = load_ablation(Table5Config, "table5", "mini")
    assert mini.training.seeds == [0, 1, 2] and mini.blind == "MAR" and mini.model.layer_norm
    assert (mini.endpoints.primary, mini.endpoints.control) == (["existence", "shape", "count"], ["color"])
    assert mini.shapesworld.negatives == ["popular", "adversarial"]
    figure6 = load_ablation(Figure6Config, "figure6", "mini")
    assert figure6.training.seeds == [0, 1, 2]
    assert figure6.training.lr["understanding"] == figure6.training.lr["mar_encoder"]
