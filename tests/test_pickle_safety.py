"""Every way the project reads a pickle refuses one that carries code: a real malicious file (unpickling it
creates a file) is written into a temporary folder and handed to each loader; the load must fail and the file
must not appear. Covers `torch.load` behind every checkpoint loader, training resume (each pickled part of a
checkpoint), the hub-format folders read through diffusers / transformers, and NumPy embeddings."""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import VQModel
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model, Qwen2Config, Qwen2ForCausalLM

from encoders.registry import create_encoder
from harmon.checkpoints import CheckpointError, hub_format_errors, load_file, read_torch
from harmon.harmon_loading import load_harmon
from harmon.mar_loading import load_mar
from harmon.train.build import build_model
from harmon.train.config import ModelConfig, load_config
from harmon.train.run_checkpoints import load_latest, read_checkpoint
from harmon.train.trainer import Trainer
from harmon.vae import load_kl16
from probe.cam_targets import load_embedding

TINY_MAR = dict(img_size=64, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=2, diffloss_d=1, diffloss_w=32, buffer_size=4, class_num=10)


class CodeOnLoad:
    """Unpickling this object calls `open(path, "w")`, which creates the file `path`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "created-by-unpickling"


@pytest.fixture
def evil(tmp_path: Path, marker: Path) -> Path:
    """A .pth shaped like every official layout (flat, "model", "model_ema", "state_dict") whose tensors are a
    payload."""
    payload = {"w": CodeOnLoad(marker)}
    path = tmp_path / "evil.pth"
    torch.save({**payload, "model": payload, "model_ema": payload, "state_dict": payload}, path)
    return path


def test_the_payload_calls_open_when_unpickled(evil, marker):
    """The file really is malicious, read without running it: its pickle pushes `open` (pickled as `io open`)
    and the marker's path and calls it (REDUCE)."""
    with zipfile.ZipFile(evil) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(data))
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert "io open" in globals_ and str(marker) in {arg for _, arg, _ in ops}
    assert "REDUCE" in {op.name for op, _, _ in ops}
    assert not marker.exists()


