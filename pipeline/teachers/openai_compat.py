"""Teacher over the OpenAI API or any server that speaks it (vLLM, Ollama, llama.cpp, TGI).

Requests run on a thread pool: up to `concurrency` in flight, a new one starting as soon
as any finishes, so one slow reply never idles the rest. One retry policy (tenacity) for
every call: 429 waits for Retry-After, 5xx/timeouts/connection errors/malformed replies
back off exponentially with jitter, 400/401/403/404 fail at once, and a context-length
error halves max_tokens (as Self-Instruct did). A prompt that still fails is returned as
an error Completion, counted, and left pending by the stage.

Nothing hangs silently:
- `preflight()` asks every endpoint for one token before the first prompt, so a wrong
  port or a dead server fails in seconds, naming the URL (exit 4); with api "auto" it also
  picks the completions endpoint where the server has one (small local models follow the
  Self-Instruct prompts far better as continuations than as chat turns).
- Several endpoints fail over: one that refuses or drops connections, or times out or answers 5xx
  STRIKES_TO_DOWN times in a row, leaves the rotation, and its requests are retried at once on the
  others. While a stream runs, a prober asks each endpoint out of rotation for one token on the run's API
  every PROBE_EVERY_S; it rejoins when it answers (GET /models is not enough: a wedged engine or a proxy with
  no backend answers it and never a prompt). One that falls again soon after it rejoined waits twice as long
  before each next try, up to PROBE_BACKOFF_MAX_S. The run stops only when every endpoint has been down
  past its wait: `outage_wait_s` for one that has answered in this process (a restart, a redeploy),
  `connect_window_s` for one never reached (a wrong port fails fast).
- A circuit breaker stops the run after `max_consecutive_failures` failed attempts in a
  row, with the last error's text, instead of walking through every prompt.
- In-flight requests adapt to each server: a timeout, or a reply slower than half the
  timeout, halves the number kept in flight at that endpoint (a server that answers one at
  a time queues the rest until they time out); each full window of fast replies adds one
  back. A sick endpoint's cut leaves the healthy ones theirs.
- Ctrl-C or SIGTERM wakes every retry sleep and closes the connections, so the process
  exits at once instead of waiting out requests in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import tenacity

from ..config import TeacherConfig
from ..errors import TeacherError, TeacherUnavailable, mask_secrets
from .base import BaseTeacher, Completion, GenParams, Request, logprob_reply

MAX_SERVER_STOPS = 4  # OpenAI rejects more than 4 stop sequences; the rest are applied client-side
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
PROBE_PROMPT = "Say OK."  # api auto's one-token probe of the completions endpoint
# teacher.structured auto|on: one small question whose reply must be {"answer": "Yes"} or {"answer": "No"}
STRUCTURED_PROBE_PROMPT = 'Is water wet? Reply with a JSON object such as {"answer": "Yes"}.'
STRUCTURED_PROBE = GenParams(max_tokens=24, schema_name="answer", schema=json.dumps({
    "type": "object", "properties": {"answer": {"type": "string", "enum": ["Yes", "No"]}}, "required": ["answer"],
    "additionalProperties": False}))
SCHEMA_FORMS = ("json_schema", "json_object")  # tried in this order: OpenAI's form first
PREFLIGHT_TIMEOUT_S = 60.0  # one token from a cold local server (model load, first batch) can take this long
# Requests in flight per HTTP connection pool. httpx's pool takes one lock per request and does work
# proportional to its connections under it, so 256 requests through one pool queue on that lock; pools of
# 8 cut the client's CPU per request from 4.1 ms to 2.6-3.1 ms at C=256 and fixed 2 s latency, and raised
# the fraction of the ideal rate from 0.89 to 0.92-0.94 (measured with benchmarks/generation.py's server).
# With the default concurrency of 8 there is one pool per endpoint.
REQUESTS_PER_POOL = 8
# Failover. One timeout or 5xx is noise; three in a row is a sick endpoint, and its requests do better elsewhere.
STRIKES_TO_DOWN = 3
PROBE_EVERY_S = 2.0  # a down endpoint is asked for one token this often: a restarted server rejoins within seconds
# A readmission probe's own timeout (or timeout_s, if shorter): one token from a server with nothing else to do (it
# is out of rotation) takes far less; a server that takes longer would only time out the requests it was given.
PROBE_TIMEOUT_S = 10.0
# An endpoint that falls again before it has served PROVEN_AFTER replies since it rejoined (a wedged engine, a proxy
# whose backend hangs) waits twice as long before its next readmission, up to this: each fall costs the requests it
# was given a timeout, and a minute bounds how long a mended server sits idle.
PROBE_BACKOFF_MAX_S = 60.0
PROVEN_AFTER = 10  # replies a rejoined endpoint serves before it counts as well: its next fall starts the backoff over
OUTAGE_LINE_EVERY_S = 30.0  # while no endpoint answers, a line this often: how long, and how much longer we wait


class ContextTooLong(Exception):
    pass


class Malformed(Exception):
    """A 200 reply with no usable text (no choices, no content, a broken body): worth another try."""


@dataclass
class _Endpoint:
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


class OpenAITeacher(BaseTeacher):
    def __init__(self, model: str, cfg: TeacherConfig | None = None, *, spec: str | None = None,
                 seed: int | None = None, **settings: Any):
        """A teacher is its config: `cfg` (TeacherConfig, whose defaults are the only ones), and any of its
        fields given as keywords over it (tests and scripts: OpenAITeacher("m", base_url=URL, concurrency=4))."""
        cfg = dataclasses.replace(cfg or TeacherConfig(), **settings)
        api, structured = cfg.api, cfg.structured
        super().__init__()
        if api not in ("chat", "completions", "auto"):
            raise TeacherError(f"teacher api must be 'auto', 'chat' or 'completions', not {api!r}")
        if structured not in ("auto", "on", "off"):
            raise TeacherError(f"teacher structured must be 'auto', 'on' or 'off', not {structured!r}")
        self.structured_setting = structured
        self.structured_choice = structured if structured == "off" else f"{structured}: not probed yet"
        self._schema_form = ""  # the response_format form this server honours: "json_schema" or "json_object"
        self.model = model
        self.name = spec or f"openai:{model}"
        self.api = "chat" if api == "auto" else api
        self.api_choice = api if api != "auto" else "auto: chat (no preflight yet)"
        self._auto = api == "auto"
        self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL", "") or "https://api.openai.com/v1"
        # Several servers ("url1,url2"): each request goes to the one with the fewest in flight.
        self.base_urls = [u.strip() for u in self.base_url.split(",") if u.strip()]
        self.concurrency = max(1, cfg.concurrency)
        self.timeout_s = cfg.timeout_s
        self.max_retries = cfg.max_retries
        self.system_prompt = cfg.system_prompt
        self.max_wait_s = cfg.max_wait_s
        self.connect_window_s = cfg.connect_window_s
        self.outage_wait_s = cfg.outage_wait_s
        self.max_consecutive_failures = max(1, cfg.max_consecutive_failures)
        self.seed = seed  # the run seed: each request's `seed` derives from it and the request's salt
        self.on_event: Callable[[str], None] | None = None  # retries, timeouts, concurrency changes (the runner logs them)
        api_key_env = cfg.api_key_env
        key = cfg.api_key or os.environ.get(api_key_env, "")
        self._secret = key  # the clients' key, and masked in error text
        if not key and any("api.openai.com" in u for u in self.base_urls):
            raise TeacherError(f"${api_key_env} is not set. Fix: export {api_key_env}=sk-... "
                               "or pass --base-url for a local OpenAI-compatible server")
        self._clients = [self._new_client(u) for u in self.base_urls]  # one per endpoint: preflight's and the prober's
        # Each endpoint may take all of `concurrency` (when the others are down, it carries the run); its own
        # timeouts and slow replies cut only its share.
        self._endpoints = [_Endpoint(u, limit=self.concurrency) for u in self.base_urls]
        self._lock = threading.Lock()
        # Notified when an endpoint rejoins or the run stops: wakes retry sleeps, so a request waiting out an
        # outage goes as soon as a server answers again.
        self._changed = threading.Condition(self._lock)
        self._rejoins = 0
        self._shard_clients()
        self._fatal: BaseException | None = None
        self._stop = threading.Event()  # set on interrupt or fatal error: wakes every retry sleep
        self._pool: ThreadPoolExecutor | None = None
        self._failures_in_row = 0
        self._last_error = ""
        self._send_seed = True  # dropped if a server rejects the field
        self._send_json = True  # response_format, likewise
        self._send_logprobs = True  # likewise: the reply's text is then the generated text

    @property
    def limit(self) -> int:
        """Requests the stream keeps in flight: the limits of the endpoints in rotation (of all, while none is),
        at most `concurrency`."""
        live = [e.limit for e in self._endpoints if e.down_since is None] or [e.limit for e in self._endpoints]
        return min(self.concurrency, sum(live))

    def _new_client(self, url: str) -> openai.OpenAI:
        # max_retries=0: the SDK's own retries would hide failures from our one policy.
        return openai.OpenAI(api_key=self._secret or "not-needed", base_url=url, timeout=self.timeout_s, max_retries=0)

    def _shard_clients(self) -> None:
        """The clients requests go through: each endpoint's share of `concurrency`, REQUESTS_PER_POOL per
        client (each client has its own connection pool). Fresh ones, so also after an interrupt closed them."""
        per_url = -(-self.concurrency // len(self.base_urls))
        owner = [i for i in range(len(self.base_urls)) for _ in range(-(-per_url // REQUESTS_PER_POOL))]
        shards = [self._new_client(self.base_urls[i]) for i in owner]
        with self._lock:
            self._shards, self._in_flight, self._owner = shards, [0] * len(shards), owner

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "openai", "model": self.model, "api": self.api,
                "api_choice": self.api_choice, "structured": self.structured,
                "structured_choice": self.structured_choice, "base_url": self.base_url,
                "concurrency": self.concurrency}

    def cache_identity(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "openai", "model": self.model, "api": self.api}

    # -- before the first prompt -------------------------------------------------------
    def preflight(self) -> None:
        """Reach every endpoint before the first prompt (connection errors retried within
        connect_window_s); a dead one starts out of rotation (the prober lets it in when it
        answers); fail when none answers. With api auto, ask for one token from the completions
        endpoint and use it if the server has one."""
        alive, last = [], ""
        for i, endpoint in enumerate(self._endpoints):
            url, error = endpoint.url, self._reach(i)
            if error is None:
                alive.append(i)
                endpoint.answered, endpoint.down_since = True, None
            else:
                last = f"{url}: {error}"
                endpoint.down_since, endpoint.probe_wait_s = time.monotonic(), PROBE_EVERY_S
                if len(self.base_urls) > 1:
                    self._event(f"{url} does not answer ({error}); requests go to the other endpoints until it does")
        if not alive:
            raise TeacherUnavailable(f"no endpoint answers: {last}. Fix: start the server, or check --base-url "
                                     "(host and port)")
        if self.structured_setting == "on" and self._auto:  # structured replies are chat replies
            self._auto = False
            self.api, self.api_choice = "chat", "auto: chat (teacher.structured=on)"
        if self._auto:
            self._auto = False
            client = self._clients[alive[0]].with_options(timeout=min(self.timeout_s, PREFLIGHT_TIMEOUT_S))
            try:
                self._request(client, "completions", PROBE_PROMPT, GenParams(max_tokens=1), None)
                self.api, self.api_choice = "completions", "auto: completions (the server offers the endpoint)"
            except FATAL as e:
                if not isinstance(e, openai.NotFoundError):
                    raise TeacherError(f"{self.base_urls[alive[0]]}: {_describe_error(e, self._secret)}") from None
                self.api_choice = f"auto: chat (completions: {_describe_error(e, self._secret)})"
            except (openai.APIError, httpx.TransportError, Malformed, ContextTooLong, ValueError) as e:
                self.api_choice = f"auto: chat (completions: {_describe_error(e, self._secret)})"
        if self.structured_setting != "off":
            self._choose_structured(alive[0])

    def _choose_structured(self, i: int) -> None:
        """teacher.structured auto|on, for a run that talks chat: does the server bind a chat reply to a JSON
        schema? Ask it one small question in each form servers take (OpenAI's json_schema; json_object with a
        schema, as llama-cpp-python's server takes it) and use the first whose reply is the schema's JSON.
        Auto leaves a run on the completions endpoint as it is: list continuations are what small local
        models follow best (benchmarks/RESULTS.md, structured replies on llama.cpp)."""
        setting = self.structured_setting
        if self.api == "completions":
            if setting == "on":
                raise TeacherError("teacher.structured=on needs chat requests, and --api completions was given. "
                                   "Fix: --api chat (or auto), or --set teacher.structured=off")
            self.structured_choice = "auto: off (the run uses the completions endpoint)"
            return
        client = self._clients[i].with_options(timeout=min(self.timeout_s, PREFLIGHT_TIMEOUT_S))
        tried = []
        for form in SCHEMA_FORMS:
            try:
                reply = self._request(client, "chat", STRUCTURED_PROBE_PROMPT, STRUCTURED_PROBE, None, schema_form=form)
                answer = json.loads(reply.text).get("answer")
                if answer in ("Yes", "No"):
                    self.structured, self._schema_form = True, form
                    self.structured_choice = f"{'auto: ' if setting == 'auto' else ''}on (the server binds replies " \
                                             f"to a schema given as response_format {form})"
                    return
                tried.append(f"{form}: reply not the schema's JSON ({reply.text[:40]!r})")
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise TeacherError(f"{self.base_urls[i]}: {_describe_error(e, self._secret)}") from None
            except (openai.APIError, httpx.TransportError, Malformed, ContextTooLong, ValueError, AttributeError) as e:
                tried.append(f"{form}: {_describe_error(e, self._secret)}")
        if setting == "on":
            raise TeacherError(f"{self.base_urls[i]} does not bind replies to a JSON schema ({'; '.join(tried)}). "
                               "Fix: --set teacher.structured=auto (falls back to text) or off")
        self.structured_choice = f"auto: off ({'; '.join(tried)})"

    def _reach(self, i: int) -> str | None:
        """None when the endpoint answers HTTP at all (GET /models); else the last connection error."""
        client = self._clients[i].with_options(timeout=min(self.timeout_s, 10.0))
        deadline = time.monotonic() + self.connect_window_s
        announced = False
        while True:
            try:
                client.models.list()
                return None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise TeacherError(f"{self.base_urls[i]}: {_describe_error(e, self._secret)}") from None
            except (openai.APIConnectionError, httpx.TransportError) as e:  # refused, DNS, TLS, reset, timeout
                if time.monotonic() >= deadline or self._stop.wait(1.0):
                    return _describe_error(e, self._secret)
                if not announced:
                    announced = True
                    self._event(f"cannot reach {self.base_urls[i]} ({_describe_error(e, self._secret)}); trying "
                                f"for {self.connect_window_s:.0f} s (teacher.connect_window_s)")
            except (openai.APIStatusError, ValueError):
                return None  # an HTTP answer (a server without /models, say): it is there

    # -- the stream --------------------------------------------------------------------
    def _stream(self, requests: Iterator[Request | None], params: GenParams) -> Iterator[tuple[Request, Completion]]:
        """Keep up to `limit` requests in flight; refill as each one finishes (no batch barrier)."""
        self._fatal = None
        # A new event per stream, not clear(): calls of an abandoned stream keep theirs, set, and stop.
        self._stop = threading.Event()
        finished: queue.SimpleQueue[tuple[Request, Future]] = queue.SimpleQueue()
        if self._pool is None:  # kept across streams: starting 256 threads delays a stream's first requests
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher")
        pool = self._pool
        done = threading.Event()  # the stream is over: the prober stops
        threading.Thread(target=self._watch, args=(done, self._stop), daemon=True, name="teacher-prober").start()
        clean = False
        try:
            in_flight = 0
            exhausted = False
            while True:
                while not exhausted and self._fatal is None and in_flight < self.limit:
                    req = self._pull(requests)
                    if req is False or (req is None and in_flight == 0):  # the end, or WAIT with nothing to wait for
                        exhausted = True
                        break
                    if req is None:  # WAIT: the source needs a reply first
                        break
                    fut = pool.submit(self._answer, req, req.params or params)
                    # A done-callback queue costs O(1) per reply; wait() on all futures would cost O(in flight).
                    fut.add_done_callback(lambda f, r=req: finished.put((r, f)))
                    in_flight += 1
                if in_flight == 0:
                    break
                while True:  # a timed get: Ctrl-C reaches this thread within a fraction of a second
                    try:
                        req, fut = finished.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                in_flight -= 1
                yield req, fut.result()
            clean = True
        finally:
            done.set()
            if not clean:  # interrupted, or the consumer stopped early: abandon what is in flight, now
                self._halt(self._stop)
                for client in self._shards:
                    client.close()
                self._shard_clients()  # fresh connections for a later stream (with_options would reuse the closed pool)
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        if self._fatal is not None:
            fatal = self._fatal
            if isinstance(fatal, TeacherError):
                raise fatal
            raise TeacherError(f"{self.name} at {self.base_url}: {_describe_error(fatal, self._secret)}") from None

    def _answer(self, req: Request, params: GenParams) -> Completion:
        cached = self._lookup(req, params)
        if cached is not None:
            return cached
        stop = self._stop  # this stream's
        if self._fatal is not None or stop.is_set():
            return Completion("", "error", error="not sent: the run is stopping")
        with self._lock:  # the clients and counts of this stream: a later stream has its own
            pools = (self._shards, self._in_flight, self._owner)
        return self._call_with_retries(pools, req, params, stop)

    def _call_with_retries(self, pools: tuple[list[openai.OpenAI], list[int], list[int]], req: Request,
                           params: GenParams, stop: threading.Event) -> Completion:
        max_tokens = params.max_tokens
        faults = {"retries": 0, "timeouts": 0}
        backoff = _wait_for(self.max_wait_s)

        def wait(state: tenacity.RetryCallState) -> float:
            e = state.outcome.exception() if state.outcome else None
            # Its endpoint just left the rotation: the next try goes to another one, and need not wait.
            return 0.0 if _refused(e) and self._any_live() else backoff(state)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            e = state.outcome.exception() if state.outcome else None
            faults["retries"] += 1
            faults["timeouts"] += isinstance(e, openai.APITimeoutError)
            self._event(f"retrying after {_describe_error(e, self._secret)}")

        retrying = tenacity.Retrying(
            stop=lambda state: self._give_up(state, stop),
            wait=wait,
            sleep=lambda seconds: self._nap(seconds, stop),  # an interrupt, a fatal error or a rejoin ends it
            retry=tenacity.retry_if_exception(_is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        error = "prompt longer than the model's context"
        for _ in range(4):  # context-length shrinking: at most 4 halvings
            try:
                c = retrying(self._attempt, pools, req, params, max_tokens, stop)
                c.retries, c.timeouts = faults["retries"], faults["timeouts"]
                return c
            except ContextTooLong:
                max_tokens //= 2
                if max_tokens < 16:
                    break
            except FATAL as e:
                with self._lock:
                    self._fatal = e
                self._halt(stop)
                error = _describe_error(e, self._secret)
                break
            except (openai.APIError, httpx.TransportError, Malformed, ValueError) as e:  # retries spent, 400
                error = _describe_error(e, self._secret)
                break
        return Completion("", "error", error=error, retries=faults["retries"], timeouts=faults["timeouts"])

    def _give_up(self, state: tenacity.RetryCallState, stop: threading.Event) -> bool:
        """Stop retrying: when the run is stopping, or after max_retries; a refused connection is instead
        retried until every endpoint has been down past its wait (a restarting server is back in seconds)."""
        if stop.is_set():
            return True
        if _refused(state.outcome.exception() if state.outcome else None):
            return False  # _check_outage() sets the stop once the wait is over
        return state.attempt_number > self.max_retries

    def _attempt(self, pools: tuple[list[openai.OpenAI], list[int], list[int]], req: Request, params: GenParams,
                 max_tokens: int, stop: threading.Event) -> Completion:
        """One HTTP call to the endpoint in rotation with the fewest in flight (each try picks anew, so a
        retry leaves a dead endpoint), with the bookkeeping that decides when to give up on a server."""
        if stop.is_set():
            raise openai.APIConnectionError(message="not sent: the run is stopping", request=_NO_REQUEST)
        shards, counts, owner = pools
        with self._lock:
            i = self._pick(counts, owner)
            counts[i] += 1
        started = time.monotonic()
        try:
            c = self._request(shards[i], self.api, req.prompt, params, req.salt, max_tokens)
        except (ContextTooLong, *FATAL):
            raise
        except Exception as e:
            if not stop.is_set():  # a call of an abandoned stream says nothing about the server now
                self._failed(e, owner[i])
            raise
        finally:
            with self._lock:
                counts[i] -= 1
        if not stop.is_set():
            self._succeeded(time.monotonic() - started, owner[i])
        return c

    def _pick(self, counts: list[int], owner: list[int]) -> int:
        """Under the lock: the client for the next try. The endpoint in rotation with the fewest in flight among
        those under their own limit (else the one least over it), and its client with the fewest; with none
        in rotation, any client with the fewest (its endpoint may be back)."""
        live = [ep for ep, e in enumerate(self._endpoints) if e.down_since is None]
        if not live:
            return min(range(len(counts)), key=counts.__getitem__)
        load = [0] * len(self._endpoints)
        for i, ep in enumerate(owner):
            load[ep] += counts[i]
        under = [ep for ep in live if load[ep] < self._endpoints[ep].limit]
        ep = min(under, key=load.__getitem__) if under else \
            min(live, key=lambda x: load[x] - self._endpoints[x].limit)
        return min((i for i in range(len(counts)) if owner[i] == ep), key=counts.__getitem__)

    def _failed(self, e: BaseException, ep: int) -> None:
        now = time.monotonic()
        endpoint = self._endpoints[ep]
        with self._lock:
            self._last_error = _describe_error(e, self._secret)
            if isinstance(e, openai.APITimeoutError):
                self._shrink(ep, f"a request timed out after {self.timeout_s:.0f} s")
            # An outage is judged by its length (_check_outage); the breaker counts answers that went wrong.
            self._failures_in_row += 0 if _refused(e) else 1
            endpoint.strikes += isinstance(e, openai.APITimeoutError) or (getattr(e, "status_code", None) or 0) >= 500
            went_down = endpoint.down_since is None and (_refused(e) or endpoint.strikes >= STRIKES_TO_DOWN)
            if went_down:
                # One that falls again before it has proved itself waits twice as long for its next readmission.
                endpoint.down_since, again = now, endpoint.on_trial
                endpoint.probe_wait_s = min(2 * max(endpoint.probe_wait_s, PROBE_EVERY_S), PROBE_BACKOFF_MAX_S) \
                    if again else PROBE_EVERY_S
                # A first fall is probed at the prober's next round, as a restarted server should be.
                endpoint.probe_at, endpoint.on_trial = now + (endpoint.probe_wait_s if again else 0.0), False
            others = sum(x.down_since is None for x in self._endpoints)
            if self._fatal is None and self._failures_in_row >= self.max_consecutive_failures:
                self._fatal = TeacherUnavailable(
                    f"{self._failures_in_row} requests in a row failed at {self.base_url} (last error: "
                    f"{self._last_error}). Fix: check the server's log; teacher.max_consecutive_failures sets this "
                    "limit; a re-run resumes")
            self._check_outage(now)
        if went_down:
            wait, setting = self._wait_of(endpoint)
            self._event(f"endpoint down: {endpoint.url} ({self._last_error}); " + (
                f"its requests go to the {others} other endpoint(s)" if others else
                f"waiting up to {wait:.0f} s for an endpoint to answer again (teacher.{setting})") + (
                f"; it fell again soon after it rejoined, so it is tried again in {endpoint.probe_wait_s:.0f} s"
                if again else ""))
        if self._fatal is not None:
            self._halt(self._stop)

    def _succeeded(self, seconds: float, ep: int) -> None:
        if self._endpoints[ep].down_since is not None:  # a retry that went to it anyway, with none in rotation
            self._revive(ep)
        endpoint = self._endpoints[ep]
        with self._lock:
            self._failures_in_row = 0
            endpoint.answered, endpoint.strikes, endpoint.served = True, 0, endpoint.served + 1
            if endpoint.on_trial and endpoint.served >= PROVEN_AFTER:  # well again: a next fall starts the backoff over
                endpoint.on_trial, endpoint.probe_wait_s = False, 0.0
            if seconds > self.timeout_s / 2:
                self._shrink(ep, f"a reply took {seconds:.0f} s, over half the {self.timeout_s:.0f} s timeout")
                return
            endpoint.fast_in_row += 1
            if endpoint.limit < self.concurrency and endpoint.fast_in_row >= endpoint.limit:
                endpoint.limit, endpoint.fast_in_row = endpoint.limit + 1, 0

    # -- failover --------------------------------------------------------------------
    def _wait_of(self, endpoint: _Endpoint) -> tuple[float, str]:
        """How long an endpoint out of rotation is waited for, and the setting that says so."""
        if endpoint.answered:
            return self.outage_wait_s, "outage_wait_s"
        return self.connect_window_s, "connect_window_s"

    def _any_live(self) -> bool:
        return any(e.down_since is None for e in self._endpoints)

    def _check_outage(self, now: float) -> None:
        """Under the lock: stop the run once every endpoint has been out of rotation past its wait."""
        if self._fatal is not None or any(e.down_since is None or now - e.down_since <= self._wait_of(e)[0]
                                          for e in self._endpoints):
            return
        waited = "; ".join(f"{e.url} has not answered for {now - e.down_since:.0f} s (teacher.{self._wait_of(e)[1]}: "
                           f"{self._wait_of(e)[0]:.0f} s)" for e in self._endpoints)
        self._fatal = TeacherUnavailable(f"{waited}. Last error: {self._last_error}. Fix: start the server or check "
                                         "--base-url; a re-run resumes")

    def _revive(self, ep: int) -> None:
        """The endpoint answered: back in rotation, and every retry sleep wakes to use it."""
        endpoint = self._endpoints[ep]
        with self._lock:
            endpoint.answered = True
            if endpoint.down_since is None:
                return
            down, endpoint.down_since, endpoint.strikes = time.monotonic() - endpoint.down_since, None, 0
            endpoint.on_trial, endpoint.served = True, 0
            self._rejoins += 1
            self._changed.notify_all()
        self._event(f"endpoint back: {endpoint.url} answers again after {down:.0f} s; it takes requests again")

    def _serves(self, ep: int) -> bool:
        """The prober's question: does the endpoint answer one token on the run's API? GET /models is not
        enough: a wedged engine, or a proxy whose backend hangs, answers it and never a prompt."""
        client = self._clients[ep].with_options(timeout=min(self.timeout_s, PROBE_TIMEOUT_S))
        try:
            self._request(client, self.api, PROBE_PROMPT, GenParams(max_tokens=1), None)
            return True
        except (openai.APIError, httpx.TransportError, Malformed, ContextTooLong, ValueError):
            return False

    def _probe(self, ep: int) -> None:
        """One readmission probe, on its own thread: one that hangs delays neither the others nor the outage checks."""
        answered = self._serves(ep)
        with self._lock:
            self._endpoints[ep].probing = False
        if answered:
            self._revive(ep)

    def _watch(self, done: threading.Event, stop: threading.Event) -> None:
        """The stream's prober: every PROBE_EVERY_S, ask each endpoint out of rotation whose wait is over for
        one token (it rejoins if it answers); while none is in rotation, a line every OUTAGE_LINE_EVERY_S, and the stop once
        every endpoint is past its wait (no request need be trying for the run to end)."""
        said = time.monotonic()
        while not done.wait(PROBE_EVERY_S) and not stop.is_set():
            now, line = time.monotonic(), ""
            with self._lock:
                due = [ep for ep, e in enumerate(self._endpoints)
                       if e.down_since is not None and not e.probing and now >= e.probe_at]
                for ep in due:
                    self._endpoints[ep].probing = True
            for ep in due:
                threading.Thread(target=self._probe, args=(ep,), daemon=True, name="teacher-probe").start()
            with self._lock:  # a request's reply may put an endpoint back meanwhile
                self._check_outage(now)
                down = [(e, now - e.down_since) for e in self._endpoints if e.down_since is not None]
                if len(down) < len(self._endpoints):
                    said = now
                elif now - said >= OUTAGE_LINE_EVERY_S:
                    said = now
                    left = max(self._wait_of(e)[0] - seconds for e, seconds in down)
                    setting = "outage_wait_s" if any(e.answered for e, _ in down) else "connect_window_s"
                    line = ("outage: " + ", ".join(f"{e.url} down for {seconds:.0f} s" for e, seconds in down)
                            + f"; waiting {left:.0f} s more for one to answer (teacher.{setting}), then the run stops")
            if self._fatal is not None:
                self._halt(stop)
            elif line:
                self._event(line)

    def _nap(self, seconds: float, stop: threading.Event) -> None:
        """tenacity's sleep: over early when the run stops or an endpoint rejoins."""
        with self._changed:
            rejoins = self._rejoins
            self._changed.wait_for(lambda: stop.is_set() or self._rejoins != rejoins, timeout=seconds)

    def _halt(self, stop: threading.Event) -> None:
        """Stop the stream: every retry sleep wakes, and no new try starts."""
        stop.set()
        with self._changed:
            self._changed.notify_all()

    def _shrink(self, ep: int, why: str) -> None:
        """Halve the requests kept in flight at one endpoint (called under the lock); the others keep theirs."""
        endpoint = self._endpoints[ep]
        endpoint.fast_in_row = 0
        if endpoint.limit > 1:
            endpoint.limit = max(1, endpoint.limit // 2)
            if len(self._endpoints) == 1:
                self._event(f"{why}: keeping {endpoint.limit} requests in flight (of teacher.concurrency "
                            f"{self.concurrency}); the server serves fewer at a time")
            else:
                self._event(f"{why} at {endpoint.url}: keeping at most {endpoint.limit} requests in flight there "
                            f"(of teacher.concurrency {self.concurrency}); that server serves fewer at a time")

    def _event(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(message)

    def _request(self, client: openai.OpenAI, api: str, prompt: str, params: GenParams, salt: str | None,
                 max_tokens: int | None = None, schema_form: str = "") -> Completion:
        common: dict[str, Any] = dict(
            model=self.model, max_tokens=max_tokens or params.max_tokens, temperature=params.temperature,
            # top_p=0 is Self-Instruct's way to say greedy; vLLM rejects it, and at temperature 0 it means nothing.
            top_p=params.top_p if params.top_p > 0 else 1.0,
            presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
        )
        if params.stop:
            common["stop"] = list(params.stop[:MAX_SERVER_STOPS])
        if salt is not None and self.seed is not None and self._send_seed:
            # Reproducible sampling where the server honours it: the run seed and this request's RNG state.
            common["seed"] = int.from_bytes(hashlib.sha256(f"{self.seed}|{salt}".encode()).digest()[:4], "little")
        if params.json_mode and api == "chat" and self._send_json:
            common["response_format"] = {"type": "json_object"}
        form = schema_form or (self._schema_form if self.structured else "")
        if params.schema and api == "chat" and form and self._send_json:
            common["response_format"] = _response_format(form, params.schema_name, json.loads(params.schema))
        if params.logprobs and self._send_logprobs:
            common.update({"logprobs": True, "top_logprobs": params.logprobs} if api == "chat"
                          else {"logprobs": params.logprobs})
        try:
            if api == "chat":
                messages = [{"role": "user", "content": prompt}]
                if self.system_prompt:
                    messages.insert(0, {"role": "system", "content": self.system_prompt})
                resp = client.chat.completions.create(messages=messages, **common)
                texts = [(c.message.content if c.message else None, c.finish_reason) for c in resp.choices or []]
            else:
                resp = client.completions.create(prompt=prompt, **common)
                texts = [(c.text, c.finish_reason) for c in resp.choices or []]
        except openai.BadRequestError as e:
            if _is_context_error(e):
                raise ContextTooLong() from e
            for field, flag in (("seed", "_send_seed"), ("response_format", "_send_json"), ("logprobs", "_send_logprobs")):
                if field in common and field in str(e).lower() and not schema_form:
                    setattr(self, flag, False)
                    if field == "response_format" and self.structured:
                        self._event(f"the server refused response_format ({_describe_error(e, self._secret)}); "
                                    "replies are read as text from now on")
                    return self._request(client, api, prompt, params, salt, max_tokens)
            raise
        except openai.APIResponseValidationError as e:
            raise Malformed(f"malformed reply: {e}") from e
        except ValueError as e:  # a body that is not JSON
            raise Malformed(f"malformed reply: {e}") from e
        if not texts or texts[0][0] is None:
            raise Malformed("empty reply (no choices)")
        usage = getattr(resp, "usage", None)
        top = _top_logprobs(resp.choices[0]) if "logprobs" in common else None
        return Completion(
            text=texts[0][0] if top is None else logprob_reply(top), finish_reason=texts[0][1] or "stop",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            cached_tokens=getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0,
            # Asked for log-probabilities and sent none: the server may be reconfigured or replaced, so
            # this reply is not kept in the cache to be served for the same request again.
            cacheable=top is not None or "logprobs" not in common,
        )


_NO_REQUEST = httpx.Request("POST", "http://stopped.invalid/")


def _response_format(form: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema in the form a server takes: OpenAI's (vLLM, Ollama, llama.cpp's llama-server take it
    too), or json_object with the schema beside it (llama-cpp-python's server, which refuses the first)."""
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}


def _top_logprobs(choice: Any) -> dict[str, float] | None:
    """The first generated token's alternatives {token: logprob}, from a chat or a completions choice; None if absent."""
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return None
    content = getattr(lp, "content", None)  # chat: content[0].top_logprobs = [{token, logprob}]
    if content:
        return {t.token: float(t.logprob) for t in (content[0].top_logprobs or [])} or None
    tops = getattr(lp, "top_logprobs", None)  # completions: top_logprobs[0] = {token: logprob}
    if tops and isinstance(tops[0], dict):
        return {str(k): float(v) for k, v in tops[0].items()} or None
    return None


def _refused(e: BaseException | None) -> bool:
    """A connection that failed or dropped (refused, reset, DNS, TLS), not a timeout: the endpoint is gone for now."""
    return isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError)


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, (Malformed, httpx.TransportError)):
        return True
    if isinstance(e, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                      openai.InternalServerError)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


def _wait_for(max_wait_s: float):
    backoff = tenacity.wait_random_exponential(multiplier=min(1.0, max_wait_s), max=max_wait_s)

    def wait(state: tenacity.RetryCallState) -> float:
        e = state.outcome.exception() if state.outcome else None
        retry_after = _retry_after(e)
        return min(retry_after, max_wait_s) if retry_after is not None else backoff(state)

    return wait


def _retry_after(e: BaseException | None) -> float | None:
    response = getattr(e, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _is_context_error(e: openai.BadRequestError) -> bool:
    text = str(e).lower()
    return "context length" in text or "context_length" in text or "maximum context" in text


def _describe_error(e: BaseException, secret: str = "") -> str:
    status = getattr(e, "status_code", None)
    hint = {
        401: "the API key was refused; check the key's variable (teacher.api_key_env)",
        403: "the key may not use this model",
        404: "unknown model or wrong base URL; check --teacher openai:MODEL and --base-url",
    }.get(status or 0, "")
    detail = str(getattr(e, "message", "") or e).strip().splitlines()[0][:300].rstrip(".") if str(e).strip() else ""
    cause = e.__cause__ or e.__context__
    if isinstance(e, openai.APIConnectionError) and cause is not None and str(cause).strip():
        detail += f": {str(cause).strip().splitlines()[0][:200]}"  # "Connection refused", a DNS or TLS error
    msg = (f"HTTP {status} " if status else "") + type(e).__name__ + (f": {detail}" if detail else "")
    text = f"{msg} ({hint})" if hint else msg
    return mask_secrets(text.replace(secret, "***") if secret else text)


describe_error = _describe_error  # public: the Batch API teacher (batch.py) words its errors the same way
