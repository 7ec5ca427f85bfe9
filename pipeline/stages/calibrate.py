"""Logit classification: Yes versus No by log-probability, with a threshold fitted on labelled seed tasks.

Greedy decoding reads only which of Yes and No is likelier. A small teacher says "No" to
nearly every task (the embedded model did so to all 50 of a run's tasks) while its margin
log P(Yes) - log P(No) still ranks classification tasks above the rest (AUC 0.78 on the
175 seeds). So the margin is compared with a threshold chosen on the run's labelled seed
tasks, where the truth is known, instead of with 0.

Pure functions plus `seed_threshold`, which asks the teacher once per run and keeps the
result in classify_calibration.json (a re-run reads it back; its replies are cached anyway).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..prompts import Prompts
from ..records import Task
from ..store import RunDir, write_text_atomic
from ..teachers import GenParams, Teacher
from ..teachers.base import read_logprobs

CLASSIFY_TEMPLATE = "classify.txt"  # the Yes/No question classify asks, and the seeds' calibration with it

CALIBRATION_FILE = "classify_calibration.json"
MIN_PER_CLASS = 2  # fewer labelled seeds of a class than this cannot place a threshold: the configured one is used


def yes_no_margin(top: dict[str, float]) -> float | None:
    """log P(Yes) - log P(No) over the answer token's alternatives (" Yes", "yes", "YES" all count as Yes).

    A label missing from the top-k is given the lowest listed log-probability (an upper bound
    on its own); None when neither label is listed.
    """
    groups: dict[str, list[float]] = {"yes": [], "no": []}
    for token, lp in top.items():
        word = token.strip().lower()
        if word in groups:
            groups[word].append(lp)
    if not groups["yes"] and not groups["no"]:
        return None
    floor = min(top.values())
    yes, no = (_logsumexp(groups[w]) if groups[w] else floor for w in ("yes", "no"))
    return yes - no


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def balanced_accuracy(predicted: Sequence[bool], truth: Sequence[bool]) -> float:
    """Mean of the recall on each class: 0.5 for a classifier that always says No, whatever the class balance."""
    recalls = []
    for cls in (True, False):
        n = sum(1 for t in truth if t is cls)
        if n:
            recalls.append(sum(1 for p, t in zip(predicted, truth, strict=True) if t is cls and p is cls) / n)
    return sum(recalls) / len(recalls) if recalls else 0.0


def auc(scores: Sequence[float], truth: Sequence[bool]) -> float:
    """The chance that a random positive scores above a random negative (ties count half)."""
    pos = [s for s, t in zip(scores, truth, strict=True) if t]
    neg = [s for s, t in zip(scores, truth, strict=True) if not t]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def fit_threshold(margins: Sequence[float], truth: Sequence[bool]) -> tuple[float, float]:
    """(threshold, accuracy on these items): the cut between sorted margins that labels the most items right.

    Accuracy, because the two errors are not alike: a free-text task called classification
    gets its instances written label-first, which breaks them, while a classification task
    called free text still gets usable ones. Among equally good cuts the middle one is taken.
    Measured on the 175 bundled seeds with the embedded model, fitted on one half and scored
    on the other (docs/quality.md): accuracy 0.891 and balanced accuracy 0.746 against
    greedy's 0.880 and 0.628; maximising balanced accuracy instead gave 0.771 and 0.771
    with 34 free-text tasks called classification.
    """
    values = sorted(set(margins))
    cuts = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)] + [values[-1] + 1.0]
    scored = [(sum((m > c) == t for m, t in zip(margins, truth, strict=True)) / len(truth), c) for c in cuts]
    best = max(s for s, _ in scored)
    ties = [c for s, c in scored if s == best]
    return ties[len(ties) // 2], best


def seed_threshold(teacher: Teacher, seeds: Sequence[Task], params: GenParams, run: RunDir,
                   prompts: Prompts) -> dict[str, Any] | None:
    """The calibration of this run: {threshold, n, positives, balanced_accuracy, auc}; None while replies are missing.

    Read from classify_calibration.json when it was made with the same teacher and seeds.
    """
    labelled = [s for s in seeds if s.is_classification is not None]
    path = run.path / CALIBRATION_FILE
    key = {"teacher": teacher.name, "seeds": sorted(s.id for s in labelled)}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved
    truth = [bool(s.is_classification) for s in labelled]
    if sum(truth) < MIN_PER_CLASS or len(truth) - sum(truth) < MIN_PER_CLASS:
        return {"key": key, "threshold": None, "n": len(truth), "positives": sum(truth),
                "why": f"fewer than {MIN_PER_CLASS} labelled seeds of a class"}
    replies = teacher.generate([prompts.render(CLASSIFY_TEMPLATE, instruction=s.instruction) for s in labelled], params,
                               kind="classify_calibration", salts=[s.id for s in labelled])
    if not all(r.ok for r in replies):
        return None  # a teacher failure or a spent budget: the classify step stays pending
    margins = [yes_no_margin(read_logprobs(r.text) or {}) for r in replies]
    pairs = [(m, t) for m, t in zip(margins, truth, strict=True) if m is not None]
    if not pairs:
        return {"key": key, "threshold": None, "n": len(truth), "positives": sum(truth),
                "why": "the teacher returned no Yes/No log-probabilities"}
    ms, ts = [m for m, _ in pairs], [t for _, t in pairs]
    threshold, accuracy = fit_threshold(ms, ts)
    at_0 = [m > 0 for m in ms]
    out = {"key": key, "threshold": round(threshold, 4), "n": len(ms), "positives": sum(ts),
           "accuracy": round(accuracy, 4), "balanced_accuracy": round(balanced_accuracy([m > threshold for m in ms], ts), 4),
           "accuracy_at_0": round(sum(p == t for p, t in zip(at_0, ts, strict=True)) / len(ts), 4),
           "balanced_accuracy_at_0": round(balanced_accuracy(at_0, ts), 4), "auc": round(auc(ms, ts), 4)}
    run.ensure()
    write_text_atomic(path, json.dumps(out, indent=2) + "\n")
    return out
