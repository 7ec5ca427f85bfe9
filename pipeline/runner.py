"""The runner: a run is a list of steps, and one loop runs them.

Each step is a stage (bootstrap, classify, instances, filter, evolve, score, ifd, select, export, train, eval): one
function `step(ctx, records) -> StepResult` in its stage's file, which reads the previous stage's file (or an --input
file) and writes its own. The loop owns everything around the steps:
- validation before any write: config, seeds, inputs, a price for every model of the steps under max_cost, the
  teacher and its endpoints, so a command that fails leaves a finished run byte-identical and makes no folder;
- the progress bar of each step (the step gets `ctx.advance`);
- the manifest: status (running, done, interrupted, failed, budget, incomplete), the stage,
  the reason, pending work, usage and spend, the resolved config, versions, prompt hashes;
- the budget check after each step (exit 3), and pending work (exit 5): a step is done
  only when all its output is written; a re-run retries exactly what is pending;
- a stop (stops.py): what each step has left, in the exit message and the manifest, and the stop
  on the entry of each stage it left short, which `show` reads after later commands went on.

In `run`, bootstrap, classify and instances run as one flow (stages/flow.py): a task bootstrap keeps goes on to
classify and instances at once, through one teacher stream, while bootstrap goes on; the loop opens their bars together
and records each stage's counts, budget and pending work as if it had run alone. The stage commands, --input and batch
mode run each stage alone.

A new stage is one file in stages/ with its `step`, plus one `Step` in `STEPS`; the loop is unchanged.
Secrets never enter the manifest: the config holds only the *name* of the API key's variable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .budget import BudgetReached, check_prices
from .config import RunConfig
from .context import Log, Progress, Records, RunContext, Step, StepResult, check_left_out, flush_events, preflight
from .errors import Incomplete, Refused, Seed2LoraError, TeacherError, is_stop, mask_secrets, raise_dropped_stop
from .prompts import changed_note
from .stages import bootstrap, classify, evolve, flow, instances, score
from .stages import filter as filter_stage
from .stops import attempted, now, session_entries, stopped
from .teachers import Teacher


def later(module: str, name: str) -> Callable[..., Any]:
    """A step (or its Step.left) whose module loads only when it runs (torch, pandas: not for `seed2lora bootstrap`)."""
    def run(*args: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args)
    return run


# The pipeline, in order. `run` runs those named in cfg.stages; each stage command runs one.
STEPS = [
    Step("bootstrap", bootstrap.step, check=bootstrap.check, progress=bootstrap.progress, teacher="teacher",
         tables=("bootstrap", "filter")),
    Step("classify", classify.step, after="bootstrap", check=classify.check, progress=classify.progress,
         teacher="teacher", tables=("classify",)),
    Step("instances", instances.step, after="classify", check=instances.check, progress=instances.progress,
         teacher="teacher", tables=("instances",)),
    Step("filter", filter_stage.step, after="instances", tables=("filter",)),
    Step("evolve", evolve.step, reads=evolve.read, check=evolve.check, progress=evolve.progress, teacher="teacher",
         tables=("evolve", "filter"), left=evolve.left),
    Step("score", score.step, reads=score.read, check=score.check, progress=score.progress, teacher="judge",
         tables=("score", "export"), left=score.left),
    Step("ifd", later("pipeline.train.steps", "ifd_step"), tables=("ifd", "export", "train"),
         left=later("pipeline.train.steps", "ifd_left")),
    Step("select", later("pipeline.stages.select", "step"), tables=("select", "export"),
         check=lambda ctx: importlib.import_module("pipeline.stages.select").check(ctx)),
    Step("export", later("pipeline.stages.export", "step"), tables=("export",)),
    Step("train", later("pipeline.train.steps", "train_step"), tables=("train", "export", "ifd", "eval")),
    Step("eval", later("pipeline.train.steps", "eval_step"), tables=("eval", "train", "export"),
         check=later("pipeline.train.steps", "eval_check")),
]
FOLDER_STEPS = ("export", "train", "eval")  # steps writing a folder, not records (RunContext.recorded_config)


def use_tables(ctx: RunContext, steps: list[Step]) -> bool:
    """The steps' names (RunContext.steps) and the tables they read, whose settings are checked and recorded
    (step_tables; the others stay as the manifest had them: kept_tables); whether one calls the run's teacher."""
    ctx.steps, ctx.step_tables = [s.name for s in steps], {t for s in steps for t in s.tables}
    ctx.kept_tables = {t for s in STEPS for t in s.tables} - ctx.step_tables
    ctx.folder_tables = {t for s in steps if s.name in FOLDER_STEPS for t in s.tables}
    return any(s.teacher == "teacher" for s in steps)


