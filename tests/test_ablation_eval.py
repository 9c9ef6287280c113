"""Ablation tooling: encoders plugged into a tiny Harmon, ShapesWorld and public-benchmark scoring on known
predictions, and the Table 5 / Figure 6 reports."""

from __future__ import annotations

import copy
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.adapters.pixels import PixelEncoder
from encoders.base import Preprocess
from encoders.harmon_seam import EncoderTokens, plug_encoder
from encoders.registry import get_entry
from experiments.ablations.benchmarks import (
    SHORT_ANSWER,
    load_gqa,
    load_mme,
    load_pope,
    mme_answer,
    run_benchmark,
    score_gqa,
    score_mme,
    score_pope,
    subsample,
)
from experiments.ablations.evaluate import (
    evaluate_generation,
    evaluate_understanding,
    generation_prompts,
    qa_eval_set,
    score_answers,
    score_generations,
)
from experiments.ablations.mini_model import paper_encoder
from experiments.ablations.report import (
    plot_figure6,
    plot_table5,
    table5_csv,
    table5_markdown,
    table5_measurements,
)
from experiments.paper import PAPER_ENCODERS, PAPER_TABLE5
from experiments.pretrain.data import StreamConfig
from experiments.pretrain.zoo import scale_preset, tiny_encoders
from harmon.prompts import preprocess_image
from harmon.shapesworld import ShapesWorldConfig, render_scene, scene_for_prompt
from harmon.tiny import tiny_harmon

IMAGENET = Preprocess(image_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, EncoderTokens]:
    """The four mini-Figure-2 encoders, pretrained for two steps on a small stream."""
    preset = scale_preset("micro")

    def short(config):
        return replace(config, optim=replace(config.optim, steps=2, warmup=1), data=StreamConfig(shapes=16, fashion=0))

    preset = replace(preset, vae=short(preset.vae), vqgan=short(preset.vqgan), mar=short(preset.mar),
                     siglip=short(preset.siglip))
    root = tmp_path_factory.mktemp("ablation-encoders")
    first = tiny_encoders(preset, root)
    again = tiny_encoders(preset, root)
    for label, wrapped in first.items():
        assert wrapped.encoder.weights_digest() == again[label].encoder.weights_digest(), label
    return first


@pytest.fixture(scope="module")
def harmon():
    return tiny_harmon(seed=0)


def pixel_tokens(preprocess: Preprocess) -> EncoderTokens:
    encoder = PixelEncoder(image_size=preprocess.image_size, patch=1)
    encoder.preprocess = preprocess
    return EncoderTokens(encoder)


# ------------------------------------------------------------------------------------------------ encoder bridge


def test_tiny_encoders_match_their_own_preprocessing(encoders):
    assert list(encoders) == ["SigLIP", "VQGAN", "VAE", "MAR"]
    image = render_scene(scene_for_prompt(generation_prompts(1, 0)[3].spec, 0)).image
    for label, wrapped in encoders.items():
        own = wrapped.encoder.forward_sequence(wrapped.encoder.preprocess(image)[None])
        tokens = wrapped(preprocess_image(image, 64)[None])
        assert tokens.shape == own.shape and tokens.shape[-1] == wrapped.embed_dim, label
        torch.testing.assert_close(tokens, own, atol=1e-5, rtol=1e-5)
    assert encoders["MAR"](torch.zeros(2, 3, 64, 64)).shape[1] == encoders["MAR"].encoder.num_prefix_tokens + 64


