"""GenEval with a detector, following the published protocol (Ghosh et al. 2023, `evaluate_images.py`).

Each image of GenEval's layout is segmented by a COCO instance-segmentation Mask2Former; per query, the
confidence is the class probability (softmax without the no-object class) times the mean mask probability inside
its binary mask (logits > 0), the box is the binary mask's bounding box, and the top 100 (query, class) pairs are
candidates, as mmdet's Mask2Former post-processing does. The rules (`harmon.geneval_rules`: thresholds 0.3 / 0.9
for counting, 16 objects per class, positions from box centres with the 0.1 margin, include / exclude clauses)
judge the detections; the colour of an object is CLIP's zero-shot choice among GenEval's ten colours (prompts "a
photo of a {c} {class}", "a photo of a {c}-colored {class}", "a photo of a {c} object", averaged and normalised)
on the image cropped to its box, with the pixels outside its mask painted #999. Scores: the share of correct
images per tag, overall = the mean of the six tag shares.

Where this differs from the original mmdet harness: the detector is transformers'
`Mask2FormerForUniversalSegmentation` (`facebook/mask2former-swin-small-coco-instance`, the same Swin-S COCO
model family as GenEval's `mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`, converted by its authors, not the
identical mmdet file), images are resized by the checkpoint's image processor rather than mmdet's test pipeline,
and colours come from transformers' CLIP ViT-L/14 (`openai/clip-vit-large-patch14`, the OpenAI weights GenEval
loads through open_clip) with CLIPProcessor's resize and crop. Expect scores close to, not identical with, the
original harness; detections exactly as confident as each other are ordered by fit (see the rules module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from experiments.evaluation.weights import load_pretrained, load_processor
from harmon.geneval_rules import (
    COLORS,
    Detection,
    GenEvalSpec,
    MetadataError,
    Verdict,
    colors_needed,
    judge,
    keep_detections,
)

if TYPE_CHECKING:
    import torch

DETECTOR = "facebook/mask2former-swin-small-coco-instance"
CLIP = "openai/clip-vit-large-patch14"
TOP_CANDIDATES = 100
BACKGROUND = "#999"
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
# COCO names where GenEval's object list differs from the detector's labels
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


@dataclass(frozen=True)
class Segment:
    """A candidate object: its GenEval detection and its binary mask (H x W, the image's size)."""

    detection: Detection
    mask: np.ndarray


def masked_crop(image: Image.Image, segment: Segment) -> Image.Image:
    """The image with the pixels outside the object's mask painted #999, cropped to its box."""
    blank = Image.new("RGB", image.size, BACKGROUND)
    composite = Image.composite(image, blank, Image.fromarray(segment.mask.astype(np.uint8) * 255))
    return composite.crop(tuple(int(round(v)) for v in segment.detection.box))


class GenEvalScorer:
    """Mask2Former + CLIP loaded once; `score(image, spec)` gives GenEval's verdict on one image."""

    def __init__(self, detector: str = DETECTOR, clip: str = CLIP, device: str | torch.device = "cpu",
                 top_candidates: int = TOP_CANDIDATES):
        import torch
        from transformers import (
            AutoImageProcessor,
            CLIPModel,
            CLIPProcessor,
            Mask2FormerForUniversalSegmentation,
        )

        self.device = torch.device(device)
        self.detector = load_pretrained(Mask2FormerForUniversalSegmentation, detector, "GenEval detector").to(
            self.device)
        self.detector_processor = load_processor(AutoImageProcessor, detector, "GenEval detector")
        self.clip = load_pretrained(CLIPModel, clip, "GenEval colour classifier").to(self.device)
        self.clip_processor = load_processor(CLIPProcessor, clip, "GenEval colour classifier")
        labels = self.detector.config.id2label
        self.classes = [GENEVAL_NAMES.get(labels[i], labels[i]) for i in range(len(labels))]
        self.top_candidates = top_candidates
        self._color_classifiers: dict[str, torch.Tensor] = {}

    def check_classes(self, specs: list[GenEvalSpec], where: str) -> None:
        """Every class the metadata names must be one the detector knows."""
        known = set(self.classes)
        unknown = sorted({c.cls for s in specs for c in (*s.include, *s.exclude)} - known)
        if unknown:
            raise MetadataError(f"{where} names classes the detector does not know: {', '.join(unknown[:8])}; "
                                "GenEval's metadata uses the 80 COCO names")

    def segments(self, image: Image.Image) -> list[Segment]:
        """Candidate objects, most confident first (mmdet's Mask2Former instance post-processing)."""
        import torch
        import torch.nn.functional as F

        inputs = self.detector_processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = self.detector(pixel_values=inputs["pixel_values"].to(self.device))
        probs = out.class_queries_logits[0].float().softmax(-1)[:, :-1]
        classes = probs.shape[1]
        scores, flat = probs.flatten().topk(min(self.top_candidates, probs.numel()))
        queries, labels = flat // classes, flat % classes
        valid = inputs["pixel_mask"][0].bool() if "pixel_mask" in inputs else None
        logits = F.interpolate(out.masks_queries_logits[:, queries].float(), size=inputs["pixel_values"].shape[-2:],
                               mode="bilinear", align_corners=False)[0]
        if valid is not None:
            rows, cols = int(valid.any(1).sum()), int(valid.any(0).sum())
            logits = logits[:, :rows, :cols]
        logits = F.interpolate(logits[None], size=(image.height, image.width), mode="bilinear",
                               align_corners=False)[0]
        binary = logits > 0
        mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        confidences = (scores.to(mask_scores.device) * mask_scores).cpu().numpy()
        binary = binary.cpu().numpy()
        found = []
        for k in np.argsort(-confidences, kind="stable"):
            ys, xs = np.nonzero(binary[k])
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else (
                0.0, 0.0, 0.0, 0.0)
            found.append(Segment(Detection(self.classes[int(labels[k])], box, float(confidences[k])), binary[k]))
        return found

    def _color_classifier(self, cls: str) -> torch.Tensor:
        import torch

        if cls not in self._color_classifiers:
            rows = []
            for color in COLORS:
                texts = [t.format(c=color, cls=cls) for t in COLOR_TEMPLATES]
                tokens = self.clip_processor(text=texts, return_tensors="pt", padding=True)
                with torch.no_grad():
                    embeds = self.clip.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                         attention_mask=tokens["attention_mask"].to(self.device))
                embeds = _features(embeds).float()
                embeds = embeds / embeds.norm(dim=-1, keepdim=True)
                mean = embeds.mean(0)
                rows.append(mean / mean.norm())
            self._color_classifiers[cls] = torch.stack(rows, 1)
        return self._color_classifiers[cls]

    def colors(self, image: Image.Image, segments: list[Segment], cls: str) -> list[str]:
        """CLIP's colour for each object (masked crop, zero-shot over GenEval's colours)."""
        import torch

        crops = [masked_crop(image, s) for s in segments]
        pixels = self.clip_processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            embeds = _features(self.clip.get_image_features(pixel_values=pixels)).float()
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return [COLORS[int(i)] for i in (embeds @ self._color_classifier(cls)).argmax(1)]

    def score(self, image: Image.Image, spec: GenEvalSpec) -> tuple[Verdict, dict[str, list[list[float]]]]:
        """GenEval's verdict on one image and the kept boxes per class (the evaluator's `details`)."""
        image = ImageOps.exif_transpose(image).convert("RGB")
        segments = self.segments(image)
        by_detection = {id(s.detection): s for s in segments}
        kept = keep_detections([s.detection for s in segments], spec.tag)
        for cls, count in colors_needed(spec).items():
            objects = kept.get(cls, [])
            if not objects:
                continue
            # the `count` most confident, and any exactly as confident as the last of them (the rules pick among ties)
            cut = objects[min(count, len(objects)) - 1].score
            judge_these = [d for d in objects if d.score >= cut]
            judged = self.colors(image, [by_detection[id(d)] for d in judge_these], cls)
            kept[cls] = [Detection(d.cls, d.box, d.score, c) for d, c in zip(judge_these, judged, strict=True)] + \
                objects[len(judge_these):]
        details = {cls: [[*d.box, d.score] for d in found] for cls, found in kept.items()}
        return judge(spec, kept), details


def _features(output: Any) -> torch.Tensor:
    """The embedding tensor of `get_text_features` / `get_image_features` (a tensor, or an output object)."""
    return output if hasattr(output, "norm") else output.pooler_output


def result_row(path: Path, spec: GenEvalSpec, verdict: Verdict, details: dict[str, Any]) -> dict[str, Any]:
    """One line of results.jsonl, with the published evaluator's fields."""
    return {"filename": str(path), "tag": spec.tag, "prompt": spec.prompt, "correct": verdict.correct,
            "reason": verdict.reason, "metadata": json.dumps(spec.to_dict()), "details": json.dumps(details)}