def validate(ctx: RunContext, steps: list[Step]) -> None:
    """Everything that can fail on bad input, before the run folder or manifest is touched."""
    first = steps[0] if steps else None
    calls_teacher = use_tables(ctx, steps)  # before the teachers: their stop names these tables' left-out settings
    if first is not None and first.after and first.reads is None and ctx.input_path is None:
        source = ctx.run.stage_file(first.after)
        if not source.exists():
            raise Seed2LoraError(f"{source} does not exist. Fix: run `seed2lora {first.after}` for this run first, "
                                 "or pass --input FILE")
    ctx.prompts.check()  # an edited template with a wrong variable: before bootstrap pays and writes
    if note := changed_note(ctx.run.manifest().get("prompts") or {}, ctx.prompts.hashes()):
        ctx.log(note)
    for step in steps:
        if step.check is not None:
            step.check(ctx)
    check_prices(ctx.cfg, [s.name for s in steps])  # an unpriced judge under max_cost: before generation is paid
    teachers = [ctx.bare_teacher] if calls_teacher else []
    if any(s.teacher == "judge" for s in steps):
        teachers.append(ctx.bare_judge)
    check_left_out(ctx, ctx.step_tables, calls_teacher)  # after the teachers' own (keep_recorded), before any request
    ctx.run.check_writable()  # an unwritable run folder: said before the teachers are probed, not a traceback after
    for teacher in dict.fromkeys(teachers):
        preflight(teacher, ctx.log)


def read_records(ctx: RunContext, step: Step) -> Records | None:
    records = step.reads(ctx) if step.reads is not None else ctx.input_tasks(step.after) if step.after else None
    if records is not None and records.note:  # rows of a user's file loaded once: said, not silent
        ctx.log(f"note: {records.note}")
    return records


@contextmanager
def bar(ctx: RunContext, step: Step, records: Records | None):
    """The step's progress bar, its advance handed to the step as ctx.advance (and ctx.advances[name]) while it runs."""
    shape = step.progress(ctx, records) if step.progress is not None else None
    if shape is None:
        yield
        return
    desc, total, done = shape
    with ctx.progress(desc, total, done=done) as advance:
        ctx.advance = ctx.advances[step.name] = advance
        try:
            yield
        finally:
            ctx.advance = lambda n: None
            ctx.advances.pop(step.name, None)


def groups(ctx: RunContext, steps: list[Step]) -> list[list[Step]]:
    """The steps in the order they run: each alone, except those that flow as one (bootstrap, classify and
    instances in `run`: stages/flow.py), which come first in pipeline order."""
    flowing = flow.together(ctx, [s.name for s in steps])
    return ([[s for s in steps if s.name in flowing]] if flowing else []) + [[s] for s in steps if s.name not in flowing]


def run_group(ctx: RunContext, group: list[Step]) -> list[StepResult]:
    """One step on its records, or a flow: every bar of it open at once, its records flowing in from the one before."""
    if len(group) == 1:
        records = read_records(ctx, group[0])
        with bar(ctx, group[0], records):
            return stop_short(ctx, group, [group[0].run(ctx, records)])
    with ExitStack() as bars:
        for step in group:
            bars.enter_context(bar(ctx, step, None))
        return stop_short(ctx, group, flow.run(ctx, [s.name for s in group]))


def stop_short(ctx: RunContext, group: list[Step], results: list[StepResult]) -> list[StepResult]:
    """Before the bars close: a step that returned with work pending (the budget spent) ends "stopped", not "done"."""
    for step, result in zip(group, results, strict=True):
        if result.pending and (advance := ctx.advances.get(step.name)) is not None:
            advance.stop_short()
    return results


