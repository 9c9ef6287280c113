"""Answer normalisation, exact-match QA accuracy and POPE yes/no metrics."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from harmon.shapesworld.prompts import NUMBER_WORDS

ARTICLES = frozenset({"a", "an", "the"})
NUMBERS = {word: str(value) for value, word in enumerate(NUMBER_WORDS)}
NEGATIONS = frozenset({"no", "not"})


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, write number words as digits, collapse spaces."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(NUMBERS.get(word, word) for word in words if word not in ARTICLES)


def qa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Share of predictions equal to their answer after normalisation."""
    _check_lengths(predictions, answers)
    hits = sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers, strict=True))
    return hits / len(answers)


def to_yes_no(text: str) -> str:
    """Read a free-form reply as "yes" or "no": a leading yes/no decides, else any "no"/"not" means no."""
    words = normalize_answer(text).split()
    if words and words[0] in ("yes", "no"):
        return words[0]
    return "no" if NEGATIONS & set(words) else "yes"


@dataclass(frozen=True)
class PopeScores:
    """POPE metrics with "yes" as the positive class; yes_ratio is the share of "yes" predictions."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float


def pope_scores(predictions: Sequence[str], answers: Sequence[str]) -> PopeScores:
    """Accuracy, precision, recall, F1 and yes-ratio of yes/no predictions against yes/no answers."""
    _check_lengths(predictions, answers)
    predicted = [to_yes_no(p) == "yes" for p in predictions]
    truth = [to_yes_no(a) == "yes" for a in answers]
    true_pos = sum(p and t for p, t in zip(predicted, truth, strict=True))
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    precision = true_pos / sum(predicted) if any(predicted) else 0.0
    recall = true_pos / sum(truth) if any(truth) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeScores(correct / len(truth), precision, recall, f1, sum(predicted) / len(predicted))


def _check_lengths(predictions: Sequence[str], answers: Sequence[str]) -> None:
    if len(predictions) != len(answers) or not answers:
        raise ValueError(
            f"got {len(predictions)} predictions for {len(answers)} answers; pass equally long, non-empty lists"
        )
