"""Image understanding: the pluggable visual-encoder seam and answer decoding with a KV cache.

Prompts are right-padded; each row's new tokens follow its padding with positions that skip it, so a batch
answers exactly like its rows one by one (up to float rounding).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from PIL import Image
from torch import nn
from transformers import DynamicCache, Qwen2ForCausalLM

from harmon.layers import silu_mlp
from harmon.prompts import IMAGE_TOKEN, encode_turn, preprocess_image
from harmon.tokenizer import IM_END, PAD_TOKEN

if TYPE_CHECKING:
    from harmon.model import Harmon


class VisualEncoder(Protocol):
    """What a plugged understanding encoder provides: pixels (B, 3, S, S) in [-1, 1] -> tokens (B, N, embed_dim)."""

    embed_dim: int

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class PluggedEncoder(nn.Module):
    """A `VisualEncoder` followed by its own Linear-SiLU-Linear projector to the LLM width."""

    def __init__(self, encoder: VisualEncoder, hidden: int):
        super().__init__()
        if not isinstance(encoder, nn.Module) or not isinstance(getattr(encoder, "embed_dim", None), int):
            raise TypeError(f"understanding_encoder must be an nn.Module with an int `embed_dim` attribute and "
                            f"__call__(pixels) -> (B, N, embed_dim); got {type(encoder).__name__}")
        self.encoder = encoder
        self.proj = silu_mlp(encoder.embed_dim, hidden, hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(pixels.to(self.proj[0].weight.dtype))
        if tokens.ndim != 3 or tokens.shape[-1] != self.encoder.embed_dim:
            raise ValueError(f"the understanding encoder returned {tuple(tokens.shape)}; expected "
                             f"(B, N, {self.encoder.embed_dim})")
        return self.proj(tokens)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions that skip padding: cumsum(mask) - 1, negatives clamped to 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _listify(images: Image.Image | Sequence[Image.Image], questions: str | Sequence[str]
             ) -> tuple[list[Image.Image], list[str]]:
    images = [images] if isinstance(images, Image.Image) else list(images)
    questions = [questions] * len(images) if isinstance(questions, str) else list(questions)
    if not images:
        raise ValueError("answer needs at least one image")
    if len(questions) != len(images):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions; pass one question per image "
                         "or a single string for all")
    return images, questions


def pick_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax, or sampling at `temperature` from the smallest top-p nucleus."""
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1; got {temperature}, {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(
    llm: Qwen2ForCausalLM, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
    stop_ids: Sequence[int] = (), do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Decode from right-padded prompt embeddings (B, T, H) with a bool mask (B, T); stop tokens are not returned.

    A row also stops when its next position would leave the LLM context.
    """
    batch, context = embeds.shape[0], llm.config.max_position_embeddings
    lengths = mask.long().sum(-1)
    cache = DynamicCache(config=llm.config)
    hidden = llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
                       cache=cache, use_cache=True).last_hidden_state
    last = hidden[torch.arange(batch, device=hidden.device), lengths - 1]
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=embeds.device)
    done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
    out: list[list[int]] = [[] for _ in range(batch)]
    for step in range(max_new_tokens):
        done |= lengths + step >= context
        if bool(done.all()):
            break
        token = pick_tokens(llm.lm_head(last), do_sample, temperature, top_p, generator)
        done |= torch.isin(token, stops)
        for row in (~done).nonzero().flatten().tolist():
            out[row].append(int(token[row]))
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        last = llm.model(inputs_embeds=llm.get_input_embeddings()(token)[:, None], attention_mask=mask,
                         position_ids=(lengths + step)[:, None], cache=cache, use_cache=True).last_hidden_state[:, -1]
    return out


def build_understanding_inputs(model: Harmon, features: torch.Tensor, questions: Sequence[str]
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt embeddings: head ++ image features ++ `\\n` + question ++ tail, and their bool mask."""
    tokenizer = model.tokenizer
    room = model.context_length - features.shape[1] - 1
    turns = [encode_turn(tokenizer, "\n" + q, max_tokens=room, what="question") for q in questions]
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    width = max(len(t) for t in turns) + features.shape[1]
    rows, masks = [], []
    for turn, image in zip(turns, features, strict=True):
        ids = torch.tensor(turn.text + turn.tail, dtype=torch.long, device=model.device)
        head = torch.tensor(turn.head, dtype=torch.long, device=model.device)
        row = torch.cat([model.embed(head), image, model.embed(ids)])
        pad = width - row.shape[0]
        pad_ids = torch.full((pad,), pad_id, dtype=torch.long, device=model.device)
        rows.append(torch.cat([row, model.embed(pad_ids)]))
        masks.append(torch.arange(width, device=model.device) < row.shape[0])
    return torch.stack(rows), torch.stack(masks)


@torch.no_grad()
def answer(
    model: Harmon, images: Image.Image | Sequence[Image.Image], questions: str | Sequence[str],
    max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
    image_size: int = 512, seed: int | None = None,
) -> list[str]:
    """Answer each question about its image with the INSTRUCTION template; stops at `<|im_end|>`.

    The `<image>` placeholder (first in the user turn) becomes the visual features: (S/16)^2 + 64 MAR
    embeddings by default. Over-long questions are cut with a warning.
    """
    images, questions = _listify(images, questions)
    if any(IMAGE_TOKEN in q for q in questions):
        warnings.warn(f"questions contain {IMAGE_TOKEN!r}; the image is always placed before the question and "
                      "the placeholder is kept as plain text", stacklevel=3)
    model.grid(image_size)
    pixels = torch.stack([preprocess_image(img, image_size) for img in images])
    features = model.visual_features(pixels)
    embeds, mask = build_understanding_inputs(model, features, questions)
    tokenizer = model.tokenizer
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, PAD_TOKEN)]
    generator = None
    if do_sample:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(torch.seed() if seed is None else seed)
    ids = generate_ids(model.llm, embeds, mask, max_new_tokens, stop_ids, do_sample, temperature, top_p, generator)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
