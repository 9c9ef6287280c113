"""ShapesWorld: determinism, exact ground truth, captions/QA, evaluators and export."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from harmon.shapesworld import (
    CATEGORIES,
    COLORS,
    SHAPES,
    PromptObject,
    PromptSpec,
    QAPair,
    Scene,
    ShapeObject,
    ShapesWorld,
    ShapesWorldConfig,
    applicable_categories,
    describe_scene,
    export_image_folder,
    export_jsonl,
    generate_prompts,
    prompt_text,
    questions_for_scene,
    read_jsonl,
    relation,
    render_scene,
    sample_scene,
    scene_for_prompt,
)
from harmon.shapesworld.evaluate import (
    DetectedObject,
    detect_objects,
    normalize_answer,
    pope_scores,
    qa_accuracy,
    score_image,
    summarize,
    to_yes_no,
)
from harmon.shapesworld.geometry import outline
from harmon.shapesworld.sampling import place_centers
from harmon.shapesworld.scene import is_clear_relation
from probe.localisation import cam_energy_in_mask, pointing_game

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def area_and_perimeter(points: list[tuple[float, float]]) -> tuple[float, float]:
    corners = np.array(points)
    xs, ys = corners.T
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    return area, float(np.linalg.norm(corners - np.roll(corners, 1, axis=0), axis=1).sum())


# --- scenes and rendering ---------------------------------------------------------------------------------


def test_same_seed_same_scene_and_pixels_different_seed_differs():
    config = ShapesWorldConfig(image_size=96, texture=True, clutter=True)
    first, again, other = sample_scene(7, config), sample_scene(7, config), sample_scene(8, config)
    assert first == again
    assert np.array_equal(pixels(render_scene(first).image), pixels(render_scene(again).image))
    assert first != other
    assert not np.array_equal(pixels(render_scene(first).image), pixels(render_scene(other).image))


def test_dataset_item_depends_only_on_seed_and_index():
    config = ShapesWorldConfig(image_size=64)
    dataset = ShapesWorld(config, seed=3, length=5)
    backwards = [dataset.scene(i) for i in reversed(range(5))][::-1]
    assert backwards == [ShapesWorld(config, seed=3).scene(i) for i in range(5)]
    assert [item.scene for item in dataset] == backwards
    assert np.array_equal(pixels(dataset[2].image), pixels(ShapesWorld(config, seed=3)[2].image))
    assert ShapesWorld(config, seed=4).scene(0) != dataset.scene(0)
    assert len(dataset) == 5
    with pytest.raises(IndexError):
        dataset[5]
    with pytest.raises(TypeError):
        len(ShapesWorld(config))


def test_masks_and_boxes_match_the_pixels():
    config = ShapesWorldConfig(image_size=128, min_objects=2)
    for seed in range(20):
        rendered = render_scene(sample_scene(seed, config))
        image = pixels(rendered.image)
        assert rendered.masks.shape == (len(rendered.scene.objects), 128, 128)
        assert not (rendered.masks.sum(axis=0) > 1).any(), "masks overlap"
        background = np.array(rendered.scene.background)
        for i, (obj, mask, box) in enumerate(
            zip(rendered.scene.objects, rendered.masks, rendered.boxes, strict=True)
        ):
            # Coverage read back from the pixel colours is at least 1/2 exactly inside the mask.
            direction = np.array(COLORS[obj.color]) - background
            coverage = (image - background) @ direction / (direction @ direction)
            others = ndimage.binary_dilation(np.delete(rendered.masks, i, axis=0).any(axis=0), iterations=3)
            ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & ~others
            assert coverage[mask].min() > 0.49 and coverage[ring].max() < 0.51
            ys, xs = np.nonzero(mask)
            assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # Thresholding coverage at 1/2 moves the outline by at most half a pixel.
            area, perimeter = area_and_perimeter(outline(obj.shape, obj.center, obj.radius))
            assert abs(mask.sum() - area) < 0.5 * perimeter
        # Anti-aliased slivers at sharp tips reach up to ~2 px beyond the half-coverage mask.
        outside = ~ndimage.binary_dilation(rendered.masks.any(axis=0), iterations=3)
        assert (image[outside] == rendered.scene.background).all()


def test_objects_stay_inside_the_image_without_overlap():
    for size in (32, 64, 256):
        config = ShapesWorldConfig(image_size=size, min_objects=4)
        for seed in range(30):
            objects = sample_scene(seed, config).objects
            assert len(objects) == 4
            for i, a in enumerate(objects):
                assert a.radius <= min(a.center) and max(a.center) <= size - a.radius
                for b in objects[i + 1 :]:
                    assert (
                        np.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1]) > a.radius + b.radius
                    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ShapesWorldConfig(image_size=31), "image size"),
        (lambda: ShapesWorldConfig(image_size=257), "image size"),
        (lambda: ShapesWorldConfig(shapes=("circle", "oval")), "oval"),
        (lambda: ShapesWorldConfig(colors=("red", "magenta")), "magenta"),
        (lambda: ShapesWorldConfig(min_objects=3, max_objects=2), "min_objects"),
        (lambda: ShapesWorldConfig(max_objects=5), "max_objects"),
        (lambda: ShapeObject("blob", "red", (10, 10), 5), "blob"),
        (lambda: Scene(size=300), "image size"),
        (lambda: place_centers(np.random.default_rng(0), [12.0] * 4, 32), "fewer objects"),
    ],
)
def test_bad_input_raises_value_error_naming_it(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_scene_round_trips_through_dict():
    scene = sample_scene(11, ShapesWorldConfig(texture=True, clutter=True))
    assert Scene.from_dict(scene.to_dict()) == scene


# --- detector ----------------------------------------------------------------------------------------------


def test_detector_finds_every_object_on_ground_truth_renders():
    scenes = 300
    correct = 0
    for seed in range(scenes):
        size = (64, 96, 128)[seed % 3]
        config = ShapesWorldConfig(image_size=size, texture=seed % 2 == 0, clutter=seed % 2 == 0)
        rendered = render_scene(sample_scene(seed, config))
        detections = detect_objects(rendered.image)
        truth = Counter((o.shape, o.color) for o in rendered.scene.objects)
        if Counter((d.shape, d.color) for d in detections) != truth:
            continue
        correct += 1
        for obj, box in zip(rendered.scene.objects, rendered.boxes, strict=True):
            match = min(
                (d for d in detections if (d.shape, d.color) == (obj.shape, obj.color)),
                key=lambda d: np.hypot(d.center[0] - obj.center[0], d.center[1] - obj.center[1]),
            )
            assert np.hypot(match.center[0] - obj.center[0], match.center[1] - obj.center[1]) < 1.0
            assert max(abs(a - b) for a, b in zip(match.box, box, strict=True)) <= 1
    accuracy = correct / scenes
    assert accuracy >= 0.99, f"detector accuracy {accuracy:.3f}"


def test_detector_sees_nothing_in_clutter_and_texture_alone():
    scene = replace(sample_scene(5, ShapesWorldConfig(image_size=96, texture=True, clutter=True)), objects=())
    assert detect_objects(render_scene(scene).image) == []


@pytest.mark.parametrize("color", ["red", "white"])
def test_detector_sees_nothing_in_an_image_of_one_flat_palette_colour(color):
    assert detect_objects(Image.new("RGB", (64, 64), COLORS[color])) == []


# --- GenEval-style scoring ---------------------------------------------------------------------------------


def _mismatch(spec: PromptSpec) -> PromptSpec:
    """A spec that a scene rendered for it must fail against the original spec."""
    first, *rest = spec.objects
    other_shape = next(s for s in SHAPES if s not in {o.shape for o in spec.objects})
    if spec.category == "counting":
        return replace(spec, objects=(replace(first, count=first.count - 1),))
    if spec.category == "colors":
        return replace(spec, objects=(replace(first, color=next(c for c in COLORS if c != first.color)),))
    if spec.category == "position":
        return replace(spec, relation=OPPOSITE[spec.relation])
    if spec.category == "color_attr":
        second = rest[0]
        return replace(spec, objects=(replace(first, color=second.color), replace(second, color=first.color)))
    return replace(spec, objects=(replace(first, shape=other_shape), *rest))


def test_geneval_gives_full_marks_to_matching_renders_and_fails_mismatching_ones():
    config = ShapesWorldConfig(image_size=96)
    matching, mismatching = [], []
    for category in CATEGORIES:
        for i, prompt in enumerate(generate_prompts(category, 8, seed=1, config=config)):
            assert prompt.text == prompt_text(prompt.spec)
            good = render_scene(scene_for_prompt(prompt.spec, i, config)).image
            bad = render_scene(scene_for_prompt(_mismatch(prompt.spec), i, config)).image
            matching.append(score_image(good, prompt.spec))
            mismatching.append(score_image(bad, prompt.spec))
    assert [r.reason for r in matching if not r.correct] == []
    good_summary, bad_summary = summarize(matching), summarize(mismatching)
    assert good_summary.overall == 1.0 and set(good_summary.per_category) == set(CATEGORIES)
    assert bad_summary.overall == 0.0 and all(r.reason for r in mismatching)


def test_scene_captions_are_true_of_the_render():
    config = ShapesWorldConfig(image_size=96)
    seen = set()
    for seed in range(60):
        scene = sample_scene(seed, config)
        prompt = describe_scene(scene, seed)
        seen.add(prompt.category)
        assert prompt.category in applicable_categories(scene)
        assert score_image(render_scene(scene).image, prompt.spec).correct, prompt.text
    assert seen == set(CATEGORIES)


def test_prompt_text_and_spec_round_trip():
    spec = PromptSpec("position", (PromptObject("star", "orange"), PromptObject("cross", "red")), "left of")
    assert prompt_text(spec) == "an orange star to the left of a red cross"
    assert prompt_text(PromptSpec("counting", (PromptObject("cross", None, 3),))) == "three crosses"
    assert PromptSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="counting"):
        describe_scene(Scene(64, objects=(ShapeObject("star", "red", (32, 32), 8),)), 0, "counting")


# --- question answering ------------------------------------------------------------------------------------


def answer_from_detections(question: str, detections: list[DetectedObject]) -> str:
    """Answer a ShapesWorld question by reading the detector's output."""
    plural_to_shape = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
    if match := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", question):
        color, shape = match.groups()
        return "yes" if any((d.color, d.shape) == (color, shape) for d in detections) else "no"
    if match := re.fullmatch(r"What color is the (\w+)\?", question):
        return next(d.color for d in detections if d.shape == match.group(1))
    if match := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(sum(d.shape == plural_to_shape[match.group(1)] for d in detections))
    if match := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return next(d.shape for d in detections if d.color == match.group(1))
    match = re.fullmatch(r"Is the (\w+) (left of|right of|above|below) the (\w+)\?", question)
    a, rel, b = match.groups()
    centers = {d.shape: d.center for d in detections}
    return "yes" if relation(centers[a], centers[b]) == rel else "no"