LOADERS: dict[str, Callable[[Path], object]] = {
    "load_file": load_file,
    "read_torch": read_torch,
    "load_mar": load_mar,
    "load_kl16": load_kl16,
    "load_harmon": lambda p: load_harmon(p, llm="unused", vae="unused"),
    "training init": lambda p: build_model(ModelConfig(architecture="tiny", init=str(p)), 64),
    **{f"encoder {name}": (lambda p, name=name: create_encoder(name, weights=str(p)))
       for name in ("vae-kl16", "vae-sd-ema", "vae-vavae-f16d32", "vqgan-taming-f16-16384", "vqgan-llamagen-vq16",
                    "siglip-b16", "siglip2-b16", "dinov2-s", "dinov2-s-reg", "mae-b16", "harmon-0.5b-mar",
                    "harmon-1.5b-reca-mar")},
    "encoder mar-b": lambda p: create_encoder("mar-b", weights=str(p), vae="kl16"),
    "encoder mar-b (vae)": lambda p: create_encoder("mar-b", weights="random", vae=str(p), config=TINY_MAR),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_checkpoint_loaders_refuse_code(evil, marker, loader):
    with pytest.raises(CheckpointError, match="refusing to load"):
        LOADERS[loader](evil)
    assert not marker.exists()


def test_refusal_holds_when_the_environment_asks_torch_for_full_unpickling(evil, marker, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns off weights_only wherever a caller leaves it unset."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refusing to load") as refused:
        load_file(evil)
    assert "open" in str(refused.value)  # the message names the code the file would run
    assert not marker.exists()


def _checkpoint(folder: Path, iteration: int) -> Path:
    """A complete, valid training checkpoint folder as the trainer writes it."""
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": iteration}, folder / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, folder / "rng.pt")
    (folder / "state.json").write_text(json.dumps({"iteration": iteration}))
    return folder


@pytest.mark.parametrize("part", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_resume_refuses_code_in_every_pickled_part(tmp_path, marker, part):
    older = _checkpoint(tmp_path / "run" / "checkpoints" / "iter_00000002", 2)
    newer = _checkpoint(tmp_path / "run" / "checkpoints" / "iter_00000004", 4)
    torch.save({"cpu": CodeOnLoad(marker)}, newer / part)
    with pytest.raises(CheckpointError, match=f"refusing to load .*{part}"):
        read_checkpoint(newer)
    warnings: list[str] = []
    point = load_latest(tmp_path / "run", warnings.append)
    assert point is not None and point.folder == older and int(point.state["iteration"]) == 2
    assert not newer.exists() and (newer.parent / "corrupt-iter_00000004").is_dir()
    assert len(warnings) == 1 and part in warnings[0]
    assert not marker.exists()


def test_an_unreadable_state_file_is_named(tmp_path):
    folder = _checkpoint(tmp_path / "iter_00000002", 2)
    (folder / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"iter_00000002/state.json is unreadable"):
        read_checkpoint(folder)


@pytest.mark.parametrize("part", ["optimizer.pt", "scheduler.pt"])
def test_trainer_resume_skips_a_checkpoint_carrying_code(tmp_path, marker, part):
    config = load_config("tiny-shapesworld", [f"out_dir={tmp_path / 'run'}", "steps=4", "save_every=2"])
    Trainer(config, progress=False).fit()
    torch.save({"state": CodeOnLoad(marker)}, tmp_path / "run" / "checkpoints" / "iter_00000004" / part)
    Trainer(config, progress=False).fit()
    assert (tmp_path / "run" / "checkpoints" / "corrupt-iter_00000004").is_dir()
    assert not marker.exists()


def test_diffusers_folders_refuse_a_pickled_bin(tmp_path, marker):
    folder = tmp_path / "vq"
    VQModel(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4, num_vq_embeddings=16, vq_embed_dim=4,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(folder, safe_serialization=False)
    torch.save({"encoder.conv_in.weight": CodeOnLoad(marker)}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load .*GLOBAL .*open") as caught:
        create_encoder("vqgan-diffusers", weights=str(folder))
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def _bin_only_folder(model, folder: Path) -> Path:
    """`model` saved as a transformers folder whose weights are then left to a `pytorch_model.bin` the test writes."""
    model.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    return folder


TINY_DINOV2 = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=56,
                   patch_size=14)


def test_transformers_folders_refuse_a_pickled_bin(tmp_path, marker):
    folder = _bin_only_folder(Dinov2Model(Dinov2Config(**TINY_DINOV2)), tmp_path / "dinov2")
    torch.save({"embeddings.cls_token": CodeOnLoad(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load .*GLOBAL .*open") as caught:
        create_encoder("dinov2-s-hf", weights=str(folder))
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_transformers_folders_name_a_truncated_bin(tmp_path):
    model = Dinov2Model(Dinov2Config(**TINY_DINOV2))
    folder = _bin_only_folder(model, tmp_path / "dinov2")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    (folder / "pytorch_model.bin").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated.*download the folder again"):
        create_encoder("dinov2-s-hf", weights=str(folder))


def test_the_stage_one_llm_folder_refuses_a_pickled_bin(tmp_path, marker):
    config = Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)
    folder = _bin_only_folder(Qwen2ForCausalLM(config), tmp_path / "qwen")
    torch.save({"model.embed_tokens.weight": CodeOnLoad(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load"):
        with hub_format_errors(str(folder)):
            Qwen2ForCausalLM.from_pretrained(str(folder))
    assert not marker.exists()


def test_embedding_files_refuse_a_pickled_array(tmp_path, marker):
    path = tmp_path / "reference.npy"
    np.save(path, np.array([CodeOnLoad(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_embedding(str(path))
    assert not marker.exists()
