"""LoCoMo's official answer scoring (snap-research/locomo, task_eval/evaluation.py).

Token F1 after normalisation (lower case, no punctuation, no articles or "and", commas
dropped) and Porter stemming (NLTK's). Per category number:

- 1 (multi-hop): the gold answer is split on commas; each gold part scores the best F1
  against any comma-split part of the prediction; the mean over gold parts.
- 2, 4: plain token F1.
- 3: token F1 against the gold's first ';'-separated part.
- 5 (adversarial): 1 when the prediction says "not mentioned" or "no information
  available" (a refusal), else 0.

Integer gold answers are scored as their text.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from .text import stem

REFUSALS = ("no information available", "not mentioned")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the|and)\b", " ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return [stem(w) for w in normalize_answer(text).split()]


def f1_score(prediction: str, gold: str) -> float:
    predicted, expected = tokens(prediction), tokens(gold)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    """Category 1: the mean over comma-split gold parts of the best F1 against any part
    of the prediction."""
    predictions = [p.strip() for p in prediction.split(",")]
    golds = [g.strip() for g in gold.split(",")]
    return sum(max(f1_score(p, g) for p in predictions) for g in golds) / len(golds)


def is_refusal(prediction: str) -> bool:
    lowered = prediction.lower()
    return any(phrase in lowered for phrase in REFUSALS)


def score(category: int, prediction: str, gold: str | int) -> float:
    """The official per-question score for LoCoMo category `category` (1-5)."""
    gold = str(gold)
    if category == 5:
        return float(is_refusal(prediction))
    if category == 1:
        return multi_answer_f1(prediction, gold)
    if category == 3:
        gold = gold.split(";")[0].strip()
    if category in (2, 3, 4):
        return f1_score(prediction, gold)
    raise ValueError(f"LoCoMo categories are 1-5, got {category!r}")
