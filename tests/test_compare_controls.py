"""The control comparisons of `harmon compare` read probe/stats: hand-made per-image correctness with known Δ,
interval, McNemar p and verdict."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.compare.controls import control_comparisons, paired_comparison


def test_always_right_against_never_right_holds() -> None:
    c = paired_comparison(np.ones(20), np.zeros(20), seed=0)
    # every image discordant one way: every bootstrap replicate is 1, McNemar p = 2 * 0.5**20
    assert c["delta"] == 100 and c["low"] == 100 and c["high"] == 100
    assert c["mcnemar_p"] == pytest.approx(2 * 0.5**20) and c["discordant"] == [20, 0]
    assert c["verdict"] == "holds" and not c["tie"]


def test_identical_correctness_is_a_tie() -> None:
    same = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], float)
    c = paired_comparison(same, same.copy(), seed=0)
    assert c["delta"] == 0 and c["low"] == 0 and c["high"] == 0 and c["mcnemar_p"] == 1
    assert c["tie"] and c["verdict"] != "holds"


def test_one_discordant_image_in_ten_cannot_tell() -> None:
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1, 0, 1], float)
    b = a.copy()
    b[0] = 0  # a right, b wrong on one image: Δ = 10 points, the interval reaches 0, p = 1
    c = paired_comparison(a, b, seed=0)
    assert c["delta"] == pytest.approx(10) and c["low"] == 0 and c["mcnemar_p"] == 1
    assert c["verdict"] == "cannot tell at this scale" and c["tie"]


def test_every_encoder_is_compared_with_its_twin_and_pixels() -> None:
    correct = {"vae": np.ones(8), "pixels": np.zeros(8), "mar": np.ones(8)}
    block = control_comparisons(correct, {"vae": np.zeros(8)}, "pixels", seed=0)
    assert list(block["vs_twin"]) == ["vae"] and list(block["vs_pixels"]) == ["vae", "mar"]
    assert control_comparisons(correct, {}, None, seed=0)["vs_pixels"] == {}
