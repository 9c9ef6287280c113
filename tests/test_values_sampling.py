"""Guidance in MAR and Harmon sampling on tiny real models: the per-step scale of each schedule against hand
computation, what the unconditional rows hold (fake latent, the "Generate an image." prompt), and that the
guidance scale changes the output exactly when the conditional and unconditional rows differ.

For 16 tokens in 4 steps the cosine schedule leaves 14, 11, 6, 1 tokens masked (reveals 2, 3, 5, 6), so MAR's
linear schedule at CFG 3 gives 1 + 2 (16 - m) / 16 = 1.25, 1.625, 2.25, 2.875 and the constant one 3, 3, 3, 3.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from harmon.generation import generate_latents
from harmon.mar import MAR
from harmon.model import Harmon
from harmon.tiny import tiny_harmon
from tests.conftest import TINY_MAR

LINEAR_AT_3 = [1.25, 1.625, 2.25, 2.875]
REVEALS = [2, 3, 5, 6]
LABELS = torch.tensor([1, 7])


def _live_head(model: MAR) -> None:
    """Perturb the diffusion head: its released initialisation zeroes the output layer, so epsilon would be 0
    whatever the condition and guidance could not show."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.diffloss.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def mar() -> MAR:
    torch.manual_seed(0)
    model = MAR(TINY_MAR).eval()
    _live_head(model)
    return model


@pytest.fixture(scope="module")
def harmon() -> Harmon:
    model = tiny_harmon(mar=TINY_MAR)
    _live_head(model.mar)
    return model


