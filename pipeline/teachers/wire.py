"""What goes over the wire to an OpenAI-compatible server, and what comes back: the request body, the HTTP
transport, and the reading of a reply into a Completion.

The hot path does not use the openai SDK's request machinery or its response models: they cost about 0.8 ms of
CPU per request on top of httpx (1.3 against 0.5 ms per call, measured one call at a time against
benchmarks/_latency_server.py at zero latency), which at 64 requests in flight is most of the client's
time (benchmarks/RESULTS.md, client CPU). Nor httpx: its HTTP parsing in Python and its pool's lock per
request cost 0.55 ms of CPU per request at 64 in flight, against 0.23-0.33 ms through aiohttp on one event-loop
thread (`Transport`; RESULTS.md, client transport). Nor aiohttp, on a direct connection: http1.py's keep-alive
connections cost about a third of its CPU per request; aiohttp sends only through a proxy. The SDK's error
semantics are kept: a reply that is not 2xx raises the exception the SDK raises for its status, with the SDK's
message and body (`status_error`), a timeout raises openai.APITimeoutError and a failed connection
openai.APIConnectionError, so the one retry policy (retries.py) decides as it did. TLS is verified as httpx does (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), and
HTTP(S)_PROXY / ALL_PROXY / NO_PROXY are honoured as the SDK's httpx client honours them (`env_proxy`; a SOCKS
proxy stops the teacher with a message naming its variable). The SDK clients are still used where speed does not
matter: GET /models and the Batch API's files and batches.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import email.utils
import functools
import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from ..errors import TeacherError, mask_secrets
from .base import Completion, GenParams, logprob_reply
from .http1 import Pool
from .origin import RUN_TEACHER, Origin

MAX_SERVER_STOPS = 4  # OpenAI rejects more than 4 stop sequences; the rest are applied client-side
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
PATHS = {"chat": "/chat/completions", "completions": "/completions"}
Headers = list[tuple[str, str]]  # a reply's headers, in order, names as the server spelt them
# Connections the process keeps open at most: the SDK's default (openai._constants.DEFAULT_CONNECTION_LIMITS).
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


class ContextTooLong(Exception):
    """A request over the model's context (its 400 the __cause__). `shrinkable`: a smaller max_tokens may make it fit;
    False where the server says the prompt alone is over the context, which halving would only send again."""

    def __init__(self, shrinkable: bool = True):
        super().__init__("prompt longer than the model's context")
        self.shrinkable = shrinkable


class Malformed(Exception):
    """A 200 reply with no usable text (no choices, no content, a broken body): worth another try."""


@dataclass
class Sending:
    """What a request carries besides the prompt and its sampling: the teacher's settings and what the server
    was found to take."""

    model: str
    system_prompt: str = ""
    seed: int | None = None  # the run seed: each request's `seed` derives from it and the request's salt
    send_seed: bool = True  # dropped if a server rejects the field
    send_json: bool = True  # response_format, likewise
    send_logprobs: bool = True  # likewise: the reply's text is then the generated text
    schema_form: str = ""  # the response_format form the server honours ("json_schema", "json_object"), or ""


def request_body(s: Sending, api: str, prompt: str, params: GenParams, salt: str | None,
                 max_tokens: int | None = None, schema_form: str = "") -> dict[str, Any]:
    """The JSON body of one chat or completions request (a Batch API line's body is the same)."""
    body: dict[str, Any] = {"model": s.model}
    if api == "chat":
        body["messages"] = ([{"role": "system", "content": s.system_prompt}] if s.system_prompt else []) + [
            {"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(
        max_tokens=max_tokens or params.max_tokens, temperature=params.temperature,
        # top_p=0 is Self-Instruct's way to say greedy; vLLM rejects it, and at temperature 0 it means nothing.
        top_p=params.top_p if params.top_p > 0 else 1.0,
        presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
    )
    if params.stop:
        body["stop"] = list(params.stop[:MAX_SERVER_STOPS])
    if salt is not None and s.seed is not None and s.send_seed:
        # Reproducible sampling where the server honours it: the run seed and this request's RNG state.
        body["seed"] = int.from_bytes(hashlib.sha256(f"{s.seed}|{salt}".encode()).digest()[:4], "little")
    if params.json_mode and api == "chat" and s.send_json:
        body["response_format"] = {"type": "json_object"}
    form = schema_form or s.schema_form
    if params.schema and api == "chat" and form and s.send_json:
        body["response_format"] = response_format(form, params.schema_name, json.loads(params.schema))
    if params.logprobs and s.send_logprobs:
        body.update({"logprobs": True, "top_logprobs": params.logprobs} if api == "chat"
                    else {"logprobs": params.logprobs})
    return body


def response_format(form: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema in the form a server takes: OpenAI's (vLLM, Ollama, llama.cpp's llama-server take it
    too), or json_object with the schema beside it (llama-cpp-python's server, which refuses the first)."""
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}


def read_reply(api: str, reply: Any, logprobs_asked: bool) -> Completion:
    """A Completion from a chat or completions reply body (decoded JSON), as the SDK's models would give it:
    Malformed when it has no usable text."""
    if not isinstance(reply, dict):
        raise Malformed(f"malformed reply: a JSON {type(reply).__name__}, not an object")
    choices = reply.get("choices") or []
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if first is None:
        raise Malformed("empty reply (no choices)")
    if api == "chat":
        message = first.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if text is None and isinstance(message, dict) and message.get("refusal"):
            raise Malformed(f"empty reply (the model refused: {str(message['refusal'])[:200]})")
    else:
        text = first.get("text")
    if not isinstance(text, str):
        raise Malformed("empty reply (no choices)")
    top = top_logprobs(first) if logprobs_asked else None
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    return Completion(
        text=text if top is None else logprob_reply(top), finish_reason=first.get("finish_reason") or "stop",
        prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        # Asked for log-probabilities and sent none: the server may be reconfigured or replaced, so
        # this reply is not kept in the cache to be served for the same request again.
        cacheable=top is not None or not logprobs_asked,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def top_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
    """The first generated token's alternatives {token: logprob}, from a chat or a completions choice; None if absent."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")  # chat: content[0].top_logprobs = [{token, logprob}]
    if content:
        return {t["token"]: float(t["logprob"]) for t in (content[0].get("top_logprobs") or [])} or None
    tops = lp.get("top_logprobs")  # completions: top_logprobs[0] = {token: logprob}
    if tops and isinstance(tops[0], dict):
        return {str(k): float(v) for k, v in tops[0].items()} or None
    return None


class Transport:
    """One asyncio loop on a daemon thread that every Client of this process sends through (http1.py's
    connections, or aiohttp's through a proxy), where httpx parses in Python on each caller's thread and takes its
    pool's lock per request (0.23-0.33 ms of client CPU per request through aiohttp on this loop against 0.55,
    raw, at 64 in flight; benchmarks/RESULTS.md, client transport). A request's first try runs on this loop as a
    coroutine (fastpath.py, Client.apost); its retries on the teacher's threads, each handing its try to the loop
    and waiting for the reply (Client.post).

    Made at the first request (`transport()`), so a process that never calls a server never starts the
    thread; a forked child makes its own. aiohttp is imported only for a client with a proxy (`aiohttp`): a
    direct connection never needs it, and its import cost ~0.1 s of every process's start."""

    def __init__(self) -> None:
        self._aiohttp: Any = None
        # What a failed connection raises: http1's errors are OSErrors; aiohttp's ClientError joins them once imported
        self.connection_errors: tuple[type[BaseException], ...] = (OSError,)
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.timeouts: dict[float, Any] = {}
        self.ssl: tuple[tuple[str | None, str | None], Any] | None = None  # ssl_context(): (the variables, the context)
        self.sessions: weakref.WeakSet[Any] = weakref.WeakSet()  # every session made, closed at exit if still open
        self.pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # and every pool
        self.closing: set[asyncio.Task] = set()  # sessions being closed (shut), until they are
        self.thread = threading.Thread(target=self.loop.run_forever, name="teacher-http", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    @property
    def aiohttp(self) -> Any:
        """The aiohttp module, imported at the first client with a proxy (Client.__init__)."""
        if self._aiohttp is None:
            try:
                import aiohttp
            except ImportError as e:  # a dependency (pyproject.toml); missing only in a hand-made environment
                raise TeacherError("the OpenAI-compatible teacher needs aiohttp to send through a proxy. Fix: pip "
                                   "install aiohttp") from e
            self.connection_errors = (OSError, aiohttp.ClientError)
            self._aiohttp = aiohttp
        return self._aiohttp

    def ssl_context(self) -> Any:
        """httpx's TLS context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), made once while those stay the same and
        shared by every Client's connector: reading the CA bundle took 20-60 ms of the loop at each new Client,
        before its first request went out."""
        where = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if self.ssl is None or self.ssl[0] != where:
            self.ssl = (where, httpx.create_ssl_context())
        return self.ssl[1]

    def timeout(self, seconds: float) -> Any:
        """httpx's timeout_s applies to connecting, to waiting for a pooled connection and to each read, not to
        the whole reply; so does this one."""
        if seconds not in self.timeouts:
            self.timeouts[seconds] = self.aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)
        return self.timeouts[seconds]

    async def send(self, client: Client, url: str, data: bytes, timeout_s: float) -> tuple[int, Headers, bytes]:
        """POST `data` to `url`: (status, headers, body). A direct connection through the client's http1.Pool; one
        through a proxy with aiohttp, which speaks to proxies (HTTP, and CONNECT for https)."""
        if client.proxy is None:
            if client.pool is None:
                secure = client.base_url.startswith("https:")
                client.pool = Pool(client.base_url, client.headers, LIMITS.max_connections,
                                   self.ssl_context() if secure else None, self.loop)
                self.pools.add(client.pool)
                weakref.finalize(client, self.shut, client.pool).atexit = False  # as a session, below
            return await client.pool.post(url, data, timeout_s)
        if client.session is None:
            # Each Client its own connection pool, as each had its httpx client: a pooled connection to a server
            # that is gone never reaches another teacher. TLS as httpx verifies it (certifi, or SSL_CERT_FILE /
            # SSL_CERT_DIR). Not trust_env: it reads the whole environment and ~/.netrc for every request (most
            # of the client's CPU); each Client looks up its proxy once instead (env_proxy).
            connector = self.aiohttp.TCPConnector(limit=LIMITS.max_connections, ssl=self.ssl_context())
            # Its headers the session's own: not merged into a new dict of each request's
            client.session = self.aiohttp.ClientSession(connector=connector, headers=client.headers)
            self.sessions.add(client.session)
            # A client dropped without close(): its session closed. Not Client.__del__: a client in a reference
            # cycle was collected in one pass with its session, whose own finalizer then warned "Unclosed client
            # session" before the client's could close it. The finalizer holds the session out of that pass.
            weakref.finalize(client, self.shut, client.session).atexit = False  # at exit, close() closes them all
        async with client.session.post(url, data=data, timeout=self.timeout(timeout_s),
                                       proxy=client.proxy) as response:
            return response.status, list(response.headers.items()), await response.read()

    def shut(self, session: Any) -> None:
        """Close a session or an http1.Pool on the loop (from any thread); its connections close with it."""
        if session is not None and not self.loop.is_closed():
            close = session.close if isinstance(session, Pool) else functools.partial(self._start_close, session)
            self.loop.call_soon_threadsafe(close)

    def _start_close(self, session: Any) -> None:
        # The loop holds its tasks weakly: a closing task referenced by nothing else could be collected while it
        # waits on its connections, and its session then printed "Unclosed client session" at exit.
        task = self.loop.create_task(session.close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def close(self) -> None:
        """At exit: every session closed on its loop (no "Unclosed client session" line), then the loop stopped."""
        if self.pid != os.getpid() or self.loop.is_closed():
            return
        sessions = [s for s in list(self.sessions) if not s.closed]
        pools = list(self.pools)

        async def shut_all() -> None:
            for pool in pools:
                pool.close()
            await asyncio.gather(*(s.close() for s in sessions), *self.closing, return_exceptions=True)
            await asyncio.sleep(0)  # the closed connections' sockets released (connection_lost, called soon)

        try:
            asyncio.run_coroutine_threadsafe(shut_all(), self.loop).result(timeout=2)
        except Exception:  # noqa: BLE001 (at exit: a session that will not close is left to the OS)
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        # Closed too, once stopped: a loop left open warned "ResourceWarning: unclosed event loop" at exit (python -X
        # dev, pytest -W error) after a Ctrl-C, when the interpreter's last collection reached it
        self.thread.join(timeout=2)
        if not self.loop.is_running():
            self.loop.close()


def env_proxy(url: str) -> str | None:
    """The proxy for a server's URL from HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY (either case), as
    httpx's trust_env (the SDK's client) takes them; None: connect directly."""
    parsed = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    key = parsed.scheme if proxies.get(parsed.scheme) else "all"
    proxy = proxies.get(key)
    if not proxy or urllib.request.proxy_bypass_environment(parsed.hostname or "", proxies):
        return None
    proxy = proxy if "://" in proxy else f"http://{proxy}"
    where = urllib.parse.urlsplit(proxy)
    scheme = where.scheme.lower()
    if scheme not in ("http", "https"):  # aiohttp would speak HTTP to it: every request a connection error
        shown = f"{scheme}://{where.hostname}" + (f":{where.port}" if where.port else "")  # no user:password
        raise TeacherError(f"{key.upper()}_PROXY is a {scheme} proxy ({shown}), and the teacher's HTTP client "
                           f"speaks to HTTP(S) proxies only. Fix: point {key.upper()}_PROXY at an HTTP proxy, or "
                           f"add {parsed.hostname} to NO_PROXY")
    return proxy


def sdk_client(url: str, api_key: str, timeout_s: float) -> openai.OpenAI:
    """The SDK's client of one endpoint, for the calls where speed does not matter; retries are ours only. Its
    proxy is the one requests use (env_proxy: a SOCKS proxy stops here with its variable named), not httpx's own
    reading of the environment, which raised an ImportError for socksio even for a host NO_PROXY bypasses."""
    http = openai.DefaultHttpxClient(proxy=env_proxy(url), trust_env=False, verify=httpx.create_ssl_context())
    return openai.OpenAI(api_key=api_key, base_url=url, timeout=timeout_s, max_retries=0, http_client=http)


_TRANSPORT: Transport | None = None
_TRANSPORT_LOCK = threading.Lock()


def transport() -> Transport:
    """This process's transport, started at the first request."""
    global _TRANSPORT
    with _TRANSPORT_LOCK:
        if _TRANSPORT is None or _TRANSPORT.pid != os.getpid():
            _TRANSPORT = Transport()
        return _TRANSPORT


class Client:
    """POST JSON to one server through a connection pool of its own; the SDK's exceptions for what goes wrong.
    `close()` aborts the requests it has in flight (Ctrl-C: the process exits at once instead of waiting out
    their replies) and closes its connections."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float, sdk: openai.OpenAI | None = None):
        """`sdk`: an SDK client of the same server, whose organization and project headers (OPENAI_ORG_ID,
        OPENAI_PROJECT_ID) are sent too, as it would send them."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                        "Content-Type": "application/json"}
        for header, value in (("OpenAI-Organization", getattr(sdk, "organization", None)),
                              ("OpenAI-Project", getattr(sdk, "project", None))):
            if value:
                self.headers[header] = value
        self.proxy = env_proxy(self.base_url)
        if self.proxy is not None:  # aiohttp speaks to the proxy: imported now, so a missing one stops the teacher here
            transport().aiohttp  # noqa: B018
        self.pool: Pool | None = None  # its connections, made on the transport's loop at the first request
        self.session: Any = None  # through a proxy: an aiohttp.ClientSession instead, made likewise
        self.in_flight: set[concurrent.futures.Future] = set()
        self.closed = False

    def post(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        """The decoded JSON of a 2xx reply; else the exception the openai SDK raises for it (apost's, on the
        transport's loop, from any thread)."""
        url = self.base_url + path
        if self.closed:
            raise closed_error(url)
        future = asyncio.run_coroutine_threadsafe(self.apost(path, body, timeout_s), transport().loop)
        self.in_flight.add(future)
        if self.closed:  # closed between the check above and now: close() may not have seen this one
            future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError as e:  # close(): the run is stopping
            raise closed_error(url) from e
        finally:
            self.in_flight.discard(future)

    async def apost(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        """The reply, from a coroutine on the transport's loop (fastpath.py; post() runs it from other threads). A
        close() does not reach it: its caller cancels its task."""
        url = self.base_url + path
        if self.closed:
            raise closed_error(url)
        t = transport()
        try:
            status, headers, content = await t.send(self, url, json.dumps(body).encode(),
                                                    timeout_s or self.timeout_s)
        except (TimeoutError, asyncio.TimeoutError) as e:  # aiohttp's connect and read timeouts (one type from 3.11)
            raise openai.APITimeoutError(request=httpx.Request("POST", url)) from e
        except t.connection_errors as e:  # refused, reset, DNS, TLS: a failed connection
            raise openai.APIConnectionError(request=httpx.Request("POST", url)) from e
        return decoded(url, status, headers, content)

    def close(self) -> None:
        self.closed = True
        for future in list(self.in_flight):
            future.cancel()
        for pool in (self.pool, self.session):
            if pool is not None:
                transport().shut(pool)


def closed_error(url: str) -> openai.APIConnectionError:
    return openai.APIConnectionError(message="Connection error: the client was closed",
                                     request=httpx.Request("POST", url))


def decoded(url: str, status: int, headers: Headers, content: bytes) -> Any:
    """The decoded JSON of a 2xx reply; else the exception the openai SDK raises for it."""
    if not 200 <= status < 300:
        raise status_error(httpx.Response(
            status, content=content, request=httpx.Request("POST", url),
            # the body is already decompressed: httpx must not decode it again
            headers=[(k, v) for k, v in headers if k.lower() != "content-encoding"]))
    try:
        return json.loads(content)
    except ValueError as e:  # a body that is not JSON
        raise Malformed(f"malformed reply: {e}") from e


def status_error(response: httpx.Response) -> openai.APIStatusError:
    """The exception the openai SDK raises for a reply that is not 2xx, with its message and body
    (openai._base_client._make_status_error_from_response and OpenAI._make_status_error)."""
    message, text = f"Error code: {response.status_code}", response.text.strip()
    body: Any = text
    try:
        body = json.loads(text)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
    data = body.get("error", body) if isinstance(body, dict) else body
    kind = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
            404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
            429: openai.RateLimitError}.get(response.status_code)
    if kind is None:
        kind = openai.InternalServerError if response.status_code >= 500 else openai.APIStatusError
    return kind(message, response=response, body=data)


# -- what an error means ------------------------------------------------------------------
def refused(e: BaseException | None) -> bool:
    """A connection that failed or dropped (refused, reset, DNS, TLS), not a timeout: the endpoint is gone for now."""
    return isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError)


def unavailable(e: BaseException | None) -> bool:
    """The endpoint cannot serve for now: a failed connection (refused), or a 503, which llama.cpp's llama-server
    answers ("Loading model") until its model is loaded, and hosted APIs when overloaded. It is waited for as an
    outage (teacher.outage_wait_s), not counted by the circuit breaker, which counts answers that went wrong."""
    return refused(e) or getattr(e, "status_code", None) == 503


def refusal(e: BaseException | None) -> bool:
    """A reply the same request would get again: 400 (a prompt over the context, a parameter the server rejects),
    413 (a body too large) or 422 (one it cannot take, as TGI answers a prompt over its context). 401, 403 and 404
    (FATAL) stop the run at once; a 429 is waited out."""
    return isinstance(e, openai.APIStatusError) and e.status_code in (400, 413, 422)


def is_transient(e: BaseException) -> bool:
    if isinstance(e, Malformed):
        return True
    if isinstance(e, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                      openai.InternalServerError)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


def retry_after(e: BaseException | None) -> float | None:
    """The seconds a reply asked to be left alone, as the SDK reads them: Retry-After-Ms (Azure OpenAI's), else
    Retry-After in seconds or as an HTTP date (RFC 9110 10.2.3); None where it asked nothing readable."""
    response = getattr(e, "response", None)
    if response is None:
        return None
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return max(0.0, float(response.headers[header]) / divisor)
        except (KeyError, ValueError):
            continue
    try:
        when = email.utils.parsedate_tz(response.headers.get("retry-after"))
        return max(0.0, email.utils.mktime_tz(when) - time.time()) if when else None
    except (TypeError, ValueError, OverflowError):
        return None


# How servers word a request over the model's context (tests/test_wire.py holds each in full): OpenAI, vLLM and
# llama-cpp-python's server ("maximum context length", "context length is only", "(context length N)", "maximum model
# length of N", "input tokens exceed the configured limit"), llama.cpp ("exceeds the available context size", "larger
# than the max context size"), llama-cpp-python's Llama ("exceed context window of N"), Ollama ("exceeds the context
# length"), TGI (a 422: "`inputs` tokens + `max_new_tokens` must be <= N", "`inputs` must have less than N tokens").
# OpenAI's code and llama.cpp's type say it too where a proxy rewords the message.
CONTEXT_WORDS = ("context length", "context_length", "maximum context", "context size", "context window",
                 "maximum model length", "input tokens exceed the configured limit",
                 "`inputs` tokens + `max_new_tokens` must be", "`inputs` must have less than")
# Where a context error gives the prompt's tokens and the context's, the prompt alone is over it when the first is
# not below the second; it then never fits, whatever max_tokens.
PROMPT_TOKENS = re.compile(r"(\d+) in (?:the messages|your prompt)|request has (\d+) input|at least (\d+) input|"
                           r"passed (\d+) input|request \((\d+) tokens\)|requested tokens \((\d+)\)|"
                           r"prompt \((?:total )?length (\d+)\)|resulted in (\d+) tokens|input \((\d+) tokens\)|"
                           r"given: (\d+) `inputs` tokens")
CONTEXT_TOKENS = re.compile(r"context length is (?:only )?(\d+)|context size \((\d+) tokens\)|context window of (\d+)|"
                            r"maximum model length of (\d+)|\(context length (\d+)\)|configured limit of (\d+)|"
                            r"`max_new_tokens` must be <= (\d+)")
# Said without the numbers, by servers that check the prompt alone: llama.cpp's older wordings, Ollama's
PROMPT_ALONE = ("available context size", "max context size", "input length exceeds the context length",
                "`inputs` must have less than")


# The refusals a context error comes as: a 400, or TGI's 422 (a validation error)
CONTEXT_REFUSALS = (openai.BadRequestError, openai.UnprocessableEntityError)


def error_words(e: openai.APIStatusError) -> str:
    """A refusal's words, lower-cased: its message, and its body where that is a string, as TGI's {"error": "..."}
    is (the SDK's message leaves that out: "Error code: 422")."""
    return f"{e} {e.body}".lower() if isinstance(e.body, str) else str(e).lower()


def is_context_error(e: openai.BadRequestError) -> bool:
    text = error_words(e)
    return (getattr(e, "code", None) == "context_length_exceeded" or getattr(e, "type", None) ==
            "exceed_context_size_error" or any(words in text for words in CONTEXT_WORDS))


def context_too_long(e: openai.BadRequestError) -> ContextTooLong:
    """A context error (is_context_error) as ContextTooLong, shrinkable unless the server says the prompt alone is
    over the context: in its numbers (its message's, or llama.cpp's n_prompt_tokens and n_ctx), else in its words."""
    text, body = error_words(e), e.body if isinstance(e.body, dict) else {}
    prompt, context = body.get("n_prompt_tokens"), body.get("n_ctx")
    if not (isinstance(prompt, int) and isinstance(context, int)):
        found = [next(filter(None, m.groups()), None) if m else None
                 for m in (PROMPT_TOKENS.search(text), CONTEXT_TOKENS.search(text))]
        prompt, context = (int(found[0]), int(found[1])) if all(found) else (None, None)
    if prompt is not None and context is not None:
        return ContextTooLong(shrinkable=prompt < context)
    return ContextTooLong(shrinkable=not any(words in text for words in PROMPT_ALONE))


def describe_error(e: BaseException, secret: str = "", hint: bool = True, origin: Origin = RUN_TEACHER) -> str:
    """The error in one line, secrets masked; with `hint`, what a 401, 403 or 404 usually means, in the names of
    the settings and flags of the teacher's `origin`."""
    status = getattr(e, "status_code", None)
    hint_text = {
        401: f"the API key was refused; check the key's variable ({origin.key('api_key_env')})",
        403: "the key may not use this model",
        404: f"unknown model or wrong base URL; check {origin.give('spec', 'openai:MODEL')} and "
             f"{origin.flag('base_url', 'URL')}",
    }.get(status or 0, "") if hint else ""
    detail = str(getattr(e, "message", "") or e).strip().splitlines()[0][:300].rstrip(".") if str(e).strip() else ""
    words = e.body.strip().splitlines()[0][:300] if isinstance(e, openai.APIStatusError) and \
        isinstance(e.body, str) and e.body.strip() else ""
    if words and words.rstrip(".") not in detail:  # a server's words as a JSON string (TGI's {"error": ...})
        detail += f" - {words}"
    cause = e.__cause__ or e.__context__
    if isinstance(e, openai.APIConnectionError) and cause is not None and str(cause).strip():
        detail += f": {str(cause).strip().splitlines()[0][:200]}"  # "Connection refused", a DNS or TLS error
    msg = (f"HTTP {status} " if status else "") + type(e).__name__ + (f": {detail}" if detail else "")
    text = f"{msg} ({hint_text})" if hint_text else msg
    return mask_secrets(text.replace(secret, "***") if secret else text)