def flipped(pair: QAPair) -> str:
    if pair.answer in ("yes", "no"):
        return {"yes": "no", "no": "yes"}[pair.answer]
    if pair.kind == "count":
        return str(int(pair.answer) + 1)
    if pair.kind == "shape":
        return next(s for s in SHAPES if s != pair.answer)
    return next(c for c in COLORS if c != pair.answer)


@pytest.mark.parametrize("strategy", ["random", "popular", "adversarial"])
def test_ground_truth_answers_score_full_and_flipped_answers_zero(strategy):
    config = ShapesWorldConfig(image_size=96)
    pairs, predictions = [], []
    for seed in range(40):
        scene = sample_scene(seed, config)
        detections = detect_objects(render_scene(scene).image)
        questions = questions_for_scene(scene, seed, config, strategy)
        existence = [q for q in questions if q.kind == "existence"]
        assert sum(q.answer == "yes" for q in existence) == sum(q.answer == "no" for q in existence)
        pairs += questions
        predictions += [answer_from_detections(q.question, detections) for q in questions]
    answers = [q.answer for q in pairs]
    assert {q.kind for q in pairs} == {"existence", "color", "count", "position", "shape"}
    assert qa_accuracy(predictions, answers) == 1.0
    assert qa_accuracy([flipped(q) for q in pairs], answers) == 0.0


