"""Shared tiny components for the test suite, and an environment that keeps the suite off the network and out
of the user's caches: every cache points into one temporary folder and HF_HUB_OFFLINE=1 forbids downloads
(checkpoints, hub files and Fashion-MNIST alike), for this process and every subprocess a test starts."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

if "HARMON_TEST_CACHES" not in os.environ:  # once per session, also when a test imports this module by name
    _SAVED = {name: os.environ.get(name) for name in (
        "HARMON_CACHE", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MPLCONFIGDIR")}
    os.environ["HARMON_TEST_CACHES"] = tempfile.mkdtemp(prefix="harmon-tests-")
_CACHES = Path(os.environ["HARMON_TEST_CACHES"])
_ENV = {
    "HARMON_CACHE": str(_CACHES / "harmon"),
    "HF_HOME": str(_CACHES / "hf"),
    "HF_HUB_CACHE": str(_CACHES / "hf" / "hub"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLCONFIGDIR": str(_CACHES / "matplotlib"),
}
os.environ.update(_ENV)  # before huggingface_hub is imported (it reads them once)

from harmon.mar import MARConfig  # noqa: E402

TINY_MAR = MARConfig(
    img_size=64, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2, diffloss_d=2, diffloss_w=32,
    buffer_size=4, class_num=10, num_sampling_steps="10",
)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in globals().get("_SAVED", {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if "_SAVED" in globals():
        os.environ.pop("HARMON_TEST_CACHES", None)
        shutil.rmtree(_CACHES, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _offline_caches():
    """Fail loudly if something reset the isolated environment during the session."""
    yield
    changed = {name: os.environ.get(name) for name, value in _ENV.items() if os.environ.get(name) != value}
    assert not changed, f"tests changed the isolated environment: {changed}"


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


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The tiny random Harmon written in the official file layout (checkpoint, LLM folder, VAE)."""
    from harmon.tiny import save_tiny_bundle

    return save_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def loaded(bundle):
    """The tiny bundle loaded in this process, to compare the commands' outputs with."""
    from harmon.harmon_loading import load_harmon

    with pytest.warns(UserWarning, match="head counts"):
        return load_harmon(bundle.checkpoint, llm=bundle.llm, vae=bundle.vae)
