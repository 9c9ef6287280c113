"""A SigLIP-style image-text pair trained with the sigmoid loss: a tiny timm ViT image tower (patch 8 at 64 px,
attention-pool head `global_pool="map"`, built from timm's SigLIP B/16 definition so it carries SigLIP's
preprocessing) and a tiny transformer over the word tokens of the captions.

Supervision: ShapesWorld captions describe the rendered scene; Fashion-MNIST captions ("a photo of a {class}")
are derived from the class label, so on those images this is label-derived language supervision. Pairs whose
captions are identical count as positives of each other.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field

import timm
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from experiments.pretrain.common import OptimConfig, Pretrained, reuse_or_train, saved_record, summary, train
from experiments.pretrain.data import PREPROCESS, StreamConfig, batches, cached_stream, identity

TIMM_DEFINITION = "vit_base_patch16_siglip_256"
SPECIALS = ("<pad>", "<unk>")


@dataclass(frozen=True)
class TinySigLIPConfig:
    """Image and text tower sizes, the sigmoid loss initialisation, optimisation and data."""

    width: int = 96
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 8
    text_depth: int = 2
    max_words: int = 16
    init_log_temperature: float = math.log(10.0)
    init_bias: float = -10.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=220, batch_size=48, lr=1e-3,
                                                                    weight_decay=1e-4))
    data: StreamConfig = field(default_factory=StreamConfig)

    def image_architecture(self) -> dict:
        return dict(img_size=PREPROCESS.image_size, patch_size=self.patch_size, embed_dim=self.width,
                    depth=self.depth, num_heads=self.num_heads, num_classes=0, global_pool="map", class_token=False)


def words(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


def build_vocabulary(captions: list[str]) -> list[str]:
    return [*SPECIALS, *sorted({word for caption in captions for word in words(caption)})]


class TextTower(nn.Module):
    """Word embeddings + learned positions -> pre-norm transformer -> mean over the words -> linear projection."""

    def __init__(self, vocabulary: list[str], width: int, depth: int, num_heads: int, max_words: int):
        super().__init__()
        self.index = {word: i for i, word in enumerate(vocabulary)}
        self.max_words = max_words
        self.embed = nn.Embedding(len(vocabulary), width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, max_words, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, width)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(captions), self.max_words, dtype=torch.long)
        for row, caption in enumerate(captions):
            tokens = [self.index.get(word, 1) for word in words(caption)][: self.max_words]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.blocks(self.embed(ids) + self.position[:, : ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.proj((self.norm(x) * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class SigmoidLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss with a learnable log-temperature and bias."""

    def __init__(self, log_temperature: float, bias: float):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(float(log_temperature)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, image: torch.Tensor, text: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """Mean over images of the summed -log sigmoid(sign x logit); `same[i, j]` marks positive pairs."""
        logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t() * self.log_temperature.exp() + self.bias
        return -F.logsigmoid((2 * same.float() - 1) * logits).sum() / len(image)


def build_image_tower(config: TinySigLIPConfig) -> nn.Module:
    """The tiny ViT, from timm's SigLIP B/16 definition; its pretrained cfg keeps SigLIP's normalisation and
    interpolation, with crop_pct 1 because it trains on the shared stream's uncropped 64 px images."""
    model = timm.create_model(TIMM_DEFINITION, pretrained=False, **config.image_architecture())
    model.pretrained_cfg = {**model.pretrained_cfg, "crop_pct": 1.0}
    return model


def pretrain_siglip(config: TinySigLIPConfig, root: str | os.PathLike, console: Console | None = None) -> Pretrained:
    """Train the tiny SigLIP pair, or load it from `root` when this configuration was trained before.

    Modules: "image" (the encoder to probe), "text" and "loss" (temperature and bias).
    """
    record = saved_record("siglip", identity(config), root)
    vocabulary = record["vocabulary"] if record else build_vocabulary(cached_stream(config.data, console).captions)
    torch.manual_seed(config.optim.seed)
    image = build_image_tower(config)
    text = TextTower(vocabulary, config.width, config.text_depth, config.num_heads, config.max_words)
    loss = SigmoidLoss(config.init_log_temperature, config.init_bias)

    def step(stream, ids: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        captions = ids[indices]
        same = (captions[:, None] == captions[None]).all(-1)
        value = loss(image(stream.pixels(indices)), text(captions), same)
        return {"loss": value, "temperature": loss.log_temperature.exp().detach(), "bias": loss.bias.detach()}

    def fit() -> dict:
        stream = cached_stream(config.data, console)
        ids = text.tokenize(stream.captions)
        curves, seconds = train(
            [*image.parameters(), *text.parameters(), *loss.parameters()], lambda idx: step(stream, ids, idx),
            batches(len(stream), config.optim.batch_size, config.optim.steps, config.optim.seed), config.optim,
            "pretraining tiny SigLIP", console)
        return {"architecture": {"image": {"timm_definition": TIMM_DEFINITION, **config.image_architecture()},
                                 "text": {"width": config.width, "depth": config.text_depth, "heads": config.num_heads,
                                          "max_words": config.max_words, "vocabulary_size": len(vocabulary)}},
                "preprocess": PREPROCESS.to_dict(), "training": asdict(config), "vocabulary": vocabulary,
                "supervision": "ShapesWorld: scene captions; Fashion-MNIST: label-derived captions 'a photo of a {class}'",
                "stream": stream.counts(), "parameters": sum(p.numel() for p in image.parameters()),
                "seconds": seconds, "losses": summary(curves), "curves": curves}

    return reuse_or_train("siglip", identity(config), {"image": image, "text": text, "loss": loss}, root, fit)
