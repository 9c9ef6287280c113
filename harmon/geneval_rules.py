"""GenEval's scoring rules: when is an image correct, given the objects detected in it (Ghosh et al. 2023).

One place for the published protocol's rules, shared by ShapesWorld's exact scorer
(`harmon.shapesworld.evaluate.geneval`, whose exact detector supplies the detections) and the detector-based
scorer of real images (`experiments.evaluation.geneval`, Mask2Former + CLIP):

- a detection is kept when its confidence exceeds 0.3 (0.9 for "counting" prompts); at most 16 per class are
  kept, most confident first (the published overlap threshold is 1.0, i.e. no suppression); objects exactly
  as confident as the last one taken are not ordered by the protocol, and among them the ones that fit the
  clause are taken first (this matters only for an exact detector, whose confidences are all 1.0);
- `include` clauses are AND-ed: each needs `count` kept objects of its class; a colour is judged on the `count`
  most confident of them (`count` of them must have it); a position on those same objects against every
  object matched by the clause it refers to;
- `exclude` clauses are OR-ed: `count` or more kept objects of the class make the image wrong (GenEval's
  counting prompts exclude `N + 1` objects, so a count must be exact);
- position from box centres: each axis offset is shrunk by 0.1 x the sum of the two boxes' sizes on that axis,
  divided by the distance of the centres; above 0.5 in magnitude along an axis names that relation;
- the score per category is the share of correct images; the overall score is the mean of the category means.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1

Box = tuple[float, float, float, float]


class MetadataError(ValueError):
    """A GenEval metadata record that does not follow the published format; the message names it."""


@dataclass(frozen=True)
class Clause:
    """One `include` / `exclude` entry: `count` objects of `cls`, optionally of `color`, optionally
    `position = (relation, index of the include clause it is relative to)`."""

    cls: str
    count: int = 1
    color: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class GenEvalSpec:
    """One GenEval prompt: its tag (category), text, include and exclude clauses."""

    tag: str
    prompt: str
    include: tuple[Clause, ...]
    exclude: tuple[Clause, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as GenEval writes it (`raw` when it came from a file)."""
        if self.raw:
            return dict(self.raw)

        def clause(c: Clause) -> dict[str, Any]:
            out: dict[str, Any] = {"class": c.cls, "count": c.count}
            if c.color is not None:
                out["color"] = c.color
            if c.position is not None:
                out["position"] = list(c.position)
            return out

        record = {"tag": self.tag, "include": [clause(c) for c in self.include], "prompt": self.prompt}
        if self.exclude:
            record["exclude"] = [clause(c) for c in self.exclude]
        return record


@dataclass(frozen=True)
class Detection:
    """A detected object: class name, box (x0, y0, x1, y1) in pixels, confidence, colour name (when judged)."""

    cls: str
    box: Box
    score: float = 1.0
    color: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether one image satisfies its spec, and why not."""

    tag: str
    correct: bool
    reason: str = ""

    @property
    def category(self) -> str:
        return self.tag


@dataclass(frozen=True)
class Summary:
    """Share of correct images per category and overall (the mean of the category shares)."""

    per_category: dict[str, float]
    overall: float
    counts: dict[str, int]


def _clause(data: Any, where: str) -> Clause:
    if not isinstance(data, Mapping) or not isinstance(data.get("class"), str):
        raise MetadataError(f"{where} must be an object with a 'class' name, got {data!r}")
    count = data.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise MetadataError(f"{where}: count {count!r} must be a positive integer")
    color = data.get("color")
    if color is not None and color not in COLORS:
        raise MetadataError(f"{where}: color {color!r} is not one of GenEval's colours {list(COLORS)}")
    position = data.get("position")
    if position is not None:
        if (not isinstance(position, Sequence) or len(position) != 2 or position[0] not in RELATIONS
                or not isinstance(position[1], int)):
            raise MetadataError(f"{where}: position {position!r} must be [relation, include index] with a "
                                f"relation in {list(RELATIONS)}")
        position = (str(position[0]), int(position[1]))
    return Clause(data["class"], count, color, position)


def parse_spec(record: Any, where: str = "metadata") -> GenEvalSpec:
    """A GenEval metadata record (`tag`, `include`, optional `exclude`, `prompt`) as a spec; MetadataError naming
    `where` and the bad key otherwise."""
    if not isinstance(record, Mapping):
        raise MetadataError(f"{where} is not a JSON object (GenEval metadata has keys tag, include, prompt)")
    missing = [k for k in ("tag", "include", "prompt") if k not in record]
    if missing:
        raise MetadataError(f"{where} lacks {', '.join(missing)}; GenEval metadata has keys tag, include, "
                            "exclude (optional) and prompt")
    if record["tag"] not in CATEGORIES:
        raise MetadataError(f"{where}: tag {record['tag']!r} is not one of {list(CATEGORIES)}")
    clauses = {}
    for key in ("include", "exclude"):
        entries = record.get(key, [])
        if not isinstance(entries, list) or (key == "include" and not entries):
            raise MetadataError(f"{where}: {key} must be a{' non-empty' * (key == 'include')} list of objects")
        clauses[key] = tuple(_clause(e, f"{where} {key}[{i}]") for i, e in enumerate(entries))
    for i, clause in enumerate(clauses["include"]):
        if clause.position is not None and not 0 <= clause.position[1] < i:
            raise MetadataError(f"{where} include[{i}]: position refers to include[{clause.position[1]}], which "
                                "must be an earlier clause")
    return GenEvalSpec(record["tag"], str(record["prompt"]), clauses["include"], clauses["exclude"], dict(record))


def read_metadata(path: str | Any) -> list[GenEvalSpec]:
    """Every record of a GenEval metadata JSONL file (one object per line); MetadataError naming the line."""
    specs = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise MetadataError(f"{path} line {number} is not JSON ({err.msg}); GenEval metadata is JSONL, one "
                                    "object per line") from err
            specs.append(parse_spec(record, f"{path} line {number}"))
    if not specs:
        raise MetadataError(f"{path} holds no metadata records")
    return specs


def keep_detections(detections: Iterable[Detection], tag: str) -> dict[str, list[Detection]]:
    """Per class, the detections above the tag's confidence threshold, most confident first, at most 16."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for detection in detections:
        if detection.score > threshold:
            by_class[detection.cls].append(detection)
    return {cls: sorted(found, key=lambda d: -d.score)[:MAX_OBJECTS] for cls, found in by_class.items()}


