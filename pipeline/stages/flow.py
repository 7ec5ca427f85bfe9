"""Tasks flow on as they are kept: bootstrap, classify and instances through one teacher stream.

Run one after another, classify waits for the whole of bootstrap and instances for the whole of
classify, and the teacher's slots sit idle at each barrier: 0.66 of the concurrency-bound ideal for
200 instructions at 2 s latency and 64 in flight, against 0.83-0.84 flowing, where no order can pass
0.85; 0.95 against 0.99 at 1000 instructions (benchmarks/stream_flow.py, RESULTS.md). Here a task
bootstrap keeps goes to classify at once, and its classify record to instances, while bootstrap goes
on. Each stage keeps its own logic and files: the flow only drives their pieces
(bootstrap.Bootstrap, classify.classify_map and instances.instances_map, a common.TaskMap each)
through one `teacher.stream`, as evolve drives its three calls. Every request carries its own params
and kind, so the response cache, the usage log and the budget see exactly the calls, keys and kinds
the stages alone would send: a resumed run reads what it paid for from the cache, and each stage
file holds what that stage alone would have written (in reply order, as alone).

The next request to send is the one with the most calls still behind it: bootstrap's (whose
tasks need two more), then classify's, then instances' (as evolve, so the run ends without a
long chain running alone). Bootstrap still sends no prompt past what fills its pool, and builds
each from the pool with all its replies so far read (_Flow).

A resumed run feeds the stage files on: tasks in bootstrap.jsonl not yet classified go to
classify, records in classify.jsonl without instances go to instances; what is done is skipped.

The filter is not in the stream: it makes no call, and it replaces filter.jsonl from the whole
of instances.jsonl (its ROUGE-L pool grows in file order), so the runner runs it after the flow,
as before. Batch mode (teacher.batch) keeps the stages one after another: a batch is a wave of
requests, and a flow would send many small waves, each waiting its own turn at the server.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from ..context import RunContext, StepResult
from ..records import Task
from ..teachers import GenParams, Teacher
from ..teachers.base import WAIT, Completion, Request
from . import bootstrap, classify, instances
from .common import MapResult, ReadAside, TaskMap, map_result

# The stages that can flow, in order: a task kept by one goes on to the next at once.
STAGES = ("bootstrap", "classify", "instances")


def together(ctx: RunContext, names: list[str]) -> list[str]:
    """The stages of `names` that run as one flow: bootstrap and the per-task stages right after it (two at
    least), when `run` runs them itself (no --input) and not in batch mode. Empty: each runs alone."""
    flowing = []
    for name in STAGES:
        if name not in names:
            break
        flowing.append(name)
    if len(flowing) < 2 or ctx.input_path or ctx.cfg.teacher.batch:
        return []
    return flowing


class _Flow:
    """The requests ready to send, per stage, and what each reply passes on.

    Two threads share it. The stream's (the caller's) pulls the requests and hands each reply
    over (`arrived`); the reader (a common.ReadAside, a thread of its own, started with the
    stream) reads the replies in the order they came (`read`): bootstrap's parsing and ROUGE-L
    checks, the other stages' parsing, every record written. So the CPU work of a burst of
    replies runs while the teacher waits on the next ones, and a slot is refilled from the
    requests already ready the moment its reply is in, not after every reply before it has been
    read. The stages' state is the reader's, but for bootstrap's pool, which its prompts are
    built from: the stream builds bootstrap's next prompt only while none of its replies is
    unread (under the reader's `changed`, so none can come in meanwhile), so each prompt sees the
    pool with every reply before it, as bootstrap alone does, and the yield stop comes after as
    many prompts. The stream waits for the reader only when nothing is ready and replies are
    still unread (their next requests are coming).
    """

    def __init__(self, boot: bootstrap.Bootstrap, maps: dict[str, TaskMap], bars: dict[str, Any] | None = None):
        self.boot, self.maps = boot, maps
        self.bars = bars or {}  # each stage's open bar (the loop's), whose total drops as tasks stop before it
        self.stopped: Counter[str] = Counter()  # tasks stopped before each stage in this session
        self.order = list(maps)  # classify before instances: most calls left first
        self.ready: dict[str, deque[Request]] = {name: deque() for name in maps}  # appended by the reader
        # Its `changed` guards in_flight and boot_unread too; its error (LowYield, a disk error) stops the flow.
        self.reader = ReadAside(self.read, after=self.was_read, name="flow-reader")
        self.in_flight = 0
        self.boot_unread = 0  # bootstrap's replies not yet read: its next prompt waits for them

    def feed(self, stage: str, tasks: list[Task]) -> None:
        """Tasks that reach `stage`: their requests wait to be sent; a record made with no call goes on."""
        m = self.maps.get(stage)
        if m is None:  # the last stage of the flow: its records are in its file
            return
        for task in tasks:
            fresh = task.id not in m.done and task.id not in m.tasks
            out = m.add(task)
            if isinstance(out, Request):
                self.ready[stage].append(out)
            elif out is not None:
                self.feed(self.after(stage), [out])
            elif fresh:  # settled at once with no record (a task it needs no call for, and cannot use)
                self.stop(stage)

    def stop(self, stage: str) -> None:
        """A task ends at `stage` (rejected, or pending: the teacher failed): no stage after it gets it, so their
        bars' totals drop by one, and end at the tasks they were given rather than short of bootstrap's target."""
        for later in STAGES[STAGES.index(stage) + 1:]:
            bar = self.bars.get(later)
            if bar is None:
                continue
            self.stopped[later] += 1
            total = getattr(bar, "total", None)  # the loop's bars have one; a silent one or a bare callable, none
            if total is not None:
                bar.set_total(total - 1)
                bar.note(f"{self.stopped[later]} stopped at an earlier stage")

    def after(self, stage: str) -> str:
        i = STAGES.index(stage)
        return STAGES[i + 1] if i + 1 < len(STAGES) else ""

    def next_request(self, boot: Iterator[Request | None] | None) -> Request | None | bool:
        """Bootstrap's next prompt (once its replies are read), else the next stage's call; None: none ready now;
        False: bootstrap is done (its generator ended). Called under `changed`."""
        if boot is not None and not self.boot_unread:
            req = next(boot, False)
            if req is not None:
                return req
        return next((self.ready[name].popleft() for name in self.order if self.ready[name]), None)

    def requests(self) -> Iterator[Request | None]:
        """Bootstrap's prompts first, then classify's calls, then instances'; WAIT while replies are out."""
        boot: Iterator[Request | None] | None = self.boot.requests()
        changed = self.reader.changed
        while True:
            with changed:
                while True:
                    self.reader.check()
                    req = self.next_request(boot)
                    if req is False:
                        boot, req = None, self.next_request(None)
                    if req is not None or not self.reader.unread:
                        break
                    changed.wait(0.05)  # the reader is on replies whose next requests come now
                if req is None and not self.in_flight:
                    return
                self.in_flight += req is not None
            yield req if req is not None else WAIT  # WAIT: the teacher hands back a reply first

    def arrived(self, req: Request, reply: Completion) -> None:
        """A reply, from the stream: the reader reads it; the stream goes on pulling."""
        with self.reader.changed:  # held across put: the reply and the counts go in together
            self.reader.put(req, reply)
            self.in_flight -= 1
            self.boot_unread += req.kind == "bootstrap"

    def was_read(self, req: Request, reply: Completion) -> None:
        """The reader is done with a reply (called under `changed`)."""
        self.boot_unread -= req.kind == "bootstrap"

    def read(self, req: Request, reply: Completion) -> None:
        if req.kind == "bootstrap":
            self.feed("classify", self.boot.read(req, reply))
            return
        out = self.maps[req.kind].read(req, reply)
        if isinstance(out, Request):  # a retry of an unusable reply
            self.ready[req.kind].append(out)
        elif out is not None:
            self.feed(self.after(req.kind), [out])
        else:
            self.stop(req.kind)


def stream(teacher: Teacher, flow: _Flow, params: GenParams) -> None:
    """Every call of the flow through one teacher stream, the replies read on a thread of their own."""
    reader = flow.reader.start()
    try:
        for req, reply in teacher.stream(flow.requests(), params, kind="bootstrap"):
            flow.arrived(req, reply)
    finally:
        reader.stop()  # every reply that came is read (or the reader failed) before the files close
    reader.check()


def run(ctx: RunContext, names: list[str]) -> list[StepResult]:
    """Run the stages `names` (bootstrap first; together() chose them) as one flow; one StepResult per stage,
    in order, each as the stage's own step would give it. The loop opened a bar per stage (ctx.advances)."""
    teacher, cfg, run_dir = ctx.teacher, ctx.cfg, ctx.run
    advance = ctx.advances
    # The manifest's usage refreshed every 16 bootstrap replies, as bootstrap alone does: a refresh rewrites the
    # manifest and recounts every stage file, and one per 16 replies of every stage took the client's CPU per
    # call from 4.5 to 5.8-6.0 ms (benchmarks/stream_flow.py).
    boot = bootstrap.Bootstrap(teacher, ctx.seeds, cfg, run_dir, ctx.prompts, ctx.cache,
                               on_kept=advance.get("bootstrap"), on_progress=ctx.every(), say=ctx.log, flowing=True)
    makers = {"classify": classify.classify_map, "instances": instances.instances_map}
    maps: dict[str, TaskMap] = {}
    with ExitStack() as stack:
        stack.enter_context(boot)
        for name in names[1:]:
            m = makers[name](teacher, cfg, run_dir, ctx.prompts, advance.get(name))
            if m is None:  # classify's calibration failed: no task goes past bootstrap this time
                break
            maps[name] = stack.enter_context(m)
        flow = _Flow(boot, maps, {name: advance[name] for name in names if name in advance})
        for name in reversed(list(maps)):  # a resumed run: the stage files feed the stages after them
            flow.feed(name, run_dir.read_stage(STAGES[STAGES.index(name) - 1]))
        stream(teacher, flow, boot.params)
    results = [bootstrap.step_result(boot.result())]
    for name in names[1:]:
        fed = len(run_dir.read_stage(STAGES[STAGES.index(name) - 1]))  # its input, as the stage alone reads it
        m = maps.get(name)
        results.append(map_result(ctx, name, m.result() if m is not None else MapResult(pending=fed), fed))
    return results
