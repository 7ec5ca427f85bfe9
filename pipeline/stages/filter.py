"""Filters: instruction rules, ROUGE-L novelty against the pool, and instance cleaning.

`InstructionFilter` is the one filter of the project. Bootstrap uses it online (so the
pool grows to its target with novel instructions, as Self-Instruct did), the filter
stage re-applies it to a whole file, and evolution uses it on evolved instructions.
Each rule returns None (keep) or a reason string "rule: detail" that goes with the
record into rejected.jsonl.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Collection, Iterable

import numpy as np

from ..config import FilterConfig
from ..records import Instance, Task
from ..similarity import RougeLIndex


def instruction_reject_reason(instruction: str, cfg: FilterConfig) -> str | None:
    """Self-Instruct's cheap rules on one instruction; None when it passes."""
    text = instruction.strip()
    if not text:
        return "empty_instruction"
    n_words = len(text.split())
    if n_words < cfg.min_words:
        return f"too_short: {n_words} words"
    if n_words > cfg.max_words:
        return f"too_long: {n_words} words"
    for word in cfg.blacklist:
        if re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE):
            return f"blacklist: {word}"
    for prefix in cfg.banned_prefixes:
        if text.startswith(prefix):
            return f"banned_prefix: {prefix}"
    if text[0] in string.punctuation:
        return "starts_with_punctuation"
    if not text[0].isascii():
        return "starts_with_non_ascii"
    return None


class InstructionFilter:
    """Rules plus ROUGE-L novelty against a growing pool (seeds first, then kept tasks)."""

    def __init__(self, cfg: FilterConfig, pool: Iterable[str] = (), *, seeds: Iterable[str] = ()):
        self.cfg = cfg
        self.index = RougeLIndex(use_stemmer=False)
        self.seed_index = RougeLIndex(use_stemmer=False)
        for text in seeds:
            self.seed_index.add(text)
            self.index.add(text)
        for text in pool:
            self.index.add(text)

    def check(self, task: Task, *, ignore: Collection[str] = ()) -> str | None:
        """Reject reason for a task, or None; on keep, fills most_similar and avg_similarity_score.

        `ignore`: pool texts that may be as close as they like (an evolved instruction's own
        ancestors: an in-depth rewrite contains its parent by design).
        """
        reason = instruction_reject_reason(task.instruction, self.cfg)
        if reason:
            return reason
        index = self.seed_index if self.cfg.rouge_against_seeds_only else self.index
        if len(index) == 0:
            task.most_similar_instructions, task.avg_similarity_score = {}, 0.0
            return None
        best = index.max_score(task.instruction)
        if best > self.cfg.rouge_threshold:
            (pos, score), = index.top_k(task.instruction, k=1)
            if ignore and index.text(pos) in ignore:
                scores = index.scores(task.instruction)
                over = [(int(i), float(scores[i])) for i in np.flatnonzero(scores > self.cfg.rouge_threshold)
                        if index.text(int(i)) not in ignore]
                pos, score = max(over, key=lambda x: x[1], default=(None, 0.0))
            if pos is not None:
                return f"rouge_l: {score:.3f} > {self.cfg.rouge_threshold} vs {index.text(pos)!r}"
        scores = index.scores(task.instruction)
        k = min(self.cfg.most_similar_k, len(scores))
        # argpartition then a stable sort of k: O(n) per candidate, not a full O(n log n) argsort.
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        task.most_similar_instructions = {index.text(int(i)): float(scores[i]) for i in top}
        task.avg_similarity_score = float(np.mean(scores))
        return None

    def add(self, instruction: str) -> None:
        self.index.add(instruction)


