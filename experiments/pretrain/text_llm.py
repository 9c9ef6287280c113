"""Text pretraining of the small Harmon's LLM, done once and shared by every ablation run.

A random LLM must learn the language of the questions (and that answers come from the context) at the same time
as reading the image, so short runs often never leave the answer prior. Pretraining it on text first gives all
runs one language model. The text is ShapesWorld-like but holds no images: captions (every token supervised)
and text-grounded questions, where the caption of a scene is in the user turn and the loss is on the answer.
Scenes come from their own seed, apart from the training and evaluation scenes of the studies.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from experiments.pretrain.common import OptimConfig, Pretrained, reuse_or_train, summary, train
from harmon.shapesworld import (
    NEGATIVE_STRATEGIES,
    ShapesWorld,
    ShapesWorldConfig,
    describe_scene,
    questions_for_scene,
)
from harmon.train.data import Example, collate, encode_conversation, encode_text
from harmon.utils.files import short_hash


@dataclass(frozen=True)
class TextPretrain:
    """`steps` AdamW updates of `batch_size` texts at peak rate `lr` (warm-up `warmup`), drawn from `scenes`
    ShapesWorld scenes of `world` (large objects, up to three) rendered from `seed`."""

    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 20
    scenes: int = 4000
    seed: int = 20_000
    max_length: int = 96
    max_objects: int = 3

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.scenes, self.max_length, self.max_objects) < 1 or self.lr <= 0:
            raise ValueError(f"text_pretrain: steps, batch_size, scenes, max_length and max_objects must be >= 1 "
                             f"and lr > 0 (got {self})")


def text_examples(setup: TextPretrain, tokenizer: PreTrainedTokenizerBase) -> list[Example]:
    """Per scene its caption as plain text, then each of its questions asked after the caption."""
    config = ShapesWorldConfig(min_objects=1, max_objects=setup.max_objects, sizes=("large",))
    world = ShapesWorld(config, setup.seed)
    examples = []
    for index in range(setup.scenes):
        scene = world.scene(index)
        caption = describe_scene(scene, world.rng(index, "caption")).text
        examples.append(encode_text(tokenizer, caption, setup.max_length))
        strategy = NEGATIVE_STRATEGIES[index % len(NEGATIVE_STRATEGIES)]
        for pair in questions_for_scene(scene, world.rng(index, "questions"), config, strategy):
            examples.append(encode_conversation(tokenizer, [(f"{caption}\n{pair.question}", pair.answer)],
                                                setup.max_length))
    return examples


def identity(setup: TextPretrain, llm: Qwen2Config, tokenizer: PreTrainedTokenizerBase) -> dict:
    """What the saved LLM depends on: the text setup, the LLM architecture and the tokenizer's vocabulary."""
    architecture = {k: v for k, v in llm.to_dict().items() if k != "transformers_version"}
    vocabulary = short_hash(json.dumps(tokenizer.get_vocab(), sort_keys=True))
    return {"text": asdict(setup), "llm": architecture, "vocabulary": vocabulary}


def pretrain_llm(setup: TextPretrain, llm: Qwen2Config, tokenizer: PreTrainedTokenizerBase,
                 root: str | os.PathLike, console: Console | None = None) -> tuple[Qwen2ForCausalLM, Pretrained]:
    """The LLM of architecture `llm` trained on ShapesWorld text, or reloaded from `root` when this setup was
    trained before; returns it (eval mode) and its record. Its word embeddings are tied, so the transformer
    body is what is saved."""
    with torch.random.fork_rng():
        torch.manual_seed(setup.seed)
        model = Qwen2ForCausalLM(llm)
    pad = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)

    def fit() -> dict:
        examples = text_examples(setup, tokenizer)
        generator = torch.Generator().manual_seed(setup.seed)
        order = (torch.randint(len(examples), (setup.batch_size,), generator=generator) for _ in range(setup.steps))

        def step(rows: torch.Tensor) -> dict[str, torch.Tensor]:
            batch = collate("text", [examples[int(i)] for i in rows], [int(i) for i in rows], pad)
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
            return {"loss": out.loss}

        optim = OptimConfig(steps=setup.steps, batch_size=setup.batch_size, lr=setup.lr, weight_decay=0.02,
                            warmup=setup.warmup, seed=setup.seed)
        curves, seconds = train(model.parameters(), step, order, optim, "pretraining the small LLM on text",
                                console)
        return {"texts": len(examples), "parameters": sum(p.numel() for p in model.parameters()),
                "seconds": seconds, "losses": summary(curves), "curves": curves}

    pretrained = reuse_or_train("llm", identity(setup, llm, tokenizer), {"llm": model.model}, Path(root), fit)
    return model.eval(), pretrained
