"""Tiny random GenEval models saved in the hub format (config + safetensors + processor files), for offline tests
and smoke runs of the real loading code: a Mask2Former with COCO's labels and a CLIP with a byte-level tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def save_tiny_mask2former(directory: str | os.PathLike, seed: int = 0, image_size: int = 64,
                          favour: str | None = None) -> Path:
    """A random Mask2Former (Swin backbone) over the 80 COCO classes with its image processor. With `favour`,
    the class head predicts that class for every query (weights 0, a large bias), so every mask is that class."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = dict(enumerate(COCO_CLASSES))
    config = Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, feature_size=32, mask_feature_size=32,
                               encoder_layers=1, decoder_layers=2, num_queries=6, num_attention_heads=2,
                               encoder_feedforward_dim=32, dim_feedforward=32, num_labels=len(labels),
                               id2label=labels, label2id={v: k for k, v in labels.items()})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Mask2FormerForUniversalSegmentation(config).eval()
    if favour is not None:
        with torch.no_grad():
            model.class_predictor.weight.zero_()
            model.class_predictor.bias.fill_(-20.0)
            model.class_predictor.bias[COCO_CLASSES.index(favour)] = 20.0
    directory = Path(directory)
    model.save_pretrained(directory)
    Mask2FormerImageProcessor(size={"shortest_edge": image_size, "longest_edge": 2 * image_size}).save_pretrained(
        directory)
    return directory


def _byte_vocab() -> dict[str, int]:
    """GPT-2 style byte-to-unicode characters, each alone and as a word end, plus CLIP's two special tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def save_tiny_clip(directory: str | os.PathLike, seed: int = 0) -> Path:
    """A random CLIP (ViT and text transformer of width 16) with a byte-level CLIP tokenizer and image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _byte_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
    return directory