def test_adversarial_negatives_swap_attributes_of_present_objects():
    scene = Scene(
        96, objects=(ShapeObject("star", "red", (20, 20), 10), ShapeObject("circle", "blue", (70, 70), 10))
    )
    negatives = [
        q.question for q in questions_for_scene(scene, 0, negative_strategy="adversarial") if q.answer == "no"
    ]
    assert sorted(negatives) == ["Is there a blue star in the image?", "Is there a red circle in the image?"]


def test_shape_questions_ask_colours_that_occur_once():
    scene = Scene(96, objects=(ShapeObject("star", "red", (20, 20), 10), ShapeObject("circle", "blue", (70, 70), 10),
                               ShapeObject("square", "red", (20, 70), 10), ShapeObject("cross", "green", (70, 20), 8)))
    asked = {q.question: q.answer for q in questions_for_scene(scene, 0) if q.kind == "shape"}
    # red occurs twice, so it is never asked about; blue and green once each
    assert asked == {"What shape is the blue object?": "circle", "What shape is the green object?": "cross"}
    one = Scene(64, objects=(ShapeObject("hexagon", "yellow", (32, 32), 12),))
    assert [(q.question, q.answer) for q in questions_for_scene(one, 0) if q.kind == "shape"] == [
        ("What shape is the yellow object?", "hexagon")]


