"""Sampling with `compile_for_sampling` and under bf16 autocast, on the CPU with tiny models.

torch.compile's inductor backend needs over a minute per tiny model on this CPU, so these tests compile with
backend "aot_eager": the same graphs are traced (Dynamo and AOT autograd), without generated kernels. The CUDA
tests (tests/test_cuda.py) use inductor.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from PIL import Image
from torch._dynamo.utils import counters
from typer.testing import CliRunner

from harmon.compile import compile_for_sampling, compiled_parts
from harmon.generation import generate_images
from harmon.mar import MAR
from harmon.tiny import tiny_harmon
from harmon.utils.runtime import bf16_autocast
from harmon.vae import build_kl16, save_kl16_safetensors, tiny_kl16_config


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo keeps compiled code per function across models, so an earlier test in this process (any file) would
    let these tests' compilations hit its cache and count no new frames: start each from an empty cache."""
    torch._dynamo.reset()
    yield


def _trained_looking(mar: MAR) -> MAR:
    """Give the zero-initialised layers of the diffusion head small weights, so its output depends on its input."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in mar.diffloss.net.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return mar


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Equal up to `rtol` of the largest magnitude (random heads give latents far from unit scale)."""
    return bool((a - b).abs().max() <= rtol * a.abs().max())


def _harmon(*args: str) -> Result:
    """`harmon ARGS` in this process (a fresh interpreter would spend most of the test importing)."""
    from experiments.cli import app

    return CliRunner().invoke(app, list(args))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_compiled_mar_samples_like_the_eager_one(tiny_mar_config):
    eager = _trained_looking(MAR(tiny_mar_config).eval())
    compiled = compile_for_sampling(copy.deepcopy(eager), "default", backend="aot_eager")
    labels = torch.tensor([1, 2, 3])
    counters.clear()
    got = compiled.sample_tokens(3, num_iter=4, cfg=2.0, labels=labels, seed=0)
    assert counters["frames"]["ok"] > 0  # the blocks and the diffusion network went through Dynamo
    want = eager.sample_tokens(3, num_iter=4, cfg=2.0, labels=labels, seed=0)
    assert torch.isfinite(got).all() and _close(want, got)
    assert all(part._compiled_call_impl is not None for part in compiled_parts(compiled))
    assert all(part._compiled_call_impl is None for part in compiled_parts(eager))


def test_compiled_harmon_generates_like_the_eager_one():
    eager = tiny_harmon()
    _trained_looking(eager.mar)
    compiled = compile_for_sampling(copy.deepcopy(eager), "max-autotune", backend="aot_eager")
    counters.clear()
    got = generate_images(compiled, ["a red cube"], steps=3, seed=0, image_size=64)
    assert counters["frames"]["ok"] > 0
    want = generate_images(eager, ["a red cube"], steps=3, seed=0, image_size=64)
    assert got.shape == (1, 3, 64, 64) and _close(want, got)


def test_compile_refuses_unknown_modes_and_models(tiny_mar_config):
    with pytest.raises(ValueError, match="reduce-overhead"):
        compile_for_sampling(MAR(tiny_mar_config), "fast")
    with pytest.raises(ValueError, match="aot_eager"):
        compile_for_sampling(MAR(tiny_mar_config), "default", backend="tensorrt")
    with pytest.raises(TypeError, match="MAR or a Harmon"):
        compile_for_sampling(torch.nn.Linear(2, 2))


def test_autocast_runs_the_mar_matmuls_in_bf16_and_keeps_the_weights(tiny_mar_config):
    mar = _trained_looking(MAR(tiny_mar_config).eval())
    seen = []
    mar.encoder_blocks[0].attn.qkv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with bf16_autocast("cpu"):
        latents = mar.sample_tokens(2, num_iter=2, cfg=2.0, labels=torch.tensor([0, 1]), seed=0)
    with bf16_autocast("cpu", enabled=False):
        mar.sample_tokens(2, num_iter=2, cfg=2.0, labels=torch.tensor([0, 1]), seed=0)
    assert seen == [torch.bfloat16] * 2 + [torch.float32] * 2
    assert torch.isfinite(latents).all() and mar.fake_latent.dtype == torch.float32


@pytest.fixture
def mar_files(tmp_path, tiny_mar_config) -> list[str]:
    folder = tmp_path / "mar"
    folder.mkdir()
    mar = _trained_looking(MAR(tiny_mar_config))
    torch.save({"model": mar.state_dict(), "model_ema": mar.state_dict()}, folder / "mar.pth")
    save_kl16_safetensors(build_kl16(tiny_kl16_config()), folder / "vae.safetensors")
    return ["--checkpoint", str(folder / "mar.pth"), "--vae", str(folder / "vae.safetensors"), "--num-iter", "3",
            "--diffusion-steps", "5", "--device", "cpu"]


@pytest.mark.filterwarnings("ignore:head counts are not stored")
def test_mar_sample_with_compile_writes_the_eager_images(mar_files, tmp_path):
    plain, compiled = tmp_path / "plain.png", tmp_path / "compiled.png"
    assert _harmon("mar-sample", "1,2", *mar_files, "--out", str(plain)).exit_code == 0
    counters.clear()
    result = _harmon("mar-sample", "1,2", *mar_files, "--out", str(compiled), "--compile", "reduce-overhead",
                     "--compile-backend", "aot_eager")
    assert result.exit_code == 0, result.output
    assert counters["frames"]["ok"] > 0
    assert np.abs(_pixels(plain) - _pixels(compiled)).max() <= 1


@pytest.mark.filterwarnings("ignore:head counts are not stored")
def test_sampling_commands_refuse_an_unknown_compile_mode(mar_files, tmp_path):
    result = _harmon("mar-sample", "1", *mar_files, "--compile", "fast", "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "'fast' is not one of" in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.filterwarnings("ignore:head counts are not stored")
def test_generate_with_autocast_and_compile_writes_an_image(bundle, tmp_path):
    out = tmp_path / "cube.png"
    result = _harmon("generate", "a red cube", "--checkpoint", str(bundle.checkpoint), "--llm", str(bundle.llm),
                     "--tokenizer", str(bundle.llm), "--vae", str(bundle.vae), "--device", "cpu", "--out", str(out),
                     "--image-size", "64", "--steps", "2", "--autocast", "--compile", "default",
                     "--compile-backend", "aot_eager")
    assert result.exit_code == 0, result.output
    assert _pixels(out).shape == (64, 64, 3)