def test_pixels_are_renormalised_resized_and_cropped():
    colour = torch.tensor([0.8, -0.2, 0.4]).view(1, 3, 1, 1)
    tokens = pixel_tokens(IMAGENET)(colour.expand(2, 3, 64, 64))  # 64 px from Harmon, 32 px for the encoder
    expected = ((colour.flatten() + 1) / 2 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    assert tokens.shape == (2, 32 * 32, 3)
    torch.testing.assert_close(tokens, expected.expand(2, 32 * 32, 3))
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    cropped = pixel_tokens(Preprocess(image_size=32, crop="center", crop_pct=0.5))(pixels)
    torch.testing.assert_close(cropped, pixels[..., 16:48, 16:48].flatten(2).transpose(1, 2), atol=1e-5, rtol=0)


def test_frozen_encoder_stays_frozen_and_trainable_one_learns(encoders):
    for trainable in (False, True):
        encoder = copy.deepcopy(encoders["SigLIP"].encoder)
        model = plug_encoder(tiny_harmon(seed=1), EncoderTokens(encoder, trainable=trainable))
        model.train()
        assert encoder.training is trainable and model.understanding.proj.training
        model.visual_features(torch.rand(2, 3, 64, 64) * 2 - 1).square().mean().backward()
        used = {name: p for name, p in encoder.named_parameters() if "attn_pool" not in name}  # forward_sequence's
        assert used and all(p.requires_grad is trainable and (p.grad is not None) is trainable for p in used.values())
        assert all(p.grad is not None for p in model.understanding.proj.parameters())


def test_plugged_encoder_answers_questions(encoders):
    model = plug_encoder(tiny_harmon(seed=0), encoders["MAR"])
    features = model.visual_features(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, 64 + encoders["MAR"].encoder.num_prefix_tokens, model.config.llm.hidden_size)
    items = qa_eval_set(ShapesWorldConfig(), seed=0, count=4)
    result = evaluate_understanding(model, items, batch_size=4, max_new_tokens=3)
    assert result["count"] == 4 and len(result["predictions"]) == 4


def test_paper_encoders_resolve_in_the_registry():
    families = {label: get_entry(name).family for label, name in PAPER_ENCODERS.items()}
    assert families == {"SigLIP": "siglip", "VQGAN": "vqgan", "VAE": "vae", "MAR": "mar"}
    assert paper_encoder("pixels", image_size=32, patch=4).embed_dim == 3
    with pytest.raises(ValueError, match="unknown encoder"):
        paper_encoder("CLIP")


# ------------------------------------------------------------------------------------------------ ShapesWorld QA


def test_qa_eval_set_is_deterministic_and_balanced():
    config = ShapesWorldConfig()
    items = qa_eval_set(config, seed=3, count=40)
    again = qa_eval_set(config, seed=3, count=40)
    key = [(i["scene"], i["question"], i["answer"], i["kind"]) for i in items]
    assert key == [(i["scene"], i["question"], i["answer"], i["kind"]) for i in again]
    assert np.array_equal(np.asarray(items[0]["image"]), np.asarray(again[0]["image"]))
    assert key != [(i["scene"], i["question"], i["answer"], i["kind"]) for i in qa_eval_set(config, 4, 40)]
    kinds = [i["kind"] for i in items]
    assert {k: kinds.count(k) for k in set(kinds)} == {"existence": 8, "color": 8, "count": 8, "position": 8,
                                                       "shape": 8}
    for kind in ("existence", "position"):
        assert [i["answer"] for i in items if i["kind"] == kind].count("yes") == 4
    assert {i["pope_split"] for i in items if i["kind"] == "existence"} == {"random", "popular", "adversarial"}
    only = qa_eval_set(config, seed=3, count=5, kinds=["color"])
    assert [i["kind"] for i in only] == ["color"] * 5
    with pytest.raises(ValueError, match="position"):
        qa_eval_set(ShapesWorldConfig(max_objects=1), seed=0, count=2, kinds=["position"])
    hard = qa_eval_set(ShapesWorldConfig(min_objects=2, max_objects=3), seed=3, count=60, kinds=["existence"],
                       negatives=["popular", "adversarial"])
    assert {i["pope_split"] for i in hard} == {"popular", "adversarial"}
    assert {i["negative_strategy"] for i in hard if i["answer"] == "no"} <= {"popular", "adversarial"}
    with pytest.raises(ValueError, match="negative strategy"):
        qa_eval_set(config, seed=3, count=4, negatives=["rare"])


def test_score_answers_on_known_predictions():
    items = [{"kind": "existence", "answer": "yes", "pope_split": "random"},
             {"kind": "existence", "answer": "no", "pope_split": "random"},
             {"kind": "existence", "answer": "yes", "pope_split": "adversarial"},
             {"kind": "existence", "answer": "no", "pope_split": "adversarial"},
             {"kind": "color", "answer": "red"}, {"kind": "count", "answer": "2"}]
    perfect = score_answers(items, ["Yes.", "No, there is not.", "yes", "no", "Red", "two"])
    assert perfect["accuracy"] == 1.0 and set(perfect["per_kind"].values()) == {1.0}
    assert perfect["correct"] == [1] * 6
    assert perfect["pope"] == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5}
    mixed = score_answers(items, ["yes", "yes", "no", "no", "blue", "2"])
    assert mixed["accuracy"] == pytest.approx(3 / 6) and mixed["correct"] == [1, 0, 0, 1, 0, 1]
    assert mixed["per_kind"] == {"existence": 0.5, "color": 0.0, "count": 1.0}
    assert mixed["pope"] == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5}
    assert mixed["pope_splits"]["random"]["yes_ratio"] == 1.0 and mixed["pope_splits"]["adversarial"]["recall"] == 0
    with pytest.raises(ValueError, match="predictions"):
        score_answers(items, ["yes"])


