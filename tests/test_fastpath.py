"""A request's first try on the transport's event loop (teachers/fastpath.py, issue 20): a reply is in cache.sqlite
before the stream yields it, a failed first try gets the thread path's retries with the same counts, events and
failover state as a request answered on a thread all the way, and an interrupt leaves no task of the stream on
the loop."""

import _thread
import asyncio
import socket
import sqlite3
import threading

import pytest

from pipeline.cache import ResponseCache
from pipeline.teachers import GenParams
from pipeline.teachers.base import Request
from pipeline.teachers.openai_compat import OpenAITeacher
from pipeline.teachers.wire import transport

PARAMS = GenParams(max_tokens=50, stop=("END",))


def teacher(url, **kw):
    kw.setdefault("max_retries", 3)
    kw.setdefault("max_wait_s", 0.05)
    t = OpenAITeacher("fake-model", base_url=url, seed=7, **kw)
    t.events = []
    t.on_event = t.events.append
    return t


def dead_url() -> str:
    """A URL nothing listens at: its connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def stream_tasks() -> list[asyncio.Task]:
    """The fast path's tasks still on the loop, not done."""
    async def pending() -> list[asyncio.Task]:
        return [t for t in asyncio.all_tasks() if not t.done() and "LoopStream" in t.get_coro().__qualname__]

    return asyncio.run_coroutine_threadsafe(pending(), transport().loop).result(timeout=5)


def test_a_reply_served_on_the_loop_is_committed_before_it_is_yielded_and_served_from_the_cache_again(
        fake_openai, tmp_path):
    fake_openai.default_delay = 0.01
    t = teacher(fake_openai.url, concurrency=8)
    t.cache = ResponseCache(tmp_path / "cache.sqlite")
    t.session, t.usage_model = "s1", "fake-model"
    other = sqlite3.connect(tmp_path / "cache.sqlite")  # another connection sees only what is committed
    requests = [Request(i, f"prompt {i}", salt=str(i)) for i in range(40)]
    seen = 0
    for req, c in t.stream(requests, PARAMS, kind="classify"):
        row = other.execute("SELECT text FROM responses WHERE key = ?", (t.cache_key(req, PARAMS),)).fetchone()
        assert c.ok and row == (c.text,), (req.key, row, c.text)
        seen += 1
    assert seen == 40 and len(fake_openai.history) == 40
    assert not t._pool._threads  # every request answered on the loop: no thread of the retry path was started
    assert other.execute("SELECT SUM(calls) FROM usage WHERE kind = 'classify'").fetchone() == (40,)
    again = dict(t.stream(requests, PARAMS, kind="classify"))  # from the cache, on the loop too: nothing sent
    assert all(c.cached for c in again.values()) and len(fake_openai.history) == 40
    assert t.usage.to_dict()["classify"]["cached"] == 40


def scenario(server, case: str, dead: str) -> str:
    """Queue one first try that fails as `case` says, then a good reply; the teacher's base URL for it."""
    if case == "429":
        server.enqueue({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "0.05"})
    elif case == "500":
        server.enqueue({"error": {"message": "engine crashed"}}, status=500)
    elif case == "timeout":
        server.enqueue("too late", delay=2.5)
    elif case == "malformed":
        server.enqueue(b"{not json")
    elif case == "refused seed":
        server.enqueue({"error": {"message": "Unrecognized request argument supplied: seed"}}, status=400)
    elif case == "context":
        server.enqueue({"error": {"message": "This model's maximum context length is 4097 tokens"}}, status=400)
    server.enqueue("fine END ignored")
    return f"{dead},{server.url}" if case == "refused" else server.url


@pytest.mark.parametrize("case", ["429", "500", "timeout", "malformed", "refused", "refused seed", "context"])
def test_a_failed_first_try_on_the_loop_is_retried_as_on_a_thread(fake_openai, case):
    req, dead = Request("r", "a prompt", salt="s"), dead_url()
    outcomes = []
    for path in ("thread", "loop"):
        before = len(fake_openai.history)
        t = teacher(scenario(fake_openai, case, dead), timeout_s=1.0 if case == "timeout" else 30.0)
        if path == "thread":  # the request answered on a thread all the way, its first try as well
            c = t.answer(req, PARAMS, "k")
        else:
            ((_, c),) = list(t.stream([req], PARAMS, kind="k"))
        sent = fake_openai.history[before:]
        outcomes.append({
            "reply": (c.ok, c.text, c.finish_reason, c.retries, c.timeouts, c.error),
            "events": t.events, "usage": t.usage.to_dict(), "breaker": t._failures_in_row,
            "endpoints": [(e.strikes, e.limit, e.down_since is None, e.answered) for e in t._endpoints],
            "sent": [(h["body"]["max_tokens"], "seed" in h["body"]) for h in sent]})
    thread, loop = outcomes
    assert loop == thread
    assert loop["reply"][:2] == (True, "fine ")
    assert loop["reply"][3] == (0 if case in ("refused seed", "context") else 1)
    if case == "refused seed":
        assert loop["sent"] == [(50, True), (50, False)]
    if case == "context":
        assert loop["sent"] == [(50, True), (25, True)]
    if case in ("429", "500", "timeout", "refused"):
        assert any(e.startswith("retrying after") for e in loop["events"]), loop["events"]


def test_a_fatal_first_try_on_the_loop_stops_the_stream_as_on_a_thread(fake_openai):
    fake_openai.enqueue({"error": {"message": "bad key"}}, status=401)
    t = teacher(fake_openai.url)
    with pytest.raises(Exception, match="API key was refused"):
        list(t.stream([Request(i, f"p{i}") for i in range(3)], PARAMS, kind="k"))
    assert t.failover.fatal is not None and t._failures_in_row == 0


def test_ctrl_c_mid_stream_leaves_no_task_on_the_loop_and_no_reply_finished(fake_openai, tmp_path):
    fake_openai.enqueue("first, at once")
    fake_openai.default_delay = 1.5  # the rest are in flight when Ctrl-C comes
    t = teacher(fake_openai.url, concurrency=16)
    t.cache = ResponseCache(tmp_path / "cache.sqlite")
    t.session = "s1"
    stream = t.stream((Request(i, f"p{i}") for i in range(40)), PARAMS, kind="k")
    req, c = next(stream)
    assert c.ok
    timer = threading.Timer(0.3, _thread.interrupt_main)  # Ctrl-C while the stream waits for its next reply
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    assert stream_tasks() == []  # cancelled and ended before the interrupt left the stream
    assert t._in_flight == [0] and t._failures_in_row == 0  # the cancelled tries touched neither count
    assert t.usage.to_dict()["k"]["calls"] == 1 and len(t.cache) == 1  # only the reply the consumer was given
    fake_openai.default_delay = 0.0
    out = t.generate([f"q{i}" for i in range(10)], PARAMS, kind="k")  # a later stream works, on fresh clients
    assert all(c.ok for c in out)