@contextmanager
def diffusion_calls(model: MAR) -> Iterator[list[tuple[int, float]]]:
    """(rows, guidance scale) of every call of the diffusion head's sampler; the sampler itself runs as usual."""
    calls: list[tuple[int, float]] = []
    original = model.diffloss.sample
    signature = inspect.signature(original)

    def recording(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append((int(bound.arguments["z"].shape[0]), float(bound.arguments["cfg"])))
        return original(*args, **kwargs)

    model.diffloss.sample = recording
    try:
        yield calls
    finally:
        del model.diffloss.sample


@contextmanager
def buffer_embeddings(model: MAR) -> Iterator[list[torch.Tensor]]:
    """The embedding each row's buffer slots received, per encoder call: the input of `z_proj_ln` minus the
    buffer rows of the learned position embedding."""
    seen: list[torch.Tensor] = []
    n = model.buffer_size

    def keep(module, args) -> None:
        seen.append(args[0][:, :n] - model.encoder_pos_embed_learned[:, :n])

    handle = model.z_proj_ln.register_forward_pre_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


# ----- schedules -------------------------------------------------------------------------------------------
def test_mar_guidance_is_linear_by_default(mar):
    with diffusion_calls(mar) as calls:
        mar.sample_tokens(2, num_iter=4, cfg=3.0, labels=LABELS, seed=0)
    assert [scale for _, scale in calls] == pytest.approx(LINEAR_AT_3, abs=1e-12)
    assert [rows for rows, _ in calls] == [2 * 2 * r for r in REVEALS]  # [cond | uncond] rows of the revealed


def test_mar_constant_schedule_keeps_the_scale(mar):
    with diffusion_calls(mar) as calls:
        mar.sample_tokens(2, num_iter=4, cfg=3.0, cfg_schedule="constant", labels=LABELS, seed=0)
    assert [scale for _, scale in calls] == [3.0] * 4


def test_mar_without_guidance_samples_single_rows(mar):
    with diffusion_calls(mar) as calls:
        mar.sample_tokens(2, num_iter=4, cfg=1.0, labels=LABELS, seed=0)
    assert calls == [(2 * r, 1.0) for r in REVEALS]


def test_harmon_guidance_is_constant_by_default(harmon):
    with diffusion_calls(harmon.mar) as calls:
        generate_latents(harmon, ["a red cube"], steps=4, cfg=3.0, seed=0, image_size=64)
    assert calls == [(2 * r, 3.0) for r in REVEALS]


def test_harmon_linear_schedule_is_mar_rule(harmon):
    with diffusion_calls(harmon.mar) as calls:
        generate_latents(harmon, ["a red cube"], steps=4, cfg=3.0, cfg_schedule="linear", seed=0, image_size=64)
    assert [scale for _, scale in calls] == pytest.approx(LINEAR_AT_3, abs=1e-12)


# ----- what the unconditional rows hold ----------------------------------------------------------------------
def test_mar_unconditional_rows_carry_the_fake_latent(mar):
    with buffer_embeddings(mar) as seen:
        mar.sample_tokens(2, num_iter=2, cfg=3.0, labels=LABELS, seed=0)
    expected = torch.cat([mar.class_emb.weight[LABELS], mar.fake_latent.expand(2, -1)])
    assert len(seen) == 2
    for buffers in seen:
        assert buffers.shape[:2] == (4, mar.buffer_size)
        torch.testing.assert_close(buffers, expected[:, None].expand_as(buffers), rtol=1e-5, atol=1e-6)


def test_mar_without_labels_conditions_on_the_fake_latent(mar):
    with buffer_embeddings(mar) as seen:
        mar.sample_tokens(3, num_iter=1, cfg=1.0, seed=0)
    (buffers,) = seen
    torch.testing.assert_close(buffers, mar.fake_latent[:, None].expand_as(buffers), rtol=1e-5, atol=1e-6)


def test_harmon_unconditional_rows_use_the_cfg_prompt(harmon):
    """Rows [cond | uncond]: the user turn 'Generate an image: <prompt>', then 'Generate an image.'; every row's
    MAR buffers hold the fake latent (Harmon never uses the class embedding)."""
    prompts: list[torch.Tensor] = []
    hook = harmon.llm.model.embed_tokens.register_forward_hook(lambda m, args, out: prompts.append(args[0]))
    try:
        with buffer_embeddings(harmon.mar) as seen:
            generate_latents(harmon, ["a red cube", "a blue sphere"], steps=2, cfg=3.0, seed=0, image_size=64)
    finally:
        hook.remove()
    pad = harmon.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    texts = [harmon.tokenizer.decode([i for i in row.tolist() if i != pad]) for row in prompts[0]]
    turn = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    assert texts == [turn.format("Generate an image: a red cube"), turn.format("Generate an image: a blue sphere"),
                     turn.format("Generate an image."), turn.format("Generate an image.")]
    assert len(seen) == 2
    for buffers in seen:
        assert buffers.shape[0] == 4
        torch.testing.assert_close(buffers, harmon.mar.fake_latent[:, None].expand_as(buffers), rtol=1e-5, atol=1e-6)


# ----- guidance changes the output ---------------------------------------------------------------------------
def _mar_tokens(mar: MAR, cfg: float, labels: torch.Tensor | None) -> torch.Tensor:
    return mar.sample_tokens(2, num_iter=3, cfg=cfg, cfg_schedule="constant", labels=labels, seed=5)


def test_mar_guidance_scale_changes_class_conditional_samples(mar):
    a, b = _mar_tokens(mar, 3.0, LABELS), _mar_tokens(mar, 4.0, LABELS)
    assert (a - b).abs().max() > 1e-3


def test_mar_guidance_scale_is_inert_when_both_rows_hold_the_fake_latent(mar):
    """Without labels the conditional rows equal the unconditional ones, so eps_u + s (eps_c - eps_u) = eps_u
    for any s: the scale alone must not change the samples."""
    torch.testing.assert_close(_mar_tokens(mar, 3.0, None), _mar_tokens(mar, 4.0, None), rtol=1e-5, atol=1e-5)


def _harmon_latents(harmon: Harmon, cfg: float, **kwargs) -> torch.Tensor:
    return generate_latents(harmon, ["a red cube"], steps=3, cfg=cfg, seed=5, image_size=64, **kwargs)


def test_harmon_guidance_scale_changes_the_image(harmon):
    assert (_harmon_latents(harmon, 3.0) - _harmon_latents(harmon, 4.0)).abs().max() > 1e-3


def test_harmon_guidance_is_inert_when_the_cfg_prompt_is_the_prompt(harmon):
    same = "Generate an image: a red cube"
    torch.testing.assert_close(_harmon_latents(harmon, 3.0, cfg_prompt=same),
                               _harmon_latents(harmon, 4.0, cfg_prompt=same), rtol=1e-5, atol=1e-5)


def test_progress_bars_do_not_change_the_samples(mar, harmon):
    torch.testing.assert_close(mar.sample_tokens(2, num_iter=3, cfg=3.0, labels=LABELS, seed=2, progress=True),
                               mar.sample_tokens(2, num_iter=3, cfg=3.0, labels=LABELS, seed=2))
    torch.testing.assert_close(_harmon_latents(harmon, 3.0, progress=True), _harmon_latents(harmon, 3.0))