def test_evaluate_understanding_on_tiny_harmon_is_deterministic(harmon):
    items = qa_eval_set(ShapesWorldConfig(), seed=0, count=8)
    first = evaluate_understanding(harmon, items, batch_size=3, max_new_tokens=4)
    again = evaluate_understanding(harmon, items, batch_size=8, max_new_tokens=4)
    assert first["predictions"] == again["predictions"] and first["accuracy"] == again["accuracy"]
    assert set(first["per_kind"]) == {"existence", "color", "count", "position", "shape"}
    assert 0 <= first["accuracy"] <= 1
    assert first == {**score_answers(items, first["predictions"]), "predictions": first["predictions"]}
    assert not harmon.training


# ------------------------------------------------------------------------------------------------ generation


def test_score_generations_perfect_and_empty_images():
    prompts = generation_prompts(2, seed=1)
    specs = [p.spec for p in prompts]
    rendered = [render_scene(scene_for_prompt(spec, i)).image for i, spec in enumerate(specs)]
    perfect = score_generations(specs, rendered)
    assert perfect["overall"] == 1.0 and len(perfect["per_category"]) == 6 and perfect["count"] == 12
    for fill in ((0, 0, 0), (245, 245, 245)):  # empty, and one palette colour everywhere (no background left)
        blank = score_generations(specs, [Image.new("RGB", (64, 64), fill)] * len(specs))
        assert blank["overall"] == 0.0 and all(not r["correct"] and r["reason"] for r in blank["results"])


def test_evaluate_generation_is_seeded_and_saves_images(harmon, tmp_path):
    prompts = generation_prompts(1, seed=0, categories=("single_object", "colors", "two_object"))
    runs = [evaluate_generation(harmon, prompts, steps=2, seed=seed, batch_size=2, out_dir=tmp_path / name)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    assert runs[0] == runs[1] and set(runs[0]["per_category"]) == {"single_object", "colors", "two_object"}
    files = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert files == ["0000-single_object.png", "0001-colors.png", "0002-two_object.png"]
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files]
    other = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes() for f in files]
    assert all(same) and not all(other)
    lines = [json.loads(line) for line in (tmp_path / "a" / "scores.jsonl").read_text().splitlines()]
    assert [line["correct"] for line in lines] == [r["correct"] for r in runs[0]["results"]]


# ------------------------------------------------------------------------------------------------ benchmarks


