"""KL-16 VAE: exact diffusers config, LDM <-> diffusers conversion and strict loading, checked against an independent
LDM reference written here with the official parameter names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from harmon.checkpoints import CheckpointError
from harmon.vae import (
    KL16_SCALE,
    build_kl16,
    decode,
    diffusers_to_ldm,
    encode,
    kl16_config,
    ldm_to_diffusers,
    load_kl16,
    save_kl16_safetensors,
    tiny_kl16_config,
)

TINY = tiny_kl16_config()
TINY_WIDTHS = (4, 4, 8, 8, 16)
TINY_GROUPS = 2


# ---- independent LDM reference (official names; GroupNorm eps 1e-6, swish, single-head 1x1-conv attention) ----

def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)
        k = self.k(y).reshape(b, c, h * w)
        v = self.v(y).reshape(b, c, h * w)
        weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
        return x + self.proj_out(torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def mid_block(c: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(c, c, groups), AttnBlock(c, groups), ResnetBlock(c, c, groups)
    return mid


def run_mid(mid: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, widths: tuple[int, ...], groups: int, z: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        cin = widths[0]
        for i, cout in enumerate(widths):
            level = nn.Module()
            level.block = nn.ModuleList([ResnetBlock(cin, cout, groups), ResnetBlock(cout, cout, groups)])
            last = i == len(widths) - 1
            level.attn = nn.ModuleList([AttnBlock(cout, groups) for _ in range(2)] if last else [])
            if not last:
                level.downsample = Downsample(cout)
            self.down.append(level)
            cin = cout
        self.mid = mid_block(cin, groups)
        self.norm_out = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, 2 * z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for n, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[n](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(swish(self.norm_out(run_mid(self.mid, h))))


class Decoder(nn.Module):
    def __init__(self, widths: tuple[int, ...], groups: int, z: int):
        super().__init__()
        cin = widths[-1]
        self.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        self.mid = mid_block(cin, groups)
        levels = []
        for i in reversed(range(len(widths))):
            level = nn.Module()
            level.block = nn.ModuleList([ResnetBlock(cin if n == 0 else widths[i], widths[i], groups) for n in range(3)])
            if i != 0:
                level.upsample = Upsample(widths[i])
            levels.insert(0, level)
            cin = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class ReferenceKL(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (128, 128, 256, 256, 512), groups: int = 32, z: int = 16):
        super().__init__()
        self.encoder, self.decoder = Encoder(widths, groups, z), Decoder(widths, groups, z)
        self.quant_conv, self.post_quant_conv = nn.Conv2d(2 * z, 2 * z, 1), nn.Conv2d(z, z, 1)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


# ---- fixtures ----


@pytest.fixture(scope="module")
def reference() -> ReferenceKL:
    torch.manual_seed(0)
    ref = ReferenceKL(TINY_WIDTHS, TINY_GROUPS).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, (p[0].numel()) ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.3)
    return ref


@pytest.fixture(scope="module")
def ldm_state(reference: ReferenceKL) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in reference.state_dict().items()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, ldm_state: dict[str, torch.Tensor]):
    path = tmp_path_factory.mktemp("kl16") / "kl16.ckpt"
    torch.save({"model": ldm_state}, path)
    return path


@pytest.fixture(scope="module")
def vae(ckpt):
    return load_kl16(ckpt, config=TINY)


def images(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- configuration ----

def test_full_config_is_the_official_kl16_on_meta():
    with torch.device("meta"):
        model = build_kl16()
        ref = ReferenceKL()
    state, ldm = model.state_dict(), ref.state_dict()
    assert len(state) == 312 == len(ldm)
    assert sum(p.numel() for p in model.parameters()) == 66_456_019 == sum(p.numel() for p in ref.parameters())
    converted = diffusers_to_ldm(state)
    assert set(converted) == set(ldm)
    assert all(converted[k].shape == ldm[k].shape for k in ldm)
    forward = ldm_to_diffusers(ldm)
    assert set(forward) == set(state) and all(forward[k].shape == state[k].shape for k in state)
    appendix_b = {  # a few rows of the reference table, including the reversed decoder levels and attention
        "encoder.down.4.attn.1.proj_out.weight": ("encoder.down_blocks.4.attentions.1.to_out.0.weight", (512, 512, 1, 1)),
        "encoder.down.2.block.0.nin_shortcut.weight": ("encoder.down_blocks.2.resnets.0.conv_shortcut.weight",
                                                       (256, 128, 1, 1)),
        "encoder.mid.attn_1.norm.bias": ("encoder.mid_block.attentions.0.group_norm.bias", (512,)),
        "encoder.norm_out.weight": ("encoder.conv_norm_out.weight", (512,)),
        "encoder.conv_out.weight": ("encoder.conv_out.weight", (32, 512, 3, 3)),
        "decoder.mid.block_2.conv1.weight": ("decoder.mid_block.resnets.1.conv1.weight", (512, 512, 3, 3)),
        "decoder.up.0.block.2.conv2.weight": ("decoder.up_blocks.4.resnets.2.conv2.weight", (128, 128, 3, 3)),
        "decoder.up.3.block.0.nin_shortcut.weight": ("decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
                                                     (256, 512, 1, 1)),
        "decoder.up.4.upsample.conv.weight": ("decoder.up_blocks.0.upsamplers.0.conv.weight", (512, 512, 3, 3)),
        "quant_conv.weight": ("quant_conv.weight", (32, 32, 1, 1)),
        "post_quant_conv.weight": ("post_quant_conv.weight", (16, 16, 1, 1)),
    }
    for ldm_key, (diffusers_key, shape) in appendix_b.items():
        assert tuple(converted[ldm_key].shape) == shape
        assert list(ldm_to_diffusers({ldm_key: converted[ldm_key]}, num_levels=5)) == [diffusers_key]
    assert tuple(state["encoder.down_blocks.4.attentions.1.to_out.0.weight"].shape) == (512, 512)
    assert model.config.scaling_factor == KL16_SCALE


def test_tiny_config_keeps_the_structure():
    model = build_kl16(TINY)
    assert len(model.state_dict()) == 312
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 100_000
    assert model.encoder(torch.zeros(1, 3, 32, 48)).shape == (1, 32, 2, 3)
    assert kl16_config(block_out_channels=(8, 16))["down_block_types"] == ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")


@pytest.mark.parametrize("config", [kl16_config(), TINY], ids=["full", "tiny"])
def test_attention_is_single_head_ldm_style(config):
    with torch.device("meta"):
        model = build_kl16(config)
    found = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
    assert sorted(found) == ["decoder.mid_block.attentions.0", "encoder.down_blocks.4.attentions.0",
                             "encoder.down_blocks.4.attentions.1", "encoder.mid_block.attentions.0"]
    for attn in found.values():
        channels = attn.to_q.in_features
        assert attn.heads == 1 and attn.scale == channels**-0.5
        assert attn.group_norm.eps == 1e-6 and attn.group_norm.num_groups == config["norm_num_groups"]
        assert attn.residual_connection and attn.rescale_output_factor == 1.0


# ---- loading and numerics ----

@pytest.mark.parametrize("size", [(64, 64), (32, 48)])
def test_loaded_vae_matches_reference(vae, reference: ReferenceKL, size):
    x = images(*size)
    with torch.no_grad():
        mean, logvar = reference.moments(x)
        posterior = vae.encode(x).latent_dist
        z = encode(vae, x)
        ref_images = reference.decode(mean)
        out = decode(vae, mean * KL16_SCALE)
    assert mean.shape == (2, 16, size[0] // 16, size[1] // 16)
    assert mean.abs().mean() > 0.1 and ref_images.abs().mean() > 0.1
    assert (posterior.mean - mean).abs().max() < 1e-4
    assert (posterior.logvar - logvar).abs().max() < 1e-4
    assert (z - mean * KL16_SCALE).abs().max() < 1e-4
    assert out.shape == x.shape
    assert (out - ref_images).abs().max() < 1e-4
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


def _outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return encode(model, images(32, 32))


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "first_stage_model", "vae"])
def test_accepts_other_wrappers(tmp_path, ldm_state, vae, wrap):
    if wrap == "bare":
        payload = ldm_state
    elif wrap == "state_dict":
        payload = {"state_dict": ldm_state, "epoch": 3}
    else:
        payload = {f"{wrap}.{k}": v for k, v in ldm_state.items()} | {"model.diffusion_model.x": torch.zeros(1)}
    torch.save(payload, tmp_path / "w.ckpt")
    assert torch.equal(_outputs(load_kl16(tmp_path / "w.ckpt", config=TINY)), _outputs(vae))


def test_diffusers_layout_safetensors_round_trip(tmp_path, vae, ldm_state):
    path = save_kl16_safetensors(vae, tmp_path / "kl16.safetensors")
    again = load_kl16(path)  # config from the file's metadata
    assert tuple(again.config.block_out_channels) == TINY_WIDTHS
    assert torch.equal(_outputs(again), _outputs(vae))
    back = diffusers_to_ldm(again.state_dict())
    assert set(back) == set(ldm_state) and all(torch.equal(back[k], ldm_state[k]) for k in ldm_state)


def test_round_trip_is_exact(ldm_state):
    converted = ldm_to_diffusers(ldm_state)
    assert converted["encoder.down_blocks.4.attentions.0.to_q.weight"].shape == (16, 16)
    assert converted["decoder.up_blocks.0.upsamplers.0.conv.weight"].data_ptr() == \
        ldm_state["decoder.up.4.upsample.conv.weight"].data_ptr()
    back = diffusers_to_ldm(converted)
    assert list(back) == list(ldm_state)
    for k, v in ldm_state.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v)


def test_unknown_key_is_named(tmp_path, ldm_state):
    with pytest.raises(CheckpointError, match=r"encoder\.down\.4\.attn\.0\.extra\.weight"):
        ldm_to_diffusers(ldm_state | {"encoder.down.4.attn.0.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"decoder\.up_blocks\.0\.bogus\.weight"):
        diffusers_to_ldm({"decoder.up_blocks.0.bogus.weight": torch.zeros(1)})
    torch.save({"model": ldm_state | {"loss.logvar": torch.zeros(1)}}, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match=r"unexpected \(1\):\n\s+loss\.logvar"):
        load_kl16(tmp_path / "extra.ckpt", config=TINY)


def test_missing_key_is_listed(tmp_path, ldm_state):
    state = {k: v for k, v in ldm_state.items() if not k.startswith("encoder.down.4.attn.1.")}
    torch.save({"model": state}, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"missing \(10\):\n\s+encoder\.down\.4\.attn\.1\.k\.bias") as err:
        load_kl16(tmp_path / "missing.ckpt", config=TINY)
    assert "encoder.down.4.attn.1.proj_out.weight" in str(err.value)


def test_wrong_shape_is_listed_with_both_shapes(tmp_path, ldm_state):
    torch.save({"model": ldm_state | {"decoder.conv_out.weight": torch.zeros(3, 5, 3, 3)}}, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match=r"decoder\.conv_out\.weight: file \(3, 5, 3, 3\) vs model \(3, 4, 3, 3\)"):
        load_kl16(tmp_path / "shape.ckpt", config=TINY)
    with pytest.raises(CheckpointError, match=r"wrong shape \(\d+\)"):  # tiny weights into the full-size model
        load_kl16(tmp_path / "shape.ckpt")


def test_truncated_checkpoint_is_reported(tmp_path, ckpt, vae):
    data = ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_kl16(tmp_path / "cut.ckpt", config=TINY)
    good = save_kl16_safetensors(vae, tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_kl16(tmp_path / "cut.safetensors")


# ---- latent helpers ----

def test_sampling_is_seeded_and_scaled(vae):
    x = images(32, 32)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        a = encode(vae, x, sample=True, generator=torch.Generator().manual_seed(5))
        b = encode(vae, x, sample=True, generator=torch.Generator().manual_seed(5))
        c = encode(vae, x, sample=True, generator=torch.Generator().manual_seed(6))
        mode = encode(vae, x)
        unscaled = encode(vae, x, scale=1.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(5))
    expected = (posterior.mean + torch.exp(0.5 * posterior.logvar) * noise) * KL16_SCALE
    assert torch.allclose(a, expected, atol=1e-6)
    assert torch.equal(posterior.mode(), posterior.mean)
    assert torch.allclose(mode, posterior.mean * KL16_SCALE) and torch.allclose(unscaled, posterior.mean)


def test_decode_divides_by_the_scale_and_leaves_input_alone(vae):
    z = torch.randn(1, 16, 2, 3, generator=torch.Generator().manual_seed(2))
    kept = z.clone()
    with torch.no_grad():
        out = decode(vae, z)
        direct = vae.decode(kept / KL16_SCALE).sample
    assert torch.equal(z, kept)
    assert out.shape == (1, 3, 32, 48) and torch.equal(out, direct)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 1, 32, 32), r"got \(2, 1, 32, 32\): 1 channels; convert the images to 3-channel RGB"),
        ((2, 32, 32, 3), r"channels-last; use images\.permute\(0, 3, 1, 2\)"),
        ((2, 3, 30, 32), r"got \(2, 3, 30, 32\)\. Resize or crop to a multiple of 16, e\.g\. 32x32"),
        ((3, 32, 32), r"Add a batch dimension"),
    ],
)
def test_encode_rejects_bad_images(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        encode(vae, torch.zeros(shape))


def test_decode_rejects_bad_latents(vae):
    with pytest.raises(ValueError, match=r"decode expects latents \(B, 16, h, w\); got \(1, 4, 2, 2\)"):
        decode(vae, torch.zeros(1, 4, 2, 2))
