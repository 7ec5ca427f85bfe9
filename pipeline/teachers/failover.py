"""The endpoints of an OpenAI-compatible teacher as its requests see them: which are in rotation, how many
requests each may take, when one leaves the rotation and when it rejoins (the prober), the circuit breaker,
and the stop of a stream. openai_compat.py's docstring tells the policy; its module constants (read when a
teacher is built, so a test or a script may change them) set the timing (`Timing`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

from ..errors import TeacherError, TeacherUnavailable
from .origin import RUN_TEACHER, Origin
from .wire import describe_error, unavailable


@dataclass(frozen=True)
class Timing:
    probe_every_s: float  # a down endpoint is asked for one token this often
    probe_backoff_max_s: float  # the longest wait before the next readmission of one that keeps falling
    outage_line_every_s: float  # while no endpoint answers, a line this often
    strikes_to_down: int  # timeouts and 5xx in a row that take an endpoint out of rotation
    proven_after: int  # replies a rejoined endpoint serves before it counts as well


@dataclass
class Endpoint:
    """One server of --base-url, as the requests see it."""

    url: str
    answered: bool = False  # has answered in this process: an outage then gets outage_wait_s, not connect_window_s
    down_since: float | None = None  # out of rotation since (time.monotonic()); None: in rotation
    strikes: int = 0  # timeouts and 5xx in a row
    limit: int = 1  # its requests in flight at most: halved by its timeouts and slow replies, regrown by fast ones
    fast_in_row: int = 0  # fast replies since its limit last changed
    probe_wait_s: float = 0.0  # from a fall to the next readmission probe: doubles while it keeps falling again
    probe_at: float = 0.0  # time.monotonic() of that probe
    probing: bool = False  # a probe is in flight
    on_trial: bool = False  # rejoined, and has not served PROVEN_AFTER replies since
    served: int = 0  # replies since it last rejoined
    replies: int = 0  # replies in this process: the manifest's teacher.endpoints, so a failover is on record
    falls: int = 0  # times it left the rotation in this process, not answering at the start included


@dataclass(frozen=True)
class Patience:
    """The teacher's settings that decide when to give up on its servers."""

    concurrency: int
    timeout_s: float
    outage_wait_s: float
    connect_window_s: float
    max_consecutive_failures: int
    max_consecutive_refusals: int


