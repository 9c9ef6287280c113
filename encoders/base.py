"""The one contract every visual encoder adapter satisfies.

An adapter turns preprocessed pixels into a token sequence `(B, P + N, D)`: P prefix tokens (CLS, registers,
MAR's buffers) followed by N patch tokens on a row-major `(h, w)` grid. From that sequence the base class
derives patch tokens, the pooled vector and what Grad-CAM++ needs (target layer and a reshape transform that
drops the prefix and uses the true grid). Preprocessing is part of the adapter and is saved with its weights.

`forward_layers` returns the sequences after several blocks from one pass of the network (adapters collect
them with forward hooks or by running their blocks); `layer_features` pools each of them. Encoders with
`masks_tokens` (MAR) can also hide tokens from the encoder, as MAR's generation does (`forward_masked_layers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from harmon.utils.files import tensor_digest

POOLINGS = {
    "mean": "mean of the patch tokens (prefix tokens excluded)",
    "cls": "the first prefix token (CLS-style encoders)",
    "map": "the encoder's attention-pooling head (SigLIP)",
    "buffer_mean": "mean of the prefix tokens (MAR's 64 buffers)",
    "flatten": "all patch tokens concatenated (N * D values; the raw-pixel and latent baselines)",
}

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "box": Image.BOX}


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes the (3, S, S) tensor an encoder was trained on.

    crop: "center" (resize the short side to S / crop_pct, centre crop S), "resize" (squash to S x S),
    "pad" (pad to a square with grey (127, 127, 127), then resize, as Harmon's understanding path).
    Pixels are scaled to [0, 1], then normalised with mean/std.
    """

    image_size: int = 256
    crop: str = "center"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.crop not in ("center", "resize", "pad"):
            raise ValueError(f"crop={self.crop!r}; use 'center', 'resize' or 'pad'")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation={self.interpolation!r}; use one of {sorted(_RESAMPLE)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct={self.crop_pct} must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        size, resample = self.image_size, _RESAMPLE[self.interpolation]
        if self.crop == "pad":
            side = max(image.size)
            canvas = Image.new("RGB", (side, side), (127, 127, 127))
            canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = canvas.resize((size, size), resample)
        elif self.crop == "resize":
            image = image.resize((size, size), resample)
        else:
            scale = size / self.crop_pct / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), resample)
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


@dataclass
class Features:
    """What an encoder returns for a batch."""

    tokens: torch.Tensor  # (B, N, D) patch tokens, row-major over `grid`; with a `mask`, only the V visible ones
    grid: tuple[int, int]  # (h, w), h * w == N
    prefix: torch.Tensor  # (B, P, D) prefix tokens (P may be 0)
    pooled: torch.Tensor  # (B, D); (B, N * D) for the "flatten" pooling
    pooling: str = field(default="mean")
    mask: torch.Tensor | None = None  # (B, N) bool, True = hidden from the encoder; None: every token seen


