"""The pipeline half of probe/: feature cache (resume, processes, full disk, keys), Grad-CAM++ and studies."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from encoders.base import Encoder, Preprocess
from probe.cam import compute_cams, overlay
from probe.datasets import (
    ArrayImageDataset,
    DatasetUnavailable,
    balanced_subset,
    fashion_mnist,
    sklearn_digits,
)
from probe.feature_cache import CachePlan, FeatureCache, cache_path, load_done
from probe.features import ExtractOptions, extract_features
from probe.linear import (
    LinearProbeConfig,
    LinearProbeHead,
    ProbeSweepConfig,
    sklearn_logreg_probe,
    sweep_linear_probe,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}



class Cells(Encoder):
    """A tiny encoder without heavy imports (for subprocesses): 4x4-pixel cell means, projected to 8 dims."""

    name = "cells"

    def __init__(self) -> None:
        super().__init__(Preprocess(image_size=16, crop="resize"))
        self.proj = nn.Linear(3, 8)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-1, 1, 24).view(8, 3))
            self.proj.bias.zero_()

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // 4, width // 4

    def num_layers(self) -> int:
        return 1

    def cam_layer(self) -> nn.Module:
        return self.proj

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.proj(F.avg_pool2d(pixels, 4).flatten(2).transpose(1, 2))


class TinyViT(Encoder):
    """A real timm ViT with a class token (1 prefix token), 4-pixel patches, any input size."""

    name = "tiny-vit"
    num_prefix_tokens = 1
    poolings = ("mean", "cls")

    def __init__(self, image_size: int = 16) -> None:
        from timm.models.vision_transformer import VisionTransformer

        super().__init__(Preprocess(image_size=image_size, crop="center"))
        torch.manual_seed(0)
        self.vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=0,
                                     dynamic_img_size=True)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // 4, width // 4

    def num_layers(self) -> int:
        return len(self.vit.blocks)

    def cam_layer(self) -> nn.Module:
        return self.vit.blocks[-1]

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        if layer is None:
            return self.vit.forward_features(pixels)
        captured: list[torch.Tensor] = []
        handle = self.vit.blocks[layer].register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            self.vit.forward_features(pixels)
        finally:
            handle.remove()
        return captured[0]


class SlowImages:
    """600 random 8x8 images in 10 classes that take `delay` seconds each to read and count their reads."""

    cache_id = "random-8x8-images-for-tests"

    def __init__(self, delay: float = 0.0) -> None:
        images = np.random.default_rng(0).integers(0, 256, (600, 8, 8), dtype=np.uint8)
        self.data = ArrayImageDataset(images, [i % 10 for i in range(600)], list("0123456789"))
        self.classes, self.targets = self.data.classes, self.data.targets
        self.delay, self.reads = delay, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        self.reads += 1
        time.sleep(self.delay)
        return self.data[index]


def run_script(path: Path, source: str, *args: str, launcher: tuple[str, ...] = (sys.executable,)):
    """Run `source` as a script with `launcher` (the Python interpreter, possibly behind unshare)."""
    path.write_text(textwrap.dedent(source))
    return subprocess.run([*launcher, str(path), *args], env=ENV, capture_output=True, text=True, timeout=180)


def digest(cache: FeatureCache) -> dict:
    return {"features": cache.features.tobytes().hex(), "labels": cache.labels.tolist()}


# ------------------------------------------------------------------------------------------------ probing


def test_pixels_probe_reaches_sklearn_on_fashion_mnist(tmp_path: Path) -> None:
    from encoders.registry import create_encoder

    try:
        train, val = fashion_mnist("train"), fashion_mnist("val")
    except DatasetUnavailable as error:
        pytest.skip(f"Fashion-MNIST not available: {error}")
    pixels = create_encoder("pixels", image_size=28, patch=2)  # 14 x 14 cells at the native resolution
    caches = [extract_features(pixels, data,
                               CachePlan(tmp_path, split, tokens=True, subset=balanced_subset(data.targets, n, seed=0)),
                               ExtractOptions(num_workers=0, batch_size=256, progress=False))
              for data, split, n in ((train, "train", 200), (val, "val", 100))]
    (train_x, train_y), (val_x, val_y) = [(c.tokens.reshape(len(c.tokens), -1), c.labels) for c in caches]
    assert train_x.shape == (2000, 14 * 14 * 3) and caches[0].tokens.dtype == np.float16
    config = ProbeSweepConfig(base_lrs=(0.1, 0.3, 1.0, 3.0), weight_decays=(0.0, 1e-4, 1e-3), holdout_fraction=0.15,
                              training=LinearProbeConfig(epochs=30, warmup_epochs=2, batch_size=128, optimizer="sgd",
                                                         device="cpu"))
    reference = sklearn_logreg_probe(train_x, train_y, val_x, val_y)
    result = sweep_linear_probe(train_x, train_y, val_x, val_y, config)
    assert reference["top1"] > 60
    assert result.val["top1"] >= reference["top1"] - 1.0


# ------------------------------------------------------------------------------------------------ feature cache

def extract_slowly(root: Path) -> None:
    extract_features(Cells(), SlowImages(delay=0.004), CachePlan(root, "train"),
                     ExtractOptions(batch_size=16, num_workers=0, checkpoint_every=2, progress=False))


def test_killed_extraction_resumes_without_recomputing(tmp_path: Path) -> None:
    process = multiprocessing.get_context("fork").Process(target=extract_slowly, args=(tmp_path / "killed",))
    process.start()
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "killed").glob("*/done-*.npy")):
            assert process.is_alive(), f"extraction ended (exit code {process.exitcode}) before it could be killed"
            assert time.monotonic() < deadline, "no progress saved within 60 s"
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    assert process.exitcode == -signal.SIGKILL
    directory = next((tmp_path / "killed").iterdir())
    finished = int(load_done(directory, 600).sum())
    assert 0 < finished < 600 and finished % 32 == 0  # saved every 2 batches of 16

    dataset = SlowImages()
    options = ExtractOptions(batch_size=16, num_workers=0, progress=False)
    resumed = extract_features(Cells(), dataset, CachePlan(tmp_path / "killed", "train"), options)
    assert dataset.reads == 600 - finished
    assert (resumed.stats["computed"], resumed.stats["reused"]) == (600 - finished, finished)
    assert resumed.manifest["complete"] and sorted(p.name for p in directory.glob("done*")) == ["done.npy"]
    uninterrupted = extract_features(Cells(), SlowImages(), CachePlan(tmp_path / "fresh", "train"), options)
    assert resumed.path.name == uninterrupted.path.name
    assert digest(resumed) == digest(uninterrupted)
    again = extract_features(Cells(), SlowImages(), CachePlan(tmp_path / "killed", "train"),
                             ExtractOptions(progress=False))
    assert (again.stats["computed"], again.stats["reused"]) == (0, 600)


def extract_as_rank(rank: int, root: Path, port: int) -> None:
    """One of two real processes joined through gloo, as torchrun or accelerate launch would start them."""
    from accelerate import PartialState

    PartialState._reset_state()  # a forked child inherits the parent's single-process state; start as a new process
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cache = extract_features(Cells(), SlowImages(), CachePlan(root / "two", "train", subset=range(192)),
                             ExtractOptions(batch_size=16, num_workers=1, progress=False))
    (root / f"stats-{rank}.json").write_text(json.dumps(cache.stats))


def test_two_processes_fill_every_index_like_one(tmp_path: Path) -> None:
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    torch.multiprocessing.start_processes(extract_as_rank, args=(tmp_path, port), nprocs=2, start_method="fork")
    stats = [json.loads((tmp_path / f"stats-{rank}.json").read_text()) for rank in (0, 1)]
    assert [(s["rank"], s["world"], s["computed"]) for s in stats] == [(0, 2, 96), (1, 2, 96)]
    two = FeatureCache.open(next((tmp_path / "two").iterdir()))
    one = extract_features(Cells(), SlowImages(), CachePlan(tmp_path / "one", "train", subset=range(192)),
                           ExtractOptions(batch_size=16, num_workers=0, progress=False))
    assert load_done(two.path, 192).all() and two.manifest["complete"]
    assert two.path.name == one.path.name
    assert digest(two) == digest(one)


FILL_THE_DISK = """
    import json, pathlib, resource, signal, subprocess, sys
    from test_probe_pipeline import Cells, SlowImages
    from probe.feature_cache import CachePlan, CacheSpaceError
    from probe.features import ExtractOptions, extract_features

    def attempt(root):
        try:
            cache = extract_features(Cells(), SlowImages(), CachePlan(root, "train", tokens=True),
                                     ExtractOptions(num_workers=0, progress=False))
            return {"computed": cache.stats["computed"], "features": cache.features.tobytes().hex()}
        except CacheSpaceError as error:
            return {"error": str(error), "left": sorted(p.name for p in pathlib.Path(root).rglob("*"))}

    outcome = {}
    for mode, root in (arg.split("=", 1) for arg in sys.argv[1:]):
        if mode == "tmpfs":  # a real full filesystem (ENOSPC), in a private mount namespace
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", root], check=True)
            full = attempt(root)
            subprocess.run(["mount", "-o", "remount,size=4m", root], check=True)
        else:  # a file-size limit (EFBIG)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, hard))
            full = attempt(root)
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        outcome[mode] = {"full": full, "roomy": attempt(root)}
    print(json.dumps(outcome))
