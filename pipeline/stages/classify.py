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
from ..teachers import GenParams, Teacher
from .common import ProgressFn, map_pending
from .parse import parse_yes_no


def run_classify(teacher: Teacher, tasks: Sequence[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
                 progress: ProgressFn | None = None) -> int:
    c = cfg.classify
    params = GenParams(max_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p, stop=("\n", "Task:"))

    def call(chunk: list[Task]) -> list[Task | None]:
        todo = [t for t in chunk if t.is_classification is None]
        replies = dict(zip((t.id for t in todo), teacher.generate(
            [prompts.render("classify.txt", instruction=t.instruction) for t in todo], params, kind="classify")))
        out: list[Task | None] = []
        for t in chunk:
            reply = replies.get(t.id)
            if reply is None:  # already labelled (seed file, Alpaca mode with labels)
                out.append(dataclasses.replace(t, stage="classify"))
            elif not reply.ok:
                out.append(None)
            else:
                answer = parse_yes_no(reply.text)
                meta = t.meta if answer is not None else {**t.meta, "classify_reply": reply.text}
                # An unparseable answer counts as No: input-first generation suits most tasks.
                out.append(dataclasses.replace(t, stage="classify", is_classification=bool(answer), meta=meta))
        return out

    return map_pending(tasks, run, "classify", teacher, call, progress)
