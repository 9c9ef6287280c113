"""Harmon's training losses (text-to-image, image-to-text, text-only) and the helpers the trainer builds on.

Random draws of the text-to-image loss are made for the whole global batch and sliced to this process's rows,
and token losses are sums divided by a caller-given token count, so N processes reproduce one process.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from harmon.mar import MAR, mask_from_orders
from harmon.model import Harmon
from harmon.train.batch import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Batch, Shard
from harmon.understanding import positions_from_mask

GROUPS = ("llm", "mar_encoder", "mar_decoder", "proj_in", "proj_out", "understanding")
MAR_ENCODER = ("class_emb", "fake_latent", "z_proj", "z_proj_ln", "encoder_pos_embed_learned", "encoder_blocks",
               "encoder_norm")
MAR_DECODER = ("decoder_embed", "mask_token", "decoder_pos_embed_learned", "decoder_blocks", "decoder_norm",
               "diffusion_pos_embed_learned", "diffloss")


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
    return _ScaleGrad.apply(x, scale)


def _row(i: int, sample_ids: torch.Tensor | None) -> str:
    return f"row {i}" if sample_ids is None else f"row {i} (sample {int(sample_ids[i])})"


def image_slots(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                sample_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Position of each row's single IMAGE_TOKEN_INDEX slot (B,); ValueError naming a row without exactly one."""
    is_slot = input_ids == IMAGE_TOKEN_INDEX
    counts = is_slot.sum(1).tolist()
    for i, count in enumerate(counts):
        if count != 1:
            raise ValueError(f"image-to-text {_row(i, sample_ids)} has {count} image slots "
                             f"(input_ids == {IMAGE_TOKEN_INDEX}); each row needs exactly one")
    slots = is_slot.int().argmax(1)
    padded = ~attention_mask.bool().gather(1, slots[:, None]).squeeze(1)
    if bool(padded.any()):
        raise ValueError(f"image-to-text {_row(int(padded.nonzero()[0]), sample_ids)} has its image slot in the "
                         "padding (attention_mask is False there)")
    return slots


def splice_features(
    embeds: torch.Tensor, features: torch.Tensor, slots: torch.Tensor, attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put each row's N visual features (B, N, H) in place of its slot in (B, T, H) embeddings.

    Returns embeddings (B, T + N - 1, H), a bool attention mask (True on the features) and labels (IGNORE_INDEX on
    the features); tokens after the slot move N - 1 places right, so right padding stays right padding.
    """
    b, t, h = embeds.shape
    n = features.shape[1]
    pos = torch.arange(t + n - 1, device=embeds.device).expand(b, -1)
    start = slots[:, None]
    is_image = (pos >= start) & (pos < start + n)
    text_idx = torch.where(pos < start, pos, pos - n + 1).clamp(0, t - 1)
    feat_idx = (pos - start).clamp(0, n - 1)
    spliced = torch.where(is_image[..., None], features.gather(1, feat_idx[..., None].expand(-1, -1, h)),
                          embeds.gather(1, text_idx[..., None].expand(-1, -1, h)))
    mask = is_image | attention_mask.bool().gather(1, text_idx)
    labels = torch.where(is_image, IGNORE_INDEX, labels.gather(1, text_idx))
    return spliced, mask, labels


def target_token_count(batch: Batch) -> int:
    """Tokens that carry a loss in a text or image-to-text batch (labels >= 0 after the shift, slots excluded)."""
    if batch.labels is None:
        raise ValueError(f"a {batch.task} batch needs labels")
    kept = (batch.labels[:, 1:] >= 0) & (batch.input_ids[:, 1:] != IMAGE_TOKEN_INDEX)
    return int(kept.sum())


def t2i_draws(mar: MAR, shard: Shard, seq_len: int, generator: torch.Generator,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This shard's mask (b, L), timesteps (rep*b*L,) and noise (rep*b*L, C), drawn for the whole global batch.

    Draw order: orders (G, L), one mask ratio, timesteps (rep, G, L), noise (rep, G, L, C); rows are flattened
    as (repeat, sample, token), the order of `MAR.forward_loss`.
    """
    g, rows, device = shard.global_size, shard.rows(), generator.device
    rep, channels = mar.config.diffusion_batch_mul, mar.token_embed_dim
    orders = mar.sample_orders(g, seq_len, generator, device)[rows]
    mask = mask_from_orders(orders, math.ceil(seq_len * mar.sample_mask_ratio(generator, device)))
    steps = mar.diffloss.train_diffusion.num_timesteps
    t = torch.randint(0, steps, (rep, g, seq_len), generator=generator, device=device)[:, rows].reshape(-1)
    noise = torch.randn(rep, g, seq_len, channels, generator=generator, device=device, dtype=dtype)
    return mask, t, noise[:, rows].reshape(-1, channels)


class TrainingModel(nn.Module):
    """The trainable Harmon (`harmon`) with one entry, `forward`, returning the unweighted loss of a batch.

    `grad_scale` multiplies the image-to-text gradient reaching the visual features (None: unscaled).
    """

    def __init__(self, harmon: Harmon, grad_scale: float | None = 0.1):
        super().__init__()
        self.harmon = harmon
        self.grad_scale = grad_scale

    def forward(self, batch: Batch, shard: Shard, generator: torch.Generator,
                token_norm: float | None = None) -> torch.Tensor:
        """Loss of this process's rows `shard` of a global batch.

        `generator` (seeded alike on every process) feeds the text-to-image draws; `token_norm` divides the summed
        token losses of text and image-to-text batches (None: this batch's loss-carrying token count).
        """
        if len(batch) != shard.size:
            raise ValueError(f"the batch has {len(batch)} rows but the shard {shard} has {shard.size}")
        batch = batch.to(self.harmon.device)
        if batch.task == "t2i":
            return self._text_to_image(batch, shard, generator)
        if batch.task == "i2t":
            return self._image_to_text(batch, token_norm)
        return self._text(batch, token_norm)

    def _text_to_image(self, batch: Batch, shard: Shard, generator: torch.Generator) -> torch.Tensor:
        h = self.harmon
        if batch.pixels is None:
            raise ValueError("a t2i batch needs pixels")
        with torch.no_grad():
            tokens = h.encode_images(batch.pixels)
        grid = h.grid(batch.pixels.shape[-1])
        mask, t, noise = (x.to(h.device) for x in t2i_draws(h.mar, shard, tokens.shape[1], generator, tokens.dtype))
        z = h.condition_tokens(tokens, mask, grid, prompt_embeds=h.embed(batch.input_ids),
                               prompt_mask=batch.attention_mask)
        return h.mar.forward_loss(z, tokens, mask, t=t, noise=noise)

    def _image_to_text(self, batch: Batch, token_norm: float | None) -> torch.Tensor:
        h = self.harmon
        if batch.pixels is None or batch.labels is None:
            raise ValueError("an i2t batch needs pixels and labels")
        slots = image_slots(batch.input_ids, batch.attention_mask, batch.sample_ids)
        features = h.visual_features(batch.pixels)
        if self.grad_scale is not None:
            features = scale_grad(features, self.grad_scale)
        embeds = h.embed(batch.input_ids.clamp(min=0))
        embeds, mask, labels = splice_features(embeds, features, slots, batch.attention_mask, batch.labels)
        return self._token_loss(embeds, mask, labels, token_norm)

    def _text(self, batch: Batch, token_norm: float | None) -> torch.Tensor:
        if batch.labels is None:
            raise ValueError("a text batch needs labels")
        rows = (batch.input_ids == IMAGE_TOKEN_INDEX).any(1).nonzero().flatten().tolist()
        if rows:
            raise ValueError(f"text-only {_row(rows[0], batch.sample_ids)} has an image slot "
                             f"(input_ids == {IMAGE_TOKEN_INDEX}); use an i2t batch")
        return self._token_loss(self.harmon.embed(batch.input_ids), batch.attention_mask.bool(), batch.labels,
                                token_norm)

    def _token_loss(self, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                    token_norm: float | None) -> torch.Tensor:
        """Sum of next-token cross-entropies over labels >= 0, divided by `token_norm` (default: their count)."""
        llm = self.harmon.llm
        hidden = llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
                           use_cache=False).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets >= 0
        logits = llm.lm_head(hidden[keep]).float()
        total = F.cross_entropy(logits, targets[keep], reduction="sum")
        return total / (token_norm if token_norm is not None else max(int(keep.sum()), 1))