def test_answer_normalisation():
    assert normalize_answer("  The Red! ") == "red"
    assert normalize_answer("Three.") == "3"
    assert normalize_answer("an orange, star") == "orange star"
    assert qa_accuracy(["Yes.", "THREE", "a cyan"], ["yes", "3", "cyan"]) == 1.0
    assert to_yes_no("No, there is not.") == "no"
    assert to_yes_no("Yes, there is a red circle.") == "yes"
    assert to_yes_no("There is not a circle") == "no"


def test_pope_scores_on_a_known_confusion():
    # 3 true positives, 1 false positive, 2 false negatives, 4 true negatives.
    answers = ["yes"] * 5 + ["no"] * 5
    predictions = ["yes"] * 3 + ["no"] * 2 + ["yes"] + ["no"] * 4
    scores = pope_scores(predictions, answers)
    assert scores.accuracy == pytest.approx(0.7)
    assert scores.precision == pytest.approx(0.75)
    assert scores.recall == pytest.approx(0.6)
    assert scores.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert scores.yes_ratio == pytest.approx(0.4)
    with pytest.raises(ValueError, match="predictions"):
        pope_scores(["yes"], ["yes", "no"])


# --- CAM localisation --------------------------------------------------------------------------------------


def test_cam_energy_and_pointing_game():
    rendered = render_scene(Scene(64, objects=(ShapeObject("square", "red", (20, 20), 10),)))
    mask = rendered.masks[0]
    assert cam_energy_in_mask(mask.astype(np.float32), mask) == pytest.approx(1.0)
    assert cam_energy_in_mask(np.ones((8, 8)), mask) == pytest.approx(mask.mean())
    assert cam_energy_in_mask(1.0 - mask, mask) == pytest.approx(0.0)

    low_res = np.zeros((8, 8), dtype=np.float32)
    low_res[2, 2] = 1.0  # the cell covering pixels 16-23, inside the square
    assert pointing_game(low_res, mask)
    far = np.zeros((64, 64), dtype=np.float32)
    far[20, 40] = 1.0  # 13 px right of the square's edge
    assert not pointing_game(far, mask)
    assert not pointing_game(far, mask, tolerance=10)
    assert pointing_game(far, mask, tolerance=14)


# --- export ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["shape", "color", "count"])
def test_image_folder_export_reads_back(tmp_path: Path, attribute: str):
    dataset = ShapesWorld(ShapesWorldConfig(image_size=48), seed=2, length=6)
    paths = export_image_folder(dataset, tmp_path, split="val", class_attribute=attribute)
    for index, path in enumerate(paths):
        item = dataset[index]
        expected = {"shape": item.scene.objects[0].shape, "color": item.scene.objects[0].color}
        expected["count"] = str(len(item.scene.objects))
        assert path == tmp_path / "val" / expected[attribute] / f"{index}.png"
        assert np.array_equal(pixels(Image.open(path)), pixels(item.image))
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(paths)


