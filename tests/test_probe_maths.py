"""Maths and data handling of the probe package: linear/k-NN probes, LARS, CKA, metrics, datasets."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probe.cka import StreamingLinearCKA, linear_cka, streaming_linear_cka
from probe.datasets import (
    DatasetUnavailable,
    ImageFolderDataset,
    SubsetDataset,
    balanced_subset,
    check_splits,
    fashion_mnist,
    sklearn_digits,
)
from probe.knn import knn_probe
from probe.linear import (
    LARS,
    LinearProbeConfig,
    ProbeSweepConfig,
    prepare_features,
    sklearn_logreg_probe,
    sweep_linear_probe,
    train_linear_probe,
    train_stacked_heads,
)
from probe.metrics import classification_report, confusion_matrix, per_class_accuracy, topk_accuracy


def pixel_features(dataset) -> tuple[np.ndarray, np.ndarray]:
    return dataset.images.reshape(len(dataset), -1).astype(np.float32) / 255.0, np.asarray(dataset.targets)


def quick_sweep_config() -> ProbeSweepConfig:
    return ProbeSweepConfig(
        base_lrs=(0.03, 0.1, 0.3, 1.0),
        weight_decays=(0.0, 1e-3),
        holdout_fraction=0.15,
        training=LinearProbeConfig(epochs=20, warmup_epochs=2, batch_size=128, optimizer="sgd", device="cpu"),
    )


# ---------------------------------------------------------------- linear probes


def test_sweep_matches_sklearn_on_digits() -> None:
    train_x, train_y = pixel_features(sklearn_digits("train"))
    val_x, val_y = pixel_features(sklearn_digits("val"))
    reference = sklearn_logreg_probe(train_x, train_y, val_x, val_y, C=1.0, max_iter=1000)
    result = sweep_linear_probe(train_x, train_y, val_x, val_y, quick_sweep_config())
    assert result.val["top1"] >= reference["top1"] - 1.0
    assert len(result.grid) == 8
    assert (result.selected.base_lr, result.selected.weight_decay) in quick_sweep_config().settings()
    json.dumps(result.to_json())


def test_sweep_matches_sklearn_on_fashion_mnist_subset() -> None:
    try:
        train, val = fashion_mnist("train"), fashion_mnist("val")
    except DatasetUnavailable as error:
        pytest.skip(f"Fashion-MNIST not available: {error}")
    train_x, train_y = pixel_features(train)
    val_x, val_y = pixel_features(val)
    train_idx, val_idx = balanced_subset(train_y, 200, seed=0), balanced_subset(val_y, 100, seed=0)
    args = (train_x[train_idx], train_y[train_idx], val_x[val_idx], val_y[val_idx])
    reference = sklearn_logreg_probe(*args, C=1.0, max_iter=1000)
    result = sweep_linear_probe(*args, quick_sweep_config())
    assert result.val["top1"] >= reference["top1"] - 1.0


def test_sweep_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 12)).astype(np.float32), rng.integers(0, 3, 300)
    config = ProbeSweepConfig(
        base_lrs=(0.1, 1.0),
        weight_decays=(0.0,),
        training=LinearProbeConfig(epochs=3, warmup_epochs=1, batch_size=32, optimizer="lars", device="cpu"),
    )
    first, second = sweep_linear_probe(x, y, x, y, config), sweep_linear_probe(x, y, x, y, config)
    assert first.grid == second.grid
    assert torch.equal(first.head.linear.weight, second.head.linear.weight)


def test_lars_scales_matrix_updates_by_trust_ratio_and_leaves_biases_plain() -> None:
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([weight, bias], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    weight.grad = torch.tensor([[0.0, 2.0]])
    bias.grad = torch.tensor([2.0])
    optimizer.step()
    update = torch.tensor([[0.0, 2.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    ratio = 0.01 * 5.0 / update.norm()
    torch.testing.assert_close(weight.data, torch.tensor([[3.0, 4.0]]) - 0.5 * ratio * update)
    torch.testing.assert_close(bias.data, torch.tensor([0.0]))  # no decay, no trust ratio
    weight_before = weight.data.clone()
    weight.grad = torch.zeros_like(weight)
    bias.grad = torch.zeros_like(bias)
    optimizer.step()  # momentum carries the first bias step, decay still drives the weight
    torch.testing.assert_close(bias.data, torch.tensor([0.0 - 0.5 * 0.9 * 2.0]))
    assert not torch.equal(weight.data, weight_before)


def test_lars_takes_no_trust_step_from_zero_weights() -> None:
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = LARS([weight], lr=1.0, momentum=0.0, trust_coefficient=0.001)
    weight.grad = torch.ones(2, 2)
    optimizer.step()
    torch.testing.assert_close(weight.data, -torch.ones(2, 2))  # ratio falls back to 1 for a zero norm


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_stacked_heads_equal_heads_trained_one_by_one(optimizer: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 16)).astype(np.float32) + rng.normal(size=16).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)
    base = LinearProbeConfig(
        epochs=4, warmup_epochs=1, batch_size=32, optimizer=optimizer, seed=3, device="cpu"
    )
    settings = [(0.05, 0.0), (0.5, 1e-2), (2.0, 1e-3)]
    prepared = prepare_features(x, y, torch.device("cpu"))
    stacked = train_stacked_heads(
        prepared, torch.tensor([lr for lr, _ in settings]), torch.tensor([wd for _, wd in settings]), base
    )
    for h, (lr, wd) in enumerate(settings):
        alone = train_linear_probe(
            x, y, LinearProbeConfig(**{**base.__dict__, "base_lr": lr, "weight_decay": wd})
        )
        torch.testing.assert_close(stacked.weight[:, h, :].T, alone.linear.weight.data, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stacked.bias[h], alone.linear.bias.data, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(stacked.weight[:, 0], stacked.weight[:, 1])


def test_probe_head_normalises_with_training_statistics() -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(256, 5)) * 10 + 50).astype(np.float32)
    y = rng.integers(0, 2, 256)
    head = train_linear_probe(x, y, LinearProbeConfig(epochs=1, warmup_epochs=0, batch_size=64, device="cpu"))
    head.train()
    normalised = head.norm(torch.from_numpy(x))
    torch.testing.assert_close(normalised.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.std(0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


def test_bad_probe_inputs_raise_clear_errors() -> None:
    x = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="batch_size 64 exceeds the 10 training samples"):
        train_linear_probe(x, np.zeros(10, dtype=int), LinearProbeConfig(batch_size=64, device="cpu"))
    with pytest.raises(ValueError, match="labels must have shape"):
        train_linear_probe(x, np.zeros(9, dtype=int), LinearProbeConfig(batch_size=2, device="cpu"))
    with pytest.raises(ValueError, match="optimizer must be"):
        LinearProbeConfig(optimizer="adam")  # type: ignore[arg-type]


# ---------------------------------------------------------------- k-NN


def test_knn_recovers_well_separated_clusters_and_weights_votes_by_similarity() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 10
    train_y = np.repeat(np.arange(4), 25)
    train_x = centres[train_y] + rng.normal(scale=0.5, size=(100, 8))
    test_y = np.arange(4).repeat(5)
    test_x = centres[test_y] + rng.normal(scale=0.5, size=(20, 8))
    scores = knn_probe(train_x, train_y, test_x, test_y, ks=(1, 5, 25), device="cpu")
    assert all(scores[k]["top1"] == 100.0 for k in (1, 5, 25))
    assert all(scores[k]["top5"] == 100.0 for k in (1, 5, 25))  # 4 classes: top-5 always holds
    # one very close neighbour of class 1 outvotes two farther ones of class 0 at low temperature
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
    query = np.array([[0.99, 0.14]])
    cold = knn_probe(train, [1, 0, 0], query, [1], ks=(3,), temperature=0.01, device="cpu")
    hot = knn_probe(train, [1, 0, 0], query, [1], ks=(3,), temperature=100.0, device="cpu")
    assert cold[3]["top1"] == 100.0 and hot[3]["top1"] == 0.0


def test_knn_several_k_in_one_pass_equal_separate_runs_and_chunking() -> None:
    rng = np.random.default_rng(1)
    train_x, test_x = rng.normal(size=(300, 16)), rng.normal(size=(70, 16))
    train_y, test_y = rng.integers(0, 7, 300), rng.integers(0, 7, 70)
    together = knn_probe(
        train_x, train_y, test_x, test_y, ks=(1, 5, 20), query_chunk=16, train_chunk=50, device="cpu"
    )
    for k in (1, 5, 20):
        alone = knn_probe(train_x, train_y, test_x, test_y, ks=(k,), device="cpu")
        assert together[k] == alone[k]
    assert together[20] != together[1]


# ---------------------------------------------------------------- CKA


def test_streaming_cka_equals_exact_cka() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 20)) + 3.0
    y = x[:, :10] @ rng.normal(size=(10, 30)) + rng.normal(size=(500, 30))
    exact = linear_cka(x, y)
    streamed = streaming_linear_cka((x[i : i + 64], y[i : i + 64]) for i in range(0, 500, 64))
    assert 0.05 < exact < 0.99
    assert math.isclose(streamed, exact, rel_tol=1e-9)


def test_cka_identity_and_invariances() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 12)), rng.normal(size=(200, 6))
    orthogonal, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert math.isclose(linear_cka(x, x), 1.0, rel_tol=1e-12)
    assert math.isclose(linear_cka(x @ orthogonal, y), linear_cka(x, y), rel_tol=1e-9)
    assert math.isclose(linear_cka(7.5 * x, y), linear_cka(x, y), rel_tol=1e-9)
    assert math.isclose(linear_cka(x + 4.0, y), linear_cka(x, y), rel_tol=1e-9)
    accumulator = StreamingLinearCKA()
    accumulator.update(torch.from_numpy(x), torch.from_numpy(3.0 * x @ orthogonal))
    assert math.isclose(accumulator.compute(), 1.0, rel_tol=1e-9)


def test_cka_rejects_mismatched_and_constant_inputs() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        linear_cka(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2)))
    with pytest.raises(ValueError, match="no batches"):
        StreamingLinearCKA().compute()


# ---------------------------------------------------------------- metrics


def test_metrics_on_a_known_confusion() -> None:
    targets = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    runners_up = np.array([1, 1, 0, 0, 0, 0])
    scores = np.eye(3)[predictions] + 0.1 * np.eye(3)[runners_up]
    expected = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(predictions, targets, 3), expected)
    np.testing.assert_allclose(per_class_accuracy(expected), [200 / 3, 50.0, 100.0])
    accuracy = topk_accuracy(scores, targets, ks=(1, 2, 5))
    assert accuracy["top1"] == pytest.approx(400 / 6)
    assert accuracy["top2"] == pytest.approx(
        500 / 6
    )  # sample 2's label is its runner-up; sample 4 ranks its label last
    assert accuracy["top5"] == 100.0  # fewer than 5 classes: every label is in the top 5
    report = classification_report(torch.from_numpy(scores), targets, class_names=["a", "b", "c"])
    assert json.loads(json.dumps(report))["confusion"] == expected.tolist()
    assert report["per_class_top1"]["b"] == 50.0


def test_top5_counts_only_the_five_best_of_many_classes() -> None:
    scores = np.tile(np.arange(10.0)[::-1], (2, 1))  # class 0 best ... class 9 worst
    assert topk_accuracy(scores, np.array([4, 5]))["top5"] == 50.0
    assert topk_accuracy(np.zeros((1, 10)), np.array([3]))["top1"] == 0.0  # ties go to the lower index


def test_absent_classes_are_null_in_the_report() -> None:
    report = classification_report(np.eye(3)[[0, 1]], np.array([0, 1]))
    assert report["per_class_top1"]["2"] is None
    with pytest.raises(ValueError, match="targets must lie in"):
        topk_accuracy(np.eye(3), np.array([0, 1, 3]))


# ---------------------------------------------------------------- datasets


def write_image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), colour).save(path)


def test_image_folder_skips_and_reports_bad_files(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "cat" / "a.png", (255, 0, 0))
    write_image(tmp_path / "train" / "cat" / "b.jpg", (0, 255, 0))
    write_image(tmp_path / "train" / "dog" / "c.png", (0, 0, 255))
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("hello")
    truncated = (tmp_path / "train" / "cat" / "a.png").read_bytes()[:-30]
    (tmp_path / "train" / "cat" / "truncated.png").write_bytes(truncated)
    dataset = ImageFolderDataset(tmp_path, "train")
    assert dataset.classes == ["cat", "dog"]
    assert dataset.targets == [0, 0, 1]
    assert sorted(p.name for p, _ in dataset.skipped) == ["broken.jpg", "notes.txt", "truncated.png"]
    reasons = dict((p.name, r) for p, r in dataset.skipped)
    assert "not an image" in reasons["notes.txt"] and "unreadable" in reasons["broken.jpg"]
    image, label = dataset[2]
    assert image.mode == "RGB" and image.size == (6, 5) and label == 1


def test_image_folder_rejects_empty_class_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "cat" / "a.png", (1, 2, 3))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty.* is empty"):
        ImageFolderDataset(tmp_path, "train")
    (tmp_path / "train" / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=r"without a readable image: .*empty"):
        ImageFolderDataset(tmp_path, "train")


def test_check_splits_names_mismatched_classes(tmp_path: Path) -> None:
    for split, classes in (
        ("train", ["cat", "dog", "fox"]),
        ("val", ["cat", "dog"]),
        ("odd", ["cat", "dog", "fox", "owl"]),
    ):
        for name in classes:
            write_image(tmp_path / split / name / "x.png", (9, 9, 9))
    train, val, odd = (ImageFolderDataset(tmp_path, s) for s in ("train", "val", "odd"))
    with pytest.raises(ValueError, match=r"classes missing from val: \['fox'\]"):
        check_splits(train, val)
    with pytest.raises(ValueError, match=r"val has classes missing from train: \['owl'\]"):
        check_splits(train, odd)
    check_splits(train, train)


def test_balanced_subset_is_balanced_and_deterministic() -> None:
    labels = np.random.default_rng(0).integers(0, 5, 1000)
    first, again = balanced_subset(labels, 30, seed=7), balanced_subset(labels, 30, seed=7)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(np.bincount(labels[first]), [30] * 5)
    assert len(np.unique(first)) == 150
    assert not np.array_equal(first, balanced_subset(labels, 30, seed=8))
    with pytest.raises(ValueError, match="fewer than per_class"):
        balanced_subset(labels, 1000, seed=0)
    subset = SubsetDataset(sklearn_digits("val"), balanced_subset(sklearn_digits("val").targets, 3, seed=0))
    assert len(subset) == 30 and np.bincount(subset.targets).tolist() == [3] * 10
    assert subset[0][0].mode == "RGB" and subset[0][1] == subset.targets[0]


def test_digits_split_is_stratified_and_disjoint() -> None:
    train, val = sklearn_digits("train"), sklearn_digits("val")
    assert len(train) + len(val) == 1797
    assert abs(len(val) - 0.2 * 1797) <= 10
    assert set(np.unique(val.targets)) == set(range(10))
    image, _ = val[0]
    assert image.size == (8, 8) and image.mode == "RGB" and train.images.max() == 255


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_and_explains_missing_ones(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 0, 4]))
    dataset = fashion_mnist("val", root=tmp_path)
    assert len(dataset) == 3 and dataset.targets == [9, 0, 4] and dataset.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(dataset.images, images)
    image, label = dataset[0]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 9
    with pytest.raises(DatasetUnavailable, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path)
