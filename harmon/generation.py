"""Text-to-image generation: masked autoregressive decoding with the LLM in the loop and classifier-free guidance.

Rows are [conditional prompts | unconditional prompts] sharing orders and masks; the right-padded prompts are
prefilled once into a KV cache that every step reuses and crops back. Orders and all diffusion noise come from
one seeded generator, so a seed fixes the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from harmon.mar import MaskedDecoding
from harmon.prompts import CFG_PROMPT, encode_turn, generation_text
from harmon.tokenizer import PAD_TOKEN
from harmon.vae import decode

if TYPE_CHECKING:
    from harmon.model import Harmon


def prompt_batch(model: Harmon, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (R, T) of user turns, right-padded with `<|endoftext|>`, and the bool mask (True = real token)."""
    turns = [encode_turn(model.tokenizer, text, max_tokens=max_tokens) for text in texts]
    width = max(len(t) for t in turns)
    pad_id = model.tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    ids = torch.full((len(turns), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(turns), width), dtype=torch.bool)
    for row, turn in enumerate(turns):
        seq = turn.head + turn.text + turn.tail
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    return ids.to(model.device), mask.to(model.device)


@torch.no_grad()
def generate_latents(
    model: Harmon, prompts: str | Sequence[str], steps: int = 64, cfg: float = 3.0, cfg_schedule: str = "constant",
    temperature: float = 1.0, seed: int | None = None, image_size: int = 512, cfg_prompt: str = CFG_PROMPT,
    progress: bool = False, reuse_prompt_cache: bool = True,
) -> torch.Tensor:
    """Scaled latents (B, 16, S/16, S/16) for the prompts ('Generate an image: ' + prompt in the template).

    cfg == 1 runs the conditional rows only. `reuse_prompt_cache=False` recomputes the prompt every step
    (same result, slower).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    decoding = MaskedDecoding(steps, cfg, cfg_schedule, temperature)
    grid = model.grid(image_size)
    seq_len = grid[0] * grid[1]
    batch, device, dtype = len(prompts), model.device, model.dtype
    texts = [generation_text(p) for p in prompts] + ([cfg_prompt] * batch if decoding.guided else [])
    ids, prompt_mask = prompt_batch(model, texts, model.context_length - seq_len - model.mar.buffer_size)
    prompt_embeds = model.embed(ids)
    cache = model.prefill_prompt(prompt_embeds, prompt_mask) if reuse_prompt_cache else None

    generator = torch.Generator(device=device)
    generator.manual_seed(torch.seed() if seed is None else seed)
    orders = model.mar.sample_orders(batch, seq_len, generator, device)
    tokens = torch.zeros(batch, seq_len, model.mar.token_embed_dim, device=device, dtype=dtype)

    def condition(tokens: torch.Tensor, mask: torch.Tensor, visible: int, rows: torch.Tensor) -> torch.Tensor:
        return model.condition_tokens(tokens, mask, grid, prompt_embeds, prompt_mask, cache, visible, rows)

    tokens = decoding.decode(condition, model.mar.diffloss, tokens, orders, generator,
                             "Harmon generation" if progress else None)
    return model.mar.unpatchify(tokens, grid)


def generate_images(model: Harmon, prompts: str | Sequence[str], **kwargs) -> torch.Tensor:
    """`generate_latents` decoded by the VAE: images (B, 3, S, S) in about [-1, 1], float32 on the CPU."""
    latents = generate_latents(model, prompts, **kwargs)
    with torch.no_grad():
        return decode(model.vae, latents, scale=model.config.vae_scale).float().cpu()
