"""Metrics: fidelity of a pruned run to the unpruned baseline (any data), and task metrics on answers.

Task metrics take predicted strings and gold answers; `tokenprune.data.score_predictions` picks the one
for a dataset's task and the samples that have gold answers.
"""

from __future__ import annotations

import re
import string
from typing import Any, Sequence

import torch


def agreement(tokens: list[int], reference: list[int]) -> float:
    """Fraction of positions where the greedy tokens equal the reference (missing positions differ)."""
    length = max(len(tokens), len(reference))
    if length == 0:
        return 1.0
    return sum(a == b for a, b in zip(tokens, reference, strict=False)) / length  # extra positions differ


def first_token_kl(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """KL(pruned || full) of the first generated token's distribution, averaged over leading dims.

    `logits` and `reference` are (..., vocab) logits of the pruned and the unpruned model at the same
    position. Computed in float32; clamped at 0 (rounding can give -1e-9 for identical inputs).
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    log_q = torch.log_softmax(reference.float(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean().clamp(min=0.0))


# ------------------------------------------------------------------------------------------- task metrics
_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-E])(?![A-Za-z0-9])")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def parse_letter(prediction: str) -> str | None:
    """The first standalone option letter A-E ("B", "(B)", "B.", "The answer is B"), or None.

    Upper case only: a lowercase "a" is an article far more often than an answer.
    """
    match = _LETTER.search(prediction)
    return match.group(1) if match else None


def parse_yes_no(prediction: str) -> str | None:
    """ "yes" or "no", whichever word comes first (any case), or None."""
    match = _YES_NO.search(prediction)
    return match.group(1).lower() if match else None


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def choice_scores(predictions: Sequence[str], letters: Sequence[str]) -> dict[str, Any]:
    """Multiple choice: accuracy of the parsed letter against the gold letter, and how often one parsed."""
    parsed = [parse_letter(p) for p in predictions]
    n = len(parsed)
    correct = sum(p == g.strip().upper() for p, g in zip(parsed, letters, strict=True))
    return {"n": n, "accuracy": correct / n, "parse_rate": sum(p is not None for p in parsed) / n}


def yes_no_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """POPE metrics with "yes" as the positive class; an unparsable prediction is wrong and not "yes".

    A rate without a denominator (precision when "yes" is never predicted) is None, as is F1 then.
    """
    parsed = [parse_yes_no(p) for p in predictions]
    gold = [a.strip().lower() for a in answers]
    n = len(parsed)
    tp = sum(p == "yes" and g == "yes" for p, g in zip(parsed, gold, strict=True))
    fp = sum(p == "yes" and g != "yes" for p, g in zip(parsed, gold, strict=True))
    fn = sum(p != "yes" and g == "yes" for p, g in zip(parsed, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "accuracy": sum(p == g for p, g in zip(parsed, gold, strict=True)) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": parsed.count("yes") / n,
        "parse_rate": sum(p is not None for p in parsed) / n,
    }


def open_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """Free-form answers: exact match after `normalize_answer`, and whether the answer occurs as words."""
    pred = [normalize_answer(p) for p in predictions]
    gold = [normalize_answer(a) for a in answers]
    n = len(pred)
    return {
        "n": n,
        "accuracy": sum(p == g for p, g in zip(pred, gold, strict=True)) / n,
        "contains": sum(f" {g} " in f" {p} " for p, g in zip(pred, gold, strict=True)) / n,
    }


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """CIDEr of one caption per image against its references, as the COCO caption evaluation reports it
    (pycocoevalcap's `Cider`: the CIDEr-D formula, document frequencies from these references, x10).

    The COCO evaluation tokenises with a Java PTB tokenizer; lowercase words without punctuation come
    close without needing Java. Without pycocoevalcap: None and a note on how to install it.
    """
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return {
            "n": len(predictions),
            "cider": None,
            "note": "pycocoevalcap is not installed (pip install tokenprune[caption])",
        }
    gts = {i: [normalize_answer(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [normalize_answer(p)] for i, p in enumerate(predictions)}
    score, _ = Cider().compute_score(gts, res)
    return {"n": len(predictions), "cider": float(score)}
