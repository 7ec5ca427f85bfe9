"""One stream of an OpenAI-compatible teacher (openai_compat.py), each request's first try a coroutine on the
transport's event loop (wire.Transport).

A thread per request cost most of a classify or score request's client CPU at 64 in flight: the thread woke,
handed its request to the loop, waited on a future, woke for the reply, committed it, and a callback woke the
stream (benchmarks/RESULTS.md, "Stage reply work"). Here the loop does all of a first try: the cache lookup, the
endpoint (Failover.pick and the counts in flight, as Retries.attempt keeps them), the POST, the reply read, then
the reply finished (stop sequences, usage) and committed to cache.sqlite with the others of the same turn of the
loop in one transaction, before the stream is given it. Any failure of that try (not 2xx, a timeout, a refused
connection, a malformed reply, the context too long) goes to the teacher's threads with the failure replayed as
their first try (Retries.call's `first`), so retries, waits, failover, events, the breaker and every message are
the thread path's; a 400 naming a field the server refuses drops the field and sends again there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import openai

from ..errors import TeacherError, raise_dropped_stop
from .base import Completion, GenParams, Request
from .wire import CONTEXT_REFUSALS, FATAL, PATHS, context_too_long, is_context_error, read_reply, transport

CANCEL_WAIT_S = 2.0  # an abandoned stream waits this long at most for its tasks on the loop to end (they end at once)
# What the stream is handed for a request: its reply, the future of its thread (retries), or an error to raise.
Outcome = Completion | Future | BaseException


class LoopStream:
    def __init__(self, teacher: Any, pool: ThreadPoolExecutor):
        self.teacher, self.pool, self.failover = teacher, pool, teacher.failover
        self.failover.fatal = None
        # A new event per stream, not clear(): calls of an abandoned stream keep theirs, set, and stop.
        self.stop = self.failover.stop = threading.Event()
        self.abandoned = threading.Event()  # set when the consumer stops early: replies still coming are not finished
        self.finished: queue.SimpleQueue[tuple[Request, Outcome]] = queue.SimpleQueue()
        self.loop = transport().loop
        self.tasks: set[asyncio.Task] = set()  # on the loop: this stream's first tries (read and changed there only)
        self.settled: list[tuple[Request, Completion, tuple]] = []  # replies awaiting this turn's commit (loop only)

    # -- on the stream's thread -------------------------------------------------------------
    def run(self, requests: Iterator[Request | None], params: GenParams,
            kind: str | None) -> Iterator[tuple[Request, Completion]]:
        """Keep up to `limit` requests in flight; refill as each one finishes (no batch barrier). With `kind`,
        each reply comes finished (BaseTeacher._finish) and committed to the run's cache."""
        t, failover = self.teacher, self.failover
        done = threading.Event()  # the stream is over: the prober stops
        threading.Thread(target=failover.watch, args=(done, self.stop, t.serves), daemon=True,
                         name="teacher-prober").start()
        clean = False
        sent, counted = 0, t.usage.replies  # this stream's requests, and the replies counted before it
        try:
            in_flight = 0
            exhausted = False
            while True:
                batch: list[tuple[Request, GenParams, str | None]] = []  # handed to the loop in one wake-up
                while not exhausted and failover.fatal is None and in_flight < failover.limit:
                    # the budget counts the requests sent whose replies it has not yet seen counted
                    req = t.pull(requests, sent - (t.usage.replies - counted), params)
                    if req is False or (req is None and in_flight == 0):  # the end, or WAIT with nothing to wait for
                        exhausted = True
                        break
                    if req is None:  # WAIT: the source needs a reply first
                        break
                    batch.append((req, req.params or params, req.kind or kind))
                    in_flight += 1
                    sent += 1
                if batch:
                    self.loop.call_soon_threadsafe(self.start, batch)
                if in_flight == 0:
                    break
                while True:  # a timed get: Ctrl-C reaches this thread within a fraction of a second
                    raise_dropped_stop()  # and one Python dropped in a finalizer (errors.STOP_SIGNALS) stops it too
                    try:
                        req, out = self.finished.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                in_flight -= 1
                if isinstance(out, Future):
                    out = out.result()
                if isinstance(out, BaseException):
                    raise out
                yield req, out
            clean = True
        finally:
            done.set()
            if not clean:  # interrupted, or the consumer stopped early: abandon what is in flight, now
                self.abandon()
        if failover.fatal is not None:
            fatal = failover.fatal
            if isinstance(fatal, TeacherError):
                raise fatal
            raise TeacherError(f"{t.name} at {t.base_url}: {t.error_text(fatal)}") from None

    def abandon(self) -> None:
        """Every try of this stream stopped: its tasks on the loop cancelled (and ended before this returns), its
        threads' sleeps woken, its connections closed."""
        self.abandoned.set()
        self.failover.halt(self.stop)

        async def cancel() -> None:
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if not self.loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(timeout=CANCEL_WAIT_S)
            except (concurrent.futures.TimeoutError, RuntimeError):  # the loop stopped (at exit): nothing runs on it
                pass
        self.teacher.drop_connections(self.pool)

    # -- on the loop ----------------------------------------------------------------------
    def start(self, batch: list[tuple[Request, GenParams, str | None]]) -> None:
        for req, params, kind in batch:
            task = self.loop.create_task(self.answer(req, params, kind))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def answer(self, req: Request, params: GenParams, kind: str | None) -> None:
        """The request's reply from the cache or a first try, finished and committed (`settle`); a failed try to
        the threads (`hand_over`). A fault of our own (the cache's disk full) is raised by the stream."""
        try:
            t = self.teacher
            key = t.cache_key(req, params) if t.cache is not None else None  # made once: lookup and commit
            c = None if req.fresh else t.lookup(req, params, key, alone=True)
            if c is None:
                if self.failover.fatal is not None or self.stop.is_set():
                    c = Completion("", "error", error="not sent: the run is stopping")
                else:
                    c, failure = await self.first_try(req, params, kind)
                    if c is None:
                        self.hand_over(req, params, kind, failure)
                        return
            if kind is None or self.abandoned.is_set():  # unfinished: a reply never read is not counted
                self.finished.put((req, c))
            else:
                self.settle(req, c, params, kind, key)
        except Exception as e:  # noqa: BLE001 (not lost: the stream raises it)
            self.finished.put((req, e))

    async def first_try(self, req: Request, params: GenParams,
                        kind: str | None) -> tuple[Completion | None, BaseException | None]:
        """One call, with Retries.attempt's bookkeeping: (the reply, None), or (None, how it failed; None: send
        it again, a field the server refused now dropped)."""
        t, failover = self.teacher, self.failover
        with failover.lock:  # the clients and counts of this stream: a later stream has its own
            clients, counts, owner = t.pools()
            i = failover.pick(counts, owner)
            counts[i] += 1
        failure: BaseException | None = None
        try:
            body = t.body_of(t.api, req.prompt, params, req.salt, params.max_tokens)
            started = time.monotonic()
            try:
                c = read_reply(t.api, await clients[i].apost(PATHS[t.api], body), "logprobs" in body)
            except CONTEXT_REFUSALS as e:
                if is_context_error(e):
                    failure = context_too_long(e)
                    failure.__cause__ = e
                    return None, failure
                if isinstance(e, openai.BadRequestError) and t.drop_refused(e, body):
                    return None, None
                failure = e
            except FATAL as e:
                return None, e
            except Exception as e:  # noqa: BLE001 (each is replayed into the retry policy, which decides)
                failure = e
            if failure is not None:
                if not self.stop.is_set():  # a call of an abandoned stream says nothing about the server now
                    failover.failed(failure, owner[i])
                return None, failure
        finally:
            with failover.lock:
                counts[i] -= 1
        if not self.stop.is_set():
            failover.succeeded(started, owner[i], kind)
        return c, None

    def hand_over(self, req: Request, params: GenParams, kind: str | None, first: BaseException | None) -> None:
        """The request to the teacher's threads: the retry policy from its failed first try on."""
        if self.abandoned.is_set():
            return
        try:
            fut = self.pool.submit(self.teacher.answer, req, params, kind, self.abandoned, first, True)
        except RuntimeError as e:  # the pool is shut down: at exit, or the stream abandoned meanwhile
            self.finished.put((req, e))
            return
        fut.add_done_callback(lambda f: self.finished.put((req, f)))

    def settle(self, req: Request, c: Completion, params: GenParams, kind: str, key: str | None) -> None:
        """Stop sequences and usage now; the commit with the other replies of this turn of the loop (`flush`),
        and only then the reply to the stream: durable before any record is built from it."""
        row = self.teacher.settle(req, c, params, kind, key)
        if row is None:  # no cache
            self.finished.put((req, c))
            return
        self.settled.append((req, c, row))
        if len(self.settled) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        batch, self.settled = self.settled, []
        try:
            self.teacher.cache.record_many([row for _, _, row in batch])
        except Exception as e:  # noqa: BLE001 (not lost: the stream raises it)
            for req, _, _ in batch:
                self.finished.put((req, e))
            return
        for req, c, _ in batch:
            self.finished.put((req, c))
