"""Teacher over the OpenAI API or any server that speaks it (vLLM, Ollama, llama.cpp, TGI).

Up to `concurrency` requests in flight, a new one starting as soon as any finishes, so one slow reply never
idles the rest. A request's first try runs as a coroutine on the HTTP event loop, its reply committed to the cache
there (fastpath.py); a try that fails goes to a thread pool, with its retries. One retry policy (tenacity, retries.py) for
every call: 429 waits for Retry-After, 5xx/timeouts/connection errors/malformed replies
back off exponentially with jitter, 400/401/403/404 fail at once, and a context-length
error halves max_tokens (as Self-Instruct did). A prompt that still fails is returned as
an error Completion, counted, and left pending by the stage. The request body, the HTTP client and the reading
of replies are in wire.py (no openai SDK objects on the hot path, the SDK's exceptions kept); the endpoints'
state, the failover and the prober in failover.py.

Nothing hangs silently:
- `preflight()` asks every endpoint for one token before the first prompt, so a wrong
  port or a dead server fails in seconds, naming the URL (exit 4); with api "auto" it also
  picks the completions endpoint where the server has one (small local models follow the
  Self-Instruct prompts far better as continuations than as chat turns).
- Several endpoints fail over: one that refuses or drops connections or answers 503 (llama-server loading its
  model), or times out or answers another 5xx STRIKES_TO_DOWN times in a row, leaves the rotation, and its requests are retried at once on the
  others. While a stream runs, a prober asks each endpoint out of rotation for one token on the run's API
  every PROBE_EVERY_S; it rejoins when it answers (GET /models is not enough: a wedged engine or a proxy with
  no backend answers it and never a prompt). One that falls again soon after it rejoined waits twice as long
  before each next try, up to PROBE_BACKOFF_MAX_S. The run stops only when every endpoint has been down
  past its wait: `outage_wait_s` for one that has answered in this process (a restart, a redeploy),
  `connect_window_s` for one never reached (a wrong port stops the run in 20 s, not 600).
- A circuit breaker stops the run after `max_consecutive_failures` failed attempts in a
  row, with the last error's text, instead of walking through every prompt (refused connections and 503s count
  towards the outage wait instead); another after `max_consecutive_refusals` requests of one kind refused in a
  row (a 400, 413 or 422 after its tries: every prompt over the server's context), with the server's words.
- In-flight requests adapt to each server: a timeout, or a reply slower than half the
  timeout, halves the number kept in flight at that endpoint (a server that answers one at
  a time queues the rest until they time out); each full window of fast replies adds one
  back. A sick endpoint's cut leaves the healthy ones theirs.
- Ctrl-C or SIGTERM wakes every retry sleep and closes the connections, so the process
  exits at once instead of waiting out requests in flight.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import openai

from ..config import TeacherConfig
from ..errors import TeacherError
from .base import BaseTeacher, Completion, GenParams, Request
from .failover import Failover, Patience, Timing
from .fastpath import LoopStream
from .origin import RUN_TEACHER, Origin
from .preflight import PROBE_PROMPT, Preflight
from .retries import Pools, Retries
from .wire import (
    CONTEXT_REFUSALS,
    PATHS,
    Client,
    ContextTooLong,
    Malformed,
    Sending,
    context_too_long,
    describe_error,
    is_context_error,
    read_reply,
    request_body,
    sdk_client,
)

# Failover (failover.py reads these when a teacher is built). One timeout or 5xx is noise; three in a row is a
# sick endpoint, and its requests do better elsewhere.
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


def check_base_url(url: str, origin: Origin = RUN_TEACHER) -> None:
    """An endpoint without http:// or https:// ("localhost:8000") stops here, before anything is sent: it used to be
    tried for connect_window_s and end as an unreachable server (exit 4)."""
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        rest = url.split("://")[-1].rstrip("/") or "localhost:8000"
        raise TeacherError(f"{origin.role} base URL {url!r} ({origin.where('base_url')} or $OPENAI_BASE_URL) is not "
                           f"an http:// or https:// URL. Fix: give the full URL, e.g. "
                           f"{origin.give('base_url', f'http://{rest}' + ('' if '/' in rest else '/v1'))}")


class OpenAITeacher(BaseTeacher):
    said_open_batches = False  # note_open_batches: said once a command

    def __init__(self, model: str, cfg: TeacherConfig | None = None, *, spec: str | None = None,
                 seed: int | None = None, origin: Origin = RUN_TEACHER, **settings: Any):
        """A teacher is its config: `cfg` (TeacherConfig, whose defaults are the only ones), and any of its
        fields given as keywords over it (tests and scripts: OpenAITeacher("m", base_url=URL, concurrency=4)).
        `origin`: the table cfg is and the command's flags for it, which every message names."""
        cfg = dataclasses.replace(cfg or TeacherConfig(), **settings)
        self.origin = origin
        api, structured = cfg.api, cfg.structured
        super().__init__()
        if api not in ("chat", "completions", "auto"):
            raise TeacherError(f"teacher api must be 'auto', 'chat' or 'completions', not {api!r}")
        if structured not in ("auto", "on", "off"):
            raise TeacherError(f"teacher structured must be 'auto', 'on' or 'off', not {structured!r}")
        self.structured_setting = structured
        self.structured_choice = structured if structured == "off" else f"{structured}: not probed yet"
        self.model = model
        self.name = spec or f"openai:{model}"
        self.api = "chat" if api == "auto" else api
        self.api_choice = api if api != "auto" else "auto: chat (no preflight yet)"
        self._auto = api == "auto"
        self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL", "") or "https://api.openai.com/v1"
        # Several servers ("url1,url2"): each request goes to the one with the fewest in flight.
        self.base_urls = [u.strip() for u in self.base_url.split(",") if u.strip()]
        for u in self.base_urls:
            check_base_url(u, origin)
        self.concurrency = max(1, cfg.concurrency)
        self.timeout_s = cfg.timeout_s
        self.system_prompt = cfg.system_prompt
        self.outage_wait_s = cfg.outage_wait_s
        self.max_retries = cfg.max_retries
        # The body's settings; `seed` is the run seed: each request's seed derives from it and the request's salt.
        self.sending = Sending(model, cfg.system_prompt, seed)
        self.on_event: Callable[[str], None] | None = None  # retries, timeouts, concurrency changes (the runner logs them)
        api_key_env = cfg.api_key_env
        key = cfg.api_key or os.environ.get(api_key_env, "")
        self._secret = key  # the clients' key, and masked in error text
        if not key and any("api.openai.com" in u for u in self.base_urls):
            raise TeacherError(f"${api_key_env} is not set. Fix: export {api_key_env}=sk-... "
                               f"or give a local OpenAI-compatible server ({origin.where('base_url')})")
        # The SDK's clients, one per endpoint: GET /models, and the Batch API's files and batches.
        self._clients = [sdk_client(u, key or "not-needed", self.timeout_s) for u in self.base_urls]
        self._probes = [Client(u, key or "not-needed", self.timeout_s, c)  # one-token probes
                        for u, c in zip(self.base_urls, self._clients, strict=True)]
        self.failover = Failover(self.base_url, self.base_urls, Patience(
            self.concurrency, self.timeout_s, cfg.outage_wait_s, cfg.connect_window_s,
            max(1, cfg.max_consecutive_failures), max(1, cfg.max_consecutive_refusals)), Timing(
            PROBE_EVERY_S, PROBE_BACKOFF_MAX_S, OUTAGE_LINE_EVERY_S, STRIKES_TO_DOWN, PROVEN_AFTER),
            self._event, key, origin)
        self.retries = Retries(self.failover, self._send, max_retries=cfg.max_retries, max_wait_s=cfg.max_wait_s,
                               event=self._event, secret=key)
        self._shard_clients()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def limit(self) -> int:
        """Requests the stream keeps in flight (Failover.limit)."""
        return self.failover.limit

    def _shard_clients(self) -> None:
        """The clients requests go through, one per endpoint, each with its connection pool (wire.py: its
        transport takes no lock per request, so the pools of 8 requests each that httpx needed are gone). Fresh
        ones, so also after an interrupt closed them."""
        owner = list(range(len(self.base_urls)))
        shards = [Client(self.base_urls[i], self._secret or "not-needed", self.timeout_s, self._clients[i])
                  for i in owner]
        with self.failover.lock:
            self._shards, self._in_flight, self._owner = shards, [0] * len(shards), owner

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "openai", "model": self.model, "api": self.api,
                "api_choice": self.api_choice, "structured": self.structured,
                "structured_choice": self.structured_choice, "base_url": self.base_url,
                "concurrency": self.concurrency,
                **({"endpoints": self.failover.summary()} if len(self.base_urls) > 1 else {})}

    def error_text(self, e: BaseException) -> str:
        """An error's text for a message or a log, the API key masked."""
        return describe_error(e, self._secret, origin=self.origin)

    def cache_identity(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "openai", "model": self.model, "api": self.api}

    # -- before the first prompt -------------------------------------------------------
    def preflight(self) -> None:
        """Reach every endpoint before the first prompt (connection errors retried within connect_window_s); a
        dead one starts out of rotation; fail when none answers. With api auto, use the completions endpoint if
        the server has one; with teacher.structured auto|on, find the schema form the server honours."""
        check = Preflight(self.failover, self._clients, self._probes, self._ask, self._event, self._secret)
        alive = check.reach_all(PROBE_EVERY_S)
        for line in check.unlisted(self.model, alive):
            self._event(line)
        if self.structured_setting == "on" and self._auto:  # structured replies are chat replies
            self._auto = False
            self.api, self.api_choice = "chat", f"auto: chat ({self.origin.key('structured')}=on)"
        if self._auto:
            self._auto = False
            self.api, self.api_choice = check.choose_api(alive)
        if self.structured_setting != "off":
            form, self.structured_choice = check.choose_structured(alive, self.api, self.structured_setting)
            if form:
                self.structured, self.sending.schema_form = True, form

    def _ask(self, client: Client, api: str, prompt: str, params: GenParams, schema_form: str,
             timeout_s: float) -> Completion:
        return self._request(client, api, prompt, params, None, schema_form=schema_form, timeout_s=timeout_s)

    # -- the stream --------------------------------------------------------------------
    def stream(self, requests: Iterable[Request | None], params: GenParams, *,
               kind: str) -> Iterator[tuple[Request, Completion]]:
        """BaseTeacher.stream, each reply finished (stop sequences, usage, its commit to the run's cache, durable
        before any record is built from it) where it was answered: on the event loop (fastpath.py), or on the
        thread that retried it, not on the one that reads replies and refills slots."""
        self.note_open_batches()
        return self._stream(iter(requests), params, kind)

    def note_open_batches(self) -> None:
        """Requests of this run in open Batch API waves (a --batch run stopped mid-wave) are paid already; sent
        directly, any of them is paid again. Said once a command, before the first request, with the fix the
        command that built this teacher takes (its origin): score and eval have no --batch flag."""
        open_lines = getattr(self.cache, "open_lines", None)
        if self.said_open_batches or open_lines is None:
            return
        self.said_open_batches = True
        if n := len(open_lines()):
            fix = self.origin.switch("batch")
            waits = "1 request of this run waits" if n == 1 else f"{n:,} requests of this run wait"
            self._event(f"note: {waits} in open Batch API batches, paid already (`seed2lora "
                        f"show`); sent directly, any of them asked for again is paid again. Fix: stop, and add {fix} "
                        "to read them")

    def _stream(self, requests: Iterator[Request | None], params: GenParams,
                kind: str | None = None) -> Iterator[tuple[Request, Completion]]:
        """Keep up to `limit` requests in flight (fastpath.LoopStream); with `kind`, each reply comes finished."""
        if self._pool is None:  # kept across streams: starting 256 threads delays a stream's first requests
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher")
        yield from LoopStream(self, self._pool).run(requests, params, kind)

    def pools(self) -> Pools:
        """Under failover.lock: the clients and counts of this stream (a later stream has its own)."""
        return self._shards, self._in_flight, self._owner

    def drop_connections(self, pool: ThreadPoolExecutor) -> None:
        """An abandoned stream's connections closed, and its threads' pool: fresh ones for a later stream."""
        for client in self._shards:
            client.close()
        self._shard_clients()
        pool.shutdown(wait=False, cancel_futures=True)
        if self._pool is pool:
            self._pool = None

    def answer(self, req: Request, params: GenParams, kind: str | None = None,
               abandoned: threading.Event | None = None, first: BaseException | None = None,
               looked_up: bool = False) -> Completion:
        """The request's reply on a thread (the cache, or the server with the retry policy; `first`: how its
        first try failed on the loop, and `looked_up`: not in the cache); finished with `kind`, unless its
        stream was abandoned meanwhile (its consumer will never see it, as a reply never read)."""
        key = self.cache_key(req, params) if self.cache is not None else None  # made once: lookup and commit
        c = None if looked_up else self.lookup(req, params, key)
        if c is None:
            stop = self.failover.stop  # this stream's
            if first is None and (self.failover.fatal is not None or stop.is_set()):
                c = Completion("", "error", error="not sent: the run is stopping")
            else:
                with self.failover.lock:
                    pools = self.pools()
                c = self.retries.call(pools, req, params, stop, first, req.kind or kind)
        if kind is not None and not (abandoned is not None and abandoned.is_set()):
            c = self._finish(req, c, params, kind, key)
        return c

    def serves(self, ep: int) -> bool:
        """The prober's question: does the endpoint answer one token on the run's API? GET /models is not
        enough: a wedged engine, or a proxy whose backend hangs, answers it and never a prompt."""
        try:
            self._request(self._probes[ep], self.api, PROBE_PROMPT, GenParams(max_tokens=1), None,
                          timeout_s=min(self.timeout_s, PROBE_TIMEOUT_S))
            return True
        except (openai.APIError, Malformed, ContextTooLong, ValueError):
            return False

    def _send(self, client: Client, req: Request, params: GenParams, max_tokens: int) -> Completion:
        return self._request(client, self.api, req.prompt, params, req.salt, max_tokens)

    def _request(self, client: Client, api: str, prompt: str, params: GenParams, salt: str | None,
                 max_tokens: int | None = None, schema_form: str = "", timeout_s: float | None = None) -> Completion:
        """One call, and its reply read; a field the server refuses (seed, response_format, logprobs) is dropped
        from then on and the call made again without it."""
        body = self.body_of(api, prompt, params, salt, max_tokens, schema_form)
        try:
            reply = client.post(PATHS[api], body, timeout_s)
        except CONTEXT_REFUSALS as e:
            if is_context_error(e):
                raise context_too_long(e) from e
            if not schema_form and isinstance(e, openai.BadRequestError) and self.drop_refused(e, body):
                return self._request(client, api, prompt, params, salt, max_tokens, timeout_s=timeout_s)
            raise
        return read_reply(api, reply, "logprobs" in body)

    def drop_refused(self, e: openai.BadRequestError, body: dict[str, Any]) -> bool:
        """A 400 naming a field of the body the server refuses (seed, response_format, logprobs): the field is
        dropped from then on, and True: send the request again."""
        for field, flag in (("seed", "send_seed"), ("response_format", "send_json"), ("logprobs", "send_logprobs")):
            if field in body and field in str(e).lower():
                setattr(self.sending, flag, False)
                if field == "response_format" and self.structured:
                    self._event(f"the server refused response_format ({self.error_text(e)}); "
                                "replies are read as text from now on")
                return True
        return False

    def body_of(self, api: str, prompt: str, params: GenParams, salt: str | None, max_tokens: int | None = None,
                schema_form: str = "") -> dict[str, Any]:
        """The JSON body of a request (a Batch API line's body too); a schema only once the server binds one."""
        sending = self.sending  # copied only where it differs, not for every request on the event loop
        if sending.schema_form and not self.structured:
            sending = dataclasses.replace(sending, schema_form="")
        return request_body(sending, api, prompt, params, salt, max_tokens, schema_form)

    def _event(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(message)

    # -- the failover's state, under the names tests and scripts reach for -------------------
    @property
    def _endpoints(self) -> list:
        return self.failover.endpoints

    @property
    def _stop(self) -> threading.Event:
        return self.failover.stop

    @property
    def _failures_in_row(self) -> int:
        return self.failover.failures_in_row

    def _failed(self, e: BaseException, ep: int) -> None:
        self.failover.failed(e, ep)

    def _succeeded(self, seconds: float, ep: int) -> None:
        self.failover.succeeded(time.monotonic() - seconds, ep)  # a reply that took `seconds`, sent just now

    def _revive(self, ep: int) -> None:
        self.failover.revive(ep)

    def _halt(self, stop: threading.Event) -> None:
        self.failover.halt(stop)
