"""Shared tiny components for the test suite."""

from __future__ import annotations

import pytest
import torch

from harmon.mar import MARConfig

TINY_MAR = MARConfig(
    img_size=64, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2, diffloss_d=2, diffloss_w=32,
    buffer_size=4, class_num=10, num_sampling_steps="10",
)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_mar_config() -> MARConfig:
    return TINY_MAR
