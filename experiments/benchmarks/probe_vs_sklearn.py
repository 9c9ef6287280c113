"""Time the one-pass linear-probe sweep against scikit-learn's LogisticRegression (lbfgs) on the same
pixel features (Fashion-MNIST when available, else scikit-learn digits): each runs once untimed, then the two
take turns for `--repeats` rounds and medians are reported; print a table and write JSON.

    python -m experiments.benchmarks.probe_vs_sklearn --out runs/benchmarks/probe_vs_sklearn.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from experiments.benchmarks.common import (
    add_repeat_options,
    add_threads_option,
    interleave,
    machine,
    set_threads,
)
from harmon.utils.files import write_json
from harmon.utils.runtime import resolve_device
from probe.datasets import (
    ArrayImageDataset,
    DatasetUnavailable,
    balanced_subset,
    fashion_mnist,
    sklearn_digits,
)
from probe.linear import LinearProbeConfig, ProbeSweepConfig, sklearn_logreg_probe, sweep_linear_probe


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["auto", "fashion-mnist", "digits"], default="auto")
    parser.add_argument("--train-per-class", type=int, default=0, help="class-balanced train subset (0: all)")
    parser.add_argument("--val-per-class", type=int, default=0, help="class-balanced val subset (0: all)")
    parser.add_argument("--base-lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 1e-4])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--optimizer", choices=["sgd", "lars"], default="sgd")
    parser.add_argument("--holdout-fraction", type=float, default=0.1)
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation of LogisticRegression")
    parser.add_argument("--max-iter", type=int, default=1000, help="lbfgs iteration limit")
    parser.add_argument("--device", default=None, help="device of the sweep (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/probe_vs_sklearn.json"))
    add_threads_option(parser)
    add_repeat_options(parser)
    return parser.parse_args()


def load_pixels(name: str) -> tuple[str, ArrayImageDataset, ArrayImageDataset]:
    """(dataset name, train, val); "auto" falls back to digits when Fashion-MNIST is unavailable."""
    if name in ("auto", "fashion-mnist"):
        try:
            return "fashion-mnist", fashion_mnist("train"), fashion_mnist("val")
        except DatasetUnavailable:
            if name == "fashion-mnist":
                raise
    return "digits", sklearn_digits("train"), sklearn_digits("val")


def pixel_features(dataset: ArrayImageDataset, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened pixels scaled to [0, 1] and labels, optionally a class-balanced subset."""
    labels = np.asarray(dataset.targets)
    indices = balanced_subset(labels, per_class, seed) if per_class else np.arange(len(labels))
    return dataset.images[indices].reshape(len(indices), -1).astype(np.float32) / 255.0, labels[indices]


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    dataset, train, val = load_pixels(args.dataset)
    train_x, train_y = pixel_features(train, args.train_per_class, args.seed)
    val_x, val_y = pixel_features(val, args.val_per_class, args.seed)
    sweep_config = ProbeSweepConfig(
        base_lrs=tuple(args.base_lrs),
        weight_decays=tuple(args.weight_decays),
        holdout_fraction=args.holdout_fraction,
        training=LinearProbeConfig(
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            seed=args.seed,
            device=args.device,
        ),
    )
    with threadpool_limits(limits=args.threads):
        timings = interleave({
            "sklearn": lambda: sklearn_logreg_probe(train_x, train_y, val_x, val_y, C=args.C, max_iter=args.max_iter),
            "sweep": lambda: sweep_linear_probe(train_x, train_y, val_x, val_y, sweep_config),
        }, args.repeats, resolve_device(args.device), args.warmup)
    reference, sweep = timings.results["sklearn"], timings.results["sweep"]
    sklearn_seconds, sweep_seconds = timings.median("sklearn"), timings.median("sweep")
    report = {
        "dataset": dataset,
        "features": "pixels / 255",
        "train_samples": len(train_y),
        "val_samples": len(val_y),
        "dim": train_x.shape[1],
        "num_classes": len(train.classes),
        "device": str(sweep.head.linear.weight.device),
        "repeats": args.repeats,
        **machine(),
        "sklearn": {"seconds": sklearn_seconds, "timings": timings.spread("sklearn"), "C": args.C,
                    "max_iter": args.max_iter, **reference},
        "sweep": {"seconds": sweep_seconds, "timings": timings.spread("sweep"), "heads": len(sweep.grid),
                  **sweep.to_json(), **sweep.val},
        "speedup": sklearn_seconds / sweep_seconds,
        "top1_difference": sweep.val["top1"] - reference["top1"],
    }
    table = Table(
        title=f"{dataset}: {len(train_y)} train / {len(val_y)} val, {train_x.shape[1]} pixel features, "
              f"medians of {args.repeats} interleaved runs"
    )
    for column in ("solver", "seconds", "spread %", "top-1 %", "top-5 %", "notes"):
        table.add_column(column)
    table.add_row(
        "LogisticRegression (lbfgs)", f"{sklearn_seconds:.2f}", f"{report['sklearn']['timings']['spread_pct']:.1f}",
        f"{reference['top1']:.2f}", f"{reference['top5']:.2f}", f"C={args.C}, {reference['iterations']} iterations",
    )  # fmt: skip
    table.add_row(
        f"sweep ({len(sweep.grid)} heads, one pass)", f"{sweep_seconds:.2f}",
        f"{report['sweep']['timings']['spread_pct']:.1f}", f"{sweep.val['top1']:.2f}", f"{sweep.val['top5']:.2f}",
        f"selected base_lr={sweep.selected.base_lr}, wd={sweep.selected.weight_decay}",
    )  # fmt: skip
    console = Console(width=120)
    console.print(table)
    console.print(
        f"speed-up {report['speedup']:.1f}x, top-1 difference {report['top1_difference']:+.2f} points"
    )
    write_json(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
