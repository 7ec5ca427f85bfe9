"""Progress of the long steps: a bar with an ETA on a terminal, plain lines off one.

Every stage sees one protocol: `progress(desc, total)` is a context manager yielding
`advance(n)`; total may be None when it is not known. The yielded object also has
`note(text)`, a short status shown after the counts (training's loss), `set_total(n)`,
for a step whose total turns out smaller as it runs (in `run`'s flow, instances gets no task
that classify rejected), `fail(n)`: units whose call failed, which stay pending. They are not
counted done, so a step whose calls failed never ends at 100%: "classify: 4/6 (67%), 2 failed,
ended in 3s" (a re-run retries those 2). And `reject(n)`: units done with no usable reply (rejected,
with the reason, in rejected.jsonl): counted done, and shown apart, so a judge whose replies were
all unreadable does not read as all rated: "score: instances judged: 17/17 (100%), 8 unusable".
And `skip(n)`: units this session will not reach because a call before them in their chain failed
(an evolve slot stops at its failed call, its later calls unsent): pending like the failed, but no
failures of their own, so a run with 10 calls refused says "10 failed, 110 not sent after a failed
call", not "120 failed".

On a terminal it draws a rich bar: counts, rate, elapsed time and ETA. Off one (a log file,
CI, nohup, a pipe) a bar draws nothing, and a run that prints nothing for 23 minutes looks
hung. There it writes a plain line, `desc: n/total (p%), rate, ETA, elapsed`, when it starts,
at least every PLAIN_EVERY_S seconds (a heartbeat thread writes one even when nothing
advances, also when the total is unknown), and when it ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from .errors import InputError

# Off a terminal, a line at least this often: often enough that a slow step (an in-process teacher's
# batch, a training step on CPU) never looks hung, rare enough that a day-long run's log stays readable
# (2,880 lines a day per step).
PLAIN_EVERY_S = 30.0
PLAIN_EVERY_ENV = "SEED2LORA_PROGRESS_EVERY_S"  # overrides it: 300 for a quiet log, 0.01 in tests

Clock = Callable[[], float]


def plain_interval() -> float:
    """Seconds between plain lines: $SEED2LORA_PROGRESS_EVERY_S, else PLAIN_EVERY_S."""
    raw = os.environ.get(PLAIN_EVERY_ENV, "").strip()
    if not raw:
        return PLAIN_EVERY_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InputError(f"${PLAIN_EVERY_ENV}", None, f"{raw!r} is not a positive number of seconds",
                         f"set it to e.g. {PLAIN_EVERY_S:g}, or unset it")
    return seconds


def format_duration(seconds: float) -> str:
    """45s, 3m05s, 2h07m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_rate(per_s: float | None) -> str:
    """Per second, or per minute / hour when slower than one a second (an in-process teacher, a CPU step)."""
    if not per_s:
        return "-/s"
    for unit, scale in (("s", 1), ("min", 60), ("h", 3600)):
        if per_s * scale >= 1 or unit == "h":
            value = per_s * scale
            return f"{value:.1f}/{unit}" if value < 100 else f"{value:.0f}/{unit}"
    raise AssertionError("unreachable")


def eta_seconds(done: float, total: float | None, per_s: float | None) -> float | None:
    """Seconds left at this rate; None while nothing is done or the total is unknown."""
    if total is None or not per_s:
        return None
    return max(total - done, 0) / per_s


def outcomes(unusable: int, failed: int, unsent: int) -> list[str]:
    """The units that are not plainly done, each kind named apart ("8 unusable", "1 failed", "5 not sent ...")."""
    return [*([f"{unusable} unusable"] if unusable else []), *([f"{failed} failed"] if failed else []),
            *([f"{unsent} not sent after a failed call"] if unsent else [])]


