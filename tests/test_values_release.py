"""Constants of the official Harmon / MAR release, compared literally with the values the release uses (see the
official-release facts: VAE scale, prompt strings, mask schedule, sampling and training defaults)."""

from __future__ import annotations

import inspect

import pytest
import torch

from harmon.generation import generate_latents
from harmon.images import to_uint8
from harmon.mar import MAR, MARConfig, mar_config, mask_schedule
from harmon.model import Harmon
from harmon.prompts import (
    CFG_PROMPT,
    DEFAULT_QUESTION,
    IMAGE_TOKEN,
    INSTRUCTION,
    PAD_FILL,
    generation_text,
    image_token_count,
)
from harmon.tiny import TINY_CORPUS, tiny_harmon
from harmon.tokenizer import build_tiny_tokenizer
from harmon.train.batch import IGNORE_INDEX, IMAGE_TOKEN_INDEX, TASKS
from harmon.train.config import DataConfig, OptimConfig, TrainConfig
from harmon.train.data import encode_generation
from harmon.train.objectives import TrainingModel
from harmon.vae import KL16_SCALE, decode
from tests.conftest import TINY_MAR

# Tokens revealed per step of 64 (L = 256 and L = 1024), as the released sampler reveals them.
REVEALS_256 = [
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 2, 2, 3, 3, 3, 3, 3, 3, 4, 3, 4, 4, 4, 4, 4, 4, 4,
    5, 5, 4, 5, 5, 5, 5, 5, 6, 5, 5, 6, 5, 6, 6, 6, 5, 6, 6, 6, 6, 6, 6, 7, 6, 6, 6, 6, 7, 6, 6, 6,
]
REVEALS_1024 = [
    1, 1, 1, 2, 3, 4, 4, 4, 5, 6, 7, 7, 7, 8, 9, 9, 10, 11, 11, 11, 13, 12, 13, 14, 14, 15, 15, 16, 16, 17, 17,
    17, 18, 19, 19, 19, 20, 20, 20, 21, 21, 21, 22, 22, 22, 23, 23, 23, 23, 24, 23, 24, 24, 25, 24, 25, 24, 25,
    25, 25, 25, 25, 25, 25,
]


@pytest.fixture(scope="module")
def harmon() -> Harmon:
    return tiny_harmon(mar=TINY_MAR)


def _reveals(seq_len: int, num_iter: int) -> list[int]:
    """Tokens revealed at each step: the drop of the still-masked count; the last step reveals all that is left."""
    left = [seq_len, *mask_schedule(seq_len, num_iter)[:-1], 0]
    return [before - after for before, after in zip(left[:-1], left[1:], strict=True)]


