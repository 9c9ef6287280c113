"""Options every benchmark shares: device, dtype and CPU threads."""

from __future__ import annotations

import argparse

import torch


def add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--dtype", default="auto", help="'auto' (bf16 on CUDA, fp32 on CPU), 'fp32' or 'bf16'")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Apply --threads and resolve --device/--dtype."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype
