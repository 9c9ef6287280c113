"""Training losses on a tiny real Harmon: sharding equivalence, gradient scaling, splicing, groups, checkpointing."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from harmon.diffloss import DiffLoss
from harmon.mar import MAR
from harmon.model import Harmon
from harmon.tiny import TINY_CORPUS, tiny_harmon
from harmon.tokenizer import build_tiny_tokenizer
from harmon.train.batch import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Batch, Shard
from harmon.train.objectives import (
    TrainingModel,
    enable_gradient_checkpointing,
    image_slots,
    module_groups,
    no_weight_decay,
    scale_grad,
    splice_features,
    t2i_draws,
    target_token_count,
    visual_token_count,
)
from tests.conftest import TINY_MAR

MAR_CONFIG = replace(TINY_MAR, attn_dropout=0.0, proj_dropout=0.0, label_drop_prob=0.0)  # no random draws in forward
PAIRS = [
    ("What color is the object?", "The object is green."),
    ("Describe the image.", "A small grey cat."),
    ("What color is the object?", "A red cube on a blue sphere next to a yellow ball."),
    ("Describe it.", "green"),
]
CAPTIONS = ["a red cube", "a small grey cat sits next to a yellow ball", "Generate an image.", "a blue sphere"]
TOL = {"rtol": 1e-4, "atol": 1e-6}


class TinyViT(nn.Module):
    """A one-block timm ViT returning its tokens (class token included)."""

    embed_dim = 16

    def __init__(self):
        super().__init__()
        self.vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=16, depth=1, num_heads=2, num_classes=0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(pixels)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(TINY_CORPUS)


@pytest.fixture(scope="module")
def harmon(tokenizer) -> Harmon:
    return tiny_harmon(tokenizer, mar=MAR_CONFIG).train()


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def pixels_for(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def lm_batch(tokenizer, task: str, slots: list[int] | None = None) -> Batch:
    """Prompt + answer rows (loss on the answer); row i has slots[i] image slots after its first i prompt tokens."""
    ids, labels = [], []
    for i, (prompt, answer) in enumerate(PAIRS):
        p = tokenizer.encode(prompt, add_special_tokens=False)
        a = tokenizer.encode(answer, add_special_tokens=False)
        at = min(i, len(p))
        row = p[:at] + [IMAGE_TOKEN_INDEX] * (slots[i] if slots else 0) + p[at:] + a
        ids.append(row)
        labels.append([IGNORE_INDEX] * (len(row) - len(a)) + a)
    mask = pad_rows([[1] * len(r) for r in ids], 0).bool()
    pixels = pixels_for(len(PAIRS)) if task == "i2t" else None
    return Batch(task, pad_rows(ids, tokenizer.pad_token_id), mask, pad_rows(labels, IGNORE_INDEX), pixels,
                 torch.arange(10, 10 + len(PAIRS)))


def t2i_batch(tokenizer) -> Batch:
    ids = [tokenizer.encode(c, add_special_tokens=False) for c in CAPTIONS]
    mask = pad_rows([[1] * len(r) for r in ids], 0).bool()
    return Batch("t2i", pad_rows(ids, tokenizer.pad_token_id), mask, None, pixels_for(len(CAPTIONS), 1))


def make_batch(tokenizer, task: str) -> Batch:
    if task == "t2i":
        return t2i_batch(tokenizer)
    return lm_batch(tokenizer, task, [1] * len(PAIRS) if task == "i2t" else None)


def subset(batch: Batch, rows: slice) -> Batch:
    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    return Batch(batch.task, batch.input_ids[rows], batch.attention_mask[rows], cut(batch.labels),
                 cut(batch.pixels), cut(batch.sample_ids))


def loss_and_grads(model: TrainingModel, batch: Batch, shard: Shard, seed: int = 7,
                   token_norm: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(batch, shard, torch.Generator().manual_seed(seed), token_norm)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.harmon.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


# ----- gradient scaling --------------------------------------------------------------------------------------
def test_scale_grad_is_identity_forward_and_scales_backward():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = scale_grad(x, 0.1)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, w * 0.1)


def test_i2t_gradient_to_the_visual_path_is_scaled(harmon, tokenizer):
    batch = make_batch(tokenizer, "i2t")
    shard = Shard.whole(len(batch))
    _, full = loss_and_grads(TrainingModel(harmon, 1.0), batch, shard)
    _, scaled = loss_and_grads(TrainingModel(harmon, 0.1), batch, shard)
    _, unscaled = loss_and_grads(TrainingModel(harmon, None), batch, shard)
    groups = module_groups(harmon)
    visual = [n for g in ("proj_in", "mar_encoder") for n, _ in groups[g] if n in full]
    assert "mar.z_proj.weight" in visual and "proj_in.0.weight" in visual and "mar.fake_latent" in visual
    assert not any(n in full for n, _ in groups["mar_decoder"] + groups["proj_out"])
    for name in visual:
        assert full[name].abs().sum() > 0, name
        torch.testing.assert_close(scaled[name], 0.1 * full[name], rtol=1e-5, atol=1e-9)
    llm = [n for n, _ in groups["llm"]]
    assert all(torch.equal(scaled[n], full[n]) for n in llm)
    assert all(torch.equal(unscaled[n], full[n]) for n in full)


# ----- splicing and the token loss ---------------------------------------------------------------------------
def test_splice_matches_a_loop_reference():
    ids = torch.tensor([[-200, 5, 6, 7, 8], [5, 6, -200, 7, 8], [5, 6, 7, -200, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]).bool()
    labels = torch.tensor([[-100, -100, 6, 7, 8], [-100, -100, -100, 7, 8], [-100, 6, 7, -100, -100]])
    embeds, features = torch.randn(3, 5, 2), torch.randn(3, 3, 2)
    slots = image_slots(ids, mask)
    assert slots.tolist() == [0, 2, 3]
    out, out_mask, out_labels = splice_features(embeds, features, slots, mask, labels)
    for b, p in enumerate(slots.tolist()):
        ref = torch.cat([embeds[b, :p], features[b], embeds[b, p + 1:]])
        ref_mask = torch.cat([mask[b, :p], torch.ones(3, dtype=torch.bool), mask[b, p + 1:]])
        ref_labels = torch.cat([labels[b, :p], torch.full((3,), IGNORE_INDEX), labels[b, p + 1:]])
        assert torch.equal(out[b], ref) and torch.equal(out_mask[b], ref_mask)
        assert torch.equal(out_labels[b], ref_labels)
    assert torch.equal(out[1, 2:5], features[1])
    assert out_labels[1, 5:].tolist() == [7, 8] and out_mask[2].tolist() == [True] * 6 + [False]


def test_i2t_loss_equals_a_row_by_row_reference(harmon, tokenizer):
    batch = make_batch(tokenizer, "i2t")
    model = TrainingModel(harmon)
    with torch.no_grad():
        loss = model(batch, Shard.whole(len(batch)), torch.Generator())
        features = harmon.visual_features(batch.pixels)
        total, count = 0.0, 0
        for b in range(len(batch)):
            n = int(batch.attention_mask[b].sum())
            ids, labels = batch.input_ids[b, :n].tolist(), batch.labels[b, :n].tolist()
            p = ids.index(IMAGE_TOKEN_INDEX)
            before, after = torch.tensor(ids[:p], dtype=torch.long), torch.tensor(ids[p + 1:])
            row = torch.cat([harmon.embed(before), features[b], harmon.embed(after)])
            row_labels = labels[:p] + [IGNORE_INDEX] * features.shape[1] + labels[p + 1:]
            hidden = harmon.llm.model(inputs_embeds=row[None]).last_hidden_state[0]
            for j in range(len(row_labels) - 1):
                if row_labels[j + 1] >= 0:
                    logits = harmon.llm.lm_head(hidden[j])
                    total += float(F.cross_entropy(logits[None], torch.tensor([row_labels[j + 1]])))
                    count += 1
    assert count == target_token_count(batch)
    torch.testing.assert_close(loss, torch.tensor(total / count), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        halved = model(batch, Shard.whole(len(batch)), torch.Generator(), token_norm=count / 2)
    torch.testing.assert_close(halved, 2 * loss)


# ----- sharding equivalence ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["t2i", "i2t", "text"])
def test_two_shards_equal_the_whole_batch(harmon, tokenizer, task):
    batch = make_batch(tokenizer, task)
    model = TrainingModel(harmon)
    whole_loss, whole = loss_and_grads(model, batch, Shard.whole(4))
    halves = [Shard(0, 2, 4), Shard(2, 2, 4)]
    norm = None if task == "t2i" else target_token_count(batch) / 2
    if norm is not None:
        counts = [target_token_count(subset(batch, s.rows())) for s in halves]
        assert counts[0] != counts[1]  # so a per-shard token mean would not average to the global mean
    parts = [loss_and_grads(model, subset(batch, s.rows()), s, token_norm=norm) for s in halves]
    assert not torch.allclose(parts[0][0], parts[1][0])
    torch.testing.assert_close(whole_loss, (parts[0][0] + parts[1][0]) / 2, **TOL)
    assert set(whole) == set(parts[0][1]) == set(parts[1][1])
    for name, grad in whole.items():
        torch.testing.assert_close(grad, (parts[0][1][name] + parts[1][1][name]) / 2, **TOL, msg=name)
    if task == "t2i":  # a different seed draws another mask, so the equality above is not a coincidence
        assert not torch.allclose(loss_and_grads(model, batch, Shard.whole(4), seed=8)[0], whole_loss)


def test_t2i_draws_are_global_and_sliced(harmon):
    mar, seq_len, rep = harmon.mar, 16, MAR_CONFIG.diffusion_batch_mul
    mask, t, noise = t2i_draws(mar, Shard.whole(4), seq_len, torch.Generator().manual_seed(3))
    part = t2i_draws(mar, Shard(2, 2, 4), seq_len, torch.Generator().manual_seed(3))
    assert torch.equal(part[0], mask[2:])
    assert torch.equal(part[1], t.reshape(rep, 4, seq_len)[:, 2:].reshape(-1))
    assert torch.equal(part[2], noise.reshape(rep, 4, seq_len, -1)[:, 2:].reshape(-1, noise.shape[-1]))
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and math.ceil(0.7 * seq_len) <= int(counts[0]) <= seq_len
    assert len({tuple(row.tolist()) for row in mask}) > 1  # one order per row


def test_t2i_loss_covers_only_the_masked_tokens(harmon, tokenizer):
    batch = make_batch(tokenizer, "t2i")
    seed = 5
    with torch.no_grad():
        loss = TrainingModel(harmon)(batch, Shard.whole(4), torch.Generator().manual_seed(seed))
        mask, t, noise = t2i_draws(harmon.mar, Shard.whole(4), 16, torch.Generator().manual_seed(seed))
        assert int(mask[0].sum()) < 16
        tokens = harmon.encode_images(batch.pixels)
        z = harmon.condition_tokens(tokens, mask, harmon.grid(64), harmon.embed(batch.input_ids),
                                    batch.attention_mask)
        rep, c = MAR_CONFIG.diffusion_batch_mul, tokens.shape[-1]
        diffloss = harmon.mar.diffloss
        per_row = diffloss.train_diffusion.training_losses(
            diffloss.net, tokens.reshape(-1, c).repeat(rep, 1), t, {"c": z.reshape(-1, z.shape[-1]).repeat(rep, 1)},
            noise=noise)["loss"]
    masked = mask.reshape(-1).repeat(rep)
    torch.testing.assert_close(loss, per_row[masked].mean())
    assert not torch.allclose(loss, per_row.mean())


def test_explicit_timesteps_and_noise_equal_drawn_ones():
    torch.manual_seed(0)
    diffloss = DiffLoss(4, 8, 2, 16)
    target, z, mask = torch.randn(12, 4), torch.randn(12, 8), (torch.arange(12) % 3 > 0).float()
    drawn = diffloss(target, z, mask, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, diffloss.train_diffusion.num_timesteps, (12,), generator=gen)
    noise = torch.randn(12, 4, generator=gen)
    assert torch.equal(diffloss(target, z, mask, t=t, noise=noise), drawn)
    assert not torch.equal(diffloss(target, z, mask, t=t, noise=2 * noise), drawn)

    mar = MAR(MAR_CONFIG)
    rows = MAR_CONFIG.diffusion_batch_mul * 2 * 16
    z, target, mask = torch.randn(2, 16, 32), torch.randn(2, 16, 16), torch.rand(2, 16) > 0.3
    drawn = mar.forward_loss(z, target, mask, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    t = torch.randint(0, mar.diffloss.train_diffusion.num_timesteps, (rows,), generator=gen)
    noise = torch.randn(rows, 16, generator=gen)
    assert torch.equal(mar.forward_loss(z, target, mask, t=t, noise=noise), drawn)


# ----- helpers -----------------------------------------------------------------------------------------------
def test_module_groups_cover_every_parameter_once(harmon, tokenizer):
    plugged = Harmon(harmon.config, tokenizer, understanding_encoder=TinyViT())
    for model, keys in ((harmon, {"llm", "mar_encoder", "mar_decoder", "proj_in", "proj_out"}),
                        (plugged, {"llm", "mar_encoder", "mar_decoder", "proj_in", "proj_out", "understanding"})):
        groups = module_groups(model)
        assert set(groups) == keys
        names = [n for g in groups.values() for n, _ in g]
        params = [p for g in groups.values() for _, p in g]
        assert len(names) == len(set(names)) and len({id(p) for p in params}) == len(params)
        expected = {id(p) for n, p in model.named_parameters() if not n.startswith("vae.")}
        assert {id(p) for p in params} == expected
        assert "llm.model.embed_tokens.weight" in names and "llm.lm_head.weight" not in names
        where = {n: g for g, members in groups.items() for n, _ in members}
        assert where["mar.encoder_blocks.0.attn.qkv.weight"] == where["mar.fake_latent"] == "mar_encoder"
        assert where["mar.class_emb.weight"] == where["mar.encoder_pos_embed_learned"] == "mar_encoder"
        assert where["mar.diffloss.net.input_proj.weight"] == where["mar.mask_token"] == "mar_decoder"
        assert where["mar.diffusion_pos_embed_learned"] == "mar_decoder"
    assert {n.split(".")[1] for n, _ in module_groups(plugged)["understanding"]} == {"encoder", "proj"}
    plugged.mar.register_parameter("stray", nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match="mar.stray"):
        module_groups(plugged)


def test_visual_token_count(harmon, tokenizer):
    assert visual_token_count(harmon, 64) == 16 + MAR_CONFIG.buffer_size
    assert visual_token_count(harmon, 64) == harmon.visual_features(pixels_for(1)).shape[1]
    plugged = Harmon(harmon.config, tokenizer, understanding_encoder=TinyViT()).train()
    assert visual_token_count(plugged, 64) == 17 == plugged.visual_features(pixels_for(1)).shape[1]
    assert plugged.understanding.training


def test_no_weight_decay_rule():
    w, b = nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(3))
    assert no_weight_decay("llm.model.norm.weight", b) and no_weight_decay("proj_in.0.bias", w)
    assert no_weight_decay("mar.diffloss.net.input_proj.weight", w)
    assert not no_weight_decay("mar.encoder_blocks.0.attn.qkv.weight", w)
    assert not no_weight_decay("mar.mask_token", nn.Parameter(torch.zeros(1, 1, 3)))


def test_gradient_checkpointing_keeps_loss_and_grads(tokenizer):
    plain = TrainingModel(tiny_harmon(tokenizer, mar=MAR_CONFIG).train())
    ckpt = TrainingModel(tiny_harmon(tokenizer, mar=MAR_CONFIG).train())
    enable_gradient_checkpointing(ckpt.harmon)
    assert ckpt.harmon.llm.model.gradient_checkpointing and ckpt.harmon.mar.config.grad_checkpointing
    assert ckpt.harmon.mar.diffloss.net.grad_checkpointing and not plain.harmon.mar.config.grad_checkpointing
    for task in ("t2i", "i2t"):
        batch = make_batch(tokenizer, task)
        loss_a, grads_a = loss_and_grads(plain, batch, Shard.whole(4))
        loss_b, grads_b = loss_and_grads(ckpt, batch, Shard.whole(4))
        torch.testing.assert_close(loss_b, loss_a, **TOL)
        assert set(grads_a) == set(grads_b)
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], **TOL, msg=name)


# ----- malformed batches -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("slots", "message"), [([1, 0, 1, 1], "row 1 (sample 11) has 0 image slots"),
                                                 ([1, 1, 2, 1], "row 2 (sample 12) has 2 image slots")])
def test_bad_image_slot_counts_name_the_row(harmon, tokenizer, slots, message):
    batch = lm_batch(tokenizer, "i2t", slots)
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainingModel(harmon)(batch, Shard.whole(4), torch.Generator())


def test_text_batch_with_an_image_slot_is_refused(harmon, tokenizer):
    batch = lm_batch(tokenizer, "text", [0, 0, 1, 0])
    with pytest.raises(ValueError, match=r"row 2 \(sample 12\) has an image slot"):
        TrainingModel(harmon)(batch, Shard.whole(4), torch.Generator())