def check_stage_names(names: list[str]) -> None:
    """A name in `stages` that no step has stops the command, `run --dry-run` too (it used to leave the name out)."""
    known = [s.name for s in STEPS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise Seed2LoraError(f"unknown stage(s) {unknown} in 'stages'. Fix: use {known}")


def run_steps(ctx: RunContext, names: list[str]) -> list[str]:
    """The one loop: the named steps in pipeline order; each message is also logged as it comes."""
    check_stage_names(names)
    steps = [s for s in STEPS if s.name in names]
    ctx.importing = [s.name for s in steps if s.takes_input] if ctx.input_path else []
    try:
        validate(ctx, steps)  # raises before anything is written
    except (TeacherError, KeyboardInterrupt) as e:  # a server still down, or a Ctrl-C in its preflight: what is left,
        attempted(ctx, steps, e)  # and a failed connection check on record
        raise
    messages: list[str] = []
    step = steps[0] if steps else None
    running: list[Step] = []  # the steps started and not yet recorded: a stop records what they did so far
    finished: set[str] = set()
    before: dict[str, Any] = {}  # the file counts when the running steps started
    lock = ctx.run.lock()
    try:
        for group in groups(ctx, steps):
            raise_dropped_stop()
            step, running = group[0], list(group)
            # Each stage's entry is this session's from here (an earlier stop cleared): after a kill -9, `show` reads
            # its pending from the files (stops.session_entries)
            before = ctx.record(status="running", stage=step.name, running=[s.name for s in group], reason=None,
                                attempt=None, stages=session_entries(ctx, group))["counts"]
            results = run_group(ctx, group)
            flush_events(ctx)  # a step's last retries or waits, said before its line
            for step, result in zip(group, results, strict=True):  # a flow's stages: each as if it ran alone
                if result.pending or len(group) == 1:
                    ctx.check_budget(step.name)
                imported = {"input_file": ctx.input_provenance()} if ctx.input_path and step.takes_input else {}
                ctx.record(stages={step.name: {**result.counts, "pending": result.pending, **imported}})
                running.remove(step)
                if result.pending:  # the count is said once, by the pending line stopped() gives
                    raise Incomplete(f"{result.message}; run the same command again to retry what is pending")
                finished.add(step.name)
                messages.append(result.message)
                ctx.log(result.message)
            ctx.check_budget(step.name)
        raise_dropped_stop()
        ctx.record(status="done", reason=None)
    except (KeyboardInterrupt, Exception) as e:
        status, reason = ("interrupted", "interrupted (Ctrl-C or SIGTERM); run the same command to resume") if \
            is_stop(e) else ("budget", str(e)) if isinstance(e, BudgetReached) else \
            ("incomplete", str(e)) if isinstance(e, Incomplete) else ("failed", f"{type(e).__name__}: {e}")
        stop = {"status": status, "reason": mask_secrets(reason), "at": now(), "command": ctx.command_line()}
        try:  # the CLI prints the pending line after the error; a refusal leaves nothing a re-run would do
            e.pending = "" if isinstance(e, Refused) else \
                stopped(ctx, steps, running, finished, before, stop, step.name if step else None)
        except Exception as err:  # noqa: BLE001 (the stop's own cause comes first; this one is said with it)
            e.pending = f"what is pending could not be read ({type(err).__name__}: {err})"
        ctx.record(status=status, stage=step.name if step else None,
                   reason=mask_secrets(f"{reason}. {e.pending}" if e.pending else reason))
        raise
    finally:
        try:
            flush_events(ctx)
            ctx.close()
        finally:
            lock.release()
    return messages


class Session:
    """The commands over one run: each runs its steps through the one loop (run_steps)."""

    def __init__(self, cfg: RunConfig, teacher: Teacher | None = None, progress: Progress | None = None,
                 log: Log | None = None, flags: dict[str, str] | None = None):
        """flags: the command's, by the setting each sets: what its teachers' messages name (RunContext.flags)."""
        self.ctx = RunContext(cfg, teacher, progress, log, flags=flags)
        self.ctx.seeds  # a bad seed file fails here, before anything is written  # noqa: B018

    cfg = property(lambda self: self.ctx.cfg)
    run = property(lambda self: self.ctx.run)
    prompts = property(lambda self: self.ctx.prompts)
    seeds = property(lambda self: self.ctx.seeds)
    cache = property(lambda self: self.ctx.cache)
    teacher = property(lambda self: self.ctx.teacher)
    judge = property(lambda self: self.ctx.judge)
    export_dir = property(lambda self: self.ctx.run.export_dir)
    adapter_dir = property(lambda self: self.ctx.run.adapter_dir(self.ctx.cfg.train.output_dir))

    def close(self) -> None:
        self.ctx.close()

    def run_steps(self, names: list[str], input_path: str | Path | None = None, **options: Any) -> list[str]:
        """The named steps through the one loop; options set on the context (rescore=True)."""
        self.ctx.input_path = input_path
        for key, value in options.items():
            setattr(self.ctx, key, value)
        return run_steps(self.ctx, names)

    def run_all(self) -> list[str]:
        """Every stage named in cfg.stages, in pipeline order."""
        return self.run_steps(list(self.cfg.stages))

    def stage(self, name: str, input_path: str | Path | None = None) -> str:
        """One stage, as its command runs it; input_path replaces its input where it reads one."""
        return self.run_steps([name], input_path)[0]

    def bootstrap(self) -> str:
        return self.stage("bootstrap")

    def classify(self, input_path: str | Path | None = None) -> str:
        return self.stage("classify", input_path)

    def instances(self, input_path: str | Path | None = None) -> str:
        return self.stage("instances", input_path)

    def filter(self, input_path: str | Path | None = None) -> str:
        return self.stage("filter", input_path)

    def evolve(self, input_path: str | Path | None = None) -> str:
        return self.stage("evolve", input_path)

    def score(self, rescore: bool = False) -> str:
        """rescore: set the ratings and score rejections aside first (after validation), to rate every row again."""
        return self.run_steps(["score"], rescore=rescore)[0]

    def ifd(self) -> str:
        return self.stage("ifd")

    def select(self) -> str:
        return self.stage("select")

    def export(self) -> str:
        return self.stage("export")

    def train(self) -> str:
        return self.stage("train")

    def eval(self) -> str:
        return self.stage("eval")
