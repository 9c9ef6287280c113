"""The CUDA paths on tiny models: bf16 and autocast generation, compiled sampling (inductor, CUDA graphs),
bf16 understanding, feature extraction and a few training steps. Skipped without a GPU; run them with
`pytest -m cuda` (experiments/benchmarks/gpu_check.sh does)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.benchmarks.extraction_throughput import SmallViT, SyntheticImages
from harmon.compile import compile_for_sampling
from harmon.generation import generate_images
from harmon.mar import MAR
from harmon.prompts import preprocess_image
from harmon.tiny import tiny_harmon
from harmon.train.config import load_config
from harmon.train.run_log import read_metrics
from harmon.train.trainer import Trainer
from harmon.utils.runtime import bf16_autocast
from probe.feature_cache import CachePlan
from probe.features import ExtractOptions, extract_features

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def _trained_looking(mar: MAR) -> MAR:
    """Give the zero-initialised layers of the diffusion head small weights, so its output depends on its input."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in mar.diffloss.net.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator).to(parameter))
    return mar


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def test_bf16_generation_is_seeded_and_finite():
    model = tiny_harmon().to(CUDA, torch.bfloat16)
    first = generate_images(model, ["a red cube"] * 2, steps=4, seed=0, image_size=64)
    again = generate_images(model, ["a red cube"] * 2, steps=4, seed=0, image_size=64)
    assert first.shape == (2, 3, 64, 64) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, again)


def test_autocast_generation_runs_the_llm_in_bf16_with_fp32_weights():
    model = tiny_harmon().to(CUDA)
    seen = []
    model.llm.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, output: seen.append(output.dtype))
    with bf16_autocast(CUDA):
        images = generate_images(model, ["a red cube"], steps=3, seed=0, image_size=64)
    assert torch.isfinite(images).all() and set(seen) == {torch.bfloat16}
    assert model.llm.model.embed_tokens.weight.dtype == torch.float32


def test_inductor_compiled_mar_samples_like_the_eager_one(tiny_mar_config):
    eager = _trained_looking(MAR(tiny_mar_config)).to(CUDA).eval()
    compiled = compile_for_sampling(copy.deepcopy(eager), "default")
    labels = torch.tensor([1, 2, 3], device=CUDA)
    want = eager.sample_tokens(3, num_iter=4, cfg=2.0, labels=labels, seed=0)
    got = compiled.sample_tokens(3, num_iter=4, cfg=2.0, labels=labels, seed=0)
    assert float((want - got).abs().max()) <= 1e-3 * float(want.abs().max())


def test_cuda_graph_compiled_bf16_harmon_generates_finite_images():
    model = tiny_harmon().to(CUDA, torch.bfloat16)
    _trained_looking(model.mar)
    compile_for_sampling(model, "reduce-overhead")
    for _ in range(2):  # the second call replays the recorded graphs
        images = generate_images(model, ["a red cube"] * 2, steps=3, seed=0, image_size=64)
        assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_bf16_understanding_agrees_with_fp32_on_the_cpu():
    cpu = tiny_harmon()
    gpu = copy.deepcopy(cpu).to(CUDA, torch.bfloat16)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    pixels = preprocess_image(image, 64)[None]
    with torch.no_grad():
        want, got = cpu.visual_features(pixels), gpu.visual_features(pixels)
    assert got.dtype == torch.bfloat16 and _cosine(want, got.cpu()) > 0.99
    (answer,) = gpu.answer(image, "What color is the object?", max_new_tokens=4, image_size=64)
    assert isinstance(answer, str)


def test_bf16_feature_extraction_on_cuda_agrees_with_the_cpu(tmp_path):
    encoder = SmallViT(dim=32, depth=2, heads=2)
    dataset = SyntheticImages(24)
    options = {"batch_size": 8, "num_workers": 0, "progress": False}
    want = extract_features(copy.deepcopy(encoder), dataset, CachePlan(tmp_path / "cpu", "val"),
                            ExtractOptions(device="cpu", **options))
    got = extract_features(encoder, dataset, CachePlan(tmp_path / "cuda", "val", dtype="bf16"),
                           ExtractOptions(device="cuda", **options))
    assert got.features.shape == want.features.shape == (24, 32)
    rows = torch.nn.functional.cosine_similarity(torch.tensor(want.features), torch.tensor(got.features), dim=1)
    assert float(rows.min()) > 0.99


def test_a_few_bf16_training_steps_on_cuda(tmp_path):
    config = load_config("tiny-shapesworld", [f"out_dir={tmp_path / 'run'}", "steps=3", "save_every=3",
                                              "mixed_precision=bf16", "deterministic=false"])
    trainer = Trainer(config, progress=False)
    trainer.fit()
    rows = read_metrics(tmp_path / "run")
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert next(trainer.model.parameters()).device.type == "cuda"
