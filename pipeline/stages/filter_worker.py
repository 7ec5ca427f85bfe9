"""Bootstrap's online filter in a process of its own (issue 20).

Against a fast teacher (50 ms, 64 requests in flight) bootstrap's pace was set by the GIL: the Self-Instruct
filter's rules and ROUGE-L rows held it for about half of each reply's reading, while the event loop waited for it
to send the next requests. `ForkedFilter` runs an `InstructionFilter`'s `decide` in a forked child, on the other
core: the child starts with the pool already indexed (fork copies it), each reply's lines go to it in one message
as the reply is read, and its verdicts come back in one, collected at the next reply's read (bootstrap's overlap),
so the child works while the parent writes the reply before. The verdicts are those of the filter in this process,
in the same order, so the records are the same either way.

The parent keeps the pool's texts in index order, to name a passing line's closest entries. If the child dies, the
parent says so and goes on with a filter of its own, built from those texts: nothing is lost, only the speed.
Linux only (fork of a process with threads is unsafe on macOS); elsewhere bootstrap filters in its own process.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe

from ..records import Task
from .filter import InstructionFilter, Passed, fill_similar


def can_fork() -> bool:
    """Whether this platform forks the filter's child safely."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class ForkedFilter:
    """An InstructionFilter whose `decide` runs in a forked child; `check` and `add` are not offered (bootstrap
    asks only `decide`). Close it to end the child."""

    def __init__(self, filt: InstructionFilter, say: Callable[[str], None] = lambda message: None):
        self.cfg, self.say = filt.cfg, say
        self.texts = [filt.index.text(i) for i in range(len(filt.index))]  # the child's index, in its order
        self.seed_texts = [filt.seed_index.text(i) for i in range(len(filt.seed_index))]
        self.passed = set(filt.passed)  # the child's: the ids it passed, as received
        self.sent: deque[list[tuple[str, str]]] = deque()  # lines sent, their verdicts not yet received
        self.local: InstructionFilter | None = None  # the parent's own filter, once the child has died
        parent, child = Pipe()
        with warnings.catch_warnings():
            # Python 3.12 warns at any fork of a process with threads (the teacher's event loop): the child runs this
            # module's loop alone, on the filter's own objects, never the code those threads run
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: it serves until the parent's end closes, and never returns
            _serve(child, parent, filt)
        child.close()
        self.conn: Connection | None = parent
        self.pid: int | None = pid

    def send(self, lines: Sequence[tuple[str, str]]) -> None:
        """A reply's lines to the child, which decides on them while this process goes on (InstructionFilter.send)."""
        lines = list(lines)
        self.sent.append(lines)
        if self.local is None:
            try:
                self.conn.send(lines)
            except OSError as e:
                self.local = self._own_filter(e)

    def receive(self) -> list[str | Passed | None]:
        """The verdicts on the oldest lines sent (from the child, or, once it has died, decided here)."""
        lines = self.sent.popleft()
        if self.local is None:
            try:
                verdicts = self.conn.recv()
            except (EOFError, OSError) as e:
                self.local = self._own_filter(e)
        if self.local is not None:
            return self.local.decide(lines)
        for (key, instruction), verdict in zip(lines, verdicts, strict=True):
            if isinstance(verdict, Passed):
                self.texts.append(instruction)
                self.passed.add(key)
        return verdicts

    def decide(self, lines: Sequence[tuple[str, str]]) -> list[str | Passed | None]:
        """InstructionFilter.decide, in the child; only with nothing else sent and not received (whose verdicts
        would come first)."""
        if self.sent:
            raise ValueError(f"decide() with {len(self.sent)} message(s) of lines sent and not received: "
                             "receive() them first")
        self.send(lines)
        return self.receive()

    def text_of(self, passed: Passed) -> Callable[[int], str]:
        if self.local is not None:
            return self.local.text_of(passed)
        return (self.seed_texts if passed.seeds_only else self.texts).__getitem__

    def _own_filter(self, error: BaseException) -> InstructionFilter:
        code = self._end()
        self.say(f"bootstrap: the filter's process ended ({type(error).__name__}, exit status {code}); the pool's "
                 f"{len(self.texts)} instructions are indexed again here and filtering goes on in this process")
        n_seeds = len(self.seed_texts)
        own = InstructionFilter(self.cfg, pool=self.texts[n_seeds:], seeds=self.seed_texts)
        own.passed = set(self.passed)
        return own  # the lines sent and not received are decided on here, in order, as they are received

    def _end(self) -> int | None:
        """Close the pipe and reap the child (it exits at the pipe's end); its exit status."""
        conn, pid, self.conn, self.pid = self.conn, self.pid, None, None
        if conn is not None:
            conn.close()
        if pid is None:
            return None
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        self._end()


def _serve(conn: Connection, other: Connection, filt: InstructionFilter) -> None:
    """The child's life: verdicts for each message of lines until the parent's end closes. It ignores Ctrl-C (the
    parent stops it by closing the pipe, or its death does), holds none of the parent's files or sockets open (a
    server must see the parent close a connection), and leaves with os._exit, so nothing of the parent's (its
    buffers, its atexit handlers) runs here."""
    code = 0
    try:
        gc.freeze()  # the parent's objects are never collected here: a finalizer could close a file of the child's
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        other.close()
        keep = conn.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        while True:
            try:
                lines = conn.recv()
            except EOFError:
                break
            conn.send(filt.decide(lines))
    except BaseException:  # noqa: BLE001 (the parent sees the pipe close and goes on without the child)
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def fill(filt: InstructionFilter | ForkedFilter, task: Task, passed: Passed) -> None:
    """A passing task's closest entries and mean, named by whichever filter passed it."""
    fill_similar(task, passed, filt.text_of(passed), filt.cfg.most_similar_k)
