"""What the per-task stages share: map one teacher call over the tasks not yet done.

A stage reads the previous stage's file, skips tasks already in its own file (so a
re-run resumes), and appends results chunk by chunk, so an interruption loses at most
one chunk of replies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..records import Task
from ..store import JsonlWriter, RunDir
from ..teachers import Teacher

ProgressFn = Callable[[int], None]


def _chunk_size(teacher: Teacher) -> int:
    # Large enough to keep a server's concurrency or a local batch full, small enough that
    # an interruption costs little.
    return max(32, 4 * getattr(teacher, "concurrency", 0), 4 * getattr(teacher, "batch_size", 0))


def map_pending(tasks: Sequence[Task], run: RunDir, stage: str, teacher: Teacher,
                 call: Callable[[list[Task]], list[Task | None]], progress: ProgressFn | None) -> int:
    """Apply `call` to tasks not yet in the stage file; append results. Returns how many were written."""
    done = {t.id for t in run.read_stage(stage)}
    pending = [t for t in tasks if t.id not in done]
    written = 0
    size = _chunk_size(teacher)
    with JsonlWriter(run.stage_file(stage)) as out:
        for start in range(0, len(pending), size):
            for task in call(pending[start:start + size]):
                if task is not None:  # None: the teacher failed on it; a re-run tries again
                    out.write(task)
                    written += 1
            if progress:
                progress(len(pending[start:start + size]))
    return written