def colors_needed(spec: GenEvalSpec) -> dict[str, int]:
    """Class -> how many of its most confident objects need a colour judged for `spec`."""
    needed: dict[str, int] = {}
    for clause in spec.include:
        if clause.color is not None:
            needed[clause.cls] = max(needed.get(clause.cls, 0), clause.count)
    return needed


def relative_position(a: Box, b: Box, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Where box `a` lies relative to box `b` (any of RELATIONS; empty when they nearly coincide)."""
    boxes = np.asarray([a, b], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def _fits(obj: Detection, clause: Clause, targets: Sequence[Detection] | None) -> bool:
    """Whether one object satisfies the clause's colour and position on its own."""
    if clause.color is not None and obj.color != clause.color:
        return False
    if clause.position is not None:
        return targets is not None and all(clause.position[0] in relative_position(obj.box, t.box) for t in targets)
    return True


def most_confident(candidates: Sequence[Detection], count: int, fits: Any = None) -> list[Detection]:
    """The `count` most confident candidates (already sorted). Among candidates exactly as confident as the last
    one taken, those for which `fits(obj)` holds come first: the protocol does not order ties, so an exact
    detector (every confidence 1.0) is judged on a fitting choice when one exists."""
    if len(candidates) <= count or fits is None:
        return list(candidates[:count])
    cut = candidates[count - 1].score
    sure = [d for d in candidates if d.score > cut]
    tied = [d for d in candidates if d.score == cut]
    tied = [d for d in tied if fits(d)] + [d for d in tied if not fits(d)]
    return (sure + tied)[:count]


def judge(spec: GenEvalSpec, kept: Mapping[str, Sequence[Detection]]) -> Verdict:
    """GenEval's verdict for one image from its kept detections (`keep_detections`; colours already judged on
    the objects `colors_needed` names)."""
    correct, reasons = True, []
    matched: list[Sequence[Detection] | None] = []
    for clause in spec.include:
        targets = matched[clause.position[1]] if clause.position is not None else None
        found = most_confident(list(kept.get(clause.cls, [])), clause.count,
                               lambda d, c=clause, t=targets: _fits(d, c, t))
        ok = len(found) >= clause.count
        if not ok:
            reasons.append(f"expected {clause.cls}>={clause.count}, found {len(found)}")
        if ok and clause.color is not None:
            colors = [d.color for d in found]
            if None in colors:
                raise ValueError(f"the colour of a detected {clause.cls} was not judged; classify the "
                                 f"{clause.count} most confident ones first")
            if colors.count(clause.color) < clause.count:
                ok = False
                seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                reasons.append(f"expected {clause.color} {clause.cls}>={clause.count}, found "
                               f"{colors.count(clause.color)} {clause.color}; and {seen}")
        if ok and clause.position is not None:
            relation = clause.position[0]
            if targets is None:
                ok = False
                reasons.append(f"no target for {clause.cls} to be {relation}")
            else:
                for obj in found:
                    wrong = next((t for t in targets if relation not in relative_position(obj.box, t.box)), None)
                    if wrong is not None:
                        ok = False
                        actual = relative_position(obj.box, wrong.box)
                        reasons.append(f"expected {clause.cls} {relation} target, found "
                                       f"{' and '.join(sorted(actual)) or 'no relation to the'} target")
                        break
        correct &= ok
        matched.append(found if ok else None)
    for clause in spec.exclude:
        found = len(kept.get(clause.cls, []))
        if found >= clause.count:
            correct = False
            reasons.append(f"expected {clause.cls}<{clause.count}, found {found}")
    return Verdict(spec.tag, correct, "; ".join(reasons))


def summarize(verdicts: Iterable[Verdict]) -> Summary:
    """Per-category share of correct images over the categories present, and their mean."""
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for verdict in verdicts:
        outcomes[verdict.tag].append(verdict.correct)
    if not outcomes:
        raise ValueError("summarize needs at least one verdict")
    order = [c for c in CATEGORIES if c in outcomes] + sorted(set(outcomes) - set(CATEGORIES))
    per_category = {c: float(np.mean(outcomes[c])) for c in order}
    return Summary(per_category, float(np.mean(list(per_category.values()))),
                   {c: len(outcomes[c]) for c in order})
