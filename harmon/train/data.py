"""Tokenised examples, one-task micro-batches and the mixed text / image-to-text / text-to-image stream.

Understanding rows follow the official template: `<|im_start|>user\\n` [image slot] `\\n{question}<|im_end|>\\n
<|im_start|>assistant\\n` then `{answer}<|im_end|>` (supervised) and `\\n` (not). The image slot is ONE
IMAGE_TOKEN_INDEX id; the model puts all visual features there, so `max_length` counts it as one token.
Generation rows are the user turn "Generate an image: {caption}", or the unconditional prompt for a
`caption_drop` share of rows.

Every batch is a pure function of (iteration, shard): the n-th micro-batch of a task covers positions
[n * G, (n + 1) * G) of that task's endless stream, which walks its readers in a fresh permutation each epoch.
Resuming at iteration k therefore needs no state beyond k, and any split into processes or workers gives the
same rows.
"""

from __future__ import annotations

import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from harmon.prompts import CFG_PROMPT, INSTRUCTION, encode_turn, generation_text, preprocess_image, to_rgb
from harmon.tokenizer import IM_END, PAD_TOKEN
from harmon.train.batch import IGNORE_INDEX, IMAGE_TOKEN_INDEX, TASKS, Batch, Shard
from harmon.train.readers import (
    BadRow,
    ConversationReader,
    Reader,
    ShapesWorldCaptions,
    ShapesWorldQuestions,
    Text2ImageReader,
    TextReader,
    Turns,
)

__all__ = [
    "BadRow", "ConversationReader", "Example", "MixedStream", "Reader", "ShapesWorldCaptions",
    "ShapesWorldQuestions", "Text2ImageReader", "TextReader", "batches", "collate", "encode_conversation",
    "encode_generation", "encode_text", "generation_pixels",
]

CAPTION_DROP_STREAM = 1  # keeps the caption-drop draws apart from other uses of (seed, position)


@dataclass
class Example:
    """One tokenised row: `labels` hold IGNORE_INDEX off the loss (None for t2i); `pixels` (3, S, S) or None."""

    ids: list[int]
    labels: list[int] | None
    pixels: torch.Tensor | None = None


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _require_supervised(ids: list[int], labels: list[int], max_length: int) -> Example:
    """Right-truncate; BadRow("too long") when no supervised token is left to predict."""
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        raise BadRow("too long", f"no supervised token within max_length={max_length}")
    return Example(ids, labels)


def encode_conversation(tokenizer: PreTrainedTokenizerBase, turns: Turns, max_length: int,
                        image: bool = False) -> Example:
    """Chat turns, the loss on each answer + `<|im_end|>`; with `image` the first turn starts with the slot."""
    head, tail = INSTRUCTION.split("{input}")
    ids: list[int] = []
    labels: list[int] = []
    for k, (question, answer) in enumerate(turns):
        if image and k == 0:
            prompt = [*_encode(tokenizer, head), IMAGE_TOKEN_INDEX, *_encode(tokenizer, "\n" + question + tail)]
        else:
            prompt = _encode(tokenizer, head + question + tail)
        reply = _encode(tokenizer, answer + IM_END)
        separator = _encode(tokenizer, "\n")
        ids += prompt + reply + separator
        labels += [IGNORE_INDEX] * len(prompt) + reply + [IGNORE_INDEX] * len(separator)
    return _require_supervised(ids, labels, max_length)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> Example:
    """Plain text followed by `<|endoftext|>`, every token supervised."""
    ids = _encode(tokenizer, text) + [tokenizer.convert_tokens_to_ids(PAD_TOKEN)]
    return _require_supervised(ids, list(ids), max_length)


