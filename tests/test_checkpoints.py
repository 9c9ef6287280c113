"""Checkpoint files in the official layouts: strict loading, safe unpickling, clear errors."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from harmon.checkpoints import CheckpointError, check_keys, load_file, resolve, save_safetensors
from harmon.mar import MAR, mar_config
from harmon.mar_loading import infer_mar_config, load_mar


def _write_mar_release(path, config, seed=0):
    """A file shaped like MAR's `checkpoint-last.pth`: model, model_ema, argparse args, epoch."""
    torch.manual_seed(seed)
    model = MAR(config)
    ema = {k: v + 1.0 for k, v in model.state_dict().items()}
    args = argparse.Namespace(model="mar_custom", diffloss_d=config.diffloss_d, num_iter=64, cfg=2.9)
    torch.save({"model": model.state_dict(), "model_ema": ema, "args": args, "epoch": 799}, path)
    return model.state_dict(), ema


def test_official_layout_loads_strictly_with_ema_by_default(tmp_path, tiny_mar_config):
    path = tmp_path / "checkpoint-last.pth"
    plain, ema = _write_mar_release(path, tiny_mar_config)
    heads = {"encoder_num_heads": 2, "decoder_num_heads": 2, "num_sampling_steps": "10"}
    model = load_mar(path, **heads)
    assert not model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ema[key])
    raw = load_mar(path, ema=False, **heads)
    torch.testing.assert_close(raw.state_dict()["z_proj.weight"], plain["z_proj.weight"])
    assert infer_mar_config(ema, **heads) == tiny_mar_config
    with pytest.warns(UserWarning, match="encoder_num_heads="):
        infer_mar_config(ema)


def test_harmon_style_prefixed_file_gives_the_mar(tmp_path, tiny_mar_config):
    state = {f"mar.{k}": v for k, v in MAR(tiny_mar_config).state_dict().items()}
    state["proj_in.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "harmon.pth"
    torch.save(state, path)
    model = load_mar(path, encoder_num_heads=2, decoder_num_heads=2)
    torch.testing.assert_close(model.state_dict()["fake_latent"], state["mar.fake_latent"])


def test_wrong_variant_lists_keys_and_names_what_the_file_is(tmp_path, tiny_mar_config):
    path = tmp_path / "checkpoint-last.pth"
    _write_mar_release(path, tiny_mar_config)
    with pytest.raises(CheckpointError) as err:
        load_mar(path, variant="mar_base")
    message = str(err.value)
    assert "missing (" in message and "unexpected" not in message
    assert "wrong shape" in message and "class_emb.weight: file (10, 32) vs model (1000, 768)" in message
    assert "looks like: a custom MAR (encoder 32x2" in message


def test_missing_and_unexpected_keys_are_listed(tiny_mar_config):
    model = MAR(tiny_mar_config)
    state = dict(model.state_dict())
    state.pop("mask_token")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        check_keys(model, state, "test file")
    assert "missing (1):\n    mask_token" in str(err.value)
    assert "unexpected (1):\n    extra.weight" in str(err.value)
    check_keys(model, state, "test file", allow_missing=["mask_token"], allow_unexpected=["extra.weight"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_payload_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_file(path)
    assert not marker.exists()


def test_truncated_file_gets_a_clear_error(tmp_path, tiny_mar_config):
    path = tmp_path / "checkpoint-last.pth"
    _write_mar_release(path, tiny_mar_config)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_mar(path)
    broken = tmp_path / "w.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_file(broken)


def test_safetensors_round_trip(tmp_path, tiny_mar_config):
    state = MAR(tiny_mar_config).state_dict()
    path = save_safetensors(state, tmp_path / "mar.safetensors")
    model = load_mar(path, encoder_num_heads=2, decoder_num_heads=2)
    torch.testing.assert_close(model.state_dict()["decoder_embed.weight"], state["decoder_embed.weight"])


def test_sources_resolve_or_explain(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HARMON_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="Did you mean 'mar-base'"):
        resolve("mar-bas")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        resolve("https://example.invalid/weights/checkpoint-last.pth")
    with pytest.raises(CheckpointError, match="huggingface-cli download wusize/harmon kl16.ckpt"):
        resolve("kl16")
    with pytest.raises(CheckpointError, match="hf://owner/repo"):
        resolve("hf://just-a-name")
    with pytest.raises(CheckpointError, match="directory"):
        resolve(tmp_path)
    cached = resolve.__globals__["cache_dir"]() / "urls"
    cached.mkdir(parents=True)
    url = "https://example.invalid/w.pth"
    import hashlib

    target = cached / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-w.pth"
    target.write_bytes(b"x")
    assert resolve(url) == target


def test_released_variant_config_inferred_from_shapes():
    with torch.device("meta"):
        state = MAR(mar_config("mar_huge")).state_dict()
    assert infer_mar_config(state) == mar_config("mar_huge")
