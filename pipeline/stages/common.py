"""What the per-task stages share: stream one teacher call per task not yet done.

A stage reads the previous stage's file, skips tasks already in its own file (so a
re-run resumes), and appends each result the moment its reply arrives: no batch
barrier, and an interruption loses only the calls in flight (whose replies, if they
arrived, are in the cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from ..records import Task
from ..store import JsonlWriter, RunDir
from ..teachers import Completion, GenParams, Teacher
from ..teachers.base import Request

ProgressFn = Callable[[int], None]


def _chunk_size(teacher: Teacher) -> int:
    """Tasks per chunk for stages that work in rounds (evolve): enough to keep a server's
    concurrency or a local batch full, few enough that an interruption costs little."""
    return max(32, 4 * getattr(teacher, "concurrency", 0), 4 * getattr(teacher, "batch_size", 0))


def map_pending(tasks: Sequence[Task], run: RunDir, stage: str, teacher: Teacher, params: GenParams, *,
                prompt_for: Callable[[Task], str | None],
                finish: Callable[[Task, Completion | None], Task | None],
                progress: ProgressFn | None = None) -> int:
    """For each task not yet in the stage file: prompt_for(task) is sent (None = no call
    needed) and finish(task, reply or None) gives the record to append (None = skip; the
    teacher failed and a re-run tries again). Returns how many records were written."""
    done = {t.id for t in run.read_stage(stage)}
    by_id = {t.id: t for t in tasks if t.id not in done}
    written = 0
    with JsonlWriter(run.stage_file(stage)) as out:

        def emit(task: Task, reply: Completion | None) -> None:
            nonlocal written
            record = finish(task, reply)
            if record is not None:
                out.write(record)
                written += 1
            if progress:
                progress(1)

        def requests() -> Iterator[Request]:
            for task in by_id.values():
                prompt = prompt_for(task)
                if prompt is None:
                    emit(task, None)
                else:
                    yield Request(task.id, prompt, salt=task.id)

        for req, reply in teacher.stream(requests(), params, kind=stage):
            emit(by_id[req.key], reply)
    return written
