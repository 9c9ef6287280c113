"""The attentive probe: a task mean pooling cannot solve, determinism, token-order invariance, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.attentive import (
    AttentivePoolHead,
    AttentiveProbeConfig,
    attentive_probe,
    predict_logits_attentive,
    train_attentive_probe,
)
from probe.linear import LinearProbeConfig, predict_logits, train_linear_probe
from probe.metrics import topk_accuracy

CLASSES = 4
FAST = AttentiveProbeConfig(
    epochs=30, warmup_epochs=3, batch_size=64, lr=1e-2, weight_decay=0.0, device="cpu"
)


def marked_tokens(n: int, seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T = 4 tokens per image whose contents are the one-hot vectors e_0..e_3 in a random order; the class is
    the content of the one token whose marker channel is 1. Channels: 4 content, 1 marker, 3 noise-only.
    Before noise every image has the same token mean (1/4 on each content channel, 1/4 on the marker), so
    mean pooling carries no class information. Returns (noisy tokens, labels, clean tokens)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    clean = np.zeros((n, CLASSES, CLASSES + 4), dtype=np.float32)
    for i, label in enumerate(labels):
        order = rng.permutation(CLASSES)
        clean[i, np.arange(CLASSES), order] = 1.0
        clean[i, np.flatnonzero(order == label)[0], CLASSES] = 1.0
    noisy = clean + rng.normal(0.0, noise, clean.shape).astype(np.float32)
    return noisy, labels, clean


def test_attention_solves_what_mean_pooling_cannot() -> None:
    train_x, train_y, train_clean = marked_tokens(512, seed=0)
    val_x, val_y, _ = marked_tokens(256, seed=1)
    assert np.ptp(train_clean.mean(axis=1), axis=0).max() == 0.0  # the construction: identical pooled means

    result = attentive_probe(train_x, train_y, val_x, val_y, FAST)
    assert result["top1"] >= 90.0
    assert result["input_dim"] == 8 and result["num_tokens"] == 4
    assert result["correct"].shape == (256,) and result["correct"].dtype == np.bool_
    assert 100.0 * result["correct"].mean() == pytest.approx(result["top1"])

    linear = train_linear_probe(
        train_x.mean(axis=1), train_y,
        LinearProbeConfig(epochs=30, warmup_epochs=3, batch_size=64, optimizer="sgd", device="cpu"),
    )
    pooled_top1 = topk_accuracy(predict_logits(linear, val_x.mean(axis=1)), val_y, ks=(1,))["top1"]
    assert pooled_top1 <= 40.0  # chance is 25


def test_same_seed_same_logits_other_seed_differs() -> None:
    x, y, _ = marked_tokens(128, seed=2)
    config = AttentiveProbeConfig(epochs=2, warmup_epochs=1, batch_size=32, device="cpu")
    first = predict_logits_attentive(train_attentive_probe(x, y, config), x)
    torch.manual_seed(123)  # the global RNG must not matter
    second = predict_logits_attentive(train_attentive_probe(x, y, config), x)
    other_config = AttentiveProbeConfig(epochs=2, warmup_epochs=1, batch_size=32, device="cpu", seed=1)
    other = predict_logits_attentive(train_attentive_probe(x, y, other_config), x)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_trained_head_ignores_token_order_and_float16_input_works() -> None:
    x, y, _ = marked_tokens(128, seed=3)
    config = AttentiveProbeConfig(epochs=3, warmup_epochs=1, batch_size=32, num_heads=2, device="cpu")
    head = train_attentive_probe(x.astype(np.float16), y, config)
    logits = predict_logits_attentive(head, x)
    permuted = predict_logits_attentive(head, x[:, [2, 0, 3, 1]])
    torch.testing.assert_close(permuted, logits, rtol=1e-5, atol=1e-5)
    assert logits.std(0).min() > 1e-3  # logits vary across images, so the check is not vacuous
    changed = x.copy()
    changed[:, 0] += 1.0
    assert not torch.allclose(predict_logits_attentive(head, changed), logits, atol=1e-3)


def test_standardisation_uses_every_training_token() -> None:
    x, y, _ = marked_tokens(64, seed=4)
    config = AttentiveProbeConfig(epochs=2, warmup_epochs=1, batch_size=32, device="cpu")
    scaled = x * np.arange(1, 9, dtype=np.float32) + 3.0
    head = train_attentive_probe(scaled, y, config)
    flat = scaled.reshape(-1, 8).astype(np.float64)
    np.testing.assert_allclose(head.mean.numpy(), flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(head.std.numpy(), np.sqrt(flat.var(0) + 1e-6), rtol=1e-5)
    # Per-channel affine changes of the features do not change what the probe learns.
    plain = predict_logits_attentive(train_attentive_probe(x, y, config), x)
    torch.testing.assert_close(predict_logits_attentive(head, scaled), plain, rtol=1e-3, atol=1e-3)


def test_bad_inputs_name_the_input() -> None:
    x, y, _ = marked_tokens(64, seed=5)
    config = AttentiveProbeConfig(epochs=1, warmup_epochs=0, batch_size=32, device="cpu")
    with pytest.raises(ValueError, match="train_tokens"):
        train_attentive_probe(x.mean(axis=1), y, config)
    with pytest.raises(ValueError, match="train_labels"):
        train_attentive_probe(x, y[:-1], config)
    with pytest.raises(ValueError, match="num_heads"):
        train_attentive_probe(x, y, AttentiveProbeConfig(num_heads=3, batch_size=32, device="cpu"))
    with pytest.raises(ValueError, match="num_heads"):
        AttentivePoolHead(8, 4, num_heads=3)
    with pytest.raises(ValueError, match="val_tokens"):
        attentive_probe(x, y, x[:, :, :4], y, config)
    with pytest.raises(ValueError, match="val_labels"):
        attentive_probe(x, y, x, y[:10], config)
    with pytest.raises(ValueError, match="batch_size"):
        train_attentive_probe(x, y, AttentiveProbeConfig(batch_size=65, device="cpu"))
    with pytest.raises(ValueError, match="optimizer"):
        AttentiveProbeConfig(optimizer="lars")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_epochs"):
        AttentiveProbeConfig(epochs=2, warmup_epochs=3)
