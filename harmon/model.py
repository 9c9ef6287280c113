"""Harmon: a Qwen2 LLM between a shared MAR encoder and the MAR decoder, plus the frozen KL-16 VAE.

Module attributes `vae`, `llm`, `mar`, `proj_in`, `proj_out` give exactly the official state-dict names
(`llm.*`, `mar.*`, `proj_in.*`, `proj_out.*`; `vae.*` comes from kl16.ckpt). Visual tokens enter the LLM after
the prompt with the 64 MAR buffer tokens moved to the end; the LLM output comes back in MAR order and is added
to the encoder output (`x_enc + proj_out(z_llm)`) before the MAR decoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from harmon.checkpoints import CheckpointError, check_keys
from harmon.layers import silu_mlp
from harmon.mar import MAR, MARConfig
from harmon.prompts import CFG_PROMPT, DEFAULT_QUESTION
from harmon.understanding import PluggedEncoder, VisualEncoder, positions_from_mask
from harmon.vae import KL16_SCALE, build_kl16, encode, kl16_config

OFFICIAL_PARTS = ("llm", "mar", "proj_in", "proj_out")
# Keys an official flat harmon_*.pth may hold beyond or short of the model's own: the tied `llm.lm_head.weight`
# (absent or equal to the embeddings), the unused `mar.class_emb.weight` (absent -> zeros), and `vae.*`
# (ignored: the VAE always comes from kl16.ckpt).
OPTIONAL_KEYS = ("llm.lm_head.weight", "mar.class_emb.weight")
IGNORED_PREFIX = "vae."


@dataclass
class HarmonConfig:
    """Sizes of the parts: a Qwen2 config (or its dict), a MARConfig, diffusers AutoencoderKL arguments."""

    llm: Qwen2Config | dict
    mar: MARConfig
    vae: dict = field(default_factory=kl16_config)
    vae_scale: float = KL16_SCALE
    image_size: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.llm, Mapping):
            self.llm = Qwen2Config(**{k: v for k, v in self.llm.items() if k != "model_type"})
        if self.image_size % 16:
            raise ValueError(f"image_size={self.image_size} must be a multiple of 16 (the VAE stride)")


class Harmon(nn.Module):
    """Unified understanding + generation model. `tokenizer` is a plain attribute (not saved in the state dict).

    `understanding_encoder` (optional) replaces the MAR encoder for understanding only: any module following
    `VisualEncoder`, projected to the LLM width by its own proj_in-shaped MLP (keys `understanding.*`).
    """

    def __init__(self, config: HarmonConfig, tokenizer: PreTrainedTokenizerBase,
                 understanding_encoder: VisualEncoder | None = None, vae: AutoencoderKL | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.vae = (vae if vae is not None else build_kl16(config.vae)).eval().requires_grad_(False)
        self.llm = Qwen2ForCausalLM(config.llm)
        self.mar = MAR(config.mar)
        hidden, width = config.llm.hidden_size, config.mar.encoder_embed_dim
        self.proj_in = silu_mlp(width, hidden, hidden)
        self.proj_out = silu_mlp(hidden, hidden, width)
        self.understanding = (PluggedEncoder(understanding_encoder, hidden)
                              if understanding_encoder is not None else None)

    def train(self, mode: bool = True) -> Harmon:
        super().train(mode)
        self.vae.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.model.embed_tokens.weight.dtype

    @property
    def context_length(self) -> int:
        return self.config.llm.max_position_embeddings

    def grid(self, image_size: int) -> tuple[int, int]:
        stride = self.config.mar.vae_stride * self.config.mar.patch_size
        if image_size % stride or image_size <= 0:
            raise ValueError(f"image_size={image_size} must be a positive multiple of {stride} (e.g. 256 or 512)")
        return (image_size // stride, image_size // stride)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    # ----- visual path ------------------------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) in [-1, 1] -> latent tokens (B, (S/16)^2, 16): posterior mode x vae_scale."""
        latents = encode(self.vae, pixels.to(self.device), scale=self.config.vae_scale)
        return self.mar.patchify(latents.to(self.dtype))

    def mar_features(self, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                     visible: int | None = None) -> torch.Tensor:
        """MAR encoder on the visible tokens with `fake_latent` in every buffer: (B, 64 + #visible, C); `visible`
        (tokens kept per row), when known, spares a device-to-host copy."""
        buffers = self.mar.fake_latent.expand(tokens.shape[0], -1)
        return self.mar.forward_mae_encoder(tokens, mask.to(tokens.dtype), buffers, grid, visible=visible)

    def to_llm_order(self, x: torch.Tensor) -> torch.Tensor:
        """Buffers-first MAR order -> image tokens first, buffers last (the LLM's order)."""
        n = self.mar.buffer_size
        return torch.cat([x[:, n:], x[:, :n]], dim=1)

    def from_llm_order(self, x: torch.Tensor) -> torch.Tensor:
        n = self.mar.buffer_size
        return torch.cat([x[:, -n:], x[:, :-n]], dim=1)

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Understanding features (B, N, H) in LLM order: by default the unmasked MAR encoder + proj_in
        ([image tokens row-major, 64 buffers]); with a plugged encoder, its tokens through its own projector."""
        pixels = pixels.to(self.device)
        if self.understanding is not None:
            return self.understanding(pixels).to(self.dtype)
        tokens = self.encode_images(pixels)
        grid = self.grid(pixels.shape[-1])
        mask = torch.zeros(tokens.shape[:2], device=tokens.device, dtype=tokens.dtype)
        return self.to_llm_order(self.proj_in(self.mar_features(tokens, mask, grid)))

    def condition_tokens(
        self, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor, cache: DynamicCache | None = None, visible: int | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token conditions (B, L, C_dec) for the diffusion head, given the prompt (`visible`: unmasked tokens
        per row, when known; `rows` (B, k): only the conditions at those token positions, (B, k, C_dec)).

        MAR encoder -> proj_in -> LLM after the prompt -> proj_out, added to the encoder output -> MAR decoder.
        With `cache` holding the prefilled prompt, only the image part runs and the cache is cropped back after.
        """
        x_enc = self.mar_features(tokens, mask, grid, visible)
        z = self.to_llm_order(self.proj_in(x_enc))
        n, prompt_len = z.shape[1], prompt_mask.shape[1]
        full_mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], n)], dim=1)
        positions = positions_from_mask(full_mask)
        if cache is None:
            hidden = self.llm.model(inputs_embeds=torch.cat([prompt_embeds, z], dim=1), attention_mask=full_mask,
                                    position_ids=positions, use_cache=False).last_hidden_state[:, -n:]
        else:
            if cache.get_seq_length() != prompt_len:
                raise ValueError(f"the cache holds {cache.get_seq_length()} positions; expected the prompt's "
                                 f"{prompt_len} (prefill it with prefill_prompt)")
            hidden = self.llm.model(inputs_embeds=z, attention_mask=full_mask, position_ids=positions[:, -n:],
                                    cache=cache, use_cache=True).last_hidden_state
            cache.crop(-n)
        x = x_enc + self.proj_out(self.from_llm_order(hidden))
        return self.mar.forward_mae_decoder(x, mask, grid, visible=visible, rows=rows)

    def prefill_prompt(self, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor) -> DynamicCache:
        """Run the prompt once and keep its keys/values."""
        cache = DynamicCache(config=self.llm.config)
        self.llm.model(inputs_embeds=prompt_embeds, attention_mask=prompt_mask,
                       position_ids=positions_from_mask(prompt_mask), cache=cache, use_cache=True)
        return cache

    # ----- tasks ------------------------------------------------------------------------------------------------
    def answer(
        self, images: Image.Image | Sequence[Image.Image], questions: str | Sequence[str] = DEFAULT_QUESTION,
        max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
        image_size: int | None = None, seed: int | None = None,
    ) -> list[str]:
        """Answer one question per image (greedy by default); see `harmon.understanding.answer`."""
        from harmon.understanding import answer

        return answer(self, images, questions, max_new_tokens=max_new_tokens, do_sample=do_sample,
                      temperature=temperature, top_p=top_p, image_size=image_size or self.config.image_size,
                      seed=seed)

    def generate(
        self, prompts: str | Sequence[str], steps: int = 64, cfg: float = 3.0, cfg_schedule: str = "constant",
        temperature: float = 1.0, seed: int | None = None, image_size: int | None = None,
        cfg_prompt: str = CFG_PROMPT, progress: bool = False, reuse_prompt_cache: bool = True,
    ) -> list[Image.Image]:
        """Text-to-image; see `harmon.generation.generate_images`. Returns PIL images (Harmon's uint8 rounding)."""
        from harmon.generation import generate_images
        from harmon.images import to_pil

        images = generate_images(self, prompts, steps=steps, cfg=cfg, cfg_schedule=cfg_schedule,
                                 temperature=temperature, seed=seed, image_size=image_size or self.config.image_size,
                                 cfg_prompt=cfg_prompt, progress=progress, reuse_prompt_cache=reuse_prompt_cache)
        return to_pil(images, rounding="harmon")

    # ----- official weights -------------------------------------------------------------------------------------
    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict in the official harmon_*.pth layout (`llm.*`, `mar.*`, `proj_in.*`, `proj_out.*`)."""
        return {f"{part}.{k}": v for part in OFFICIAL_PARTS for k, v in getattr(self, part).state_dict().items()}

    def load_official_state(self, state: Mapping[str, torch.Tensor], what: str = "Harmon checkpoint",
                            assign: bool = False) -> None:
        """Strictly load an official flat dict; only the OPTIONAL_KEYS may be absent and `vae.*` is ignored.

        With `assign=True` the file's tensors become the parameters (for models built on the meta device).
        """
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIX)}
        tied = bool(self.llm.config.tie_word_embeddings)
        allow_missing = [k for k in OPTIONAL_KEYS if tied or k != "llm.lm_head.weight"]
        hidden = state.get("llm.model.embed_tokens.weight")
        looks_like = None if hidden is None else (
            f"LLM width {hidden.shape[1]}, vocab {hidden.shape[0]}, "
            f"{len({k.split('.')[3] for k in state if k.startswith('llm.model.layers.')})} layers")
        check_keys(self.official_state_dict(), state, what, allow_missing=allow_missing, looks_like=looks_like)
        head = state.get("llm.lm_head.weight")
        if tied and head is not None and not torch.equal(head, state["llm.model.embed_tokens.weight"]):
            raise CheckpointError(f"{what}: llm.lm_head.weight differs from llm.model.embed_tokens.weight but the "
                                  "LLM config ties them; use an LLM config with tie_word_embeddings=False")
        for part in OFFICIAL_PARTS:
            prefix = part + "."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            getattr(self, part).load_state_dict(sub, strict=False, assign=assign)
        if tied:
            self.llm.tie_weights()
        if "mar.class_emb.weight" not in state:
            like = self.mar.fake_latent
            self.mar.class_emb.weight = nn.Parameter(
                torch.zeros(self.mar.class_emb.weight.shape, dtype=like.dtype, device=like.device))
