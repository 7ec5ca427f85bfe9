"""Filters: instruction rules, ROUGE-L novelty against the pool, and instance cleaning.

`InstructionFilter` is the one filter of the project. Bootstrap uses it online (so the
pool grows to its target with novel instructions, as Self-Instruct did), the filter
stage re-applies it to a whole file, and evolution uses it on evolved instructions.
Each rule returns None (keep) or a reason string "rule: detail" that goes with the
record into rejected.jsonl.

Instance cleaning adds one rule to Self-Instruct's: `copied_demo`, an instance whose input or
output repeats a worked example of the very prompt it was made with (small base teachers
copy them: Gemma-3-270M answered an unrelated task with "Libraries will open until nine.").
The examples are read from the rendered templates, never written down here, so an edited
prompt is checked against its own examples.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..config import FilterConfig
from ..context import Records, RunContext, StepResult
from ..errors import Seed2LoraError
from ..prompts import Prompts
from ..records import Instance, Task
from ..similarity import RougeLIndex
from ..store import seeds_used, write_jsonl_atomic
from .common import no_novelty_note
from .instances import instance_prompt
from .parse import parse_input_first, parse_output_first

TASK_SLOT = "SEED2LORA-TASK-SLOT"  # rendered in the place of the task, so its block is told from the examples


@functools.lru_cache(maxsize=8)
def blacklisted(words: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether any of `words` is in a text (whole word, any case), by one pattern: most instructions pass, and
    one search costs a bootstrap reply far less than one per word did. An ASCII text and list are first looked
    through lower-cased, word by word as plain substrings: a match of the pattern is one of those, and most
    texts hold none, so the pattern runs only for the few that do."""
    if not words:
        return lambda text: False
    pattern = re.compile("|".join(rf"\b{re.escape(word)}\b" for word in words), re.IGNORECASE)
    look = None  # any of the words in the lower-cased text, as plain text: one search, of the words no other holds
    if all(word.isascii() for word in words):  # ("images" is in every text that "image" is): 1.8 -> 1.1 us (issue 20)
        lowered = {word.lower() for word in words}
        look = re.compile("|".join(re.escape(word) for word in sorted(lowered)
                                   if not any(other != word and other in word for other in lowered))).search

    def found(text: str) -> bool:
        if look is not None and text.isascii() and look(text.lower()) is None:
            return False
        return pattern.search(text) is not None

    return found


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
    if blacklisted(tuple(cfg.blacklist))(text):  # any word at all: then the first of the list, by name
        for word in cfg.blacklist:
            if re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE):
                return f"blacklist: {word}"
    for prefix in cfg.banned_prefixes:
        if text.startswith(prefix):
            return f"banned_prefix: {prefix}"
    if text[0] in string.punctuation:  # the character named, as every rule's reason names what it found
        return f"starts_with_punctuation: {text[0]!r}"
    if not text[0].isascii():
        return f"starts_with_non_ascii: {text[0]!r}"
    return None


class Passed(NamedTuple):
    """A candidate that passed the filter: its closest pool entries and its mean score, as one check found them."""

    top: list[tuple[int, float]]  # (position in the index it was checked against, ROUGE-L F), best first
    mean: float  # its mean F against that index
    seeds_only: bool  # that index was the seeds' (rouge_against_seeds_only), not the whole pool's


def fill_similar(task: Task, passed: Passed, text: Callable[[int], str], k: int) -> None:
    """Set a passing task's most_similar_instructions (the top k, `text` naming each position) and its
    avg_similarity_score, as the records keep them."""
    task.most_similar_instructions = {text(i): score for i, score in passed.top[:k]}
    task.avg_similarity_score = passed.mean


