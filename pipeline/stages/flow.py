"""Tasks flow on as they are kept: bootstrap, classify and instances through one teacher stream.

Run one after another, classify waits for the whole of bootstrap and instances for the whole of
classify, and the teacher's slots sit idle at each barrier (0.66 of the concurrency-bound ideal
at 2 s latency and 64 in flight; benchmarks/stream_flow.py). Here a task bootstrap keeps goes to
classify at once, and its classify record to instances, while bootstrap goes on. Each stage
keeps its own logic and files: the flow only drives their pieces (bootstrap.Bootstrap,
classify.classify_map and instances.instances_map, a common.TaskMap each) through one
`teacher.stream`, as evolve drives its three calls. Every request carries its own params and
kind, so the response cache, the usage log and the budget see exactly the calls, keys and
kinds the stages alone would send: a resumed run reads what it paid for from the cache, and
each stage file holds what that stage alone would have written (in reply order, as alone).

The next request to send is the one with the most calls still behind it: bootstrap's (whose
tasks need two more), then classify's, then instances' (as evolve, so the run ends without a
long chain running alone). Bootstrap still sends no prompt past what fills its pool.

A resumed run feeds the stage files on: tasks in bootstrap.jsonl not yet classified go to
classify, records in classify.jsonl without instances go to instances; what is done is skipped.

The filter is not in the stream: it makes no call, and it replaces filter.jsonl from the whole
of instances.jsonl (its ROUGE-L pool grows in file order), so the runner runs it after the flow,
as before. Batch mode (teacher.batch) keeps the stages one after another: a batch is a wave of
requests, and a flow would send many small waves, each waiting its own turn at the server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack

from ..context import RunContext, StepResult
from ..records import Task
from ..teachers.base import WAIT, Completion, Request
from . import bootstrap, classify, instances
from .common import MapResult, TaskMap, map_result

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
    """The requests ready to send, per stage, and what each reply passes on."""

    def __init__(self, boot: bootstrap.Bootstrap, maps: dict[str, TaskMap]):
        self.boot, self.maps = boot, maps
        self.order = list(maps)  # classify before instances: most calls left first
        self.ready: dict[str, deque[Request]] = {name: deque() for name in maps}
        self.in_flight = 0

    def feed(self, stage: str, tasks: list[Task]) -> None:
        """Tasks that reach `stage`: their requests wait to be sent; a record made with no call goes on."""
        m = self.maps.get(stage)
        if m is None:  # the last stage of the flow: its records are in its file
            return
        for task in tasks:
            out = m.add(task)
            if isinstance(out, Request):
                self.ready[stage].append(out)
            elif out is not None:
                self.feed(self.after(stage), [out])

    def after(self, stage: str) -> str:
        i = STAGES.index(stage)
        return STAGES[i + 1] if i + 1 < len(STAGES) else ""

    def requests(self) -> Iterator[Request | None]:
        boot = self.boot.requests()
        boot_open = True
        while True:
            req = None
            if boot_open:
                req = next(boot, False)
                if req is False:
                    boot_open, req = False, None
            if req is None:  # bootstrap waits for its replies (or is done): the next stage's calls go
                req = next((self.ready[name].popleft() for name in self.order if self.ready[name]), None)
            if req is None:
                if not self.in_flight:
                    return
                yield WAIT
                continue
            self.in_flight += 1
            yield req

    def read(self, req: Request, reply: Completion) -> None:
        self.in_flight -= 1
        if req.kind == "bootstrap":
            self.feed("classify", self.boot.read(req, reply))
            return
        out = self.maps[req.kind].read(req, reply)
        if isinstance(out, Request):  # a retry of an unusable reply
            self.ready[req.kind].append(out)
        elif out is not None:
            self.feed(self.after(req.kind), [out])


def run(ctx: RunContext, names: list[str]) -> list[StepResult]:
    """Run the stages `names` (bootstrap first; together() chose them) as one flow; one StepResult per stage,
    in order, each as the stage's own step would give it. The loop opened a bar per stage (ctx.advances)."""
    teacher, cfg, run_dir = ctx.teacher, ctx.cfg, ctx.run
    advance = ctx.advances
    # The manifest's usage refreshed every 16 bootstrap replies, as bootstrap alone does: a refresh rewrites the
    # manifest (and recounts the stage files) on the thread that also sends the next requests, so one per
    # 16 replies of every stage kept the teacher's slots waiting (0.77 of the ideal instead of 0.9).
    boot = bootstrap.Bootstrap(teacher, ctx.seeds, cfg, run_dir, ctx.prompts, ctx.cache,
                               on_kept=advance.get("bootstrap"), on_progress=ctx.every(), say=ctx.log)
    makers = {"classify": classify.classify_map, "instances": instances.instances_map}
    maps: dict[str, TaskMap] = {}
    with ExitStack() as stack:
        stack.enter_context(boot)
        for name in names[1:]:
            m = makers[name](teacher, cfg, run_dir, ctx.prompts, advance.get(name))
            if m is None:  # classify's calibration failed: no task goes past bootstrap this time
                break
            maps[name] = stack.enter_context(m)
        flow = _Flow(boot, maps)
        for name in reversed(list(maps)):  # a resumed run: the stage files feed the stages after them
            flow.feed(name, run_dir.read_stage(STAGES[STAGES.index(name) - 1]))
        for req, reply in teacher.stream(flow.requests(), boot.params, kind="bootstrap"):
            flow.read(req, reply)
    results = [bootstrap.step_result(boot.result())]
    for name in names[1:]:
        fed = len(run_dir.read_stage(STAGES[STAGES.index(name) - 1]))  # its input, as the stage alone reads it
        m = maps.get(name)
        results.append(map_result(ctx, name, m.result() if m is not None else MapResult(pending=fed), fed))
    return results
