"""Stage 2: classify each instruction with a few-shot Yes/No judgement.

"Is this a classification task, with a finite set of output labels?" The answer decides
how the instances stage writes its examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import RunConfig
from ..prompts import Prompts
from ..records import Task
from ..store import RunDir
from ..teachers import Completion, GenParams, Teacher
from .common import MapResult, ProgressFn, map_pending, reply_meta
from .parse import parse_yes_no


def run_classify(teacher: Teacher, tasks: Sequence[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
                 progress: ProgressFn | None = None) -> MapResult:
    c = cfg.classify
    params = GenParams(max_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p, stop=("\n", "Task:"))

    def prompt_for(t: Task) -> str | None:
        # Already labelled (seed file, a user's file with labels): no call.
        return None if t.is_classification is not None else prompts.render("classify.txt", instruction=t.instruction)

    def finish(t: Task, reply: Completion | None, last_try: bool) -> Task | str:
        if reply is None:
            return dataclasses.replace(t, stage="classify")
        answer = parse_yes_no(reply.text)
        if answer is None and not last_try:
            return f"unparseable_reply: {reply.text[:60]!r}"
        # Still no Yes or No after the retries: No, since input-first generation suits most tasks.
        meta = t.meta if answer is not None else {**t.meta, "classify_reply": reply_meta(reply)}
        return dataclasses.replace(t, stage="classify", is_classification=bool(answer), meta=meta)

    return map_pending(tasks, run, "classify", teacher, params, prompt_for=prompt_for, finish=finish,
                       max_retries=cfg.teacher.max_retries, progress=progress)
