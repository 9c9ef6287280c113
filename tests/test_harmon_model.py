"""Harmon on transformers' Qwen2: official layout and strict loading, generation, understanding, preprocessing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from harmon.checkpoints import CheckpointError
from harmon.generation import generate_latents, prompt_batch
from harmon.harmon_loading import load_harmon
from harmon.model import Harmon, HarmonConfig
from harmon.prompts import INSTRUCTION, encode_turn, expand2square, image_token_count, preprocess_image
from harmon.tiny import TINY_CORPUS, tiny_harmon, tiny_harmon_config
from harmon.tokenizer import build_tiny_tokenizer, load_tokenizer
from harmon.understanding import build_understanding_inputs, generate_ids, positions_from_mask
from tests.conftest import TINY_MAR

PROMPTS = ["a red cube", "a small grey cat sits next to a yellow ball on a blue sphere"]



@pytest.fixture(scope="module")
def model() -> Harmon:
    return tiny_harmon(mar=TINY_MAR)


@pytest.fixture(scope="module")
def peaked(model) -> Harmon:
    """The tiny model with large random LLM weights, so greedy answers depend on the input."""
    other = tiny_harmon(model.tokenizer, mar=TINY_MAR)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.llm.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.5, generator=generator)
    return other


# ----- layout and loading --------------------------------------------------------------------------------------
def test_state_dict_is_the_official_layout(model):
    keys = [k for k in model.state_dict() if not k.startswith("vae.")]
    assert keys == list(model.official_state_dict())
    assert {k.split(".")[0] for k in keys} == {"llm", "mar", "proj_in", "proj_out"}
    hidden, width = model.config.llm.hidden_size, TINY_MAR.encoder_embed_dim
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("proj_")}
    assert shapes == {
        "proj_in.0.weight": (hidden, width), "proj_in.0.bias": (hidden,), "proj_in.2.weight": (hidden, hidden),
        "proj_in.2.bias": (hidden,), "proj_out.0.weight": (hidden, hidden), "proj_out.0.bias": (hidden,),
        "proj_out.2.weight": (width, hidden), "proj_out.2.bias": (width,),
    }
    assert "llm.lm_head.weight" in keys and "mar.class_emb.weight" in keys
    assert not model.vae.training and not any(p.requires_grad for p in model.vae.parameters())
    assert not model.train().vae.training
    model.eval()


def _reference(bundle) -> dict[str, torch.Tensor]:
    return torch.load(bundle.checkpoint, weights_only=True)


def _load(bundle, path: Path) -> Harmon:
    with pytest.warns(UserWarning, match="head counts"):
        return load_harmon(path, llm=bundle.llm, vae=bundle.vae, image_size=64)


@pytest.mark.parametrize("with_head", [True, False])
def test_flat_official_file_loads_strictly(bundle, tmp_path, with_head):
    state = _reference(bundle)
    if not with_head:
        del state["llm.lm_head.weight"]
    state["vae.encoder.conv_in.weight"] = torch.zeros(3)
    path = tmp_path / "flat.pth"
    torch.save(state, path)
    loaded = _load(bundle, path)
    official = loaded.official_state_dict()
    assert all(torch.equal(official[k], v) for k, v in state.items() if not k.startswith("vae."))
    assert loaded.llm.lm_head.weight is loaded.llm.model.embed_tokens.weight
    assert not loaded.training
    assert loaded.generate("a red cube", steps=2, seed=0, image_size=64)[0].size == (64, 64)


def test_class_embedding_may_be_absent(bundle, tmp_path):
    state = _reference(bundle)
    del state["mar.class_emb.weight"]
    torch.save(state, tmp_path / "no_class.pth")
    loaded = _load(bundle, tmp_path / "no_class.pth")
    assert loaded.mar.class_emb.weight.abs().sum() == 0 and not loaded.mar.class_emb.weight.is_meta


def test_wrong_shapes_and_extra_keys_are_named(bundle, tmp_path):
    state = _reference(bundle)
    state["proj_in.0.weight"] = torch.zeros(5, 5)
    state["mar.not_a_weight"] = torch.zeros(1)
    del state["mar.z_proj.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        _load(bundle, tmp_path / "bad.pth")
    message = str(err.value)
    assert "proj_in.0.weight: file (5, 5)" in message
    assert re.search(r"unexpected \(1\):\s+mar\.not_a_weight", message)
    assert re.search(r"missing \(1\):\s+mar\.z_proj\.bias", message)


def test_untied_head_or_unknown_name_is_refused(bundle, tmp_path):
    state = _reference(bundle)
    state["llm.lm_head.weight"] = state["llm.lm_head.weight"] + 1
    torch.save(state, tmp_path / "untied.pth")
    with pytest.raises(CheckpointError, match="tie_word_embeddings=False"):
        _load(bundle, tmp_path / "untied.pth")
    with pytest.raises(CheckpointError, match="harmon-0.5b, harmon-1.5b, harmon-1.5b-o"):
        load_harmon("harmon-2b")


def test_missing_llm_source_says_what_to_pass(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="pass llm="):
        load_harmon(bundle.checkpoint, vae=bundle.vae)
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        load_tokenizer(tmp_path / "nothing-here")


# ----- generation ----------------------------------------------------------------------------------------------
def test_kv_cache_equals_recomputing_the_prompt(model):
    kwargs = dict(steps=5, cfg=3.0, seed=3, image_size=64)
    cached = generate_latents(model, PROMPTS, **kwargs)
    recomputed = generate_latents(model, PROMPTS, reuse_prompt_cache=False, **kwargs)
    torch.testing.assert_close(cached, recomputed, rtol=1e-5, atol=1e-5)
    assert torch.equal(cached, generate_latents(model, PROMPTS, **kwargs))
    assert not torch.equal(cached, generate_latents(model, PROMPTS, **{**kwargs, "seed": 4}))


def test_every_token_is_sampled_once(model):
    rows = []
    sample = model.mar.diffloss.sample

    def counting(z, *args, **kwargs):
        rows.append(z.shape[0])
        return sample(z, *args, **kwargs)

    model.mar.diffloss.sample = counting
    try:
        latents = generate_latents(model, PROMPTS, steps=4, cfg=2.0, seed=0, image_size=64)
    finally:
        del model.mar.diffloss.sample
    assert sum(rows) == 2 * 2 * 16 and len(rows) == 4
    assert latents.shape == (2, 16, 4, 4) and bool((latents != 0).all())


def test_padded_prompts_condition_like_single_prompts(model):
    grid, n = (4, 4), 16
    tokens = torch.randn(2, n, 16)
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[:, :9] = True
    ids, prompt_mask = prompt_batch(model, PROMPTS, 1000)
    assert prompt_mask[0].sum() < prompt_mask.shape[1]
    with torch.no_grad():
        both = model.condition_tokens(tokens, mask, grid, model.embed(ids), prompt_mask,
                                      model.prefill_prompt(model.embed(ids), prompt_mask))
        for row, prompt in enumerate(PROMPTS):
            one_ids, one_mask = prompt_batch(model, [prompt], 1000)
            alone = model.condition_tokens(tokens[row:row + 1], mask[row:row + 1], grid, model.embed(one_ids),
                                           one_mask)
            torch.testing.assert_close(both[row:row + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cfg", "rows"), [(1.0, 2), (3.0, 4)])
def test_cfg_one_runs_only_conditional_rows(model, cfg, rows):
    seen = []
    handle = model.llm.model.register_forward_hook(lambda m, args, kwargs, out: seen.append(
        kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        images = model.generate(PROMPTS, steps=3, cfg=cfg, seed=0, image_size=64)
    finally:
        handle.remove()
    assert set(seen) == {rows} and len(seen) == 4
    assert [im.size for im in images] == [(64, 64)] * 2


def test_generation_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="cfg_schedule"):
        model.generate("x", cfg_schedule="cosine")
    with pytest.raises(ValueError, match="multiple of 16"):
        model.generate("x", image_size=100)


# ----- understanding -------------------------------------------------------------------------------------------
IMAGES = [Image.new("RGB", (70, 50), (200, 10, 10)), Image.new("L", (40, 64), 30)]
QUESTIONS = ["What color is the big object on the left?", "Describe the image in detail."]


@pytest.mark.parametrize("size", [256, 512])
def test_batch_answers_equal_single_answers(peaked, size):
    batch = peaked.answer(IMAGES, QUESTIONS, max_new_tokens=6, image_size=size)
    single = [peaked.answer(img, q, max_new_tokens=6, image_size=size)[0] for img, q in zip(IMAGES, QUESTIONS, strict=True)]
    assert batch == single
    assert batch[0] != batch[1]


def test_sampling_is_seeded_and_a_tiny_nucleus_is_greedy(peaked):
    kwargs = dict(max_new_tokens=5, image_size=64, do_sample=True)
    first = peaked.answer(IMAGES, QUESTIONS, seed=1, **kwargs)
    assert first == peaked.answer(IMAGES, QUESTIONS, seed=1, **kwargs)
    greedy = peaked.answer(IMAGES, QUESTIONS, max_new_tokens=5, image_size=64)
    assert peaked.answer(IMAGES, QUESTIONS, seed=2, top_p=1e-6, **kwargs) == greedy
    with pytest.raises(ValueError, match="temperature > 0"):
        peaked.answer(IMAGES, QUESTIONS, temperature=0.0, **kwargs)


def test_cached_decoding_equals_full_recomputation(peaked):
    features = peaked.visual_features(torch.stack([preprocess_image(i, 64) for i in IMAGES]))
    embeds, mask = build_understanding_inputs(peaked, features, QUESTIONS)
    ids = generate_ids(peaked.llm, embeds, mask, max_new_tokens=5)
    assert [len(row) for row in ids] == [5, 5]
    for row, new in enumerate(ids):
        prompt = embeds[row, : int(mask[row].sum())]
        full = torch.cat([prompt, peaked.embed(torch.tensor(new))])[None]
        with torch.no_grad():
            logits = peaked.llm(inputs_embeds=full).logits[0, prompt.shape[0] - 1 : -1]
        assert logits.argmax(-1).tolist() == new


def test_image_prompt_layout_and_positions(peaked):
    features = peaked.visual_features(torch.stack([preprocess_image(i, 64) for i in IMAGES]))
    assert features.shape == (2, 16 + TINY_MAR.buffer_size, peaked.config.llm.hidden_size)
    embeds, mask = build_understanding_inputs(peaked, features, QUESTIONS)
    turns = [encode_turn(peaked.tokenizer, "\n" + q) for q in QUESTIONS]
    head = len(turns[0].head)
    for row, turn in enumerate(turns):
        torch.testing.assert_close(embeds[row, head:head + features.shape[1]], features[row])
        assert int(mask[row].sum()) == len(turn) + features.shape[1]
        assert bool(mask[row, : int(mask[row].sum())].all())
    assert not bool(mask.all()) and mask.shape[1] == max(len(t) for t in turns) + features.shape[1]
    short = int(mask.sum(1).argmin())
    assert positions_from_mask(mask)[short, -1] == int(mask[short].sum()) - 1
    assert image_token_count(512) == 1088 and image_token_count(256) == 320


def test_long_questions_are_cut_with_a_warning(peaked):
    with pytest.warns(UserWarning, match="only the first"):
        (reply,) = peaked.answer(IMAGES[0], "cube " * 2100, max_new_tokens=2, image_size=64)
    assert isinstance(reply, str)
    with pytest.raises(ValueError, match="one question per image"):
        peaked.answer(IMAGES, ["one"], image_size=64)


class PatchEmbed(nn.Module):
    """A small real encoder: a 16x16 conv patch embedding."""

    def __init__(self, embed_dim: int = 24):
        super().__init__()
        self.embed_dim = embed_dim
        self.conv = nn.Conv2d(3, embed_dim, 16, stride=16)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels).flatten(2).transpose(1, 2)


def test_plugged_understanding_encoder(model):
    torch.manual_seed(0)
    plugged = Harmon(model.config, model.tokenizer, understanding_encoder=PatchEmbed()).eval()
    plugged.load_state_dict(model.state_dict(), strict=False)
    pixels = torch.stack([preprocess_image(i, 64) for i in IMAGES])
    features = plugged.visual_features(pixels)
    assert features.shape == (2, 16, model.config.llm.hidden_size)
    assert not torch.allclose(features, model.visual_features(pixels)[:, :16])
    assert any(k.startswith("understanding.encoder.conv") for k in plugged.state_dict())
    assert len(plugged.answer(IMAGES, QUESTIONS, max_new_tokens=3, image_size=64)) == 2
    with pytest.raises(TypeError, match="embed_dim"):
        Harmon(model.config, model.tokenizer, understanding_encoder=nn.Conv2d(3, 4, 16))


def test_harmon_package_does_not_import_outer_packages():
    root = Path(__file__).parents[1] / "harmon"
    pattern = re.compile(r"^\s*(from|import)\s+(encoders|probe|experiments)\b", re.MULTILINE)
    offenders = [p.name for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


# ----- prompts, tokenizer, preprocessing -----------------------------------------------------------------------
def test_tiny_tokenizer_roundtrip_and_turns(tmp_path):
    tokenizer = build_tiny_tokenizer(TINY_CORPUS, save_dir=tmp_path)
    again = load_tokenizer(tmp_path)
    assert (again.pad_token, again.eos_token) == ("<|endoftext|>", "<|im_end|>")
    text = "Generate an image: a red cube"
    whole = tokenizer.encode(INSTRUCTION.format(input=text), add_special_tokens=False)
    turn = encode_turn(again, text)
    assert turn.head + turn.text + turn.tail == whole
    assert again.decode(whole) == INSTRUCTION.format(input=text)
    assert again.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                     add_generation_prompt=True) == INSTRUCTION.format(input=text)
    config = tiny_harmon_config(len(tokenizer))
    assert config.llm.vocab_size == len(tokenizer)
    assert HarmonConfig(llm=config.llm.to_dict(), mar=config.mar).llm.to_dict() == config.llm.to_dict()


def _pixels(value: int) -> float:
    return value / 255 * 2 - 1


def test_preprocessing_pads_to_a_grey_square():
    red = Image.new("RGB", (31, 20), (200, 10, 10))
    square = expand2square(red)
    assert square.size == (31, 31)
    x = preprocess_image(red, 31)
    assert x.shape == (3, 31, 31)
    torch.testing.assert_close(x[:, 5:25, :], torch.tensor([_pixels(200), _pixels(10), _pixels(10)])[:, None, None]
                               .expand(3, 20, 31))
    grey = torch.full((3, 5, 31), _pixels(127))
    torch.testing.assert_close(x[:, :5], grey)
    torch.testing.assert_close(x[:, 25:], torch.full((3, 6, 31), _pixels(127)))
    tall = preprocess_image(Image.new("RGB", (20, 31), (0, 0, 0)), 31)
    torch.testing.assert_close(tall[:, :, :5], grey.transpose(1, 2))


def test_preprocessing_converts_other_modes():
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 0))
    torch.testing.assert_close(preprocess_image(rgba, 16)[:, 0, 0], torch.tensor([_pixels(v) for v in (10, 20, 30)]))
    gray = preprocess_image(Image.new("L", (16, 16), 77), 16)
    torch.testing.assert_close(gray, torch.full((3, 16, 16), _pixels(77)))
    deep = Image.fromarray(np.full((16, 16), 257 * 100, dtype=np.uint16))
    assert deep.mode.startswith("I")
    torch.testing.assert_close(preprocess_image(deep, 16), torch.full((3, 16, 16), _pixels(100)))
    odd = preprocess_image(Image.new("RGB", (33, 17), (255, 255, 255)), 64)
    assert odd.shape == (3, 64, 64) and odd.min() >= -1 and odd.max() <= 1
    with pytest.raises(TypeError, match="PIL.Image.open"):
        preprocess_image(np.zeros((4, 4, 3)), 16)
