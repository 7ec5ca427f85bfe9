"""What the per-task stages share: stream one teacher call per task not yet done.

A stage reads the previous stage's file, skips tasks already in its own file (so a
re-run resumes), and appends each result as its reply arrives: no batch barrier, and an
interruption loses only the calls in flight (whose replies, if they arrived, are in the
cache) and, after a kill -9, the records of the last tenth of a second (held to be written
together: store.RECORD_HOLD_S), which a resume makes again from the cache at no cost.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..context import Records, RunContext, StepResult
from ..errors import counted
from ..records import Task
from ..store import RECORD_HOLD_S, STAGES, JsonlWriter, RunDir
from ..teachers import Completion, GenParams, Teacher
from ..teachers.base import WAIT, Request

ProgressFn = Callable[[int], None]
RAW_REPLY_CHARS = 2000  # a rejected reply is kept in meta for diagnosis, cut to this length
RETRY_TEMPERATURE = 0.7  # a retry of a greedy call samples: at temperature 0 the server would repeat the bad reply


def retry_params(params: GenParams) -> GenParams:
    """Sampling for the retry of an unusable reply: never greedy, so it can come out differently."""
    return dataclasses.replace(params, temperature=max(params.temperature, RETRY_TEMPERATURE),
                               top_p=params.top_p if params.top_p > 0 else 1.0)


def reply_meta(reply: Completion) -> dict[str, Any]:
    """A reply as a record keeps it (meta[f"{stage}_reply"]): its text, cut, and how it ended; and batch_meta."""
    return {"reply": reply.text[:RAW_REPLY_CHARS], "finish_reason": reply.finish_reason, **batch_meta(reply)}


def batch_meta(reply: Completion) -> dict[str, Any]:
    """Where a reply was paid, when that was a Batch API batch: {"batch": its id, "wave": 1 + the waves in which
    the request's line failed before}. A direct reply: nothing."""
    return {"batch": reply.batch, "wave": reply.retries + 1} if reply.batch else {}


@dataclass
class MapResult:
    written: int = 0  # records appended to the stage file
    rejected: int = 0  # tasks whose replies stayed unusable after every retry (in rejected.jsonl)
    pending: int = 0  # tasks the teacher failed on: no record; a re-run tries them again
    retried: int = 0  # unusable replies asked again
    # failed calls sent again (a batch line in a later wave, a 429, 5xx, timeout or dropped connection, as when an
    # endpoint dies), summed over this session's replies, failed ones included: Completion.resent, the count the
    # usage log keeps as "retries" (`show`). Before, the replies that had any were counted: "2 replies came only
    # after a failed call" beside `show`'s 11 retries of classify
    resent: int = 0
    # Why the last call that got no reply failed ("HTTP 400 BadRequestError: ..."): the stage's line names it. A 400,
    # or a 5xx with teacher.max_retries = 0, is no retry event, so "see the errors above" pointed at no line at all
    error: str = ""

    def failed_note(self, who: str = "teacher") -> str:
        """"; the teacher failed on N (the last error: ...)": the pending tasks and why; "" when none."""
        if not self.pending:
            return ""
        why = f"the last error: {self.error}; " if self.error else ""
        return f"; the {who} failed on {self.pending} ({why}see the errors above and the usage in manifest.json)"

    def counts(self, read: int) -> dict[str, int]:
        """The manifest's counts of this session. input: the records the stage read, earlier sessions' outcomes
        included (a resume reads them all and skips those); generated: the outcomes this session gave, kept or
        rejected (`show`'s "last session: generated"; it was the input, so a resume that labelled 2 of 10 said 10)."""
        return {"input": read, "generated": self.written + self.rejected, "kept": self.written,
                "rejected": self.rejected, "pending": self.pending, "retried": self.retried}

    def replies_note(self, max_retries: int, what: str = "task", batch: bool = False) -> str:
        """What happened to unusable replies, in words that say whether any retry happened at all, and to calls
        that failed and were sent again (resent, said as every stage says it: resent_note): a reply that came in a
        later batch wave was no first try. `batch`: the teacher sends through the Batch API."""
        note = self.parsing_note(max_retries, what)
        if self.resent and note == "every reply usable at the first try":
            note = "every reply usable, none asked again"
        return note + resent_note(self.resent, batch)

    def parsing_note(self, max_retries: int, what: str) -> str:
        if not self.written and not self.retried and not self.rejected:  # a resume of a finished stage asks nothing
            return "no reply to read" if self.pending else "nothing left to ask"
        if not self.retried and not self.rejected:
            return "every reply usable at the first try"
        rejected = counted(self.rejected, what)
        if not self.retried:  # max_retries = 0, or score's log-probabilities, which a retry would not change
            return f"{rejected} rejected for an unusable reply, none asked again"
        asked = f"{counted(self.retried, 'unusable reply', 'unusable replies')} asked again"
        if not self.rejected:
            return f"{asked}, none rejected"
        return f"{asked}, {rejected} rejected (still unusable after {counted(max_retries, 'retry', 'retries')})"


def resent_note(resent: int, batch: bool = False) -> str:
    """"; N retries of failed calls (...)", "" for none: every stage's line says its retries in these words, and
    the number is `show`'s "retries" of its calls (Completion.resent, summed over this session's replies).
    `batch`: the teacher sends through the Batch API (else a batch wave is not among the causes named)."""
    if not resent:
        return ""
    causes = "a batch line failed in a wave, or a 429" if batch else "a 429"
    retries = "1 retry of a failed call" if resent == 1 else f"{resent} retries of failed calls"
    return f"; {retries} ({causes}, 5xx, timeout or dropped connection)"


def outcomes(run: RunDir, stage: str) -> set[str]:
    """The ids of the tasks a per-task stage is done with: a record in its file, or a rejection by it. A resume
    sends them nothing, and a resumed bar counts on from them (RunDir.outcomes; RunDir.pending counts the rest)."""
    return run.outcomes(stage)


class TaskMap:
    """One per-task stage's calls, as pieces a stream can drive: `add` a task (its request, or its record at
    once when it needs no call), `read` a reply (a retry, the record written, or None), and `result()`.
    map_pending streams one stage's tasks alone; stages/flow.py streams several stages' through one stream.

    prompt_for(task) is sent (None = no call needed). finish(task, reply or None, last_try)
    gives the record to append, or a reason "rule: detail" when the reply is unusable: then
    the task is asked again with a new request (the retry number is in the cache key, so the
    bad reply is not served again) up to max_retries times, and after that it goes to
    rejected.jsonl with the reason and the reply. params_for(task), when given, is that task's
    sampling where it differs from `params` (a schema per kind of task). A reply that is an error (the teacher
    failed after its own retries) leaves the task pending: no record, a re-run retries it. Every request
    carries its params and its kind (the stage), so a stream that mixes stages caches and counts each as its
    stage alone would.
    """

    def __init__(self, run: RunDir, stage: str, params: GenParams, *,
                 prompt_for: Callable[[Task], str | None],
                 finish: Callable[[Task, Completion | None, bool], Task | str],
                 max_retries: int, progress: ProgressFn | None = None,
                 params_for: Callable[[Task], GenParams | None] | None = None):
        self.stage, self.params, self.max_retries = stage, params, max_retries
        self.prompt_for, self.finish, self.progress, self.params_for = prompt_for, finish, progress, params_for
        self.done = outcomes(run, stage)
        self.tasks: dict[str, Task] = {}  # tasks added that were not done before
        self.tries: dict[str, int] = {}
        self.prompts: dict[str, str] = {}
        self.own_params: dict[str, GenParams] = {}
        self.counts = MapResult()
        # Held (store.RECORD_HOLD_S): a record is its own done-mark, and its reply is in the cache before it is made.
        self.out = JsonlWriter(run.stage_file(stage), hold_s=RECORD_HOLD_S)
        self.rejected_out = JsonlWriter(run.rejected_file, hold_s=RECORD_HOLD_S)

    def __enter__(self) -> TaskMap:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.out.close()
        finally:
            self.rejected_out.close()

    def settle(self, task: Task, record: Task | None, reason: str | None, reply: Completion | None) -> None:
        if record is not None:
            self.out.write(record)
            self.counts.written += 1
        elif reason is not None and reply is not None:
            meta = {**task.meta, f"{self.stage}_reply": reply_meta(reply), "tries": self.tries.get(task.id, 0) + 1}
            self.rejected_out.write(dataclasses.replace(task, meta=meta).rejected(reason, self.stage))
            self.counts.rejected += 1
        if not self.progress:
            return
        if record is None and reason is None:  # the call failed: the task is pending, not done
            fail = getattr(self.progress, "fail", None)  # the loop's bars count it; a bare callable does not
            if fail is not None:
                fail(1)
        elif record is None and (reject := getattr(self.progress, "reject", None)) is not None:
            reject(1)  # done, unusable: the bar says so apart from the rated ("17/17" had 8 unusable among them)
        else:
            self.progress(1)

    def add(self, task: Task) -> Request | Task | None:
        """The request to send for a task; its record when it needs no call; None when it was done before."""
        if task.id in self.done or task.id in self.tasks:
            return None
        self.tasks[task.id] = task
        prompt = self.prompt_for(task)
        if prompt is None:
            verdict = self.finish(task, None, True)
            record = verdict if isinstance(verdict, Task) else None
            self.settle(task, record, None, None)
            return record
        self.prompts[task.id] = prompt
        if self.params_for is not None and (p := self.params_for(task)) is not None:
            self.own_params[task.id] = p
        return Request(task.id, prompt, salt=task.id, params=self.own_params.get(task.id, self.params),
                       kind=self.stage)

    def read(self, req: Request, reply: Completion) -> Request | Task | None:
        """A reply to one of this stage's requests: the retry to send, the record written, or None (rejected
        after the retries, or pending: the teacher failed)."""
        task = self.tasks[req.key]
        self.counts.resent += reply.resent  # a failed reply's retries too: the usage log counts them
        if not reply.ok:
            self.counts.error = reply.error or self.counts.error
            self.settle(task, None, None, None)
            return None
        n = self.tries.get(task.id, 0)
        verdict = self.finish(task, reply, n >= self.max_retries)
        if isinstance(verdict, Task):
            if reply.batch:  # a kept record says which batch paid its reply; a direct one carries nothing more
                verdict = dataclasses.replace(verdict, meta={**verdict.meta, f"{self.stage}_reply": {
                    **verdict.meta.get(f"{self.stage}_reply", {}), **batch_meta(reply)}})
            self.settle(task, verdict, None, reply)
            return verdict
        if n < self.max_retries:
            self.tries[task.id] = n + 1
            self.counts.retried += 1
            return Request(task.id, self.prompts[task.id], salt=f"{task.id}:retry{n + 1}",
                           params=retry_params(self.own_params.get(task.id, self.params)), kind=self.stage)
        self.settle(task, None, verdict, reply)
        return None

    def result(self) -> MapResult:
        """The counts; failed, never sent (budget, a stop) or waiting for a retry never sent: all pending."""
        self.counts.pending = len(self.tasks) - self.counts.written - self.counts.rejected
        return self.counts


class ReadAside:
    """Replies read on a thread of their own, in the order they came, while the stream's thread goes on sending:
    a stage's record work per reply (parsing, the record built and written, its flush) no longer holds up the
    refill of the teacher's slots. At 64 in flight the replies come in bursts, and read on the stream's thread
    the last of a burst waited for the records of all before it (benchmarks/client_cpu.py (c)). `lock` is held
    while a reply is read: what the stream's thread does to the stage's state takes it too. `after(req, reply)`,
    when given, runs under `changed` as a reply leaves `unread`, so a count the caller keeps of what is unread
    (the flow's bootstrap replies) changes with it. The thread starts with `start()`, when the stream does; the
    reader's error is raised again on the stream's thread (`check`, `put`, `close`)."""

    def __init__(self, read: Callable[[Request, Completion], None], *,
                 after: Callable[[Request, Completion], None] | None = None, name: str = "reply-reader"):
        self.read, self.after = read, after
        self.lock = threading.Lock()
        # Guards unread and error (and what `after` changes); notified as each reply is read. Re-entrant: a caller
        # may hold it across put, so that the reply and its own counts go in together.
        self.changed = threading.Condition(threading.RLock())
        self.unread: deque[tuple[Request, Completion] | None] = deque()  # the one being read stays first; None: stop
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def start(self) -> ReadAside:
        self.thread.start()
        return self

    def put(self, req: Request, reply: Completion) -> None:
        with self.changed:
            self.check()
            self.unread.append((req, reply))
            self.changed.notify_all()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        while True:
            with self.changed:
                while not self.unread:
                    self.changed.wait()
                item = self.unread[0]
            if item is None:
                return
            try:
                with self.lock:
                    self.read(*item)
            except BaseException as e:  # noqa: BLE001 (raised again on the stream's thread)
                with self.changed:
                    self.error = e
                    self.changed.notify_all()
                return
            with self.changed:
                self.unread.popleft()
                if self.after is not None:
                    self.after(*item)
                self.changed.notify_all()

    def stop(self) -> None:
        """Every reply put is read (or the reader failed) when this returns."""
        with self.changed:
            self.unread.append(None)
            self.changed.notify_all()
        self.thread.join()

    def close(self) -> None:
        """stop(), then the reader's error raised."""
        self.stop()
        self.check()


def map_pending(tasks: Sequence[Task], teacher: Teacher, task_map: TaskMap) -> MapResult:
    """One teacher call per task not yet in the stage file (nor rejected by this stage), streamed alone;
    retries go out as their replies come back (TaskMap says what each call and reply does). The replies are
    read aside (ReadAside)."""
    retry: deque[Request] = deque()  # appended by the reader
    in_flight = 0  # sent, and not yet handed to the reader

    def read(req: Request, reply: Completion) -> None:
        if isinstance(nxt := task_map.read(req, reply), Request):
            retry.append(nxt)

    def requests() -> Iterator[Request | None]:
        nonlocal in_flight
        for task in tasks:
            with reader.lock:  # add() may write a record (a task that needs no call)
                req = task_map.add(task)
            reader.check()
            if isinstance(req, Request):
                in_flight += 1
                yield req
        while True:
            with reader.changed:  # nothing to send or wait for, and replies still unread: their retries may come
                while not retry and not in_flight and reader.unread and reader.error is None:
                    reader.changed.wait()
                reader.check()
            if retry:
                in_flight += 1
                yield retry.popleft()
            elif in_flight:
                yield WAIT
            else:
                return

    with task_map:
        reader = ReadAside(read).start()
        try:
            for req, reply in teacher.stream(requests(), task_map.params, kind=task_map.stage):
                in_flight -= 1
                reader.put(req, reply)
        finally:
            reader.close()
    return task_map.result()


def map_progress(ctx: RunContext, stage: str, records: Records | None) -> tuple[str, int, int]:
    """A per-task stage's bar: its total, and the tasks it is done with already (a resumed run counts on from
    them). records None: they flow in (stages/flow.py), up to bootstrap's target."""
    done = outcomes(ctx.run, stage)
    if records is None:  # less the tasks an earlier per-task stage stopped in earlier sessions: they never come
        earlier = STAGES[1:STAGES.index(stage)]
        stopped = sum(1 for t in ctx.run.read_rejected() if t.stage in earlier)
        return stage, ctx.cfg.bootstrap.num_instructions - stopped, len(done)
    return stage, len(records), sum(t.id in done for t in records)


def map_result(ctx: RunContext, stage: str, r: MapResult, n: int) -> StepResult:
    """A per-task stage's line and counts: written, rejected after the retries, retried, pending."""
    done = len(ctx.run.read_stage(stage))
    note = r.replies_note(ctx.cfg.teacher.max_retries, batch=ctx.cfg.teacher.batch)
    message = f"{stage}: {r.written} tasks written ({done} in {stage}.jsonl); {note}"
    return StepResult(message + r.failed_note(), r.pending, r.counts(n))


def no_novelty_note(ctx: RunContext, seeds: Sequence[object], rows: str) -> None:
    """Say it when filter.rouge_against_seeds_only leaves no ROUGE-L check: its pool is the seed tasks alone, and a
    user's file has none (store.seeds_used), so every row passed novelty unchecked, unsaid."""
    if ctx.cfg.filter.rouge_against_seeds_only and not seeds:
        ctx.log(f"note: filter.rouge_against_seeds_only = true compares {rows} with the seed tasks alone, and {rows} "
                "came from a user's file, not from the seeds: no ROUGE-L novelty check was done. Fix: set it false "
                "to compare each with those kept before it")
