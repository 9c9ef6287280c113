"""Small building blocks shared by the networks."""

from __future__ import annotations

from torch import nn


def silu_mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """Linear-SiLU-Linear with the official parameter names (`0.*`, `2.*`), as MAR's and Harmon's `build_mlp`."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, dim_out))