class InstructionFilter:
    """Rules plus ROUGE-L novelty against a growing pool (seeds first, then kept tasks)."""

    def __init__(self, cfg: FilterConfig, pool: Iterable[str] = (), *, seeds: Iterable[str] = ()):
        self.cfg = cfg
        self.index = RougeLIndex(use_stemmer=False)
        self.seed_index = RougeLIndex(use_stemmer=False)
        self.passed: set[str] = set()  # ids of the lines decide() passed
        self.answers: deque[list[str | Passed | None]] = deque()  # verdicts sent, not yet received
        for text in seeds:
            self.seed_index.add(text)
            self.index.add(text)
        for text in pool:
            self.index.add(text)

    def verdict(self, instruction: str, ignore: Collection[str] = ()) -> str | Passed:
        """The reject reason for an instruction, or how it passed. `ignore`: pool texts that may be as close as they
        like (an evolved instruction's own ancestors: an in-depth rewrite contains its parent by design)."""
        reason = instruction_reject_reason(instruction, self.cfg)
        if reason:
            return reason
        seeds_only = self.cfg.rouge_against_seeds_only
        index = self.seed_index if seeds_only else self.index
        if len(index) == 0:
            return Passed([], 0.0, seeds_only)
        # One row of scores per candidate: its max, its top-k (best first, ties by pool order) and its mean, in one
        # call (the first of the top-k is the closest entry a rejection names).
        best, top, mean = index.summary(instruction, max(1, self.cfg.most_similar_k))
        if best > self.cfg.rouge_threshold:
            pos, score = top[0]
            if ignore and index.text(pos) in ignore:
                scores = index.scores(instruction)
                over = [(int(i), float(scores[i])) for i in np.flatnonzero(scores > self.cfg.rouge_threshold)
                        if index.text(int(i)) not in ignore]
                pos, score = max(over, key=lambda x: x[1], default=(None, 0.0))
            if pos is not None:
                return f"rouge_l: {score:.3f} > {self.cfg.rouge_threshold} vs {index.text(pos)!r}"
        return Passed(top, mean, seeds_only)

    def check(self, task: Task, *, ignore: Collection[str] = ()) -> str | None:
        """Reject reason for a task, or None; on keep, fills most_similar_instructions and avg_similarity_score."""
        verdict = self.verdict(task.instruction, ignore)
        if isinstance(verdict, str):
            return verdict
        fill_similar(task, verdict, self.text_of(verdict), self.cfg.most_similar_k)
        return None

    def text_of(self, passed: Passed) -> Callable[[int], str]:
        """What names a position of a passing verdict: the index it was checked against."""
        return (self.seed_index if passed.seeds_only else self.index).text

    def add(self, instruction: str) -> None:
        self.index.add(instruction)

    def decide(self, lines: Sequence[tuple[str, str]]) -> list[str | Passed | None]:
        """The verdicts on one reply's (id, instruction) lines, in order, as bootstrap takes them: a line that
        passes is added to the pool before the next is checked; a line with the id of one passed before it (in
        `lines` or an earlier call) is neither checked nor added (None: the caller rejects it as a duplicate)."""
        out: list[str | Passed | None] = []
        for key, instruction in lines:
            verdict = None if key in self.passed else self.verdict(instruction)
            if isinstance(verdict, Passed):
                self.passed.add(key)
                self.add(instruction)
            out.append(verdict)
        return out

    def send(self, lines: Sequence[tuple[str, str]]) -> None:
        """decide() on a reply's lines, its verdicts kept for receive(): the interface of a filter whose verdicts
        are asked for and collected apart (ForkedFilter), replies in the same order."""
        self.answers.append(self.decide(lines))

    def receive(self) -> list[str | Passed | None]:
        """The verdicts on the oldest lines sent."""
        return self.answers.popleft()


def prompt_demonstrations(text: str) -> list[str]:
    """The inputs and outputs of the worked examples in a rendered instances prompt, in order.

    Each "Task:" block is read by the parsers that read the teacher's replies (input-first and
    output-first), so an example counts as the text a reply copying it would give; the block
    holding TASK_SLOT (the task to answer) is not an example.
    """
    out: list[str] = []
    for block in re.split(r"(?m)^(?=Task:)", text):
        if block.startswith("Task:") and TASK_SLOT not in block:
            for inst in [*parse_input_first(block), *parse_output_first(block)]:
                out += [t for t in (inst.input, inst.output) if t and t not in out]
    return out


def instance_demonstrations(prompts: Prompts) -> dict[str, list[str]]:
    """The examples of each instances template, by its name as a task's `prompt` field records it."""
    out = {}
    for is_classification in (False, True):
        name, text = instance_prompt(Task(id="demo", instruction=TASK_SLOT, is_classification=is_classification),
                                     prompts)
        out[name] = prompt_demonstrations(text)
    return out


