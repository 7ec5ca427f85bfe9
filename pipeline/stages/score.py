"""Score: a judge rates each kept instance 1-5 on a written rubric (prompts/score.txt), with a one-line reason.

AlpaGasus (Chen et al. 2024) kept the 9K of Alpaca's 52K rows that a ChatGPT judge rated
highest and beat the full set. The judge is any teacher: [score.teacher], by default the
run's own [teacher]; a stronger one than the generator is the point.

Input: the run's kept records, as export takes them (export.include: filter.jsonl and
evolve.jsonl). The unit is the instance, the unit of a fine-tuning row: the judge sees one
instruction, one input and one output.
Output: score.jsonl, one Task record per instance, with id "<task id>-<k>" (the row id
that records.task_rows gives the k-th instance), that one instance, meta["row_of"] = the
task's id and meta["score"] = {"rating": 1..5, "reason": "..."}. A reply with no usable
rating is asked again with a new salt (teacher.max_retries times, stages/common.py), then
the instance goes to rejected.jsonl (stage "score") with the parser's reason; the select
step ranks it below every rated row.

Replies: a JSON object where the server supports structured output (score.json_mode sends
OpenAI's response_format to chat servers), else whatever the judge writes, read by
parse.parse_rating (a bare number, "Rating: 4/5", prose with one number).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import RunConfig, TeacherConfig
from ..prompts import Prompts
from ..records import Task
from ..store import RunDir
from ..teachers import Completion, GenParams, Teacher
from .common import MapResult, ProgressFn, map_pending
from .parse import parse_rating

STAGE = "score"


def instance_records(tasks: Sequence[Task], stage: str) -> list[Task]:
    """One record per instance, id "<task id>-<k>" as records.task_rows names rows; meta["row_of"] = the task id."""
    return [dataclasses.replace(t, id=f"{t.id}-{k}", instances=[inst], stage=stage,
                                meta={**t.meta, "row_of": t.id})
            for t in tasks for k, inst in enumerate(t.instances)]


def judge_config(cfg: RunConfig) -> TeacherConfig:
    """The judge's teacher settings: [score.teacher] when it names a spec, else the run's [teacher]."""
    return cfg.score.teacher if cfg.score.teacher.spec else cfg.teacher


def run_score(teacher: Teacher, tasks: Sequence[Task], cfg: RunConfig, run: RunDir, prompts: Prompts,
              progress: ProgressFn | None = None) -> MapResult:
    """Rate every instance of `tasks` not yet in score.jsonl (nor rejected by this stage)."""
    c = cfg.score
    params = GenParams(max_tokens=c.max_tokens, temperature=c.temperature, json_mode=c.json_mode)

    def prompt_for(t: Task) -> str:
        inst = t.instances[0]
        return prompts.render("score.txt", instruction=t.instruction.strip(), input=inst.input.strip() or "(none)",
                              output=inst.output.strip() or "(empty)")

    def finish(t: Task, reply: Completion | None, last_try: bool) -> Task | str:
        rating, reason = parse_rating(reply.text if reply is not None else "")
        if rating is None:
            return f"unparseable_rating: {reason}"
        return dataclasses.replace(t, meta={**t.meta, "score": {"rating": rating, "reason": reason},
                                            "score_teacher": teacher.name})

    return map_pending(instance_records(tasks, STAGE), run, STAGE, teacher, params, prompt_for=prompt_for,
                       finish=finish, max_retries=judge_config(cfg).max_retries, progress=progress)
