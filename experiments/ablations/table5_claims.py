"""Table 5 verdicts from per-question correctness: each encoder's gain over the blind run, the paper's ordering
(MAR ≈ SigLIP ≫ VQGAN, VAE) and a ties-aware ranking, every one read off a paired interval.

The primary score is the accuracy over the questions of the primary kinds, the control score over the control
kinds (colour: an encoder that sees colour alone passes it). The gate: at least one encoder must beat the blind run
on the primary score beyond its interval; where none does, the images are not used at this scale and the ordering
is not tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experiments.ablations.config import Table5Endpoints
from experiments.ablations.paired import (
    combined,
    interval_of,
    paired_difference,
    seed_means,
    yes_ratio_flags,
)
from probe.stats import CANNOT_TELL, HOLDS, rank_with_ties, tie_verdict, verdict

BLIND = "blind"
GATED = "not tested: no encoder beats the blind run on the primary score"
ORDER_CLAIMS = (("MAR ≈ SigLIP", "MAR", "SigLIP", "tie"), ("MAR > VQGAN", "MAR", "VQGAN", "order"),
                ("MAR > VAE", "MAR", "VAE", "order"), ("SigLIP > VQGAN", "SigLIP", "VQGAN", "order"),
                ("SigLIP > VAE", "SigLIP", "VAE", "order"))

Correct = Mapping[str, Mapping[int, Sequence[int]]]  # run label -> seed -> 0/1 per held-out question


def table5_claims(correct: Correct, kinds: Sequence[str], yes_ratios: Mapping[str, Mapping[int, float | None]],
                  endpoints: Table5Endpoints) -> dict[str, Any]:
    """Scores, gains over blind, the gate, the ordering claims, the ranking and the yes-ratio flags."""
    level, resamples = endpoints.level, endpoints.bootstrap
    masks = {"primary": [k in endpoints.primary for k in kinds], "control": [k in endpoints.control for k in kinds]}
    masks = {name: mask for name, mask in masks.items() if any(mask)}

    def diff(a: str, b: str, score: str) -> dict[str, Any]:
        return {"a": a, "b": b, "score": score,
                **paired_difference(correct[a], correct[b], level=level, resamples=resamples, keep=masks[score])}

    scores = {label: {name: seed_means(per_seed, mask) for name, mask in masks.items()}
              for label, per_seed in correct.items()}
    encoders = [label for label in correct if label != BLIND]
    gains: dict[str, dict[str, Any]] = {}
    if BLIND in correct:
        for label in encoders:
            for name in masks:
                entry = diff(label, BLIND, name)
                gains.setdefault(label, {})[name] = {**entry, "verdict": verdict(interval_of(entry))}
    gate_open = None if not gains else any(g["primary"]["verdict"] == HOLDS for g in gains.values())
    claims = []
    for claim, a, b, kind in ORDER_CLAIMS:
        if a not in correct or b not in correct:
            continue
        entry = diff(a, b, "primary")
        interval = interval_of(entry)
        measured = (tie_verdict(interval, margin=endpoints.tie_margin / 100) if kind == "tie" else verdict(interval))
        claims.append({"claim": claim, **entry, "verdict": GATED if gate_open is False else measured,
                       "verdict_ignoring_gate": measured})
    complete = len(claims) == len(ORDER_CLAIMS)
    ordering = (None if not complete else CANNOT_TELL if gate_open is False else
                combined([c["verdict"] for c in claims]))
    labels = list(correct)
    pairwise = {(a, b): interval_of(diff(a, b, "primary")) for i, a in enumerate(labels) for b in labels[i + 1:]}
    ranking = rank_with_ties({label: scores[label]["primary"]["mean"] for label in labels}, pairwise)
    return {"scores": scores, "gains": gains, "gate_open": gate_open, "claims": claims, "ordering": ordering,
            "ranking": ranking, "flags": yes_ratio_flags(yes_ratios, tuple(endpoints.yes_ratio)),
            "items": {name: int(sum(mask)) for name, mask in masks.items()},
            "seeds": sorted(next(iter(correct.values())))}