class PlainProgress:
    """Counts of one step as plain lines: at the start, at least every `every_s`, at the end."""

    def __init__(self, desc: str, total: int | None, write: Callable[[str], None], *, every_s: float,
                 clock: Clock = time.monotonic, done: int = 0):
        self.desc, self.total, self.write, self.every_s, self.clock = desc, total, write, every_s, clock
        self.done = self.first = done  # a resumed step counts on from `done`; its rate counts this run's only
        self.failed = 0  # units whose call failed this session: not done, pending
        self.unsent = 0  # units not sent this session as a call before them failed: not done, pending, not failed
        self.unusable = 0  # units done this session with no usable reply (rejected): done, not rated
        self.short = False  # the step returned with work pending (a spent budget): it stopped, it is not done
        self.start = self.last_line = clock()
        # When the count reached its total: a bar kept open after it (bootstrap's in `run`'s flow, until classify
        # and instances end) says so, not "ETA 0s" at a falling rate, and its last line times what it did
        self.complete_at: float | None = None
        self.mark_complete()
        self.text = ""
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.write(self.line("started"))

    def start_heartbeat(self) -> None:
        """A line when one is due even if nothing advances: a long call or step must not read as silence."""
        def beat() -> None:
            while not self.stopped.wait(max(self.due_in(), 0.01)):
                self.tick()

        threading.Thread(target=beat, name=f"progress: {self.desc}", daemon=True).start()

    def __call__(self, n: int = 1) -> None:
        self.advance(n)

    def advance(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            self.mark_complete()
        self.tick()

    def mark_complete(self) -> None:
        if self.complete_at is None and self.total is not None and self.done >= self.total:
            self.complete_at = self.clock()

    def note(self, text: str) -> None:
        self.text = text

    def stop_short(self) -> None:
        """The step returned with work pending: its last line says "stopped", not "done"."""
        self.short = True

    def fail(self, n: int = 1) -> None:
        with self.lock:
            self.failed += n
        self.tick()

    def reject(self, n: int = 1) -> None:
        with self.lock:
            self.unusable += n
        self.advance(n)

    def skip(self, n: int = 1) -> None:
        with self.lock:
            self.unsent += n
        self.tick()

    def set_total(self, total: int | None) -> None:
        with self.lock:
            self.total = total
            self.mark_complete()

    def due_in(self) -> float:
        return self.last_line + self.every_s - self.clock()

    def tick(self) -> bool:
        """Write a line if one is due; True if it did."""
        with self.lock:
            if self.stopped.is_set() or self.due_in() > 0:
                return False
            self.last_line = self.clock()
            line = self.line()
        self.write(line)
        return True

    def rate(self) -> float | None:
        """This session's units per second, up to the count's completion if it came."""
        elapsed = (self.clock() if self.complete_at is None else self.complete_at) - self.start
        return (self.done - self.first) / elapsed if elapsed > 0 and self.done > self.first else None

    def line(self, state: str = "") -> str:
        elapsed, per_s = self.clock() - self.start, self.rate()
        counts = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        if self.total:
            counts += f" ({100 * self.done / self.total:.0f}%)"
        parts = [counts, *outcomes(self.unusable, self.failed, self.unsent)]
        if state and self.first:  # a resumed step, at its start and end: what it had before this session
            parts.append(f"{self.first} from before this session")
        if state:
            parts.append(state)
        elif self.complete_at is not None:
            parts.append("complete before this session" if self.first and self.done == self.first else
                         f"complete after {format_duration(self.complete_at - self.start)}")
            parts.append(f"{format_duration(elapsed)} elapsed")
        else:
            parts.append(format_rate(per_s))
            if self.total is not None:
                eta = eta_seconds(self.done + self.failed + self.unsent, self.total, per_s)
                parts.append(f"ETA {format_duration(eta) if eta is not None else '?'}")
            parts.append(f"{format_duration(elapsed)} elapsed")
        if self.text:
            parts.append(self.text)
        return f"{self.desc}: " + ", ".join(parts)

    def close(self, failed: bool = False) -> None:
        with self.lock:
            self.stopped.set()
        # A step that ran through with calls failed is not done: its failed units are pending (exit 5); one that
        # returned short of its work (the budget spent: no call failed, the rest never sent) stopped. A run
        # stopped (Ctrl-C) with this bar at its total (bootstrap's, kept open in `run`'s flow) leaves it done
        complete = self.complete_at is not None and not self.failed
        state = ("done" if complete else "stopped") if failed else "ended" if self.failed else \
            "stopped" if self.short else "done"
        until = self.complete_at if state == "done" and self.complete_at is not None else self.clock()
        end = f"{state} in {format_duration(until - self.start)}"
        if self.rate():
            end += f" ({format_rate(self.rate())})"
        self.write(self.line(end))


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(format_rate(task.speed), style="progress.data.speed")


class ElapsedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(format_duration(task.elapsed or 0.0), style="progress.elapsed")


class EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.finished or (task.total is not None and task.completed >= task.total):  # added at its total, resumed
            return Text("")
        left = eta_seconds(task.completed, task.total, task.speed)
        return Text(f"ETA {format_duration(left) if left is not None else '?'}", style="progress.remaining")


def bar_columns() -> tuple[ProgressColumn, ...]:
    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            EtaColumn(), ElapsedColumn(), TextColumn("{task.fields[note]}"))