"""


def _private_mounts_allowed() -> bool:
    command = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    return shutil.which("unshare") is not None and subprocess.run(command, capture_output=True).returncode == 0


def test_full_disk_gives_clear_error_and_resumable_cache(tmp_path: Path) -> None:
    """A real full tmpfs where private mounts are allowed, and always a real file-size limit."""
    modes = ["tmpfs", "rlimit"] if _private_mounts_allowed() else ["rlimit"]
    for mode in modes:
        (tmp_path / mode).mkdir()
    launcher = ("unshare", "--user", "--map-root-user", "--mount") if "tmpfs" in modes else ()
    result = run_script(tmp_path / "fill.py", FILL_THE_DISK, *(f"{m}={tmp_path / m}" for m in modes),
                        launcher=(*launcher, sys.executable))
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(outcome) == modes
    reference = extract_features(Cells(), SlowImages(), CachePlan(tmp_path / "reference", "train", tokens=True),
                                 ExtractOptions(num_workers=0, progress=False))
    needed = 600 * 8 * 4 + 600 * 16 * 8 * 2  # float32 features + float16 tokens (4 x 4 cells of 8 dims)
    for mode in modes:
        message = outcome[mode]["full"]["error"]
        assert f"it needs {needed / 1e6:.1f} MB" in message and "rerun" in message, message
        assert not [name for name in outcome[mode]["full"]["left"] if name.endswith((".npy", ".json"))]
        assert outcome[mode]["roomy"] == {"computed": 600, "features": reference.features.tobytes().hex()}


def test_cache_key_follows_layer_pooling_preprocessing_and_weights(tmp_path: Path) -> None:
    data = ArrayImageDataset(sklearn_digits("val").images[:24], sklearn_digits("val").targets[:24], list("0123456789"))
    encoder = TinyViT()

    def extract(**plan) -> FeatureCache:
        return extract_features(encoder, data, CachePlan(tmp_path, "val", **plan),
                                ExtractOptions(batch_size=10, num_workers=0, progress=False))

    base = extract()
    pixels = torch.stack([encoder.preprocess(data[i][0]) for i in range(len(data))])
    with torch.no_grad():
        expected = encoder(pixels).pooled.numpy()
    np.testing.assert_allclose(base.features, expected, rtol=1e-5, atol=1e-6)
    assert base.manifest["key"]["pooling"] == "mean" and base.stats["computed"] == 24

    same = extract()
    assert same.path == base.path and same.stats["computed"] == 0
    variants = [extract(layer=0), extract(pooling="cls"), extract(subset=[1, 2, 3])]
    encoder.preprocess = Preprocess(image_size=16, crop="resize")
    variants.append(extract())
    encoder.preprocess = Preprocess(image_size=16, crop="center")
    with torch.no_grad():
        encoder.vit.blocks[0].mlp.fc1.bias.add_(0.1)
    variants.append(extract())
    paths = {base.path, *(v.path for v in variants)}
    assert len(paths) == 6 and all(v.stats["computed"] > 0 for v in variants)
    assert cache_path(tmp_path, base.manifest["key"]) == base.path

    with pytest.raises(ValueError, match="pooling 'map' is not available"):
        extract(pooling="map")


def test_corrupt_and_non_image_files_are_skipped_reported_and_heads_reused(tmp_path: Path) -> None:
    from probe.study import EncoderSpec, ProbeStudyConfig, run_cam_study, run_probe_study

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for label, shade in (("dark", 30), ("grey", 128), ("light", 220)):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(shade, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "data/train/dark/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "data/val/light/notes.txt").write_text("not an image")
    config = ProbeStudyConfig([EncoderSpec("pixels")], f"imagefolder:{tmp_path / 'data'}", str(tmp_path / "run"),
                              cache=str(tmp_path / "cache"), workers=0, epochs=40, device="cpu", sklearn=True)
    results = run_probe_study(config)
    saved = json.loads((tmp_path / "run/results.json").read_text())
    assert saved["data"]["skipped_count"] == 2 == len(results["data"]["skipped"])
    assert {Path(s["path"]).name for s in saved["data"]["skipped"]} == {"broken.png", "notes.txt"}
    assert saved["data"]["train_samples"] == 24 and saved["data"]["val_samples"] == 12
    assert saved["encoders"]["pixels"]["top1"] == 100.0
    report = (tmp_path / "run/report.md").read_text()
    assert "2 files skipped" in report and "broken.png" in report and "notes.txt" in report
    for name in ("topk", "per_class", "confusion-pixels"):
        assert (tmp_path / f"run/{name}.png").stat().st_size > 0 and (tmp_path / f"run/{name}.pdf").exists()
    assert (tmp_path / "run/heads/pixels.safetensors").exists()

    config.out = str(tmp_path / "cams")
    cams = run_cam_study(config, images=3, heads=str(tmp_path / "run"))
    assert cams["targets"] == [0, 1, 2] and (tmp_path / "cams/cams.png").exists()
    assert "3 val images" in (tmp_path / "cams/cams.md").read_text()
    config.features = "tokens"
    with pytest.raises(ValueError, match="trained differently.*features: pooled vs tokens"):
        run_cam_study(config, images=3, heads=str(tmp_path / "run"))


# ------------------------------------------------------------------------------------------------ Grad-CAM++


def frozen_vit_and_head(classes: int = 3) -> tuple[TinyViT, LinearProbeHead]:
    encoder = TinyViT().eval().requires_grad_(False)
    torch.manual_seed(1)
    head = LinearProbeHead(16, classes)
    return encoder, head


def test_batched_cams_equal_per_image_cams() -> None:
    encoder, head = frozen_vit_and_head()
    images = torch.randn(5, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    classes = [0, 1, 2, 1, 0]
    batched = compute_cams(encoder, head, images, classes, batch_size=4)
    single = np.concatenate([compute_cams(encoder, head, images[i : i + 1], [c]) for i, c in enumerate(classes)])
    assert batched.shape == (5, 16, 24) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert all(batched[i].max() > batched[i].min() for i in range(5))
    other_class = compute_cams(encoder, head, images[:1], [2])
    assert not np.allclose(other_class[0], batched[0], atol=1e-3)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_cam_reshape_lays_tokens_on_the_true_grid_with_and_without_prefix() -> None:
    from encoders.registry import create_encoder

    encoder, _ = frozen_vit_and_head()
    captured: list[torch.Tensor] = []
    handle = encoder.cam_layer().register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        encoder(torch.randn(2, 3, 16, 24))
    handle.remove()
    sequence = captured[0]
    assert sequence.shape == (2, 1 + 4 * 6, 16)
    grid = encoder.cam_reshape(16, 24)(sequence)
    assert grid.shape == (2, 16, 4, 6)
    assert torch.equal(grid[:, :, 2, 5], sequence[:, 1 + 2 * 6 + 5])  # row-major, class token dropped

    pixels = create_encoder("pixels")
    cells = pixels.cam_layer()
    captured.clear()
    handle = cells.register_forward_hook(lambda module, args, out: captured.append(out))
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        pixels(image)
    handle.remove()
    assert pixels.cam_reshape(32, 32)(captured[0]).shape == (1, 3, 8, 8)
    maps = compute_cams(pixels, LinearProbeHead(3, 2), image, 1, pooling="mean")
    assert maps.shape == (1, 32, 32)


def test_overlay_resizes_the_cam_and_blends_it() -> None:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    cam = np.zeros((4, 6), dtype=np.float32)
    cam[:, 3:] = 1.0
    blended = overlay(image, cam, alpha=0.5)
    assert blended.shape == (20, 30, 3) and blended.dtype == np.uint8
    assert blended[:, -1, 0].min() > 50 and blended[:, -1, 2].max() < 10  # jet: 1 is red
    assert blended[:, 0, 2].min() > 50 and blended[:, 0, 0].max() < 10  # 0 is blue
    with pytest.raises(ValueError, match="one \\[H, W\\] map"):
        overlay(image, np.zeros((1, 4, 6)))
