"""Typed preset sections for paper-scale generation scoring inside a training recipe (`figure6 --preset paper`):
GenEval by the published protocol, and FID on a caption file against reference images."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DetectorGenEval:
    """GenEval's prompts (`metadata`: evaluation_metadata.jsonl), `per_prompt` images each, scored by the
    detector-based GenEval (`detector`, `clip`: hub ids or folders); null `metadata` keeps ShapesWorld's prompts."""

    metadata: str | None = None
    per_prompt: int = 1
    detector: str = "facebook/mask2former-swin-small-coco-instance"
    clip: str = "openai/clip-vit-large-patch14"


@dataclass
class FidEval:
    """FID at the last evaluation: the first `limit` captions of `captions` (a .txt list, MJHQ's meta_data.json
    or a COCO captions JSON) generated and compared with the images in `reference` at `resolution`; off while
    either path is null. `name` labels the row key (`fid_<name>`)."""

    captions: str | None = None
    reference: str | None = None
    name: str = "mjhq"
    limit: int = 10000
    resolution: int = 256
    batch_size: int = 50

    @property
    def active(self) -> bool:
        return self.captions is not None and self.reference is not None
