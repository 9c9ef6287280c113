"""GenEval's rules on hand-made detections, with the verdicts and scores worked out by hand from the protocol."""

from __future__ import annotations

import json

import pytest

from harmon.geneval_rules import (
    Detection,
    MetadataError,
    Verdict,
    judge,
    keep_detections,
    parse_spec,
    read_metadata,
    relative_position,
    summarize,
)


def _spec(tag, include, exclude=None, prompt="p"):
    record = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        record["exclude"] = exclude
    return parse_spec(record)


def _verdict(spec, detections):
    return judge(spec, keep_detections(detections, spec.tag))


def box_at(x, y, size=10):
    return (x, y, x + size, y + size)


def test_relative_position_by_hand():
    # centres (5, 5) and (35, 5): offset -30, margin 0.1 * (10 + 10) = 2 -> -28 / 30 = -0.93 -> left
    assert relative_position(box_at(0, 0), box_at(30, 0)) == {"left of"}
    assert relative_position(box_at(30, 0), box_at(0, 0)) == {"right of"}
    assert relative_position(box_at(0, 40), box_at(0, 0)) == {"below"}
    # offset 1 < margin 2 on x, 0 on y: no relation at all
    assert relative_position(box_at(0, 0), box_at(1, 0)) == set()
    # zero-size boxes on the diagonal: -10 / 14.1 = -0.71 on both axes
    assert relative_position((0, 0, 0, 0), (10, 10, 10, 10)) == {"left of", "above"}
    # centres (5, 5) vs (17, 13): x -12 + 2 margin = -10, y -8 + 2 = -6; / 14.4 -> -0.69, -0.42: left only
    assert relative_position(box_at(0, 0), box_at(12, 8)) == {"left of"}


def test_thresholds_and_the_cap_of_sixteen():
    dogs = [Detection("dog", box_at(i, 0), 0.3 + 0.01 * i) for i in range(25)]
    kept = keep_detections(dogs, "two_object")
    assert [round(d.score, 2) for d in kept["dog"]] == [round(0.3 + 0.01 * i, 2) for i in range(24, 8, -1)]
    counting = keep_detections(dogs + [Detection("dog", box_at(0, 0), 0.9), Detection("dog", box_at(0, 0), 0.91)],
                               "counting")
    assert [d.score for d in counting["dog"]] == [0.91]  # 0.9 is not above the counting threshold
    assert keep_detections([Detection("cat", box_at(0, 0), 0.3)], "single_object") == {}


def test_counting_is_exact_through_the_exclude_clause():
    three = _spec("counting", [{"class": "dog", "count": 3}], [{"class": "dog", "count": 4}])
    sure = [Detection("dog", box_at(20 * i, 0), 0.95) for i in range(3)]
    assert _verdict(three, sure).correct
    assert not _verdict(three, sure + [Detection("dog", box_at(80, 0), 0.92)]).correct  # four dogs
    assert _verdict(three, sure + [Detection("dog", box_at(80, 0), 0.5)]).correct  # below 0.9: not counted
    verdict = _verdict(three, sure[:2] + [Detection("dog", box_at(80, 0), 0.85)])
    assert not verdict.correct and verdict.reason == "expected dog>=3, found 2"


