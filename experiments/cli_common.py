"""What the `harmon` commands share: the app that turns a bad input into one line and exit code 2,
`--device` / `--dtype` parsing and the sampling commands' `--compile` / `--autocast` options (torch is imported
on first use, so `--help` stays fast)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from harmon.compile import BackendName, CompileChoice, compile_for_sampling

if TYPE_CHECKING:
    import torch
    from torch import nn

ALL_DTYPES = ("fp32", "bf16", "fp16")

CompileMode = Annotated[CompileChoice, typer.Option(
    "--compile",
    help="torch.compile the MAR blocks and the diffusion head before sampling, with this mode ('reduce-overhead' "
         "uses CUDA graphs); the first images take longer while it compiles.")]
CompileBackend = Annotated[BackendName, typer.Option(
    help="torch.compile backend; 'aot_eager' and 'eager' only trace (quick checks, no speed-up).")]
Autocast = Annotated[bool, typer.Option(
    help="Sample under bf16 autocast, the weights staying in --dtype (meant for CUDA).")]


def compiled_for_sampling(model: nn.Module, mode: str, backend: str) -> nn.Module:
    """`model` with its sampling networks compiled (`harmon.compile`), or as it is when `mode` is 'off'."""
    return model if mode == "off" else compile_for_sampling(model, mode, backend)


def device_and_dtype(device: str, dtype: str, allowed: tuple[str, ...] = ALL_DTYPES) -> tuple[torch.device, torch.dtype]:
    """`--device` ('auto', 'cpu', 'cuda', 'cuda:N') and `--dtype` (a name in `allowed`), or a clear usage error."""
    from harmon.utils.runtime import dtype_by_name, resolve_device

    try:
        return resolve_device(device), dtype_by_name(dtype, allowed)
    except (ValueError, RuntimeError) as err:
        raise typer.BadParameter(str(err)) from err


# Errors whose message names the bad input and its fix: (module, class). A class counts only once its module was
# imported by the command, so that reporting an error never imports torch.
FIXABLE_ERRORS = (
    ("harmon.checkpoints", "CheckpointError"),
    ("harmon.utils.strict_yaml", "ConfigError"),
    ("harmon.utils.files", "DiskFull"),
    ("harmon.utils.files", "PathError"),
    ("probe.datasets", "DatasetUnavailable"),
    ("harmon.geneval_rules", "MetadataError"),
)


def fixable_message(error: BaseException) -> str | None:
    """The message of an error the user can fix, on one line; None for any other error (a bug: traceback)."""
    kinds = tuple(getattr(sys.modules[module], name) for module, name in FIXABLE_ERRORS if module in sys.modules)
    if not isinstance(error, kinds):
        return None
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def error_line(error: BaseException) -> str:
    """`error: <message>` on one line, with rich markup in the message escaped (for `Console.print`)."""
    from rich.markup import escape

    return f"[red]error:[/] {escape(' '.join(str(error).split()))}"


class HarmonApp(typer.Typer):
    """A Typer app that reports a fixable error as `error: <one line>` on stderr with exit code 2."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:
            message = fixable_message(error)
            if message is None:
                raise
            typer.echo(f"error: {message}", err=True)
            raise SystemExit(2) from None
