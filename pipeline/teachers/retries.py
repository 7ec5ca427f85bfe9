"""The one retry policy of an OpenAI-compatible teacher (tenacity), for every request of a stream: 429 waits
for Retry-After, 5xx/timeouts/connection errors/malformed replies back off exponentially with jitter,
400/401/403/404 fail at once, a context-length error halves max_tokens (as Self-Instruct did) unless the prompt
alone is over the context (wire.context_too_long), and a refused connection is tried again at once on another
endpoint. Each try goes to the endpoint the failover picks; a request refused in the end (a 400, 413, 422) is told
to it, whose run of them stops the stream (Failover.refused).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import tenacity

from .base import Completion, GenParams, Request
from .failover import Failover
from .wire import FATAL, ContextTooLong, Malformed, describe_error, is_transient, refusal, retry_after, unavailable

_NO_REQUEST = httpx.Request("POST", "http://stopped.invalid/")
# The clients of one stream, their requests in flight and the endpoint each belongs to.
Pools = tuple[list[Any], list[int], list[int]]
# One HTTP call: (client, request, its sampling, max_tokens) -> its reply.
Send = Callable[[Any, Request, GenParams, int], Completion]


def wait_for(max_wait_s: float):
    backoff = tenacity.wait_random_exponential(multiplier=min(1.0, max_wait_s), max=max_wait_s)

    def wait(state: tenacity.RetryCallState) -> float:
        e = state.outcome.exception() if state.outcome else None
        after = retry_after(e)
        return min(after, max_wait_s) if after is not None else backoff(state)

    return wait


class Retries:
    def __init__(self, failover: Failover, send: Send, *, max_retries: int, max_wait_s: float,
                 event: Callable[[str], None], secret: str = ""):
        self.failover, self.send, self.event, self.secret = failover, send, event, secret
        self.max_retries, self.max_wait_s = max_retries, max_wait_s

    def call(self, pools: Pools, req: Request, params: GenParams, stop: threading.Event,
             first: BaseException | None = None, kind: str | None = None) -> Completion:
        """The request's reply, or an error Completion once its retries are spent (or at a fatal error, which
        stops the stream). `first`: how its first try failed where it was made elsewhere (on the event loop,
        fastpath.py, its bookkeeping done there as attempt() does it); the policy takes it up from there.
        `kind`: its call kind, whose run of refusals it ends or adds to (Failover.refused)."""
        max_tokens = params.max_tokens
        faults = {"retries": 0, "timeouts": 0}
        retrying: tenacity.Retrying | None = None  # made at the first failure: most requests never need it
        error = "prompt longer than the model's context"
        refused: BaseException | None = None  # the server's refusal, where its last answer refused the request
        for _ in range(4):  # context-length shrinking: at most 4 halvings
            try:
                try:
                    if first is not None:
                        failure, first = first, None
                        raise failure
                    c = self.attempt(pools, req, params, max_tokens, stop, kind)
                except Exception as e:
                    if not is_transient(e):
                        raise
                    retrying = retrying or self.retrying(stop, faults)
                    c = retrying(self.replay(e), pools, req, params, max_tokens, stop, kind)
                c.retries, c.timeouts = faults["retries"], faults["timeouts"]
                return c
            except ContextTooLong as e:
                refused = e.__cause__ or e  # the server's 400, in its words
                max_tokens //= 2
                if max_tokens < 16 or not e.shrinkable:  # the prompt alone over the context: it never fits
                    break
            except FATAL as e:
                with self.failover.lock:
                    self.failover.fatal = e
                self.failover.halt(stop)
                error = self.describe(e)
                break
            except (openai.APIError, Malformed, ValueError) as e:  # retries spent, 400
                error = self.describe(e)
                refused = e if refusal(e) else None
                break
        if refused is not None:  # the breaker of refusals: a run of them stops the stream (Failover.refused)
            self.failover.refused(refused, stop, kind)
        return Completion("", "error", error=error, retries=faults["retries"], timeouts=faults["timeouts"])

    def describe(self, e: BaseException | None) -> str:
        """describe_error in the names of the teacher's settings and flags (failover.origin), its key masked."""
        return describe_error(e, self.secret, origin=self.failover.origin)

    def replay(self, first: BaseException) -> Callable[..., Completion]:
        """The tries after a first one that failed, for tenacity: its first "try" raises that failure again (no
        call), so its wait, its count and its event are tenacity's as if tenacity had made it. The first try runs
        outside tenacity because a Retrying costs about 30 us per request and most requests never fail."""
        pending = [first]

        def attempt(*args: Any) -> Completion:
            if pending:
                raise pending.pop()
            return self.attempt(*args)

        return attempt

    def retrying(self, stop: threading.Event, faults: dict[str, int]) -> tenacity.Retrying:
        backoff = wait_for(self.max_wait_s)

        def wait(state: tenacity.RetryCallState) -> float:
            e = state.outcome.exception() if state.outcome else None
            # Its endpoint just left the rotation: the next try goes to another one, and need not wait.
            return 0.0 if unavailable(e) and self.failover.any_live() else backoff(state)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            e = state.outcome.exception() if state.outcome else None
            faults["retries"] += 1
            faults["timeouts"] += isinstance(e, openai.APITimeoutError)
            self.event(f"retrying after {self.describe(e)}")

        return tenacity.Retrying(
            stop=lambda state: self.give_up(state, stop),
            wait=wait,
            sleep=lambda seconds: self.failover.nap(seconds, stop),  # an interrupt, a fatal error or a rejoin ends it
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )

    def give_up(self, state: tenacity.RetryCallState, stop: threading.Event) -> bool:
        """Stop retrying: when the run is stopping, or after max_retries; a refused connection or a 503 is instead
        retried until every endpoint has been down past its wait (a restarting server is back in seconds, a
        llama-server loading its model in minutes)."""
        if stop.is_set():
            return True
        if unavailable(state.outcome.exception() if state.outcome else None):
            return False  # Failover.check_outage() sets the stop once the wait is over
        return state.attempt_number > self.max_retries

    def attempt(self, pools: Pools, req: Request, params: GenParams, max_tokens: int,
                stop: threading.Event, kind: str | None = None) -> Completion:
        """One HTTP call to the endpoint in rotation with the fewest in flight (each try picks anew, so a
        retry leaves a dead endpoint), with the bookkeeping that decides when to give up on a server."""
        if stop.is_set():
            raise openai.APIConnectionError(message="not sent: the run is stopping", request=_NO_REQUEST)
        clients, counts, owner = pools
        failover = self.failover
        with failover.lock:
            i = failover.pick(counts, owner)
            counts[i] += 1
        started = time.monotonic()
        try:
            c = self.send(clients[i], req, params, max_tokens)
        except (ContextTooLong, *FATAL):
            raise
        except Exception as e:
            if not stop.is_set():  # a call of an abandoned stream says nothing about the server now
                failover.failed(e, owner[i])
            raise
        finally:
            with failover.lock:
                counts[i] -= 1
        if not stop.is_set():
            failover.succeeded(started, owner[i], kind)
        return c