def test_two_objects_and_exclude():
    pair = _spec("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])
    assert _verdict(pair, [Detection("dog", box_at(0, 0), 0.8), Detection("cat", box_at(40, 0), 0.4)]).correct
    assert _verdict(pair, [Detection("dog", box_at(0, 0), 0.8)]).reason == "expected cat>=1, found 0"
    no_cat = _spec("single_object", [{"class": "dog", "count": 1}], [{"class": "cat", "count": 1}])
    assert _verdict(no_cat, [Detection("dog", box_at(0, 0), 0.8)]).correct
    assert not _verdict(no_cat, [Detection("dog", box_at(0, 0), 0.8), Detection("cat", box_at(9, 9), 0.31)]).correct


def test_colour_is_judged_on_the_most_confident_objects():
    red_car = _spec("colors", [{"class": "car", "count": 1, "color": "red"}])
    blue_first = [Detection("car", box_at(0, 0), 0.9, "blue"), Detection("car", box_at(40, 0), 0.8, "red")]
    verdict = _verdict(red_car, blue_first)
    assert not verdict.correct and verdict.reason == "expected red car>=1, found 0 red; and 1 blue"
    assert _verdict(red_car, [Detection("car", box_at(0, 0), 0.7, "blue"), blue_first[1]]).correct
    # an exact detector (every confidence 1.0): the protocol does not order ties, the fitting object is taken
    tied = [Detection("car", box_at(0, 0), 1.0, "blue"), Detection("car", box_at(40, 0), 1.0, "red")]
    assert _verdict(red_car, tied).correct
    attr = _spec("color_attr", [{"class": "car", "count": 1, "color": "red"},
                                {"class": "bench", "count": 1, "color": "green"}])
    assert _verdict(attr, [Detection("car", box_at(0, 0), 0.9, "red"),
                           Detection("bench", box_at(40, 0), 0.9, "green")]).correct
    swapped = _verdict(attr, [Detection("car", box_at(0, 0), 0.9, "green"),
                              Detection("bench", box_at(40, 0), 0.9, "red")])
    assert not swapped.correct and "expected red car" in swapped.reason and "expected green bench" in swapped.reason


def test_position_against_the_reference_clause():
    dog_right_of_bench = _spec("position", [{"class": "bench", "count": 1},
                                            {"class": "dog", "count": 1, "position": ["right of", 0]}])
    bench = Detection("bench", box_at(0, 0), 0.9)
    assert _verdict(dog_right_of_bench, [bench, Detection("dog", box_at(40, 0), 0.9)]).correct
    left = _verdict(dog_right_of_bench, [bench, Detection("dog", box_at(-40, 0), 0.9)])
    assert not left.correct and left.reason == "expected dog right of target, found left of target"
    # the most confident dog decides, not any dog
    assert not _verdict(dog_right_of_bench, [bench, Detection("dog", box_at(-40, 0), 0.9),
                                             Detection("dog", box_at(40, 0), 0.5)]).correct
    # no bench: the reference clause failed, so the position cannot hold either
    missing = _verdict(dog_right_of_bench, [Detection("dog", box_at(40, 0), 0.9)])
    assert not missing.correct and "no target for dog" in missing.reason
    # overlapping boxes are in no relation
    assert not _verdict(dog_right_of_bench, [bench, Detection("dog", box_at(1, 0), 0.9)]).correct


def test_overall_is_the_mean_of_the_category_means():
    summary = summarize([Verdict("single_object", True), Verdict("single_object", False), Verdict("colors", True)])
    assert summary.per_category == {"single_object": 0.5, "colors": 1.0}
    assert summary.overall == 0.75 and summary.counts == {"single_object": 2, "colors": 1}


@pytest.mark.parametrize(("record", "message"), [
    ({"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}, "lacks prompt"),
    ({"tag": "style", "include": [{"class": "car"}], "prompt": "x"}, "tag 'style'"),
    ({"tag": "colors", "include": [{"class": "car", "color": "teal"}], "prompt": "x"}, "color 'teal'"),
    ({"tag": "position", "include": [{"class": "car", "position": ["left of", 0]}], "prompt": "x"}, "earlier"),
    ({"tag": "counting", "include": [{"class": "car", "count": 0}], "prompt": "x"}, "positive integer"),
    (["a", "list"], "not a JSON object"),
])
def test_bad_metadata_records_are_named(record, message):
    with pytest.raises(MetadataError, match=message):
        parse_spec(record)


def test_metadata_file_errors_name_the_line(tmp_path):
    path = tmp_path / "meta.jsonl"
    good = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(MetadataError, match="line 2 is not JSON"):
        read_metadata(path)
    path.write_text(json.dumps(good) + "\n")
    (spec,) = read_metadata(path)
    assert spec.to_dict() == good and spec.include[0].cls == "dog"
