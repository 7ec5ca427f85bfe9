"""What the per-task stages share: stream one teacher call per task not yet done.

A stage reads the previous stage's file, skips tasks already in its own file (so a
re-run resumes), and appends each result the moment its reply arrives: no batch
barrier, and an interruption loses only the calls in flight (whose replies, if they
arrived, are in the cache).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..context import RunContext, StepResult
from ..records import Task
from ..store import JsonlWriter, RunDir
from ..teachers import Completion, GenParams, Teacher
from ..teachers.base import WAIT, Request

ProgressFn = Callable[[int], None]
RAW_REPLY_CHARS = 2000  # a rejected reply is kept in meta for diagnosis, cut to this length
RETRY_TEMPERATURE = 0.7  # a retry of a greedy call samples: at temperature 0 the server would repeat the bad reply


def retry_params(params: GenParams) -> GenParams:
    """Sampling for the retry of an unusable reply: never greedy, so it can come out differently."""
    return dataclasses.replace(params, temperature=max(params.temperature, RETRY_TEMPERATURE),
                               top_p=params.top_p if params.top_p > 0 else 1.0)


def reply_meta(reply: Completion) -> dict[str, str]:
    return {"reply": reply.text[:RAW_REPLY_CHARS], "finish_reason": reply.finish_reason}


@dataclass
class MapResult:
    written: int = 0  # records appended to the stage file
    rejected: int = 0  # tasks whose replies stayed unusable after every retry (in rejected.jsonl)
    pending: int = 0  # tasks the teacher failed on: no record; a re-run tries them again
    retried: int = 0  # unusable replies asked again

    def counts(self, generated: int) -> dict[str, int]:
        return {"generated": generated, "kept": self.written, "rejected": self.rejected, "pending": self.pending,
                "retried": self.retried}

    def replies_note(self, max_retries: int, what: str = "task") -> str:
        """What happened to unusable replies, in words that say whether any retry happened at all."""
        def n(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        if not self.retried and not self.rejected:
            return "every reply usable at the first try"
        rejected = n(self.rejected, what, f"{what}s")
        if not self.retried:  # max_retries = 0, or score's log-probabilities, which a retry would not change
            return f"{rejected} rejected for an unusable reply, none asked again"
        asked = f"{n(self.retried, 'unusable reply', 'unusable replies')} asked again"
        if not self.rejected:
            return f"{asked}, none rejected"
        return f"{asked}, {rejected} rejected (still unusable after {n(max_retries, 'retry', 'retries')})"


def map_pending(tasks: Sequence[Task], run: RunDir, stage: str, teacher: Teacher, params: GenParams, *,
                prompt_for: Callable[[Task], str | None],
                finish: Callable[[Task, Completion | None, bool], Task | str],
                max_retries: int, progress: ProgressFn | None = None,
                params_for: Callable[[Task], GenParams | None] | None = None) -> MapResult:
    """One teacher call per task not yet in the stage file (nor rejected by this stage).

    prompt_for(task) is sent (None = no call needed). finish(task, reply or None, last_try)
    gives the record to append, or a reason "rule: detail" when the reply is unusable: then
    the task is asked again with a new request (the retry number is in the cache key, so the
    bad reply is not served again) up to max_retries times, and after that it goes to
    rejected.jsonl with the reason and the reply. params_for(task), when given, is that task's
    sampling where it differs from `params` (a schema per kind of task). A reply that is an error (the teacher
    failed after its own retries) leaves the task pending: no record, a re-run retries it.
    """
    done = {t.id for t in run.read_stage(stage)} | {t.id for t in run.read_rejected() if t.stage == stage}
    by_id = {t.id: t for t in tasks if t.id not in done}
    result = MapResult()
    retry: deque[Request] = deque()
    tries: dict[str, int] = {}
    prompts: dict[str, str] = {}
    own_params: dict[str, GenParams] = {}
    in_flight = 0
    with JsonlWriter(run.stage_file(stage)) as out, JsonlWriter(run.rejected_file) as rejected_out:

        def settle(task: Task, record: Task | None, reason: str | None, reply: Completion | None) -> None:
            if record is not None:
                out.write(record)
                result.written += 1
            elif reason is not None and reply is not None:
                meta = {**task.meta, f"{stage}_reply": reply_meta(reply), "tries": tries.get(task.id, 0) + 1}
                rejected_out.write(dataclasses.replace(task, meta=meta).rejected(reason, stage))
                result.rejected += 1
            if progress:
                progress(1)

        def requests() -> Iterator[Request | None]:
            nonlocal in_flight
            for task in by_id.values():
                prompt = prompt_for(task)
                if prompt is None:
                    verdict = finish(task, None, True)
                    settle(task, verdict if isinstance(verdict, Task) else None, None, None)
                    continue
                prompts[task.id] = prompt
                if params_for is not None and (p := params_for(task)) is not None:
                    own_params[task.id] = p
                in_flight += 1
                yield Request(task.id, prompt, salt=task.id, params=own_params.get(task.id))
            while retry or in_flight:
                if retry:
                    in_flight += 1
                    yield retry.popleft()
                else:
                    yield WAIT

        for req, reply in teacher.stream(requests(), params, kind=stage):
            in_flight -= 1
            task = by_id[req.key]
            if not reply.ok:
                settle(task, None, None, None)
                continue
            n = tries.get(task.id, 0)
            verdict = finish(task, reply, n >= max_retries)
            if isinstance(verdict, Task):
                settle(task, verdict, None, reply)
            elif n < max_retries:
                tries[task.id] = n + 1
                result.retried += 1
                retry.append(Request(task.id, prompts[task.id], salt=f"{task.id}:retry{n + 1}",
                                     params=retry_params(own_params.get(task.id, params))))
            else:
                settle(task, None, verdict, reply)
    # Failed, never sent (budget, a stop) or waiting for a retry that was never sent: all pending.
    result.pending = len(by_id) - result.written - result.rejected
    return result


def map_result(ctx: RunContext, stage: str, r: MapResult, n: int) -> StepResult:
    """A per-task stage's line and counts: written, rejected after the retries, retried, pending."""
    done = len(ctx.run.read_stage(stage))
    message = f"{stage}: {r.written} tasks written ({done} in {stage}.jsonl); {r.replies_note(ctx.cfg.teacher.max_retries)}"
    if r.pending:
        message += f"; the teacher failed on {r.pending} (see the errors above and the usage in manifest.json)"
    return StepResult(message, r.pending, r.counts(n))
