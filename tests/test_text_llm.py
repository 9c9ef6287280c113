"""The small LLM's text pretraining: what it is trained on, that training lowers the loss, that the cache returns
the same weights, and that every Table 5 run starts from that one LLM."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from experiments.ablations.config import Table5Config, load_ablation
from experiments.ablations.factory import HarmonFactory
from experiments.ablations.mini_model import SmallLLM, load_tiny_parts, small_tokenizer
from experiments.pretrain.text_llm import TextPretrain, pretrain_llm, text_examples
from harmon.shapesworld import ShapesWorld, ShapesWorldConfig, describe_scene, questions_for_scene

IGNORE = -100
SETUP = TextPretrain(steps=30, batch_size=8, lr=3e-3, warmup=3, scenes=30, seed=5)


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer(512)


@pytest.fixture(scope="module")
def llm_config(tokenizer):
    return SmallLLM(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1).config(len(tokenizer))


def test_texts_are_captions_then_questions_answered_from_the_caption(tokenizer):
    setup = TextPretrain(scenes=3, seed=5)
    examples = text_examples(setup, tokenizer)
    world = ShapesWorld(ShapesWorldConfig(max_objects=3, sizes=("large",)), 5)
    scene = world.scene(0)
    caption = describe_scene(scene, world.rng(0, "caption")).text
    first = examples[0]
    assert tokenizer.decode(first.ids) == caption + "<|endoftext|>" and first.labels == first.ids
    pairs = questions_for_scene(scene, world.rng(0, "questions"), ShapesWorldConfig(max_objects=3,
                                                                                     sizes=("large",)), "random")
    second = examples[1]
    text = tokenizer.decode(second.ids)
    assert caption + "\n" + pairs[0].question in text and text.startswith("<|im_start|>user\n")
    supervised = [i for i, label in zip(second.ids, second.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(supervised) == pairs[0].answer + "<|im_end|>"
    assert len(examples) == 3 + sum(
        len(questions_for_scene(world.scene(i), world.rng(i, "questions"), ShapesWorldConfig(max_objects=3,
            sizes=("large",)), strategy)) for i, strategy in zip(range(3), ("random", "popular", "adversarial"), strict=True))


def test_pretraining_lowers_the_loss_and_the_cache_returns_the_same_weights(tmp_path, tokenizer, llm_config):
    model, first = pretrain_llm(SETUP, llm_config, tokenizer, tmp_path)
    losses = first.record["losses"]["loss"]
    assert first.trained and losses["final"] < losses["first"] - 0.5
    again, second = pretrain_llm(SETUP, llm_config, tokenizer, tmp_path)
    assert not second.trained and second.folder == first.folder
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert torch.equal(again.lm_head.weight, again.model.embed_tokens.weight)  # tied, as saved
    other = TextPretrain(steps=31, batch_size=8, lr=3e-3, warmup=3, scenes=30, seed=5)
    assert pretrain_llm(other, llm_config, tokenizer, tmp_path)[1].folder != first.folder


@pytest.mark.parametrize("field", ["steps", "batch_size", "scenes"])
def test_bad_setup_is_refused_naming_the_field(field):
    with pytest.raises(ValueError, match=field):
        TextPretrain(**{field: 0})


def test_every_table5_run_starts_from_the_one_text_pretrained_llm(tmp_path):
    load_tiny_parts("micro", tmp_path / "pretrain")
    config = load_ablation(Table5Config, "table5", "micro")
    factory = HarmonFactory(config.model, tmp_path, Console(quiet=True))
    a, b = factory.build(0, "MAR"), factory.build(1, "VAE")
    reference = factory.llm_state
    for name, tensor in a.llm.state_dict().items():
        assert torch.equal(tensor, reference[name]) and torch.equal(b.llm.state_dict()[name], tensor), name
    assert factory.record().llm == factory.llm_folder.name and factory.llm_folder.parent == tmp_path / "pretrain"
    random = load_ablation(Table5Config, "table5", "micro", ["model.small.text_pretrain=null"])
    plain = HarmonFactory(random.model, tmp_path, Console(quiet=True))
    assert plain.record().llm is None
    c, d = plain.build(0, "MAR"), plain.build(1, "MAR")
    embed = "model.embed_tokens.weight"
    assert not torch.equal(c.llm.state_dict()[embed], d.llm.state_dict()[embed])
    assert not torch.equal(c.llm.state_dict()[embed], reference[embed])