def _defaults(function) -> dict:
    return {k: p.default for k, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


# ----- the VAE latent scale ----------------------------------------------------------------------------------
def test_vae_latent_scale_is_0_2325():
    assert KL16_SCALE == 0.2325
    assert tiny_harmon(mar=TINY_MAR).config.vae_scale == 0.2325


def test_encoding_multiplies_the_posterior_mode_by_0_2325(harmon):
    """Harmon's latent tokens are posterior mean x 0.2325, row-major over the grid, channels innermost."""
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean = harmon.vae.encode(pixels).latent_dist.mean
        tokens = harmon.encode_images(pixels)
    torch.testing.assert_close(tokens, (mean * 0.2325).flatten(2).transpose(1, 2))


def test_decoding_divides_by_0_2325(harmon):
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = harmon.vae.decode(latents / 0.2325).sample
        torch.testing.assert_close(decode(harmon.vae, latents.clone()), expected)


# ----- prompt strings ------------------------------------------------------------------------------------------
def test_prompt_strings_are_the_released_ones():
    assert INSTRUCTION == "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
    assert generation_text("a red cube") == "Generate an image: a red cube"  # no period appended
    assert CFG_PROMPT == "Generate an image."
    assert DEFAULT_QUESTION == "Describe the image in detail."
    assert IMAGE_TOKEN == "<image>" and PAD_FILL == (127, 127, 127)
    assert (IMAGE_TOKEN_INDEX, IGNORE_INDEX) == (-200, -100)
    assert image_token_count(512) == 32 * 32 + 64 and image_token_count(256) == 16 * 16 + 64


def test_training_turns_use_the_released_strings():
    tokenizer = build_tiny_tokenizer(TINY_CORPUS)
    caption = encode_generation(tokenizer, "a red cube", 64)
    dropped = encode_generation(tokenizer, "a red cube", 64, drop=True)
    assert tokenizer.decode(caption.ids) == (
        "<|im_start|>user\nGenerate an image: a red cube<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(dropped.ids) == "<|im_start|>user\nGenerate an image.<|im_end|>\n<|im_start|>assistant\n"


# ----- the masked-decoding schedule ----------------------------------------------------------------------------
def test_reveal_counts_equal_the_released_sampler():
    assert _reveals(256, 64) == REVEALS_256 and sum(REVEALS_256) == 256
    assert _reveals(1024, 64) == REVEALS_1024 and sum(REVEALS_1024) == 1024


def test_mask_schedule_by_hand():
    """floor(L cos(pi/2 (k+1)/K)) clamped to [1, masked - 1]; for L=16, K=4: 14, 11, 6, then 1 (not 0)."""
    assert mask_schedule(16, 4) == [14, 11, 6, 1]
    assert mask_schedule(16, 1) == [1]
    assert mask_schedule(4, 8) == [3, 2, 1, 1, 1, 1, 1, 1]


# ----- sampling and architecture defaults ----------------------------------------------------------------------
def test_mar_hyper_parameters_are_the_released_ones():
    c = MARConfig()
    assert (c.img_size, c.vae_stride, c.patch_size, c.vae_embed_dim, c.buffer_size, c.class_num) == (
        256, 16, 1, 16, 64, 1000)
    assert (c.mask_ratio_min, c.label_drop_prob, c.attn_dropout, c.proj_dropout) == (0.7, 0.1, 0.1, 0.1)
    assert (c.diffusion_batch_mul, c.num_sampling_steps, c.seq_len, c.token_embed_dim) == (4, "100", 256, 16)
    sizes = {v: (mar_config(v).encoder_embed_dim, mar_config(v).encoder_depth, mar_config(v).encoder_num_heads,
                 mar_config(v).diffloss_d, mar_config(v).diffloss_w) for v in ("mar_base", "mar_large", "mar_huge")}
    assert sizes == {"mar_base": (768, 12, 12, 6, 1024), "mar_large": (1024, 16, 16, 8, 1280),
                     "mar_huge": (1280, 20, 16, 12, 1536)}


def test_sampling_defaults_are_the_released_ones():
    """Harmon: 64 steps, CFG 3.0 constant with "Generate an image.", temperature 1; MAR: linear schedule."""
    for function in (generate_latents, Harmon.generate):
        d = _defaults(function)
        assert (d["steps"], d["cfg"], d["cfg_schedule"], d["temperature"], d["cfg_prompt"]) == (
            64, 3.0, "constant", 1.0, "Generate an image.")
    d = _defaults(MAR.sample_tokens)
    assert (d["num_iter"], d["cfg_schedule"], d["temperature"]) == (64, "linear", 1.0)


def test_pixel_conversions_by_hand():
    """Harmon's scripts: truncate(clamp(127.5 x + 128)); MAR's evaluation: round((x + 1) / 2 * 255)."""
    x = torch.tensor([-1.0, -0.75, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0]).view(1, 1, 1, 8).expand(1, 3, 1, 8)
    # 127.5 x + 128: 0.5, 32.375, 64.25, 128, 159.875, 191.75, 223.625, 255.5
    assert to_uint8(x, rounding="harmon")[0, 0, :, 0].tolist() == [0, 32, 64, 128, 159, 191, 223, 255]
    # (x + 1) / 2 * 255: 0, 31.875, 63.75, 127.5, 159.375, 191.25, 223.125, 255
    assert to_uint8(x, rounding="mar")[0, 0, :, 0].tolist() == [0, 32, 64, 128, 159, 191, 223, 255]


# ----- training defaults ---------------------------------------------------------------------------------------
def _field_default(cls, name: str):
    field = cls.__dataclass_fields__[name]
    return field.default_factory() if callable(field.default_factory) else field.default


def test_training_defaults_are_the_released_ones():
    """AdamW betas (0.9, 0.95), weight decay 0.02, clip 1.0, 1 % warm-up from 1e-5, gradient scale 0.1 on the
    understanding visual features, 10 % caption drop; the data ratio is text : i2t : t2i."""
    assert _field_default(OptimConfig, "betas") == (0.9, 0.95)
    assert _field_default(OptimConfig, "weight_decay") == 0.02
    assert _field_default(OptimConfig, "grad_clip") == 1.0
    assert (_field_default(OptimConfig, "warmup_ratio"), _field_default(OptimConfig, "warmup_start")) == (0.01, 1e-5)
    assert _field_default(TrainConfig, "grad_scale") == 0.1 and _defaults(TrainingModel.__init__)["grad_scale"] == 0.1
    assert _field_default(DataConfig, "caption_drop") == 0.1
    assert TASKS == ("text", "i2t", "t2i")
