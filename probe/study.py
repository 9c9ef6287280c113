"""Probing studies behind `harmon probe`, `harmon cam` and `harmon figure2`.

A probe study extracts (cached) features of every encoder on a dataset, sweeps a linear probe (optionally
also scikit-learn's logistic regression and a k-NN probe) and writes `results.json`, `report.md`, the trained
heads and PNG/PDF plots into a run folder. A CAM study trains (or loads) the heads and writes Grad-CAM++ grids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file

from encoders.base import Encoder
from encoders.registry import create_encoder, weights_source
from harmon.checkpoints import cache_dir, save_safetensors
from harmon.utils.files import file_stem, output_dir, write_json
from harmon.utils.runtime import default_workers, rank
from probe import plots
from probe.attentive import AttentiveProbeConfig, attentive_probe
from probe.datasets import (
    ImageFolderDataset,
    LabelledImages,
    balanced_subset,
    check_splits,
    fashion_mnist,
    sklearn_digits,
)
from probe.feature_cache import CachePlan, FeatureCache
from probe.features import ExtractOptions, extract_layer_features
from probe.knn import knn_probe
from probe.linear import (
    LinearProbeConfig,
    LinearProbeHead,
    ProbeSweepConfig,
    predict_logits,
    sklearn_logreg_probe,
    sweep_linear_probe,
)
from probe.metrics import classification_report

DATA_FORMS = "'imagefolder:PATH' (PATH/train/<class>/*, PATH/val/<class>/*), 'fashion-mnist' or 'digits'"


@dataclass
class EncoderSpec:
    """One encoder of a study: registry name, weights source (None: the registry default), a label and builder
    keyword arguments (`create_encoder` options, e.g. image_size)."""

    name: str
    weights: str | None = None
    label: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int | None = None) -> Encoder:
        """The encoder, with seeded random weights for weights="random"."""
        return create_encoder(self.name, self.weights, seed=seed, **self.options)

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def file_name(self) -> str:
        """`title` as a file name (no ':' or '/')."""
        return file_stem(self.title)


@dataclass
class ProbeStudyConfig:
    """Everything a probe study needs; `cache` defaults to $HARMON_CACHE/features."""

    encoders: list[EncoderSpec]
    data: str
    out: str
    cache: str | None = None
    per_class: int | None = None
    check: str = "decode"
    layer: int | None = None
    pooling: str | None = None
    features: str = "pooled"
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)  # up to 4, at most the CPU cores
    device: str | None = None  # "auto" or None: CUDA when available (see `harmon.utils.runtime.resolve_device`)
    dtype: str = "fp32"
    epochs: int = 20
    warmup_epochs: int | None = None  # None: a tenth of the epochs (at least one)
    optimizer: str = "sgd"
    probe_batch_size: int = 256
    base_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    weight_decays: tuple[float, ...] = (0.0, 1e-4)
    knn: bool = False
    sklearn: bool = False
    attentive: bool = False  # also train the attentive probe over the patch tokens (tokens are cached)
    attentive_epochs: int = 20
    attentive_lr: float = 1e-3
    twins: bool = False  # add a random-init twin of every encoder with weights (seeded by `seed`)
    seed: int = 0
    paper_top5: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.encoders:
            raise ValueError("no encoder given; pass at least one --encoder (see `harmon encoders`)")
        titles = [spec.title for spec in self.encoders]
        if len(set(titles)) != len(titles):
            raise ValueError(f"encoder labels must be distinct, got {titles}; pass each encoder once")
        if self.features not in ("pooled", "tokens"):
            raise ValueError(f"features={self.features!r}; use 'pooled' or 'tokens'")
        if self.per_class is not None and self.per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {self.per_class}")

    def arms(self) -> list[EncoderSpec]:
        """The encoders, followed (with `twins`) by a seeded random-init twin of each one that has weights."""
        twins = [EncoderSpec(s.name, "random", f"{s.title} (random)", dict(s.options)) for s in self.encoders
                 if self.twins and s.weights != "random"]
        return [*self.encoders, *twins]

    def cache_root(self) -> Path:

        return Path(self.cache) if self.cache else cache_dir() / "features"


@dataclass
class StudyData:
    """Train and val splits, the balanced subsets used (None: everything) and the files skipped while scanning."""

    name: str
    train: LabelledImages
    val: LabelledImages
    train_subset: np.ndarray | None
    val_subset: np.ndarray | None
    skipped: list[dict[str, str]]

    @property
    def classes(self) -> list[str]:
        return list(self.train.classes)

    def labels(self, split: str) -> np.ndarray:
        dataset, subset = (self.train, self.train_subset) if split == "train" else (self.val, self.val_subset)
        labels = np.asarray(dataset.targets)
        return labels if subset is None else labels[subset]


def load_data(spec: str, per_class: int | None = None, seed: int = 0, check: str = "decode") -> StudyData:
    """Parse a dataset spec (`DATA_FORMS`) and build both splits, with balanced subsets if `per_class`."""

    if spec.startswith("imagefolder:"):
        root = Path(spec.split(":", 1)[1]).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data {spec}: {root} is not a folder; expected {DATA_FORMS}")
        train, val = ImageFolderDataset(root, "train", check=check), ImageFolderDataset(root, "val", check=check)
        check_splits(train, val)
        skipped = [{"path": str(p), "reason": r} for p, r in [*train.skipped, *val.skipped]]
        name = f"imagefolder:{root.resolve()}"
    elif spec == "fashion-mnist":
        train, val, skipped, name = fashion_mnist("train"), fashion_mnist("val"), [], spec
    elif spec == "digits":
        train, val, skipped, name = sklearn_digits("train"), sklearn_digits("val"), [], spec
    else:
        raise ValueError(f"--data {spec!r} is not a dataset spec; use {DATA_FORMS}")

    def subset(dataset: LabelledImages, split: str) -> np.ndarray | None:
        if per_class is None:
            return None
        try:
            return balanced_subset(dataset.targets, per_class, seed)
        except ValueError as error:
            raise ValueError(f"--per-class {per_class} on the {split} split of {spec}: {error}; lower --per-class") from error

    return StudyData(name, train, val, subset(train, "train"), subset(val, "val"), skipped)


def probe_inputs(cache, features: str) -> np.ndarray:
    """[N, D] probe inputs: pooled features, or the patch tokens flattened."""
    if features == "pooled":
        return cache.features
    if cache.tokens is None:
        raise ValueError(f"{cache.path} holds no tokens; extract with tokens=True")
    return cache.tokens.reshape(len(cache.tokens), -1)


def _extract(encoder, data: StudyData, config: ProbeStudyConfig, split: str):
    return extract_split_layers(encoder, data, config, split, [config.layer])[0]


def extract_split_layers(encoder, data: StudyData, config: ProbeStudyConfig, split: str,
                         layers: Sequence[int | None], mask_ratio: float | None = None) -> list[FeatureCache]:
    """The caches of `layers` on one split, filled in one pass; `mask_ratio` hides tokens (seeded by `seed`)."""
    dataset, subset = (data.train, data.train_subset) if split == "train" else (data.val, data.val_subset)
    plan = CachePlan(config.cache_root(), split, pooling=config.pooling, dtype=config.dtype,
                     tokens=config.features == "tokens" or config.attentive, dataset_name=data.name, subset=subset,
                     mask_ratio=mask_ratio, mask_seed=config.seed)
    options = ExtractOptions(batch_size=config.batch_size, num_workers=config.workers, device=config.device)
    return extract_layer_features(encoder, dataset, plan, layers, options)


def linear_scores(train: FeatureCache, val: FeatureCache, config: ProbeStudyConfig, classes: list[str]):
    """The linear-probe sweep on one pair of caches: (inputs (train, val), sweep result, classification report)."""
    train_x, val_x = probe_inputs(train, config.features), probe_inputs(val, config.features)
    sweep = sweep_linear_probe(train_x, train.labels, val_x, val.labels, _sweep_config(config, len(train.labels)))
    report = classification_report(predict_logits(sweep.head, val_x).numpy(), val.labels, classes)
    return (train_x, val_x), sweep, report


def selected_settings(sweep) -> dict[str, Any]:
    """The training settings the sweep selected."""
    chosen = sweep.selected
    return {"base_lr": chosen.base_lr, "weight_decay": chosen.weight_decay, "epochs": chosen.epochs,
            "batch_size": chosen.batch_size, "optimizer": chosen.optimizer}


def _sweep_config(config: ProbeStudyConfig, num_train: int):

    training = LinearProbeConfig(
        epochs=config.epochs,
        warmup_epochs=config.warmup_epochs if config.warmup_epochs is not None else min(config.epochs, max(1, config.epochs // 10)),
        batch_size=min(config.probe_batch_size, max(1, num_train // 2)), optimizer=config.optimizer,
        seed=config.seed, device=config.device,
    )
    return ProbeSweepConfig(base_lrs=config.base_lrs, weight_decays=config.weight_decays, training=training)


def check_layer(encoder: Any, layer: int | None, name: str) -> None:
    """A ValueError naming `--layer` and the valid range when `layer` is not a block of `encoder`."""
    count = encoder.num_layers()
    if layer is not None and not -count <= layer < count:
        raise ValueError(f"--layer {layer}: {name} has {count} block{'s' * (count != 1)}; pass a layer in "
                         f"0..{count - 1} (or -{count}..-1 from the end), or leave --layer out for the final features")


def probe_encoder(spec: EncoderSpec, data: StudyData, config: ProbeStudyConfig, console: Console):
    """Extract, probe and evaluate one encoder; returns (result, head, encoder); result and head are None on
    ranks > 0 of a multi-process launch, which only help extracting."""

    encoder = spec.build(config.seed)
    check_layer(encoder, config.layer, spec.name)
    start = time.perf_counter()
    train, val = _extract(encoder, data, config, "train"), _extract(encoder, data, config, "val")
    extract_s = time.perf_counter() - start
    if rank() != 0:
        return None, None, encoder
    start = time.perf_counter()
    (train_x, val_x), sweep, report = linear_scores(train, val, config, data.classes)
    probe_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "encoder": spec.name, "weights": spec.weights,
        "weights_source": weights_source(spec.name, spec.weights, config.seed),
        "pooling": train.manifest["key"]["pooling"],
        "layer": config.layer, "features": config.features, "dim": int(train_x.shape[1]),
        "weights_digest": train.manifest["key"]["weights"],
        "top1": report["top1"], "top5": report["top5"], "mean_per_class_top1": report["mean_per_class_top1"],
        "per_class_top1": report["per_class_top1"], "confusion": report["confusion"],
        "selected": selected_settings(sweep),
        "sweep": sweep.grid,
        "cache": {"train": train.key_hash, "val": val.key_hash, "train_path": str(train.path), "val_path": str(val.path),
                  "computed": train.stats["computed"] + val.stats["computed"],
                  "reused": train.stats["reused"] + val.stats["reused"]},
        "timings": {"extract_s": extract_s, "probe_s": probe_s},
    }
    if config.sklearn:
        start = time.perf_counter()
        result["sklearn"] = sklearn_logreg_probe(train_x, train.labels, val_x, val.labels)
        result["timings"]["sklearn_s"] = time.perf_counter() - start
    if config.attentive:
        start = time.perf_counter()
        attentive = attentive_probe(train.tokens, train.labels, val.tokens, val.labels, AttentiveProbeConfig(
            epochs=config.attentive_epochs, warmup_epochs=max(1, config.attentive_epochs // 10),
            batch_size=min(config.probe_batch_size, len(train.labels)), lr=config.attentive_lr, seed=config.seed,
            device=config.device))
        result["attentive"] = {"top1": attentive["top1"], "top5": attentive["top5"],
                               "input_dim": attentive["input_dim"], "tokens": attentive["num_tokens"]}
        result["timings"]["attentive_s"] = time.perf_counter() - start
    if config.knn:
        ks = tuple(k for k in (10, 20, 100, 200) if k <= len(train.labels)) or (len(train.labels),)
        start = time.perf_counter()
        knn = knn_probe(train_x, train.labels, val_x, val.labels, ks=ks, device=config.device)
        result["knn"] = {str(k): scores for k, scores in knn.items()}
        result["timings"]["knn_s"] = time.perf_counter() - start
    console.print(f"[bold]{spec.title}[/]: top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} % "
                  f"({train.stats['computed'] + val.stats['computed']} images encoded, "
                  f"{train.stats['reused'] + val.stats['reused']} from cache)")
    return result, sweep.head, encoder


def save_head(head: torch.nn.Module, path: Path, result: dict[str, Any], classes: list[str]) -> None:
    metadata = {"encoder": result["encoder"], "weights_digest": result["weights_digest"], "pooling": result["pooling"],
                "layer": json.dumps(result["layer"]), "features": result["features"], "classes": json.dumps(classes),
                "train_cache": result["cache"]["train"]}
    save_safetensors({k: v.detach().cpu() for k, v in head.state_dict().items()}, path, metadata)


def load_head(path: Path, encoder, config: ProbeStudyConfig, classes: list[str]):
    """A head saved by a probe run, checked against the encoder weights, pooling, layer, features and classes."""


    if not path.exists():
        raise FileNotFoundError(f"no probe head {path}; run `harmon probe` with the same encoders first, "
                                "or drop --heads to train the heads here")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    expected = {"weights_digest": encoder.weights_digest(), "pooling": config.pooling or encoder.default_pooling,
                "layer": json.dumps(config.layer), "features": config.features, "classes": json.dumps(classes)}
    wrong = {k: (metadata.get(k), v) for k, v in expected.items() if metadata.get(k) != v}
    if wrong:
        raise ValueError(f"probe head {path} was trained differently ({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in wrong.items())}); "
                         "use the same options as the probe run or drop --heads")
    state = load_file(str(path))
    head = LinearProbeHead(state["linear.weight"].shape[1], state["linear.weight"].shape[0])
    head.load_state_dict(state)
    return head.eval()


def _data_json(data: StudyData) -> dict[str, Any]:
    return {"spec": data.name, "classes": data.classes, "train_samples": len(data.labels("train")),
            "val_samples": len(data.labels("val")), "skipped_count": len(data.skipped), "skipped": data.skipped}


def _skipped_md(skipped: list[dict[str, str]]) -> str:
    if not skipped:
        return "No files were skipped.\n"
    lines = [f"**{len(skipped)} files skipped** (not images or unreadable):\n"]
    lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped[:50]]
    if len(skipped) > 50:
        lines.append(f"- ... and {len(skipped) - 50} more (all listed in results.json)")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def probe_report(results: dict[str, Any]) -> str:
    """Markdown summary of a probe study."""
    data = results["data"]
    lines = [
        "# Linear probes\n",
        f"Data: `{data['spec']}`, {len(data['classes'])} classes, {data['train_samples']} train / "
        f"{data['val_samples']} val images.\n",
        "| encoder | pooling | dim | top-1 % | top-5 % | paper top-5 % | mean per-class % | sklearn top-1 % | "
        "k-NN top-1 % | base lr | wd | extract s | probe s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["encoders"].items():
        knn = r.get("knn")
        knn_top1 = knn[max(knn, key=int)]["top1"] if knn else None
        lines.append(
            f"| {label} | {r['pooling']} | {r['dim']} | {r['top1']:.2f} | {r['top5']:.2f} | "
            f"{_fmt(results['config']['paper_top5'].get(label))} | {_fmt(r['mean_per_class_top1'])} | "
            f"{_fmt(r.get('sklearn', {}).get('top1'))} | {_fmt(knn_top1)} | {r['selected']['base_lr']} | "
            f"{r['selected']['weight_decay']} | {r['timings']['extract_s']:.1f} | {r['timings']['probe_s']:.1f} |"
        )
    attentive = {label: r["attentive"] for label, r in results["encoders"].items() if "attentive" in r}
    if attentive:
        lines += ["", "Attentive probe (one learned query over the patch tokens, the same budget for every encoder):",
                  "", "| encoder | tokens x dim | top-1 % | top-5 % |", "|---|---|---|---|"]
        lines += [f"| {label} | {a['tokens']} x {a['input_dim']} | {a['top1']:.2f} | {a['top5']:.2f} |"
                  for label, a in attentive.items()]
    lines += ["", "## Weights\n", "| encoder | weights |", "|---|---|"]
    lines += [f"| {label} | {r.get('weights_source', r['weights'])} |" for label, r in results["encoders"].items()]
    lines += ["", "k-NN: the largest k that fits the training set. Figures: `topk.png`, `per_class.png`, "
              "`confusion-<encoder>.png` (PDF beside each).\n", "## Skipped files\n", _skipped_md(data["skipped"])]
    return "\n".join(lines)


def run_probe_study(config: ProbeStudyConfig, console: Console | None = None) -> dict[str, Any] | None:
    """Run the study; returns the results (None on ranks > 0 of a multi-process launch)."""

    console = console or Console()
    out = output_dir(config.out, "--out")
    output_dir(config.cache_root(), "--cache")
    data = load_data(config.data, config.per_class, config.seed, config.check)
    if data.skipped:
        console.print(f"[yellow]skipped {len(data.skipped)} files[/] (listed in results.json and report.md)")
    encoders: dict[str, Any] = {}
    for spec in config.arms():
        result, head, _ = probe_encoder(spec, data, config, console)
        if result is not None:
            save_head(head, out / "heads" / f"{spec.file_name}.safetensors", result, data.classes)
            encoders[spec.title] = result
    if rank() != 0:
        return None
    results = {"config": asdict(config), "data": _data_json(data), "encoders": encoders}
    write_json(out / "results.json", results)
    (out / "report.md").write_text(probe_report(results))
    plots.plot_topk_bars(encoders, out / "topk", config.paper_top5 or None,
                         title=f"Linear probe on {data.name}")
    plots.plot_per_class_heatmap({k: v["per_class_top1"] for k, v in encoders.items()}, out / "per_class")
    for label, r in encoders.items():
        plots.plot_confusion(r["confusion"], data.classes, out / f"confusion-{file_stem(label)}", title=label)
    return results


def pick_images(labels: np.ndarray, count: int) -> np.ndarray:
    """`count` positions cycling through the classes (first of each class, then second, ...)."""
    if count < 1 or count > len(labels):
        raise ValueError(f"--images {count}: choose between 1 and {len(labels)} (the val images available)")
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))[:count]


def run_cam_study(config: ProbeStudyConfig, images: int = 8, heads: str | None = None, cam_batch_size: int = 8,
                  console: Console | None = None, target: str = "logit") -> dict[str, Any] | None:
    """Grad-CAM++ grids of every encoder; see `probe.cam_study.run_cam_study`."""
    from probe.cam_study import run_cam_study as run

    return run(config, images, heads, cam_batch_size, console, target)