def picture(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def pope_files(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "val2014"
    picture(images / "COCO_1.jpg", (200, 0, 0))
    picture(images / "COCO_2.png", (0, 200, 0))
    for split, labels in (("random", "yes yes no no"), ("adversarial", "yes no yes no")):
        write_lines(tmp_path / "pope" / f"coco_pope_{split}.json", [
            json.dumps({"question_id": n, "image": f"COCO_{1 + n % 2}.jpg", "text": f"Is there a thing {n}?",
                        "label": label}) for n, label in enumerate(labels.split())])
    return tmp_path / "pope", images


def test_pope_reader_and_scorer(pope_files):
    items = load_pope(*pope_files)
    assert len(items) == 8 and [i["split"] for i in items] == ["adversarial"] * 4 + ["random"] * 4
    assert items[0]["question"] == f"Is there a thing 0?\n{SHORT_ANSWER}" and items[1]["image"].name == "COCO_2.png"
    predictions = ["yes", "no", "yes", "no", "Yes", "no", "No, there is not.", "yes"]
    scores = score_pope(items, predictions)
    assert scores["splits"]["adversarial"]["f1"] == 1.0 and scores["splits"]["random"]["f1"] == 0.5
    assert scores["accuracy"] == scores["precision"] == scores["recall"] == scores["f1"] == 0.75
    assert scores["yes_ratio"] == 0.5 and scores["score"] == 75.0
    assert len(load_pope(pope_files[0] / "coco_pope_random.json", pope_files[1])) == 4


@pytest.fixture
def mme_root(tmp_path) -> Path:
    root = tmp_path / "MME_Benchmark_release_version"
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        picture(root / "existence" / f"{name}.png", colour)
        write_lines(root / "existence" / f"{name}.txt", [f"Is there a {name}? Please answer yes or no.\tYes",
                                                         f"Is there no {name}? Please answer yes or no.\tNo"])
    picture(root / "artwork" / "images" / "c.jpg", (9, 9, 9))
    write_lines(root / "artwork" / "questions_answers_YN" / "c.txt", ["Is it old?\tYes", "Is it new?\tNo"])
    picture(root / "code_reasoning" / "d.png", (1, 2, 3))
    write_lines(root / "code_reasoning" / "d.txt", ["Prints 1?\tNo", "Prints 2?\tYes"])
    return root


def test_mme_reader_and_scorer(mme_root, tmp_path):
    items = load_mme(mme_root)
    assert [(i["category"], i["image"].name, i["answer"]) for i in items] == [
        ("existence", "a.png", "yes"), ("existence", "a.png", "no"), ("existence", "b.png", "yes"),
        ("existence", "b.png", "no"), ("artwork", "c.jpg", "yes"), ("artwork", "c.jpg", "no"),
        ("code_reasoning", "d.png", "no"), ("code_reasoning", "d.png", "yes")]
    assert [mme_answer(r) for r in ("Yes, it is.", "no", "I think yes", "NO.")] == ["yes", "no", "other", "no"]
    predictions = ["Yes, it is.", "No", "yes", "yes", "I think yes", "I think no", "no", "Yes"]
    scores = score_mme(items, predictions)
    assert scores["categories"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4}
    assert scores["categories"]["artwork"]["score"] == 0.0 and scores["categories"]["code_reasoning"]["score"] == 200
    assert scores["perception"] == 125.0 and scores["cognition"] == 200.0 and "OCR" in scores["missing"]
    write_lines(tmp_path / "tool" / "existence.txt", ["a.png\tIs there a a? Please answer yes or no.\tYes",
                                                      "a.png\tIs there no a? Please answer yes or no.\tNo"])
    write_lines(tmp_path / "tool" / "artwork.txt", ["c.jpg\tIs it old?\tYes"])
    tool = load_mme(tmp_path / "tool", mme_root)
    release = {(i["category"], i["question"]): i for i in items}
    for item in tool:
        twin = release[(item["category"], item["question"])]
        assert (item["answer"], item["image"], item["image_name"]) == (twin["answer"], twin["image"], twin["image_name"])
    assert [i["image"] for i in tool] == [mme_root / "artwork/images/c.jpg", mme_root / "existence/a.png",
                                          mme_root / "existence/a.png"]
    paired = subsample(items, 4, lambda i: (i["category"], i["image_name"]))
    assert [i["image_name"] for i in paired] == ["a.png", "a.png", "d.png", "d.png"]


def test_gqa_reader_and_scorer(tmp_path):
    picture(tmp_path / "images" / "n1.jpg", (10, 20, 30))
    picture(tmp_path / "images" / "n2.jpg", (30, 20, 10))
    questions = {"q1": {"imageId": "n1", "question": "Is it red?", "answer": "yes"},
                 "q2": {"imageId": "n2", "question": "Which side is the cup on?", "answer": "left"},
                 "q3": {"imageId": "n1", "question": "What colour is the wall?", "answer": "white"}}
    (tmp_path / "gqa").mkdir()
    (tmp_path / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    items = load_gqa(tmp_path / "gqa", tmp_path / "images")
    assert [i["id"] for i in items] == ["q1", "q2", "q3"] and items[1]["image"] == tmp_path / "images" / "n2.jpg"
    assert items[2]["question"] == f"What colour is the wall?\n{SHORT_ANSWER}"
    scores = score_gqa(items, ["Yes.", "The left", "black"])
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["score"] == pytest.approx(200 / 3)


def test_missing_benchmark_files_name_the_path_and_layout(tmp_path, pope_files):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*expected.*question_id"):
        load_pope(tmp_path / "nowhere", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"testdev_balanced_questions\.json does not exist"):
        load_gqa(tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="questions_answers_YN"):
        load_mme(tmp_path / "MME")
    with pytest.raises(FileNotFoundError, match="COCO_1"):
        load_pope(pope_files[0], tmp_path / "pope")


def test_run_benchmark_on_tiny_harmon(harmon, pope_files):
    result = run_benchmark(harmon, "pope", *pope_files, limit=4, batch_size=3, max_new_tokens=3)
    assert result["count"] == 4 and set(result["splits"]) == {"adversarial", "random"}
    assert len(result["predictions"]) == 4 and 0 <= result["score"] <= 100
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_benchmark(harmon, "vqav2", *pope_files)


# ------------------------------------------------------------------------------------------------ reports


def test_table5_markdown_csv_and_plot(tmp_path):
    measured = {"MAR": {"POPE": 61.25, "GQA": 40.0}, "VAE": {"POPE": 55.0}, "pixels": {"POPE": 50.0}}
    markdown = table5_markdown(measured)
    for number in ("1203", "86.1", "83.1", "35.2", "61.2", "55.0", "67.3"):
        assert number in markdown, number
    header = markdown.splitlines()[0]
    assert header.startswith("| # | Encoder | Acc↑ paper | POPE↑ paper | POPE↑ measured |")
    assert "MME-P↑ measured" not in header and "GQA↑ measured" in header
    assert markdown.splitlines()[5].startswith("| 4 | MAR | 83.1 | 86.1 | 61.2 | 1123 |")
    assert markdown.splitlines()[6].startswith("| 5 | pixels | – | – | 50.0 |")
    rows = list(csv.DictReader(io.StringIO(table5_csv(measured))))
    assert [r["encoder"] for r in rows] == ["SigLIP", "VQGAN", "VAE", "MAR", "pixels"]
    assert float(rows[3]["POPE measured"]) == 61.25 and float(rows[0]["MME-P paper"]) == 1203
    assert rows[0]["POPE measured"] == "" and PAPER_TABLE5["VAE"]["MME-C"] == 223
    row = table5_measurements({"pope": {"score": 80.0}, "mme": {"perception": 900.0, "cognition": 250.0}})
    assert row == {"POPE": 80.0, "MME-P": 900.0, "MME-C": 250.0}
    for path in plot_table5(measured, tmp_path / "table5"):
        assert path.stat().st_size > 0
    assert {p.suffix for p in tmp_path.glob("table5.*")} == {".png", ".pdf"}


def synergy_curves() -> dict:
    steps = [0, 100, 200]
    return {"und-only": {"step": steps, "understanding": [0.3, 0.5, 0.60]},
            "gen-only": {"step": steps, "generation": [0.1, 0.2, 0.30]},
            "unified": {"step": steps, "understanding": [0.3, 0.5, 0.61], "generation": [0.1, 0.3, 0.45]},
            "decoupled": {"step": steps, "understanding": [0.3, 0.55, 0.70], "generation": [0.1, 0.2, 0.31]}}


def test_figure6_plot_skips_missing_series(tmp_path):
    curves = synergy_curves()
    curves["unified"]["generation"] = [[0.1, 0.3, 0.45], [0.1, 0.25, 0.4]]
    written = plot_figure6(curves, tmp_path / "figure6")
    assert sorted(p.name for p in written) == ["figure6.pdf", "figure6.png"]
    assert all(p.stat().st_size > 0 for p in written)
    with pytest.raises(ValueError, match="steps"):
        plot_figure6({"unified": {"step": [0, 1], "generation": [0.1, 0.2, 0.3]}}, tmp_path / "bad")
