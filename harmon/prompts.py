"""Harmon's prompt template, prompt token ids and the image preprocessing used for understanding.

User turns go into the Qwen chat INSTRUCTION template with no system turn and no BOS. A turn is tokenised as
three parts: template head, user text, template tail. The special tokens split the text anyway, so this equals
tokenising the whole string, and lets an over-long user text be cut without losing the template.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

INSTRUCTION = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
IMAGE_TOKEN = "<image>"
GENERATE_PREFIX = "Generate an image: "
CFG_PROMPT = "Generate an image."
DEFAULT_QUESTION = "Describe the image in detail."
PAD_FILL = (127, 127, 127)
NUM_BUFFERS = 64


def generation_text(prompt: str) -> str:
    """The user text of a text-to-image request (no period appended)."""
    return GENERATE_PREFIX + prompt


def image_token_count(image_size: int, patch: int = 16, buffers: int = NUM_BUFFERS) -> int:
    """Image embeddings in an understanding prompt: (size/16)^2 latent tokens + 64 buffers (1088 at 512 px)."""
    return (image_size // patch) ** 2 + buffers


@dataclass(frozen=True)
class TurnIds:
    """Token ids of one user turn; the image embeddings (if any) go between `head` and `text`."""

    head: list[int]
    text: list[int]
    tail: list[int]

    def __len__(self) -> int:
        return len(self.head) + len(self.text) + len(self.tail)


def encode_turn(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int | None = None,
                what: str = "prompt") -> TurnIds:
    """Tokenise `text` as a user turn; cut the user text (with a warning) so the turn fits in `max_tokens`."""
    before, after = INSTRUCTION.split("{input}")
    head = tokenizer.encode(before, add_special_tokens=False)
    tail = tokenizer.encode(after, add_special_tokens=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if max_tokens is not None:
        room = max_tokens - len(head) - len(tail)
        if room < 0:
            raise ValueError(
                f"the {what} template alone needs {len(head) + len(tail)} tokens but only {max_tokens} fit in the "
                "LLM context; use a smaller image_size or an LLM with a longer context"
            )
        if len(ids) > room:
            warnings.warn(f"{what} has {len(ids)} tokens; only the first {room} fit in the LLM context, the rest "
                          "is dropped", stacklevel=3)
            ids = ids[:room]
    return TurnIds(head, ids, tail)


def expand2square(image: Image.Image, fill: tuple[int, int, int] = PAD_FILL) -> Image.Image:
    """Pad the short side with `fill` to a square, the image centred (offset (long - short) // 2)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL image; 16-bit grayscale ('I;16', 'I') is scaled to 8 bits first."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def preprocess_image(image: Image.Image, image_size: int = 512) -> torch.Tensor:
    """Official understanding preprocessing: RGB, expand2square (127 grey), BICUBIC resize, /255*2-1 -> (3, S, S)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image, got {type(image).__name__}; open files with PIL.Image.open(path)")
    square = expand2square(to_rgb(image)).resize((image_size, image_size), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return array / 255.0 * 2.0 - 1.0