def encode_generation(tokenizer: PreTrainedTokenizerBase, caption: str, max_length: int,
                      drop: bool = False) -> Example:
    """The text-to-image user turn (the unconditional CFG_PROMPT when `drop`); a long caption is cut to fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cutting long training captions is the policy, not a surprise
        turn = encode_turn(tokenizer, CFG_PROMPT if drop else generation_text(caption), max_tokens=max_length)
    return Example(turn.head + turn.text + turn.tail, None)


def generation_pixels(image: Image.Image, image_size: int) -> torch.Tensor:
    """(3, S, S) in [-1, 1]: bicubic resize of the short side to S, then a centre crop."""
    image = to_rgb(image)
    scale = image_size / min(image.size)
    width, height = (max(image_size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - image_size) // 2, (height - image_size) // 2
    square = image.crop((left, top, left + image_size, top + image_size))
    array = torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return array / 255.0 * 2.0 - 1.0


def collate(task: str, examples: Sequence[Example], sample_ids: Sequence[int], pad_id: int) -> Batch:
    """Right-pad ids with `pad_id` and labels with IGNORE_INDEX; stack pixels (None for text)."""
    width = max(len(example.ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), width, dtype=torch.bool)
    labels = None if task == "t2i" else torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, :len(example.ids)] = torch.tensor(example.ids)
        attention_mask[row, :len(example.ids)] = True
        if labels is not None:
            labels[row, :len(example.labels)] = torch.tensor(example.labels)
    pixels = None if task == "text" else torch.stack([example.pixels for example in examples])
    return Batch(task, input_ids, attention_mask, labels, pixels, torch.tensor(list(sample_ids)))


class MixedStream:
    """Endless one-task micro-batches in the order of `cycle`, this process's `shard` of each global batch.

    `skipped` counts left-out rows by reason: the readers' index-time counts, plus every load-time BadRow met
    by `batch` (a bad row met again is counted again).
    """

    def __init__(self, sources: Mapping[str, Sequence[Reader]], tokenizer: PreTrainedTokenizerBase,
                 ratio: Sequence[int], global_batch: int, shard: Shard, image_size: int, max_length: int,
                 caption_drop: float = 0.1, seed: int = 0):
        if len(ratio) != len(TASKS) or any(not isinstance(r, int) or r < 0 for r in ratio):
            raise ValueError(f"data ratio {list(ratio)} must be {len(TASKS)} non-negative ints for {TASKS}")
        if sum(ratio) == 0:
            raise ValueError(f"data ratio {list(ratio)} sums to zero; give at least one of {TASKS} a batch")
        unknown = set(sources) - set(TASKS)
        if unknown:
            raise ValueError(f"sources for unknown tasks {sorted(unknown)}; tasks are {TASKS}")
        if shard.global_size != global_batch or not 0 <= shard.offset < shard.offset + shard.size <= global_batch:
            raise ValueError(f"{shard} does not cut a non-empty share of a global batch of {global_batch}")
        if not 0.0 <= caption_drop <= 1.0:
            raise ValueError(f"caption_drop {caption_drop} must lie in [0, 1]")
        self.cycle = [task for task, count in zip(TASKS, ratio, strict=True) for _ in range(count)]
        self.readers: dict[str, list[Reader]] = {}
        self.ends: dict[str, list[int]] = {}
        self.skipped: Counter[str] = Counter()
        for task in dict.fromkeys(self.cycle):
            readers = list(sources.get(task, ()))
            if not readers:
                raise ValueError(f"data ratio {list(ratio)} gives task {task!r} batches but no source feeds it")
            for reader in readers:
                self.skipped.update(reader.skipped)
            self.readers[task], self.ends[task] = readers, list(accumulate(len(r) for r in readers))
            if self.ends[task][-1] == 0:
                raise ValueError(f"the {task!r} sources {readers} hold no usable rows "
                                 f"(skipped: {dict(self.skipped)})")
        self.tokenizer, self.global_batch, self.shard = tokenizer, global_batch, shard
        self.image_size, self.max_length = image_size, max_length
        self.caption_drop, self.seed = caption_drop, seed
        self.pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
        if "t2i" in self.cycle:
            encode_turn(tokenizer, CFG_PROMPT, max_tokens=max_length)  # fails early if the template cannot fit
        self._perms: dict[tuple[str, int], torch.Tensor] = {}

    def task(self, iteration: int) -> str:
        if iteration < 0:
            raise ValueError(f"iteration {iteration} must be >= 0")
        return self.cycle[iteration % len(self.cycle)]

    def batch(self, iteration: int) -> Batch:
        """This process's rows of the global micro-batch `iteration`; load-time skips go to `skipped`."""
        batch, skipped = self.build(iteration)
        self.skipped.update(skipped)
        return batch

    def build(self, iteration: int) -> tuple[Batch, Counter[str]]:
        """The batch of `iteration` and the load-time skips met building it (not added to `skipped`)."""
        task = self.task(iteration)
        cycles, rest = divmod(iteration, len(self.cycle))
        uses = cycles * self.cycle.count(task) + self.cycle[:rest].count(task)
        rows = self.shard.rows()
        positions = range(uses * self.global_batch + rows.start, uses * self.global_batch + rows.stop)
        skipped: Counter[str] = Counter()
        examples = [self._example_at(task, position, skipped) for position in positions]
        return collate(task, examples, positions, self.pad_id), skipped

    def _perm(self, task: str, epoch: int) -> torch.Tensor:
        key = (task, epoch)
        if key not in self._perms:
            if len(self._perms) >= 2 * len(TASKS):
                self._perms.clear()
            state = np.random.SeedSequence((self.seed, TASKS.index(task), epoch)).generate_state(1, np.uint64)
            generator = torch.Generator().manual_seed(int(state[0]))
            self._perms[key] = torch.randperm(self.ends[task][-1], generator=generator)
        return self._perms[key]

    def _example_at(self, task: str, position: int, skipped: Counter[str]) -> Example:
        """The row at `position`, or the next good one of the epoch's permutation (wrapping) if it is bad."""
        size = self.ends[task][-1]
        epoch, offset = divmod(position, size)
        perm = self._perm(task, epoch)
        met: Counter[str] = Counter()
        for step in range(size):
            index = int(perm[(offset + step) % size])
            k = bisect_right(self.ends[task], index)
            try:
                raw = self.readers[task][k].load(index - (self.ends[task][k - 1] if k else 0))
                example = self._example(task, raw, position)
            except BadRow as bad:
                met[bad.reason] += 1
                continue
            skipped.update(met)
            return example
        raise RuntimeError(f"no row of the {task!r} sources {self.readers[task]} could be used in a whole epoch "
                           f"(reasons: {dict(met)})")

    def _example(self, task: str, raw: dict[str, Any], position: int) -> Example:
        if task == "t2i":
            drop = np.random.default_rng((self.seed, CAPTION_DROP_STREAM, position)).random() < self.caption_drop
            example = encode_generation(self.tokenizer, raw["caption"], self.max_length, bool(drop))
            example.pixels = generation_pixels(raw["image"], self.image_size)
        elif task == "i2t":
            if raw.get("image") is None:
                raise BadRow("no image")
            example = encode_conversation(self.tokenizer, raw["turns"], self.max_length, image=True)
            example.pixels = preprocess_image(raw["image"], self.image_size)
        else:
            if raw.get("image") is not None:
                raise BadRow("image in text data")
            example = (encode_conversation(self.tokenizer, raw["turns"], self.max_length) if "turns" in raw
                       else encode_text(self.tokenizer, raw["text"], self.max_length))
        return example


class _Iterations(IterableDataset):
    """Worker w of n builds iterations start + w, start + w + n, ...; the loader's round-robin keeps the order."""

    def __init__(self, stream: MixedStream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, start, stop

    def __iter__(self) -> Iterator[tuple[Batch, dict[str, int]]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for iteration in range(self.start + worker, self.stop, workers):
            batch, skipped = self.stream.build(iteration)
            yield batch, dict(skipped)  # the loader copies mappings with update(), which would add up a Counter


def batches(stream: MixedStream, start: int, stop: int, num_workers: int = 0) -> Iterator[Batch]:
    """The batches of iterations start..stop-1 in order, built in `num_workers` loader processes when > 0."""
    if num_workers == 0:
        for iteration in range(start, stop):
            yield stream.batch(iteration)
        return
    loader = DataLoader(_Iterations(stream, start, stop), batch_size=None, num_workers=num_workers,
                        persistent_workers=False)
    for batch, skipped in loader:
        stream.skipped.update(skipped)
        yield batch