class Encoder(nn.Module):
    """Base class of all adapters. Subclasses implement `forward_sequence`, `grid_for`, `num_layers`, `cam_layer`,
    and override `forward_layers` to collect several blocks in one pass."""

    name: str = "encoder"
    num_prefix_tokens: int = 0
    poolings: tuple[str, ...] = ("mean",)
    default_pooling: str = "mean"
    masks_tokens: bool = False  # whether `forward_masked_layers` can hide tokens from the encoder

    def __init__(self, preprocess: Preprocess):
        super().__init__()
        self.preprocess = preprocess

    # --- to implement ---------------------------------------------------------------------------------------
    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """(B, P + N, D) tokens after block `layer` (0-based, negative from the end; None = final features)."""
        raise NotImplementedError

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) for an input of height x width pixels."""
        raise NotImplementedError

    def num_layers(self) -> int:
        """How many blocks `layer=` can index."""
        raise NotImplementedError

    def cam_layer(self) -> nn.Module:
        """The module whose output Grad-CAM++ reads (a token sequence or a (B, C, h, w) map)."""
        raise NotImplementedError

    def cam_layer_for(self, pooling: str | None = None) -> nn.Module:
        """The Grad-CAM++ layer for a pooling: one whose patch-token outputs the pooled vector depends on.

        Poolings that read only prefix tokens (CLS, buffers) of the last block cannot see that block's patch
        outputs, so adapters return an earlier point there (e.g. the last block's input norm); default:
        `cam_layer()`."""
        return self.cam_layer()

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        """`forward_sequence(pixels, layer)` for each of `layers`, in order. Adapters override this to run the
        network once and collect every requested block; this default runs it once per layer."""
        return [self.forward_sequence(pixels, layer) for layer in layers]

    def forward_masked_layers(self, pixels: torch.Tensor, layers: Sequence[int | None],
                              mask: torch.Tensor) -> list[torch.Tensor]:
        """Like `forward_layers`, with the patch tokens where `mask` (B, N) is True hidden from the encoder:
        (B, P + V, D) per layer, the V visible tokens in grid order. Only encoders with `masks_tokens`."""
        self.require_token_masks()
        raise NotImplementedError

    def require_token_masks(self) -> None:
        """A ValueError unless this encoder can hide tokens (`masks_tokens`)."""
        if not self.masks_tokens:
            raise ValueError(f"encoder {self.name!r} cannot hide tokens; token masks (--mask-ratio) are for "
                             "MAR-family encoders (mar-b, mar-l, mar-h, harmon-*-mar)")

    @property
    def has_decoder(self) -> bool:
        """Whether `reconstruct` can turn images into their reconstructions (autoencoders with a decoder)."""
        return False

    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (B, 3, S, S) -> their reconstructions through the encoder and its decoder, in the
        same normalised space. Only encoders with `has_decoder` (the diffusers VAE / VQ adapters)."""
        raise self.no_decoder_error()

    def no_decoder_error(self) -> ValueError:
        """Why this encoder cannot reconstruct, naming it and the fix."""
        return ValueError(f"encoder {self.name!r} has no decoder, so it cannot reconstruct images; reconstruction "
                          f"is for autoencoders (vae-*, vqgan-*): leave {self.name!r} out of the reconstruction")

    def map_pool(self, sequence: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"encoder {self.name!r} has no attention-pooling head; poolings: {self.poolings}")

    # --- derived ----------------------------------------------------------------------------------------------
    def check_size(self, height: int, width: int) -> None:
        """Raise a clear error for image sizes the encoder cannot take."""
        self.grid_for(height, width)

    def pool(self, sequence: torch.Tensor, method: str) -> torch.Tensor:
        if method not in self.poolings:
            raise ValueError(f"pooling {method!r} is not available for {self.name!r}; choose one of {self.poolings}")
        p = self.num_prefix_tokens
        if method == "mean":
            return sequence[:, p:].mean(dim=1)
        if method == "cls":
            return sequence[:, 0]
        if method == "buffer_mean":
            return sequence[:, :p].mean(dim=1)
        if method == "flatten":
            return sequence[:, p:].flatten(1)
        return self.map_pool(sequence)

    def layer_features(self, pixels: torch.Tensor, layers: Sequence[int | None], pooling: str | None = None,
                       mask: torch.Tensor | None = None) -> list[Features]:
        """Features after each of `layers` from one pass, each pooled; `mask` (B, N) hides tokens (see
        `forward_masked_layers`), so "mean" then averages the visible patch tokens."""
        pooling = pooling or self.default_pooling
        grid = self.grid_for(*pixels.shape[-2:])
        cells, p = grid[0] * grid[1], self.num_prefix_tokens
        if mask is None:
            sequences, visible = self.forward_layers(pixels, layers), cells
        else:
            if tuple(mask.shape) != (len(pixels), cells):
                raise ValueError(f"{self.name}: the token mask has shape {tuple(mask.shape)}, expected "
                                 f"({len(pixels)}, {cells})")
            hidden = mask.sum(dim=1)
            if not bool((hidden == hidden[0]).all()):
                raise ValueError(f"{self.name}: every row of a token mask must hide as many tokens as the first")
            sequences, visible = self.forward_masked_layers(pixels, layers, mask), cells - int(hidden[0])
        for sequence in sequences:
            if sequence.shape[1] != p + visible:
                raise RuntimeError(f"{self.name}: {sequence.shape[1]} tokens, expected {p} prefix + {visible} of "
                                   f"{grid[0]}x{grid[1]}")
        return [Features(s[:, p:], grid, s[:, :p], self.pool(s, pooling), pooling, mask) for s in sequences]

    def forward(self, pixels: torch.Tensor, layer: int | None = None, pooling: str | None = None) -> Features:
        return self.layer_features(pixels, [layer], pooling)[0]

    def cam_reshape(self, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Reshape transform for Grad-CAM++: drops the prefix tokens and lays patch tokens on the true grid."""
        h, w = self.grid_for(height, width)
        p = self.num_prefix_tokens

        def reshape(activation: torch.Tensor) -> torch.Tensor:
            if activation.ndim == 4:
                return activation
            tokens = activation[:, p:]
            return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)

        return reshape

    def weights_digest(self) -> str:
        """A short hash of all parameters and buffers: part of every feature-cache key."""
        return tensor_digest(self.state_dict())

    def describe(self) -> dict:
        """Everything that changes the features except the weights themselves."""
        return {"name": self.name, "class": type(self).__name__, "preprocess": self.preprocess.to_dict(),
                "num_prefix_tokens": self.num_prefix_tokens}
