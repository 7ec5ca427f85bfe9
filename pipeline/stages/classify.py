"""Stage 2: classify each instruction with a few-shot Yes/No judgement.

"Is this a classification task, with a finite set of output labels?" The answer decides
how the instances stage writes its examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import ClassifyConfig, RunConfig
from ..context import Records, RunContext, StepResult
from ..prompts import Prompts
from ..records import Task
from ..store import RunDir
from ..teachers import Completion, GenParams, Teacher
from ..teachers.base import read_logprobs
from .calibrate import CLASSIFY_TEMPLATE, seed_threshold, yes_no_margin
from .common import MapResult, ProgressFn, TaskMap, map_pending, map_progress, map_result, reply_meta
from .parse import parse_yes_no
from .schemas import schema_params


def uses_logprobs(teacher: Teacher, method: str) -> bool:
    """classify.method, score.method: logprobs | text | auto (logprobs for in-process teachers, which always have them)."""
    return method == "logprobs" or (method == "auto" and teacher.describe().get("kind") == "hf")


def classify_params(c: ClassifyConfig, api: str, by_logprobs: bool) -> GenParams:
    """What each classify call asks of a teacher of `api` (chat or completions); the dry run counts its max_tokens."""
    if by_logprobs:  # Yes/No by log-probability margin (stages/calibrate.py): one token, its alternatives
        return GenParams(max_tokens=1, logprobs=c.top_logprobs)
    # A completion runs on into the next "Task:", so it stops at the end of its line; a chat reply
    # may open with a blank line ("\n\nYes"), which "\n" would cut to nothing, and ends by itself.
    continues = api == "completions"
    return GenParams(max_tokens=c.max_tokens if continues else c.chat_max_tokens, temperature=c.temperature,
                     top_p=c.top_p, stop=("\n", "Task:") if continues else ())


def run_classify(teacher: Teacher, tasks: Sequence[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
                 progress: ProgressFn | None = None) -> MapResult:
    task_map = classify_map(teacher, cfg, run, prompts, progress)
    if task_map is None:  # the seeds' calibration failed: every task waits for a re-run
        return MapResult(pending=len(tasks))
    return map_pending(tasks, teacher, task_map)


def classify_map(teacher: Teacher, cfg: RunConfig, run: RunDir, prompts: Prompts,
                 progress: ProgressFn | None = None) -> TaskMap | None:
    """The classify call of each task (common.TaskMap); None when the threshold's calibration on the seeds
    failed (a teacher error), which leaves every task pending."""
    c = cfg.classify
    params = classify_params(c, getattr(teacher, "api", "chat"), False)
    # {"answer": "Yes"} bound to the schema only with teacher.structured=on: bound to Yes|No, the embedded model said
    # Yes to 167 of 175 seed tasks (0.19 agreement with their labels) where its text answers agreed on 0.53, and
    # text Yes/No answers from chat models are read whole (benchmarks/RESULTS.md).
    if getattr(teacher, "structured", False) and getattr(teacher, "structured_setting", "") == "on":
        params = dataclasses.replace(params, stop=(), **schema_params("yes_no"))
    threshold = None
    if uses_logprobs(teacher, c.method):
        from ..seeds import load_seeds

        params = classify_params(c, getattr(teacher, "api", "chat"), True)
        threshold = c.threshold
        if c.calibrate:
            calibration = seed_threshold(teacher, load_seeds(cfg.seed_tasks or None), params, run, prompts)
            if calibration is None:
                return None
            threshold = c.threshold if calibration["threshold"] is None else calibration["threshold"]

    def prompt_for(t: Task) -> str | None:
        # Already labelled (seed file, a user's file with labels): no call.
        return None if t.is_classification is not None else prompts.render(CLASSIFY_TEMPLATE, instruction=t.instruction)

    def finish(t: Task, reply: Completion | None, last_try: bool) -> Task | str:
        if reply is None:
            return dataclasses.replace(t, stage="classify")
        top = read_logprobs(reply.text) if threshold is not None else None
        margin = yes_no_margin(top) if top else None
        if margin is not None:
            return dataclasses.replace(t, stage="classify", is_classification=margin > threshold,
                                       meta={**t.meta, "classify_margin": round(margin, 4), "classify_threshold": threshold})
        answer = parse_yes_no(reply.text)  # text, or {"answer": "Yes"} (teacher.structured): its first Yes or No
        if answer is None and not last_try:
            return f"unparseable_reply: {reply.text[:60]!r}"
        # Still no Yes or No after the retries: No, since input-first generation suits most tasks.
        meta = t.meta if answer is not None else {**t.meta, "classify_reply": reply_meta(reply)}
        return dataclasses.replace(t, stage="classify", is_classification=bool(answer), meta=meta)

    return TaskMap(run, "classify", params, prompt_for=prompt_for, finish=finish, max_retries=cfg.teacher.max_retries,
                   progress=progress)


def progress(ctx: RunContext, records: Records | None) -> tuple[str, int, int]:
    """One tick per task; records None: they flow in from bootstrap (stages/flow.py), up to its target."""
    return map_progress(ctx, "classify", records)


def check(ctx: RunContext) -> None:
    """classify.txt is there before the run pays for bootstrap: a copied prompts folder without it died here."""
    ctx.prompts.path(CLASSIFY_TEMPLATE)


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Label each task of `records` (bootstrap.jsonl or --input) classification or not; write classify.jsonl."""
    tasks = records or Records()
    return map_result(ctx, "classify", run_classify(ctx.teacher, tasks, ctx.cfg, ctx.run, ctx.prompts,
                                                    progress=ctx.advance), len(tasks))