def own_demonstrations(task: Task, demos: Mapping[str, Sequence[str]]) -> list[str]:
    """The examples of the prompts a task was made with (its `prompt` field, e.g. "bootstrap.txt,instances_gen.txt");
    none for a seed, whose instances a person wrote."""
    if task.origin == "seed" or not task.prompt:
        return []
    return [d for name in task.prompt.split(",") for d in demos.get(name.strip(), ())]


def words_of(text: str) -> str:
    """Lower-case words and numbers, one space apart: what `copied_demo` compares, case, spacing and punctuation aside."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def copied_demo_reason(inst: Instance, demos: Iterable[str], min_words: int) -> str | None:
    """`copied_demo` when the input or output is, or holds whole, an example of the prompt, word for word (words_of);
    examples under min_words words never count (a label such as "Positive" is every sentiment task's answer)."""
    for field_name, text in (("input", inst.input), ("output", inst.output)):
        padded = f" {words_of(text)} "
        for demo in demos:
            words = words_of(demo)
            if len(words.split()) >= min_words and f" {words} " in padded:
                return f"copied_demo: the {field_name} repeats the prompt's example {demo!r}"
    return None


def clean_instances(instances: list[Instance], max_instances: int, demos: Sequence[str] = (),
                    demo_min_words: int = FilterConfig.copied_demo_min_words) -> tuple[list[Instance], list[dict[str, str]]]:
    """Self-Instruct's instance cleaning, and `copied_demo` against `demos` (the examples of the instance's own
    prompt). Returns (kept, dropped with a reason each)."""
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
        else:
            reason = copied_demo_reason(inst, demos, demo_min_words)
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


def filter_tasks(tasks: list[Task], seeds: list[Task], cfg: FilterConfig,
                 demos: Mapping[str, Sequence[str]] | None = None) -> tuple[list[Task], list[Task]]:
    """The filter stage over a whole file: (kept, rejected), in input order, pool grown in order.

    `rejected` holds the rejected tasks, then one record per instance that cleaning dropped
    (id "<task id>#k", meta "instance_of", reason "instance_<rule>: ...").
    `demos`: each instances template's examples (instance_demonstrations), for `copied_demo`.

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
            own = own_demonstrations(task, demos or {}) if cfg.drop_copied_demos else []
            instances, dropped = clean_instances(task.instances, cfg.max_instances, own, cfg.copied_demo_min_words)
            task.instances = instances
            drops += [dataclasses.replace(task, id=f"{task.id}#{k}", instances=[Instance(d["input"], d["output"])],
                                          meta={**task.meta, "instance_of": task.id}).rejected(
                          f"instance_{drop_reason(d['reason'], task.id)}", "filter")
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


def drop_reason(reason: str, task_id: str) -> str:
    """A cleaning rule's reason with the task it was dropped from: "rule: detail; dropped from <id>"."""
    rule, _, detail = reason.partition(": ")
    return f"{rule}: {detail + '; ' if detail else ''}dropped from {task_id}"


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Filter `records` (instances.jsonl or --input) whole: filter.jsonl and this stage's rejections are replaced."""
    tasks = list(records or ())
    # A user's rows (--input) are compared with each other only: the seed file (the bundled 175 by default) played
    # no part in them (in a run that bootstrapped too, they replace its tasks), and its tasks in the ROUGE-L pool
    # rejected a user's row as a near-copy of a task they never gave. The rule of export's seed rows and evolve's pool.
    seeds = ctx.seeds if seeds_used(ctx.run.manifest(), importing=ctx.importing) else []
    no_novelty_note(ctx, seeds, "the rows")
    kept, rejected = filter_tasks(tasks, seeds, ctx.cfg.filter, instance_demonstrations(ctx.prompts))
    write_jsonl_atomic(ctx.run.stage_file("filter"), kept)
    ctx.run.replace_rejected("filter", rejected)
    if tasks and not kept:
        raise Seed2LoraError(f"the filter rejected all {len(tasks)} tasks; see {ctx.run.rejected_file} "
                             "for the reasons (or loosen [filter] settings)")
    dropped = sum(1 for r in rejected if r.meta.get("instance_of"))
    return StepResult(f"filter: {len(kept)} kept, {len(rejected) - dropped} rejected, {dropped} instances dropped",
                      0, {"generated": len(tasks), "kept": len(kept), "rejected": len(rejected) - dropped,
                          "instances_dropped": dropped})
