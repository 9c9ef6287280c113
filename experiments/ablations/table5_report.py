"""The Table 5 report section written from `table5_claims`: gains over blind, the gate, the ordering claims, the
ties-aware ranking and the runs that never left the answer prior."""

from __future__ import annotations

from typing import Any

from experiments.ablations.config import Table5Endpoints
from experiments.ablations.paired import describe
from experiments.ablations.table5_claims import BLIND

ORDERING = "MAR ≈ SigLIP ≫ VQGAN, VAE"


def ranking_line(tiers: list[list[str]]) -> str:
    """E.g. "SigLIP = MAR > VQGAN = VAE = blind" (members of a tier are tied)."""
    return " > ".join(" = ".join(tier) for tier in tiers)


def claims_markdown(claims: dict[str, Any], endpoints: Table5Endpoints) -> str:
    """Markdown of the verdicts, each with its interval (points x 100)."""
    seeds = claims["seeds"]
    how = ("Student-t interval over the per-seed paired differences" if len(seeds) > 1 else
           "paired bootstrap over the questions (one seed: exploratory, seed variance unseen)")
    lines = [f"## Does the paper's ordering ({ORDERING}) show at this scale?", "",
             f"Endpoints fixed before the run: primary score = accuracy over {claims['items'].get('primary', 0)} "
             f"held-out questions of the kinds {', '.join(endpoints.primary)}; control = "
             f"{', '.join(endpoints.control) or 'none'} ({claims['items'].get('control', 0)} questions). Every "
             f"difference is paired on the same questions: {how}, {100 * endpoints.level:g}% level, seeds {seeds}. "
             "A claim holds only when its whole interval lies on its side.", ""]
    if claims["gains"]:
        has_control = any("control" in g for g in claims["gains"].values())
        head = "| run | primary | gain over blind | verdict |" + (" control gain over blind | verdict |"
                                                                   if has_control else "")
        lines += [head, "|---|---:|---|---|" + ("---|---|" if has_control else "")]
        blind = claims["scores"][BLIND]["primary"]["mean"]
        lines.append(f"| blind | {100 * blind:.1f} | – | – |" + (" – | – |" if has_control else ""))
        for label, gain in claims["gains"].items():
            row = (f"| {label} | {100 * claims['scores'][label]['primary']['mean']:.1f} | {describe(gain['primary'])} "
                   f"| {gain['primary']['verdict']} |")
            if has_control:
                control = gain.get("control")
                row += (f" {describe(control)} | {control['verdict']} |" if control else " – | – |")
            lines.append(row)
        lines += ["", "Gate (some encoder beats the blind run on the primary score): "
                  f"**{'open' if claims['gate_open'] else 'closed'}**.", ""]
    else:
        lines += ["No blind run: the gains over blind and the gate are not measured.", ""]
    for claim in claims["claims"]:
        margin = f" (band ±{endpoints.tie_margin:g} points)" if "≈" in claim["claim"] else ""
        lines.append(f"- {claim['claim']}{margin}: {claim['a']} - {claim['b']} = {describe(claim)} → "
                     f"**{claim['verdict']}**.")
    ordering = claims["ordering"]
    lines += ["", f"**The paper's ordering: {ordering}.**" if ordering is not None else
              "**The paper's ordering is not measured**: the run did not include all four encoders.", "",
              f"Ranking on the primary score, ties kept (two runs are in different tiers only when their paired "
              f"interval excludes zero): {ranking_line(claims['ranking'])}.", ""]
    flags = claims["flags"]
    low, high = endpoints.yes_ratio
    if flags:
        lines += [f"Runs that never left the answer prior (share of 'yes' answers to the existence questions "
                  f"outside [{low:g}, {high:g}]):", ""]
        lines += [f"- **{f['run']} seed {f['seed']}**: yes-ratio {f['yes_ratio']:.2f} ({f['reason']})."
                  for f in flags]
    else:
        lines.append(f"No run has a yes-ratio outside [{low:g}, {high:g}] on the existence questions.")
    return "\n".join([*lines, ""])