class Failover:
    def __init__(self, base_url: str, urls: list[str], patience: Patience, timing: Timing,
                 event: Callable[[str], None], secret: str = "", origin: Origin = RUN_TEACHER):
        self.patience, self.timing, self.event, self.secret = patience, timing, event, secret
        self.origin = origin  # the table and flags its messages name (a judge's are not the run teacher's)
        self.base_url = base_url  # as --base-url gave it: the breaker's message names it
        # Each endpoint may take all of `concurrency` (when the others are down, it carries the run); its own
        # timeouts and slow replies cut only its share.
        self.endpoints = [Endpoint(u, limit=patience.concurrency) for u in urls]
        self.lock = threading.Lock()
        # Notified when an endpoint rejoins or the run stops: wakes retry sleeps, so a request waiting out an
        # outage goes as soon as a server answers again.
        self.changed = threading.Condition(self.lock)
        self.rejoins = 0
        self.fatal: BaseException | None = None
        self.stop = threading.Event()  # set on interrupt or fatal error: wakes every retry sleep
        self.failures_in_row = 0
        # Per call kind (bootstrap, classify...), its requests refused since its last reply: one stream carries
        # several stages, and another stage's replies do not hide one whose every prompt is refused
        self.refusals: dict[str | None, int] = {}
        self.last_error = ""

    @property
    def limit(self) -> int:
        """Requests the stream keeps in flight: the limits of the endpoints in rotation (of all, while none is),
        at most `concurrency`."""
        live = [e.limit for e in self.endpoints if e.down_since is None] or [e.limit for e in self.endpoints]
        return min(self.patience.concurrency, sum(live))

    def wait_of(self, endpoint: Endpoint) -> tuple[float, str]:
        """How long an endpoint out of rotation is waited for, and the setting that says so."""
        if endpoint.answered:
            return self.patience.outage_wait_s, "outage_wait_s"
        return self.patience.connect_window_s, "connect_window_s"

    def summary(self) -> list[dict[str, Any]]:
        """Each endpoint's replies and falls in this process, and whether it is in rotation now (the manifest)."""
        with self.lock:
            return [{"url": e.url, "replies": e.replies, "falls": e.falls, "in_rotation": e.down_since is None}
                    for e in self.endpoints]

    def any_live(self) -> bool:
        return any(e.down_since is None for e in self.endpoints)

    def check_outage(self, now: float) -> None:
        """Under the lock: stop the run once every endpoint has been out of rotation past its wait."""
        if self.fatal is not None or any(e.down_since is None or now - e.down_since <= self.wait_of(e)[0]
                                         for e in self.endpoints):
            return
        key = self.origin.key
        waited = "; ".join(f"{e.url} has not answered for {now - e.down_since:.0f} s ({key(self.wait_of(e)[1])}: "
                           f"{self.wait_of(e)[0]:.0f} s)" for e in self.endpoints)
        self.fatal = TeacherUnavailable(f"{waited}. Last error: {self.last_error}. Fix: start the server or check "
                                        f"{self.origin.flag('base_url', 'URL')}; a re-run resumes",
                                        role=self.origin.role)

    def revive(self, ep: int) -> None:
        """The endpoint answered: back in rotation, and every retry sleep wakes to use it."""
        endpoint = self.endpoints[ep]
        with self.lock:
            endpoint.answered = True
            if endpoint.down_since is None:
                return
            down, endpoint.down_since, endpoint.strikes = time.monotonic() - endpoint.down_since, None, 0
            endpoint.on_trial, endpoint.served = True, 0
            self.rejoins += 1
            self.changed.notify_all()
        self.event(f"endpoint back: {endpoint.url} answers again after {down:.0f} s; it takes requests again")

    def succeeded(self, started: float, ep: int, kind: str | None = None) -> None:
        """A reply from endpoint `ep` to a request sent at `started` (time.monotonic()). One sent before the
        endpoint left the rotation says nothing of it now: a reply still in flight when SIGTERM took the server
        down landed after it was marked down and put it back ("answers again after 0 s"), the next request
        failed, and it "fell again" with its wait doubled. Such a reply is counted, and the endpoint stays out
        until the prober or a request sent since gets an answer. `kind`: the request's (Request.kind), whose run
        of refusals the reply ends."""
        endpoint, seconds = self.endpoints[ep], time.monotonic() - started
        with self.lock:
            down_since = endpoint.down_since
            if self.refusals:  # the server takes these prompts: a refusal after this reply is its prompt's own
                self.refusals.pop(kind, None)
            if down_since is not None and started < down_since:
                endpoint.replies += 1
                return
        if down_since is not None:  # a retry that went to it anyway, with none in rotation
            self.revive(ep)
        with self.lock:
            self.failures_in_row = 0
            endpoint.answered, endpoint.strikes, endpoint.served = True, 0, endpoint.served + 1
            endpoint.replies += 1
            if endpoint.on_trial and endpoint.served >= self.timing.proven_after:  # well again: backoff starts over
                endpoint.on_trial, endpoint.probe_wait_s = False, 0.0
            if seconds > self.patience.timeout_s / 2:
                self.shrink(ep, f"a reply took {seconds:.1f} s, over half the {self.patience.timeout_s:g} s timeout")
                return
            endpoint.fast_in_row += 1
            if endpoint.limit < self.patience.concurrency and endpoint.fast_in_row >= endpoint.limit:
                endpoint.limit, endpoint.fast_in_row = endpoint.limit + 1, 0

    def failed(self, e: BaseException, ep: int) -> None:
        now, timing = time.monotonic(), self.timing
        endpoint = self.endpoints[ep]
        with self.lock:
            self.last_error = describe_error(e, self.secret, origin=self.origin)
            if isinstance(e, openai.APITimeoutError):
                self.shrink(ep, f"a request timed out after {self.patience.timeout_s:g} s")
            # An outage is judged by its length (check_outage); the breaker counts answers that went wrong.
            self.failures_in_row += 0 if unavailable(e) else 1
            endpoint.strikes += isinstance(e, openai.APITimeoutError) or (getattr(e, "status_code", None) or 0) >= 500
            went_down = endpoint.down_since is None and (unavailable(e) or endpoint.strikes >= timing.strikes_to_down)
            if went_down:
                # One that falls again before it has proved itself waits twice as long for its next readmission.
                endpoint.down_since, again = now, endpoint.on_trial
                endpoint.falls += 1
                endpoint.probe_wait_s = min(2 * max(endpoint.probe_wait_s, timing.probe_every_s),
                                            timing.probe_backoff_max_s) if again else timing.probe_every_s
                # A first fall is probed at the prober's next round, as a restarted server should be.
                endpoint.probe_at, endpoint.on_trial = now + (endpoint.probe_wait_s if again else 0.0), False
            others = sum(x.down_since is None for x in self.endpoints)
            if self.fatal is None and self.failures_in_row >= self.patience.max_consecutive_failures:
                slow = (f"a reply takes the server over {self.origin.key('timeout_s')} ({self.patience.timeout_s:g} s):"
                        f" raise it, or lower {self.origin.key('concurrency')}; "
                        if isinstance(e, openai.APITimeoutError) else "")
                self.fatal = TeacherUnavailable(
                    f"{self.failures_in_row} requests in a row failed at {self.base_url} (last error: "
                    f"{self.last_error}). Fix: {slow}check the server's log; "
                    f"{self.origin.key('max_consecutive_failures')} sets this limit; a re-run resumes",
                    role=self.origin.role)
            self.check_outage(now)
        if went_down:
            wait, setting = self.wait_of(endpoint)
            # Down on failed answers (5xx, timeouts), not an outage: the breaker may end the wait sooner
            left = self.patience.max_consecutive_failures - self.failures_in_row
            sooner = "" if unavailable(e) else (f", or until {left} more requests in a row fail "
                                                f"({self.origin.key('max_consecutive_failures')})")
            self.event(f"endpoint down: {endpoint.url} ({self.last_error}); " + (
                f"its requests go to the {others} other endpoint(s)" if others else
                f"waiting up to {wait:.0f} s for an endpoint to answer again ({self.origin.key(setting)}){sooner}") + (
                f"; it fell again soon after it rejoined, so it is tried again in {endpoint.probe_wait_s:.0f} s"
                if again else ""))
        if self.fatal is not None:
            self.halt(self.stop)

    def refused(self, e: BaseException, stop: threading.Event, kind: str | None = None) -> None:
        """A request of `kind` refused in the end (wire.refusal; the context too long after its halvings). One among
        replies fails alone; `max_consecutive_refusals` of a kind in a row stop the stream in the server's words: a
        prompt over its context or a parameter it rejects is refused for every next prompt too (a bootstrap sent
        800 such requests, each prompt 4 times, before bootstrap.max_requests ended it)."""
        text = describe_error(e, self.secret, origin=self.origin)
        with self.lock:
            n = self.refusals[kind] = self.refusals.get(kind, 0) + 1
            if self.fatal is not None or n < self.patience.max_consecutive_refusals:
                return
            what = f"{kind + ' ' if kind else ''}" + ("requests in a row were" if n > 1 else "request was")
            hint = ("the prompts are longer than the model's context: give the server a longer one (llama.cpp's -c, "
                    "vLLM's --max-model-len) or send shorter prompts; " if "context" in text.lower() else "")
            self.fatal = TeacherError(
                f"{n} {what} refused by {self.base_url}, with no reply between (the last: {text}). "
                f"Fix: {hint or 'what the refusal says; '}{self.origin.key('max_consecutive_refusals')} sets this "
                "limit; a re-run resumes")
        self.halt(stop)

    def shrink(self, ep: int, why: str) -> None:
        """Halve the requests kept in flight at one endpoint (called under the lock); the others keep theirs."""
        endpoint, concurrency = self.endpoints[ep], self.patience.concurrency
        setting = self.origin.key("concurrency")
        endpoint.fast_in_row = 0
        if endpoint.limit > 1:
            endpoint.limit = max(1, endpoint.limit // 2)
            kept = f"{endpoint.limit} request{'s' if endpoint.limit > 1 else ''}"  # "keeping 1 requests" read badly
            if len(self.endpoints) == 1:
                self.event(f"{why}: keeping {kept} in flight (of {setting} {concurrency}); the server serves fewer "
                           "at a time")
            else:
                self.event(f"{why} at {endpoint.url}: keeping at most {kept} in flight there (of {setting} "
                           f"{concurrency}); that server serves fewer at a time")

    def pick(self, counts: list[int], owner: list[int]) -> int:
        """Under the lock: the client for the next try. The endpoint in rotation with the fewest in flight among
        those under their own limit (else the one least over it), and its client with the fewest; with none
        in rotation, any client with the fewest (its endpoint may be back)."""
        if len(counts) == 1:  # one client: the answer, without the lists below on the event loop for every request
            return 0
        live = [ep for ep, e in enumerate(self.endpoints) if e.down_since is None]
        if not live:
            return min(range(len(counts)), key=counts.__getitem__)
        load = [0] * len(self.endpoints)
        for i, ep in enumerate(owner):
            load[ep] += counts[i]
        under = [ep for ep in live if load[ep] < self.endpoints[ep].limit]
        ep = min(under, key=load.__getitem__) if under else \
            min(live, key=lambda x: load[x] - self.endpoints[x].limit)
        return min((i for i in range(len(counts)) if owner[i] == ep), key=counts.__getitem__)

    # -- the prober ----------------------------------------------------------------------
    def probe(self, ep: int, serves: Callable[[int], bool]) -> None:
        """One readmission probe, on its own thread: one that hangs delays neither the others nor the outage checks."""
        answered = serves(ep)
        with self.lock:
            self.endpoints[ep].probing = False
        if answered:
            self.revive(ep)

    def watch(self, done: threading.Event, stop: threading.Event, serves: Callable[[int], bool]) -> None:
        """The stream's prober: every probe_every_s, ask each endpoint out of rotation whose wait is over for
        one token (`serves`; it rejoins if it answers); while none is in rotation, a line every
        outage_line_every_s, and the stop once every endpoint is past its wait (no request need be trying for
        the run to end)."""
        said = time.monotonic()
        while not done.wait(self.timing.probe_every_s) and not stop.is_set():
            now, line = time.monotonic(), ""
            with self.lock:
                due = [ep for ep, e in enumerate(self.endpoints)
                       if e.down_since is not None and not e.probing and now >= e.probe_at]
                for ep in due:
                    self.endpoints[ep].probing = True
            for ep in due:
                threading.Thread(target=self.probe, args=(ep, serves), daemon=True, name="teacher-probe").start()
            with self.lock:  # a request's reply may put an endpoint back meanwhile
                self.check_outage(now)
                down = [(e, now - e.down_since) for e in self.endpoints if e.down_since is not None]
                if len(down) < len(self.endpoints):
                    said = now
                elif now - said >= self.timing.outage_line_every_s:
                    said = now
                    left = max(self.wait_of(e)[0] - seconds for e, seconds in down)
                    setting = "outage_wait_s" if any(e.answered for e, _ in down) else "connect_window_s"
                    line = ("outage: " + ", ".join(f"{e.url} down for {seconds:.0f} s" for e, seconds in down)
                            + f"; waiting {left:.0f} s more for one to answer ({self.origin.key(setting)}), then the run "
                            "stops")
            if self.fatal is not None:
                self.halt(stop)
            elif line:
                self.event(line)

    def nap(self, seconds: float, stop: threading.Event) -> None:
        """tenacity's sleep: over early when the run stops or an endpoint rejoins."""
        with self.changed:
            rejoins = self.rejoins
            self.changed.wait_for(lambda: stop.is_set() or self.rejoins != rejoins, timeout=seconds)

    def halt(self, stop: threading.Event) -> None:
        """Stop the stream: every retry sleep wakes, and no new try starts."""
        stop.set()
        with self.changed:
            self.changed.notify_all()