def clean_instances(instances: list[Instance], max_instances: int) -> tuple[list[Instance], list[dict[str, str]]]:
    """Self-Instruct's instance cleaning. Returns (kept, dropped with a reason each)."""
    dropped: list[dict[str, str]] = []
    valid: list[Instance] = []
    for inst in instances:
        inp, out = inst.input.strip(), inst.output.strip()
        reason = None
        if not out:
            reason = "empty_output"
        elif inp == out:
            reason = "input_equals_output"
        elif inp.endswith(":") or out.endswith(":"):
            reason = "ends_with_colon"  # a cut-off field, e.g. "Output:" with nothing after it
        if reason:
            dropped.append({"input": inst.input, "output": inst.output, "reason": reason})
        else:
            valid.append(Instance(inp, out))
    # The same non-empty input with different outputs means the teacher did not understand
    # the task: Self-Instruct then drops all of the task's instances.
    outputs_by_input: dict[str, set[str]] = {}
    for inst in valid:
        if inst.input:
            outputs_by_input.setdefault(inst.input, set()).add(inst.output)
    conflict = any(len(outs) > 1 for outs in outputs_by_input.values())
    kept: list[Instance] = []
    seen: set[tuple[str, str]] = set()
    for inst in valid:
        if conflict:
            reason = "conflicting_outputs"
        elif (inst.input, inst.output) in seen:
            reason = "duplicate_instance"
        elif len(kept) >= max_instances:
            reason = "over_max_instances"
        else:
            seen.add((inst.input, inst.output))
            kept.append(inst)
            continue
        dropped.append({"input": inst.input, "output": inst.output, "reason": reason})
    return kept, dropped


def filter_tasks(tasks: list[Task], seeds: list[Task], cfg: FilterConfig) -> tuple[list[Task], list[Task]]:
    """The filter stage over a whole file: (kept, rejected), in input order, pool grown in order.

    `rejected` holds the rejected tasks, then one record per instance that cleaning dropped
    (id "<task id>#k", meta "instance_of", reason "instance_<rule>: ...").

    Rules and instance cleaning do not depend on the pool, so they run first; the
    candidates left go through the index's batch filter, which scores 64 of them per pass
    over the pool and decides them in order, exactly as one-by-one checks would.
    """
    filt = InstructionFilter(cfg, seeds=[s.instruction for s in seeds])
    verdicts: dict[int, str] = {}
    candidates: list[int] = []
    drops: list[Task] = []  # instances cleaned away, each in rejected.jsonl with its reason and its task's id
    tasks = [dataclasses.replace(t, stage="filter") for t in tasks]
    for i, task in enumerate(tasks):
        reason = instruction_reject_reason(task.instruction, cfg)
        if reason is None:
            instances, dropped = clean_instances(task.instances, cfg.max_instances)
            task.instances = instances
            drops += [dataclasses.replace(task, id=f"{task.id}#{k}", instances=[Instance(d["input"], d["output"])],
                                          meta={**task.meta, "instance_of": task.id}).rejected(
                          f"instance_{d['reason']}: dropped from {task.id}", "filter")
                      for k, d in enumerate(dropped)]
            if cfg.require_instances and not instances:
                reason = "no_valid_instances"
        if reason:
            verdicts[i] = reason
        else:
            candidates.append(i)
    if cfg.rouge_against_seeds_only:
        for i in candidates:
            if reason := filt.check(tasks[i]):
                verdicts[i] = reason
    else:
        index = filt.index
        decisions = index.filter_batch_detailed([tasks[i].instruction for i in candidates],
                                                cfg.rouge_threshold, k=cfg.most_similar_k)
        for i, d in zip(candidates, decisions, strict=True):
            if d.added:
                tasks[i].most_similar_instructions = {index.text(pos): score for pos, score in d.top_k}
                tasks[i].avg_similarity_score = d.mean_score
            else:
                pos, score = d.top_k[0]
                verdicts[i] = f"rouge_l: {score:.3f} > {cfg.rouge_threshold} vs {index.text(pos)!r}"
    kept = [t for i, t in enumerate(tasks) if i not in verdicts]
    rejected = [t.rejected(verdicts[i], "filter") for i, t in enumerate(tasks) if i in verdicts]
    return kept, rejected + drops