def test_jsonl_export_reads_back(tmp_path: Path):
    dataset = ShapesWorld(ShapesWorldConfig(image_size=64), seed=9, length=5)
    path = export_jsonl(dataset, tmp_path, split="test", negative_strategy="popular")
    records = read_jsonl(path)
    assert [r["index"] for r in records] == list(range(5))
    for record in records:
        item = dataset[record["index"]]
        assert np.array_equal(pixels(Image.open(tmp_path / record["image"])), pixels(item.image))
        assert Scene.from_dict(record["scene"]) == item.scene
        assert [o["shape"] for o in record["objects"]] == [o.shape for o in item.scene.objects]
        assert [tuple(o["box"]) for o in record["objects"]] == list(item.boxes)
        assert record["caption"] == prompt_text(PromptSpec.from_dict(record["spec"]))
        assert [QAPair(**q) for q in record["qa"]] == questions_for_scene(
            item.scene, dataset.rng(record["index"], "questions"), dataset.config, "popular"
        )
    assert not [p for p in tmp_path.rglob("*.tmp")]


# --- spatial relations against image coordinates ------------------------------------------------------------
# Pixel (x, y): x grows to the right, y grows downwards. "a left of b" means a's centre has the smaller x.


def _mask_centre(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())


def _direction_by_hand(a: tuple[float, float], b: tuple[float, float]) -> str:
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) > abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def test_relation_reads_image_coordinates():
    assert relation((10, 50), (40, 50)) == "left of"
    assert relation((40, 50), (10, 50)) == "right of"
    assert relation((50, 10), (50, 40)) == "above"
    assert relation((50, 40), (50, 10)) == "below"
    assert relation((10, 30), (40, 50)) == "left of"  # |dx| = 30 > |dy| = 20: the horizontal axis decides
    assert relation((30, 10), (50, 40)) == "above"  # |dy| = 30 > |dx| = 20
    assert relation((10.5, 50), (10, 50)) == "right of" and relation((50, 10.5), (50, 10)) == "below"


def test_clear_relation_by_hand():
    """Clear when the larger offset is at least 1.5 times the smaller one (and the centres differ)."""
    assert is_clear_relation((10, 60), (40, 40))  # 30 >= 1.5 * 20
    assert not is_clear_relation((10, 60), (39, 40))  # 29 < 30
    assert not is_clear_relation((50, 10), (20, 40))  # 30 vs 30: a diagonal
    assert is_clear_relation((0, 0), (0.5, 0)) and not is_clear_relation((7, 7), (7, 7))


@pytest.mark.parametrize("rel", ["left of", "right of", "above", "below"])
def test_position_prompts_put_the_objects_where_the_words_say(rel):
    """The rendered pixels of the first object lie on the named side of the second's."""
    words = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}[rel]
    spec = PromptSpec("position", (PromptObject("circle", "red"), PromptObject("square", "blue")), rel)
    assert prompt_text(spec) == f"a red circle {words} a blue square"
    for seed in range(4):
        rendered = render_scene(scene_for_prompt(spec, seed, ShapesWorldConfig(image_size=64)))
        pixels = np.asarray(rendered.image, dtype=np.int16)
        red = np.abs(pixels - np.array([230, 30, 30])).sum(-1) < 40
        blue = np.abs(pixels - np.array([40, 70, 235])).sum(-1) < 40
        assert _direction_by_hand(_mask_centre(red), _mask_centre(blue)) == rel, seed


def test_position_questions_and_captions_agree_with_the_rendered_masks():
    config = ShapesWorldConfig(image_size=96, min_objects=2)
    asked = Counter()
    for seed in range(30):
        scene = sample_scene(seed, config)
        centres = [_mask_centre(mask) for mask in render_scene(scene).masks]
        where = {obj.shape: centre for obj, centre in zip(scene.objects, centres, strict=True)}
        for pair in questions_for_scene(scene, seed, config):
            if pair.kind != "position":
                continue
            a, rel, b = re.fullmatch(r"Is the (\w+) (left of|right of|above|below) the (\w+)\?", pair.question).groups()
            assert pair.answer == ("yes" if _direction_by_hand(where[a], where[b]) == rel else "no"), pair
            asked[rel, pair.answer] += 1
        if "position" in applicable_categories(scene):
            spec = describe_scene(scene, seed, "position").spec
            first, second = (next(c for o, c in zip(scene.objects, centres, strict=True)
                                  if (o.shape, o.color) == (p.shape, p.color)) for p in spec.objects)
            assert _direction_by_hand(first, second) == spec.relation
    assert {rel for rel, answer in asked if answer == "yes"} == {"left of", "right of", "above", "below"}
