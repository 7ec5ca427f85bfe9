"""stages/common.py: a per-task stage's replies read on a thread of their own (ReadAside), with the stage's order,
retries and errors as when they were read on the stream's thread."""

import threading

import pytest

from pipeline.records import Task
from pipeline.stages.common import TaskMap, map_pending
from pipeline.store import RunDir
from pipeline.teachers import Completion, GenParams


class EchoTeacher:
    """Answers each request at once, in order, and notes the thread that reads each reply."""

    def __init__(self, replies):
        self.replies, self.sent = replies, []

    def stream(self, requests, params, *, kind):
        for req in requests:
            if req is None:  # WAIT: nothing is in flight here, the pull is asked again
                continue
            self.sent.append(req.salt)
            yield req, Completion(self.replies(req), "stop")


def stage(tmp_path, finish, max_retries=1):
    return TaskMap(RunDir(tmp_path), "classify", GenParams(max_tokens=8), prompt_for=lambda t: f"Is {t.instruction}?",
                   finish=finish, max_retries=max_retries)


def test_replies_are_read_off_the_stream_thread_and_retries_go_out_after_the_tasks(tmp_path):
    readers = set()

    def finish(task, reply, last_try):
        readers.add(threading.current_thread().name)
        if reply.text == "bad" and not last_try:
            return "unparseable_reply: bad"
        return Task(id=task.id, instruction=task.instruction, stage="classify", is_classification=True)

    teacher = EchoTeacher(lambda req: "bad" if req.key == "t1" and "retry" not in req.salt else "Yes")
    tasks = [Task(id=f"t{i}", instruction=f"task {i}") for i in range(5)]
    result = map_pending(tasks, teacher, stage(tmp_path, finish))
    assert (result.written, result.retried, result.rejected) == (5, 1, 0)
    assert teacher.sent == ["t0", "t1", "t2", "t3", "t4", "t1:retry1"]  # every task first, then the retry
    assert readers == {"reply-reader"}
    assert [t.id for t in RunDir(tmp_path).read_stage("classify")] == ["t0", "t2", "t3", "t4", "t1"]


def test_an_error_while_reading_a_reply_stops_the_stage_with_it(tmp_path):
    def finish(task, reply, last_try):
        if task.id == "t2":
            raise OSError("disk full")
        return Task(id=task.id, instruction=task.instruction, stage="classify")

    teacher = EchoTeacher(lambda req: "Yes")
    with pytest.raises(OSError, match="disk full"):
        map_pending([Task(id=f"t{i}", instruction=f"task {i}") for i in range(50)], teacher, stage(tmp_path, finish))
    assert [t.id for t in RunDir(tmp_path).read_stage("classify")] == ["t0", "t1"]  # read in order, up to the error
