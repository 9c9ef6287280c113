"""The (layer, mask ratio) conditions a study measures every encoder at: `--layers` and `--mask-ratio`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from encoders.masking import DEFAULT_MASK_RATIOS, check_mask_ratio

ALL_LAYERS = "all"


@dataclass(frozen=True)
class Conditions:
    """layers: "all", block indices (negative from the end), or None for the study's own `layer` only.
    mask_ratios: fractions of the image tokens hidden from MAR-family encoders (`encoders.masking`); empty:
    nothing hidden."""

    layers: tuple[int, ...] | str | None = None
    mask_ratios: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) and self.layers != ALL_LAYERS:
            raise ValueError(f"--layers {self.layers!r}: use 'all' or comma-separated block indices such as 0,4,8,11")
        if self.layers == ():
            raise ValueError("--layers: name at least one block, or 'all'")
        for ratio in self.mask_ratios:
            try:
                check_mask_ratio(ratio)
            except ValueError as error:
                raise ValueError(f"--mask-ratio: {error}") from error

    @classmethod
    def parse(cls, layers: str | None, mask_ratios: str | None) -> Conditions:
        """From the option texts: `--layers all|0,4,8`, `--mask-ratio 0,0.5,0.9|default`."""
        return cls(_parse_layers(layers), _parse_ratios(mask_ratios))

    @property
    def ratios(self) -> tuple[float, ...]:
        """The mask ratios to measure (0 alone when nothing is hidden)."""
        return self.mask_ratios or (0.0,)

    def layers_of(self, encoder: Any, name: str, default: int | None) -> list[int | None]:
        """Absolute block indices of `encoder` (`default` when no layers were asked for); a ValueError naming the
        option for a block the encoder lacks, or for a mask on an encoder that cannot hide tokens."""
        if self.mask_ratios and not encoder.masks_tokens:
            raise ValueError(f"--mask-ratio: {name} cannot hide tokens; token masks are for MAR-family encoders "
                             "(mar-b, mar-l, mar-h, harmon-*-mar)")
        if self.layers is None:
            return [default]
        count = encoder.num_layers()
        if self.layers == ALL_LAYERS:
            return list(range(count))
        bad = [layer for layer in self.layers if not -count <= layer < count]
        if bad:
            raise ValueError(f"--layers {bad[0]}: {name} has {count} block{'s' * (count != 1)}; pass layers in "
                             f"0..{count - 1} (or -{count}..-1 from the end), or 'all'")
        return list(dict.fromkeys(layer % count for layer in self.layers))


def _parse_layers(text: str | None) -> tuple[int, ...] | str | None:
    if text is None:
        return None
    text = text.strip()
    if text == ALL_LAYERS:
        return ALL_LAYERS
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--layers {text!r}: use 'all' or comma-separated block indices such as 0,4,8,11") from None


def _parse_ratios(text: str | None) -> tuple[float, ...]:
    if text is None:
        return ()
    text = text.strip()
    if text == "default":
        return DEFAULT_MASK_RATIOS
    try:
        return tuple(dict.fromkeys(float(part) for part in text.split(",")))
    except ValueError:
        raise ValueError(f"--mask-ratio {text!r}: use comma-separated fractions in [0, 1) such as 0,0.5,0.9, or "
                         "'default' (0,0.25,0.5,0.75,0.9)") from None