def visual_token_count(harmon: Harmon, image_size: int) -> int:
    """Visual features per image on the understanding path: (S/16)^2 + buffers, or the plugged encoder's count."""
    if harmon.understanding is None:
        rows, cols = harmon.grid(image_size)
        return rows * cols + harmon.mar.buffer_size
    encoder, mode = harmon.understanding, harmon.understanding.training
    pixels = torch.zeros(1, 3, image_size, image_size, device=harmon.device, dtype=harmon.dtype)
    with torch.no_grad():
        count = encoder.eval()(pixels).shape[1]
    encoder.train(mode)
    return count


def enable_gradient_checkpointing(harmon: Harmon) -> None:
    """Recompute activations in the backward pass: LLM layers (non-reentrant), MAR blocks and the diffusion MLP."""
    llm, kwargs = harmon.llm, {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    harmon.mar.config = replace(harmon.mar.config, grad_checkpointing=True)
    harmon.mar.diffloss.net.grad_checkpointing = True


def _group_of(name: str) -> str | None:
    part, _, rest = name.partition(".")
    if part == "mar":
        top = rest.partition(".")[0]
        return "mar_encoder" if top in MAR_ENCODER else "mar_decoder" if top in MAR_DECODER else None
    return part if part in GROUPS else None


def module_groups(harmon: Harmon) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every non-VAE parameter (tied ones once, frozen ones included) by part, keyed by GROUPS.

    "understanding" is present only with a plugged encoder. A parameter outside every group raises ValueError.
    """
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {
        g: [] for g in GROUPS if g != "understanding" or harmon.understanding is not None}
    unknown = []
    for name, param in harmon.named_parameters():
        if name.startswith("vae."):
            continue
        group = _group_of(name)
        if group is None:
            unknown.append(name)
        else:
            groups[group].append((name, param))
    if unknown:
        raise ValueError(f"parameters outside every group {list(groups)}: {unknown[:8]}")
    return groups


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """The official exemption from weight decay: 1-D tensors, biases and the diffusion head."""
    return param.ndim == 1 or name.endswith(".bias") or "diffloss" in name
