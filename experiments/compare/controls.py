"""The controls of `harmon compare`: each trained encoder against its random-init twin and against raw pixels,
image by image on the same val images. Δ top-1 with a paired bootstrap interval, McNemar's exact p and the verdict
on "trained beats control" (probe/stats); an interval that contains zero is a tie."""

from __future__ import annotations

from typing import Any

import numpy as np

from probe.stats import mcnemar_exact, paired_bootstrap, verdict

LEVEL = 0.95
RESAMPLES = 2000


def paired_comparison(correct: np.ndarray, control: np.ndarray, seed: int) -> dict[str, Any]:
    """Δ = top-1(correct) − top-1(control) in points with its paired bootstrap interval over the images, McNemar's
    exact test, the verdict on Δ > 0 and whether it is a tie (the interval contains zero)."""
    interval = paired_bootstrap(correct, control, resamples=RESAMPLES, level=LEVEL, seed=seed)
    test = mcnemar_exact(correct, control)
    return {"delta": 100 * interval.estimate, "low": 100 * interval.low, "high": 100 * interval.high,
            "level": LEVEL, "method": interval.method, "images": interval.n, "mcnemar_p": test["p_value"],
            "discordant": [test["b"], test["c"]], "verdict": verdict(interval), "tie": not interval.excludes_zero}


def control_comparisons(correct: dict[str, np.ndarray], twins: dict[str, np.ndarray], pixels: str | None,
                        seed: int) -> dict[str, Any]:
    """Every encoder vs its twin (`twins`: twin correctness by the encoder's label) and every one but `pixels` vs
    the `pixels` encoder where there is one."""
    return {"level": LEVEL, "resamples": RESAMPLES, "seeds": 1,
            "vs_twin": {label: paired_comparison(correct[label], twin, seed) for label, twin in twins.items()},
            "pixels": pixels,
            "vs_pixels": {} if pixels is None else {label: paired_comparison(correct[label], correct[pixels], seed)
                                                   for label in correct if label != pixels}}
