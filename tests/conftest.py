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


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tiny models gain nothing from threads, and thread hand-offs dominate on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def tiny_mar_config() -> MARConfig:
    return TINY_MAR
