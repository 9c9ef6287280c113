"""torch.compile for sampling: the MAR encoder and decoder blocks and the diffusion head's residual blocks and
output layer, each compiled in place as a module (the decoding and diffusion loops around them stay eager).

The encoder's sequence length and the number of tokens sampled change at every decoding step, so each compiled
part is traced again with dynamic shapes after its first shape change, then reused. torch is imported on first
use, so command-line `--help` can list the modes cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from torch import nn

    from harmon.mar import MAR

CompileChoice = Literal["off", "default", "reduce-overhead", "max-autotune"]
BackendName = Literal["inductor", "aot_eager", "eager"]
COMPILE_CHOICES: tuple[str, ...] = get_args(CompileChoice)
COMPILE_MODES = COMPILE_CHOICES[1:]
COMPILE_BACKENDS: tuple[str, ...] = get_args(BackendName)


def sampling_mar(model: nn.Module) -> MAR:
    """The MAR inside `model`: the model itself, or a Harmon's `mar`."""
    from harmon.mar import MAR

    mar = model if isinstance(model, MAR) else getattr(model, "mar", None)
    if not isinstance(mar, MAR):
        raise TypeError(f"compile_for_sampling takes a MAR or a Harmon; got {type(model).__name__}")
    return mar


def compiled_parts(model: nn.Module) -> list[nn.Module]:
    """The modules `compile_for_sampling` compiles: MAR encoder and decoder blocks, diffusion residual blocks and
    output layer."""
    mar = sampling_mar(model)
    net = mar.diffloss.net
    return [*mar.encoder_blocks, *mar.decoder_blocks, *net.res_blocks, net.final_layer]


def compile_for_sampling(model: nn.Module, mode: str = "default", backend: str = "inductor") -> nn.Module:
    """Compile the MAR blocks and the diffusion head's blocks of a MAR or a Harmon in place; returns `model`.

    `mode` is torch.compile's ("default"; "reduce-overhead": CUDA graphs; "max-autotune"). A `backend` other than
    "inductor" ("aot_eager", "eager") traces the same graphs without generating kernels, for quick checks.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend {backend!r} is not one of {', '.join(COMPILE_BACKENDS)}")
    options = {"backend": backend, "mode": mode} if backend == "inductor" else {"backend": backend}
    for part in compiled_parts(model):
        part.compile(**options)
    return model
