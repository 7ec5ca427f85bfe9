"""A reply's work on the client (issue 20): replies recorded at once share a commit (cache.Group), records are
held and written together (store.JsonlWriter hold_s), and a request's cache key is made once. Each keeps what the
slower way gave: a row committed before its thread goes on, every line on disk after a flush or close, in order,
and the same cache keys."""

import sqlite3
import threading
import time

import pytest

from pipeline.cache import Group, ResponseCache
from pipeline.records import Task
from pipeline.store import JsonlWriter, read_tasks
from pipeline.teachers.base import Completion, GenParams, Request


def test_replies_recorded_at_once_share_a_commit_and_each_returns_once_its_row_is_committed(tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    threads, missing = 24, []
    barrier = threading.Barrier(threads)

    def reply(i: int) -> None:
        barrier.wait()
        cache.record(f"k{i}", Completion(f"text {i}", "stop", prompt_tokens=i, completion_tokens=1), "s", "classify",
                     {"calls": 1, "prompt_tokens": i, "completion_tokens": 1}, "m")
        other = sqlite3.connect(tmp_path / "cache.sqlite")  # another connection sees only what is committed
        if other.execute("SELECT text FROM responses WHERE key = ?", (f"k{i}",)).fetchone() != (f"text {i}",):
            missing.append(i)
        other.close()

    workers = [threading.Thread(target=reply, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert missing == []
    assert cache.usage()["classify"]["calls"] == threads
    assert cache.usage()["classify"]["prompt_tokens"] == sum(range(threads))
    assert cache.get("k5").text == "text 5" and cache.get("k5").cached


def test_lookups_made_at_once_each_get_their_own_reply_or_none(tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    for i in range(0, 40, 2):  # every other key cached
        cache.record(f"k{i}", Completion(f"text {i}", "length", prompt_tokens=i), "s", "classify", {"calls": 1}, "m")
    got: dict[int, object] = {}
    barrier = threading.Barrier(40)

    def look(i: int) -> None:
        barrier.wait()
        got[i] = cache.get(f"k{i}")

    workers = [threading.Thread(target=look, args=(i,)) for i in range(40)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(40):
        if i % 2:
            assert got[i] is None
        else:
            assert (got[i].text, got[i].finish_reason, got[i].prompt_tokens, got[i].cached) == (f"text {i}", "length",
                                                                                               i, True)
    assert cache._get_many([f"k{i}" for i in range(1200)])[:3] == [("text 0", "length", 0, 0), None,
                                                                    ("text 2", "length", 2, 0)]


def test_a_group_commits_what_waits_in_one_write_and_an_error_reaches_every_thread_of_its_write():
    batches, first_in = [], threading.Event()
    group: Group

    def write(rows):
        if not batches:  # the first write waits until the other 15 rows are handed in
            first_in.set()
            deadline = time.monotonic() + 10
            while len(group.waiting) < 15 and time.monotonic() < deadline:
                time.sleep(0.005)
        batches.append(list(rows))
        if "bad" in rows:
            raise OSError("disk full")
        return [f"{row}: done" for row in rows]

    group = Group(write)
    results: dict[str, str] = {}

    def hand(row: str) -> None:
        try:
            results[row] = group.call(row)
        except OSError as e:
            results[row] = str(e)

    lead = threading.Thread(target=hand, args=("first",))
    lead.start()
    first_in.wait(10)
    others = [threading.Thread(target=hand, args=(r,)) for r in [*(f"r{i}" for i in range(14)), "bad"]]
    for t in others:
        t.start()
    for t in [lead, *others]:
        t.join(10)
    assert batches[0] == ["first"] and sorted(batches[1]) == sorted([*(f"r{i}" for i in range(14)), "bad"])
    assert results["first"] == "first: done"
    assert {results[r] for r in batches[1]} == {"disk full"}  # the failed write's rows all raise its error
    assert group.call("after") == "after: done"  # and the group goes on
    assert batches[-1] == ["after"] and not group.busy


def test_held_lines_reach_the_file_together_at_the_hold_or_a_flush_and_in_order(tmp_path):
    kept, rejected = tmp_path / "evolve.jsonl", tmp_path / "rejected.jsonl"
    with JsonlWriter(kept, hold_s=3600) as k, JsonlWriter(rejected, hold_s=3600, after=k) as r:
        k.write(Task(id="a", instruction="x"))
        k.write(Task(id="b", instruction="y"))
        assert kept.read_text() == ""  # held
        r.write(Task(id="c", instruction="z").rejected("rule: why", "evolve"))
        r.flush()  # a rejection goes to disk only with the kept lines written before it
        assert [t.id for t in read_tasks(kept)] == ["a", "b"] and [t.id for t in read_tasks(rejected)] == ["c"]
        k.write(Task(id="d", instruction="w"))
    assert [t.id for t in read_tasks(kept)] == ["a", "b", "d"]  # close writes what is held

    timed = tmp_path / "classify.jsonl"
    w = JsonlWriter(timed, hold_s=0.05)
    w.write(Task(id="e", instruction="v"))
    assert timed.read_text() == ""
    time.sleep(0.06)
    w.write(Task(id="f", instruction="u"))  # the first record past the hold writes every line held
    assert [t.id for t in read_tasks(timed)] == ["e", "f"]
    w.close()

    plain = tmp_path / "bootstrap.jsonl"
    with JsonlWriter(plain) as p:  # not held: each record on disk as it is written (bootstrap's request log needs it)
        p.write(Task(id="g", instruction="t"))
        assert [t.id for t in read_tasks(plain)] == ["g"]


def test_a_reply_is_committed_under_the_key_it_was_looked_up_with(tmp_path, fake_openai):
    from pipeline.teachers.openai_compat import OpenAITeacher

    teacher = OpenAITeacher("m", base_url=fake_openai.url, concurrency=2)
    teacher.cache = ResponseCache(tmp_path / "cache.sqlite")
    params = GenParams(max_tokens=8, stop=("STOP",))
    req = Request(1, "Say hi.", salt="s1")
    fake_openai.enqueue("hi there STOP and more")
    (got,) = [c for _, c in teacher.stream([req], params, kind="classify")]
    assert got.text == "hi there " and not got.cached
    again = teacher.cache.get(teacher.cache_key(req, params))
    assert again is not None and again.text == "hi there "
    assert [c.cached for _, c in teacher.stream([req], params, kind="classify")] == [True]
    assert len(fake_openai.history) == 1


@pytest.mark.parametrize("hold_s", [0.0, 3600])
def test_close_writes_held_lines_even_when_the_stage_fails(tmp_path, hold_s):
    path = tmp_path / "score.jsonl"
    with pytest.raises(RuntimeError):
        with JsonlWriter(path, hold_s=hold_s) as w:
            w.write(Task(id="a", instruction="x"))
            raise RuntimeError("the judge stopped")
    assert [t.id for t in read_tasks(path)] == ["a"]
