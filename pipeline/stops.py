"""What a run that stops says about itself: the work each step has left, the manifest entries of the steps that
were running, and a resume that stopped at the teacher's connection check.

The runner (pipeline/runner.py) calls these when a run stops: a teacher outage, Ctrl-C, the budget, a low yield,
a failure, or pending work (exit 5). What is left is read from the run's files once, at the stop, never per
reply. A stage's entry in the manifest gets what it wrote that session, what it has left, and the stop itself
(`stopped`: status, reason, time, command), which stays on record until that stage runs again: `seed2lora show`
reads it after later commands have gone on with what the stage kept (a low-yield bootstrap, then filter and
export), where the manifest's status is only the last command's.
"""

from __future__ import annotations

import time
from typing import Any

from .context import RunContext, Step
from .errors import Seed2LoraError, TeacherUnavailable, mask_secrets
from .store import PENDING_KNOWN, STAGES, TASK_INPUT, RunLock, pending_line, rejected_by


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def left(ctx: RunContext, steps: list[Step], started: list[Step]) -> dict[str, int]:
    """What each of `steps` has still to do, from the run's files: RunDir.pending for bootstrap and the per-task
    stages (given --input: that file's tasks), and for the `started` steps that count their own (Step.left: evolve's
    slots, score's rows), theirs. A step that has not started has nothing of its own to count yet: it is "still to
    run"."""
    inputs = {s.name: list(ctx.input_tasks(s.after)) for s in steps if ctx.input_path and s.name in TASK_INPUT}
    todo = ctx.run.pending([s.name for s in steps], ctx.cfg.bootstrap.num_instructions, inputs)
    for step in started:
        if step.left is not None:
            try:
                todo[step.name] = step.left(ctx)
            except Seed2LoraError:  # its input is gone (a file moved): it cannot tell, and stays "still to run"
                pass
    return todo


def session_entries(ctx: RunContext, group: list[Step]) -> dict[str, dict[str, Any]]:
    """The manifest entries of the steps a session starts: bootstrap's and the per-task stages' are this session's
    from here, empty (after a kill -9, `show` reads their pending from the files); the others keep their last
    counts (evolve's rounds done) but an earlier stop, which no longer says where the stage stands."""
    recorded = ctx.run.manifest().get("stages") or {}
    return {s.name: {} if s.name in PENDING_KNOWN else {k: v for k, v in recorded[s.name].items() if k != "stopped"}
            for s in group if s.name in PENDING_KNOWN or isinstance(recorded.get(s.name), dict)}


def stopped(ctx: RunContext, steps: list[Step], running: list[Step], finished: set[str], before: dict[str, Any],
            stop: dict[str, str], stage: str | None) -> str:
    """A run stopped before the steps `running` gave their results: each gets in the manifest what it wrote this
    session (the file counts against `before`, those at its start) and what it has still to do; each of them, and
    `stage` (the step the stop names: one that ended with work pending), the stop itself while it has work left.
    Returns the line naming what is pending, for the exit message."""
    started = [s for s in steps if s in running or s.name == stage]  # a step that ended with work pending too
    todo, counts, entries = left(ctx, steps, started), ctx.run.counts(), {}
    for step in running:
        if step.name not in todo:  # a stage whose work left its files cannot tell: its entry stays as it was
            continue
        kept = counts.get(step.name, 0) - before.get(step.name, 0) if step.name in counts else None
        rejected = rejected_by(counts, step.name) - rejected_by(before, step.name)
        entries[step.name] = {**({"generated": kept + rejected, "kept": kept} if kept is not None else {}),
                              "rejected": rejected, "pending": todo[step.name]}
    recorded = ctx.run.manifest().get("stages") or {}
    for name in {s.name for s in running} | ({stage} if stage else set()):
        entry = entries.get(name, recorded.get(name))
        if isinstance(entry, dict) and entry.get("pending"):  # a stop with nothing left leaves the stage whole
            entries[name] = {**entry, "stopped": stop}
    ctx.record(stages=entries)
    return pending_line(todo, ctx.cfg.bootstrap.num_instructions, [s.name for s in steps], finished)


def attempted(ctx: RunContext, steps: list[Step], e: BaseException) -> None:
    """A command on an existing run that stopped at its teacher's connection check, before any request: the line
    of what is pending (from the files only), and, where no teacher answered (exit 4), the attempt in the manifest
    (`attempt`: time, command, cause) so that `show` does not present the run as the last session left it and
    nothing since. Nothing else is written: no record, no status, no config (bad input, exit 2, writes nothing at
    all). A run another process is writing is left to it. A Ctrl-C in the preflight gets the pending line too (a
    KeyboardInterrupt there carried none)."""
    e.pending = ""  # type: ignore[attr-defined]  (read from the files only, below)
    if ctx.input_path or not steps or not any(ctx.run.stage_file(s).exists() for s in STAGES):
        return
    first = steps[:1] if ctx.run.stage_file(steps[0].name).exists() else []  # it ran before: it can count its own
    e.pending = pending_line(left(ctx, steps, first), ctx.cfg.bootstrap.num_instructions, [s.name for s in steps],
                             set())
    if not isinstance(e, TeacherUnavailable) or not ctx.run.manifest_file.exists():
        return
    try:
        lock = RunLock(ctx.run.lock_file)
    except Seed2LoraError:
        return
    try:
        ctx.run.update_manifest(attempt={"at": now(), "command": ctx.command_line(), "cause": mask_secrets(str(e)),
                                         "pending": e.pending})
    finally:
        lock.release()
