"""The suite on a machine without Fashion-MNIST, network or a warm cache: nothing is downloaded, nothing is
written outside temporary folders, and what is cached records the data that went into it."""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experiments.pretrain.common import OptimConfig
from experiments.pretrain.data import StreamConfig, cached_stream, identity, stream_sources
from experiments.pretrain.vae import TinyVAEConfig, pretrain_vae
from probe.datasets import DatasetUnavailable, fashion_mnist, fashion_mnist_dir


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as the format's definition lays it out (magic 0x0000 08 ndim, sizes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder: Path, train: int = 5, test: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return folder


def test_the_suite_runs_offline_with_its_caches_in_a_temporary_folder(tmp_path: Path) -> None:
    home = Path.home().resolve()
    for name in ("HARMON_CACHE", "HF_HOME", "HF_HUB_CACHE", "MPLCONFIGDIR"):
        assert not Path(os.environ[name]).resolve().is_relative_to(home), f"{name}={os.environ[name]}"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_fashion_mnist_is_not_downloaded_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))  # hides an installed copy, too
    with pytest.raises(DatasetUnavailable, match="HF_HUB_OFFLINE=1 forbids downloading.*apt-get install"):
        fashion_mnist("train")
    assert fashion_mnist_dir() is None
    assert not (Path(os.environ["HARMON_CACHE"]) / "fashion-mnist").exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(DatasetUnavailable, match="downloading was not asked for"):
        fashion_mnist("val", download=False)


def test_fashion_mnist_dir_is_the_only_place_looked_at_when_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FASHION_MNIST_DIR", str(_fake_fashion_mnist(tmp_path / "fm")))
    assert fashion_mnist_dir() == tmp_path / "fm"
    assert len(fashion_mnist("train")) == 5 and len(fashion_mnist("test")) == 3


def test_stream_identity_names_the_sources_actually_available(tmp_path: Path, monkeypatch) -> None:
    config = StreamConfig(shapes=4, fashion=3)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "none"))
    assert stream_sources(config) == {"shapesworld": 4, "fashion-mnist": 0}
    assert cached_stream(config).counts() == {"shapesworld": 4}
    monkeypatch.setenv("FASHION_MNIST_DIR", str(_fake_fashion_mnist(tmp_path / "fm", train=2)))
    assert stream_sources(config) == {"shapesworld": 4, "fashion-mnist": 2}  # only 2 training images exist
    assert cached_stream(config).counts() == {"fashion-mnist": 2, "shapesworld": 4}
    assert stream_sources(replace(config, fashion=0))["fashion-mnist"] == 0


def test_an_encoder_pretrained_without_fashion_mnist_is_not_reused_once_it_is_installed(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    config = TinyVAEConfig(block_out_channels=(4, 4), latent_channels=4, data=StreamConfig(shapes=6, fashion=4),
                           optim=OptimConfig(steps=2, batch_size=2, lr=1e-3, warmup=1))
    root = tmp_path / "zoo"
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "none"))
    without = pretrain_vae(config, root)
    assert without.trained and without.record["stream"] == {"shapesworld": 6}
    assert not pretrain_vae(config, root).trained  # same data: reused
    monkeypatch.setenv("FASHION_MNIST_DIR", str(_fake_fashion_mnist(tmp_path / "fm")))
    with_fashion = pretrain_vae(config, root)
    assert with_fashion.trained and with_fashion.folder != without.folder
    assert with_fashion.record["stream"] == {"fashion-mnist": 4, "shapesworld": 6}
    assert identity(config)["sources"] == {"shapesworld": 6, "fashion-mnist": 4}