# One live display per console (rich allows no more): a step opened inside another (evaluation
# inside training) adds its task to the bar already drawn.
_live: dict[int, list[Any]] = {}  # id(console) -> [rich Progress, tasks open]
_live_lock = threading.Lock()


class BarProgress:
    """Counts of one step as a rich bar on a terminal."""

    def __init__(self, desc: str, total: int | None, console: Console, *, clock: Clock = time.monotonic,
                 done: int = 0):
        self.console = console
        with _live_lock:
            entry = _live.get(id(console))
            if entry is None:
                bar = Progress(*bar_columns(), console=console, transient=False, get_time=clock)
                bar.start()
                entry = _live[id(console)] = [bar, 0]
            entry[1] += 1
        self.entry, self.bar, self.total = entry, entry[0], total
        self.failed, self.unusable, self.unsent, self.text = 0, 0, 0, ""
        self.task = self.bar.add_task(desc, total=total, completed=done, note="")

    def __call__(self, n: int = 1) -> None:
        self.advance(n)

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)

    def note(self, text: str) -> None:
        self.text = text
        self.bar.update(self.task, note=self.shown())

    def stop_short(self) -> None:
        pass  # the bar's last state shows its counts; it has no end word

    def fail(self, n: int = 1) -> None:
        self.failed += n
        self.bar.update(self.task, note=self.shown())

    def reject(self, n: int = 1) -> None:
        self.unusable += n
        self.bar.update(self.task, note=self.shown())
        self.advance(n)

    def skip(self, n: int = 1) -> None:
        self.unsent += n
        self.bar.update(self.task, note=self.shown())

    def shown(self) -> str:
        """The note column: the units done unusable, failed and not sent (neither counted done), the step's note."""
        return ", ".join([*outcomes(self.unusable, self.failed, self.unsent), *([self.text] if self.text else [])])

    def set_total(self, total: int | None) -> None:
        self.total = total
        self.bar.update(self.task, total=total)

    def close(self, failed: bool = False) -> None:
        with _live_lock:
            self.entry[1] -= 1
            if self.entry[1]:
                self.bar.remove_task(self.task)  # the step inside gives way to the one around it
            else:
                self.bar.stop()
                del _live[id(self.console)]


Tracker = PlainProgress | BarProgress


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True, emoji=False)  # ":100:" in a line is text, not an emoji


def open_progress(desc: str, total: int | None, *, console: Console | None = None, done: int = 0,
                  every_s: float | None = None, clock: Clock = time.monotonic, heartbeat: bool = True) -> Tracker:
    """A bar on a terminal (or in a notebook), else plain lines; close() it when the step ends."""
    console = console or stderr_console()
    if (console.is_terminal and not console.is_dumb_terminal) or console.is_jupyter:
        return BarProgress(desc, total, console, clock=clock, done=done)
    tracker = PlainProgress(desc, total, lambda line: console.print(line, markup=False, highlight=False),
                            every_s=every_s or plain_interval(), clock=clock, done=done)
    if heartbeat:
        tracker.start_heartbeat()
    return tracker


@contextmanager
def progress(desc: str, total: int | None, *, done: int = 0, console: Console | None = None,
             every_s: float | None = None, clock: Clock = time.monotonic, heartbeat: bool = True) -> Iterator[Tracker]:
    """The progress protocol: yields advance(n) (with .note(text)) for one step of `total` units, `done` of them
    before this session (a resumed step)."""
    tracker = open_progress(desc, total, console=console, done=done, every_s=every_s, clock=clock,
                            heartbeat=heartbeat)
    failed = True
    try:
        yield tracker
        failed = False
    finally:
        tracker.close(failed)


class Silent:
    """advance(n), note(text), fail(n), reject(n), skip(n) and set_total(n) that show nothing."""

    total = None  # nothing to lower

    def __call__(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def fail(self, n: int = 1) -> None:
        pass

    def reject(self, n: int = 1) -> None:
        pass

    def skip(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass

    def stop_short(self) -> None:
        pass


@contextmanager
def no_progress(desc: str, total: int | None, *, done: int = 0) -> Iterator[Silent]:
    """The protocol, silent: for library calls and tests that want no output."""
    yield Silent()
