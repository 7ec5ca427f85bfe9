"""Before the first prompt: is each endpoint there, which API does the server offer (teacher.api auto), and does
it bind chat replies to a JSON schema (teacher.structured auto|on)? A wrong port or a dead server fails in
seconds, naming the URL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai

from ..errors import TeacherError, TeacherUnavailable
from .base import Completion, GenParams
from .failover import Failover
from .wire import Client, ContextTooLong, Malformed, describe_error, is_transient, retry_after

PROBE_PROMPT = "Say OK."  # api auto's one-token probe of the completions endpoint
# teacher.structured auto|on: one small question whose reply must be {"answer": "Yes"} or {"answer": "No"}
STRUCTURED_PROBE_PROMPT = 'Is water wet? Reply with a JSON object such as {"answer": "Yes"}.'
STRUCTURED_PROBE = GenParams(max_tokens=24, schema_name="answer", schema=json.dumps({
    "type": "object", "properties": {"answer": {"type": "string", "enum": ["Yes", "No"]}}, "required": ["answer"],
    "additionalProperties": False}))
SCHEMA_FORMS = ("json_schema", "json_object")  # tried in this order: OpenAI's form first
PROBE_TRIES = 3  # api auto's probe, asked again after a 429, 5xx or dropped connection: a hiccup is no answer
PREFLIGHT_TIMEOUT_S = 60.0  # one token from a cold local server (model load, first batch) can take this long
# GET /models: an endpoint that does not answer in this long (a dead host's connection, a hung server) is tried
# again or left out of rotation, so that it does not hold the start while another answers. One that took the
# connection (a read timeout) and is the last hope is then given PREFLIGHT_TIMEOUT_S: llama-cpp-python's server
# answers no request, GET /models included, while it generates for another client (8 to 11 s behind 4 requests
# of another run), and 10 s stopped the start with exit 4 telling the user to start the running server.
REACH_TIMEOUT_S = 10.0
# One call as the teacher makes it: (client, api, prompt, params, schema_form, timeout_s) -> its reply.
Ask = Callable[[Client, str, str, GenParams, str, float], Completion]


class Preflight:
    def __init__(self, failover: Failover, sdk_clients: list[openai.OpenAI], probes: list[Client], ask: Ask,
                 event: Callable[[str], None], secret: str = ""):
        self.failover, self.sdk_clients, self.probes, self.ask = failover, sdk_clients, probes, ask
        self.event, self.secret, self.origin = event, secret, failover.origin
        self.timeout_s = min(failover.patience.timeout_s, PREFLIGHT_TIMEOUT_S)
        self.listed: dict[int, list[str]] = {}  # endpoint -> the model ids its GET /models listed
        self.slow: set[int] = set()  # endpoints that took the connection and did not answer within REACH_TIMEOUT_S
        self.waited: set[int] = set()  # of them, those given PREFLIGHT_TIMEOUT_S to answer

    def describe(self, e: BaseException, hint: bool = True) -> str:
        """describe_error in this teacher's names, its key masked."""
        return describe_error(e, self.secret, hint, self.origin)

    def reach_all(self, probe_every_s: float) -> list[int]:
        """The endpoints that answer. All are tried in turn within one teacher.connect_window_s, and the first pass
        that reaches any ends the wait: one that does not answer starts out of rotation (the prober lets it in when
        it answers), so a dead endpoint does not hold the start for its own window, nor two dead ones for two.
        TeacherUnavailable naming every URL when none answers within the window."""
        endpoints, window = self.failover.endpoints, self.failover.patience.connect_window_s
        deadline = time.monotonic() + window
        alive: list[int] = []
        errors: dict[int, str] = {}
        announced: set[int] = set()
        while True:
            for i in range(len(endpoints)):
                error = self.reach(i)
                if error is None:
                    alive.append(i)
                    errors.pop(i, None)
                else:
                    errors[i] = error
            if alive or (time.monotonic() >= deadline and not self.slow - self.waited):
                break
            for i in errors.keys() - announced:
                announced.add(i)
                if i in self.slow:
                    self.event(f"{endpoints[i].url} took the connection but did not answer GET /models within "
                               f"{REACH_TIMEOUT_S:.0f} s; asking again, waiting up to {self.timeout_s:.0f} s (a busy "
                               "server: llama-cpp-python's answers nothing while it generates for another client)")
                else:
                    self.event(f"cannot reach {endpoints[i].url} ({errors[i]}); trying for {window:.0f} s "
                               f"({self.origin.key('connect_window_s')})")
            if self.failover.stop.wait(1.0):
                break
        for i, endpoint in enumerate(endpoints):
            if i in alive:
                endpoint.answered, endpoint.down_since = True, None
            else:
                endpoint.down_since, endpoint.probe_wait_s = time.monotonic(), probe_every_s
                endpoint.falls += 1
        if not alive:
            named = "; ".join(f"{endpoints[i].url}: {error}" for i, error in errors.items())
            fix = (f"start the server, or check {self.origin.flag('base_url', 'URL')} (host and port)"
                   if errors.keys() - self.slow else "check the server: it takes connections but answers nothing "
                   "(stopped, wedged, or busy with other clients)")
            within = f"{window:.0f} s ({self.origin.key('connect_window_s')})" if not self.waited else \
                f"{time.monotonic() - deadline + window:.0f} s ({self.origin.key('connect_window_s')}, then up to " \
                f"{self.timeout_s:.0f} s for a server that took the connection)"
            raise TeacherUnavailable(f"no endpoint answers within {within}: {named}. Fix: {fix}", role=self.origin.role)
        for i in errors:
            self.event(f"{endpoints[i].url} does not answer ({errors[i]}); requests go to the other endpoints "
                       "until it does")
        return alive

    def reach(self, i: int) -> str | None:
        """None when the endpoint answers HTTP at all (GET /models); else the connection error of this one try."""
        url = self.failover.endpoints[i].url
        patient = i in self.slow
        if patient:
            self.waited.add(i)
        limit = min(self.failover.patience.timeout_s, REACH_TIMEOUT_S)
        client = self.sdk_clients[i].with_options(timeout=httpx.Timeout(self.timeout_s if patient else limit,
                                                                        connect=limit))
        try:
            page = client.models.list()
            self.listed[i] = [m for m in (getattr(x, "id", None) for x in getattr(page, "data", None) or []) if m]
            return None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise TeacherError(f"{url}: {self.describe(e)}") from None
        except openai.APIConnectionError as e:  # refused, DNS, TLS, reset, timeout (the SDK wraps httpx2's)
            if "ReadTimeout" in (type(e).__name__, type(e.__cause__).__name__):  # it took the connection (the SDK's
                self.slow.add(i)  # httpx may be another package than ours: httpx2 under openai 3)
            return self.describe(e)
        except (openai.APIStatusError, ValueError):
            return None  # an HTTP answer (a server without /models, say): it is there

    def unlisted(self, model: str, alive: list[int]) -> list[str]:
        """A line for the endpoints whose GET /models lists models, none of them `model` (one line for those that list
        the same). llama.cpp's servers (llama-server, llama-cpp-python's) serve their one model under any name, so a
        wrong or made-up name ("openai:MODEL", as the README writes it) is never refused, and the run's records name
        it as their teacher."""
        urls_of: dict[tuple[str, ...], list[str]] = {}
        for i in alive:
            ids = tuple(self.listed.get(i) or ())
            if ids and model not in ids and f"{model}:latest" not in ids:  # Ollama's "qwen2.5" is "qwen2.5:latest"
                urls_of.setdefault(ids, []).append(self.failover.endpoints[i].url)
        lines = []
        for ids, urls in urls_of.items():
            shown = ", ".join(repr(m) for m in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            lines.append(f"{' and '.join(urls)} list{'s' * (len(urls) == 1)} the model{'s' * (len(ids) > 1)} {shown}, "
                         f"not {model!r}: a server that serves its one model under any name (llama.cpp's) answers "
                         f"anyway, and the run records {model!r} as its teacher. Fix, if the name is a mistake: "
                         + (self.origin.give('spec', 'openai:' + ids[0]) if len(ids) == 1 else
                            f"{self.origin.give('spec', 'openai:MODEL')} with one of them"))
        return lines

    def ask_ready(self, alive: list[int], api: str, prompt: str, params: GenParams, form: str) -> Completion:
        """The reply of the first endpoint of `alive` that serves the probe. One that answers 503 (llama.cpp's
        llama-server while it loads its model, an overloaded server) or times out (busy with other clients) is there
        but not ready: asked again every
        second, with a line every outage_line_every_s, for teacher.outage_wait_s, so that its loading does not
        decide the API or the schema form. TeacherUnavailable naming each URL when none serves within that wait;
        any other error is the caller's."""
        endpoints, wait = self.failover.endpoints, self.failover.patience.outage_wait_s
        started, said = time.monotonic(), None
        while True:
            errors: dict[int, str] = {}
            for i in alive:
                try:
                    return self.ask(self.probes[i], api, prompt, params, form, self.timeout_s)
                except openai.APIStatusError as e:
                    if e.status_code != 503:
                        raise
                    errors[i] = self.describe(e)
                except openai.APITimeoutError as e:  # a server busy with other clients' requests (llama-cpp-python's
                    errors[i] = self.describe(e)  # serves one at a time): not an answer to what the probe asks
            waited, named = time.monotonic() - started, "; ".join(f"{endpoints[i].url}: {e}" for i, e in errors.items())
            key = self.origin.key("outage_wait_s")
            if waited >= wait or self.failover.stop.is_set():
                raise TeacherUnavailable(f"no endpoint serves a prompt after {waited:.0f} s ({key}: {wait:.0f} s): "
                                         f"{named}. Fix: check the server's log (is its model still loading, or is it "
                                         "busy with other clients?); a re-run resumes", role=self.origin.role)
            if said is None or time.monotonic() - said >= self.failover.timing.outage_line_every_s:
                said = time.monotonic()
                self.event(f"not ready: {named}; asking again every second for up to {wait - waited:.0f} s more "
                           f"({key})")
            self.failover.stop.wait(1.0)  # set: the check above stops the wait, naming what it waited for

    def choose_api(self, alive: list[int]) -> tuple[str, str]:
        """api auto: (api, why). Ask for one token from the completions endpoint and use it if the server has one.
        A 429, a 5xx or a dropped connection is asked again (PROBE_TRIES in all): one such hiccup put a server
        that has the endpoint on chat for the whole run. A timeout is not (each took PREFLIGHT_TIMEOUT_S)."""
        tries = 0
        while True:
            tries += 1
            try:
                self.ask_ready(alive, "completions", PROBE_PROMPT, GenParams(max_tokens=1), "")
                return "completions", "auto: completions (the server offers the endpoint)"
            except openai.NotFoundError as e:  # the answer the probe asks about: no hint to check the model or the
                # URL, which would send a chat-only server's user (gpt-4o-mini's too) to fix what works
                return "chat", f"auto: chat (no completions endpoint: {self.describe(e, hint=False)})"
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise TeacherError(f"{self.failover.endpoints[alive[0]].url}: {self.describe(e)}") from None
            except (openai.APIError, Malformed, ContextTooLong, ValueError) as e:
                again = is_transient(e) and not isinstance(e, openai.APITimeoutError)
                if tries == PROBE_TRIES or not again or self.failover.stop.wait(min(retry_after(e) or 1.0, 5.0)):
                    tried = f", asked {tries} times" if tries > 1 else ""
                    return "chat", f"auto: chat (completions: {self.describe(e)}{tried})"

    def choose_structured(self, alive: list[int], api: str, setting: str) -> tuple[str, str]:
        """teacher.structured auto|on: (the response_format form the server honours or "", why). Does the server
        bind a chat reply to a JSON schema? Ask it one small question in each form servers take (OpenAI's
        json_schema; json_object with a schema, as llama-cpp-python's server takes it) and use the first whose
        reply is the schema's JSON. Auto leaves a run on the completions endpoint as it is: list continuations
        are what small local models follow best (benchmarks/RESULTS.md, structured replies on llama.cpp)."""
        url = self.failover.endpoints[alive[0]].url
        if api == "completions":
            if setting == "on":
                o = self.origin
                raise TeacherError(f"{o.key('structured')}=on needs chat requests, and {o.give('api', 'completions')} "
                                   f"was given. Fix: {o.give('api', 'chat')} (or auto), or --set "
                                   f"{o.key('structured')}=off")
            return "", "auto: off (the run uses the completions endpoint)"
        tried = []
        for form in SCHEMA_FORMS:
            try:
                reply = self.ask_ready(alive, "chat", STRUCTURED_PROBE_PROMPT, STRUCTURED_PROBE, form)
                try:
                    answer: Any = json.loads(reply.text).get("answer")
                except (ValueError, AttributeError):  # text, not JSON: the form is ignored, which the line says
                    answer = None
                if answer in ("Yes", "No"):
                    return form, (f"{'auto: ' if setting == 'auto' else ''}on (the server binds replies "
                                  f"to a schema given as response_format {form})")
                tried.append(f"{form}: reply not the schema's JSON ({reply.text[:40]!r})")
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise TeacherError(f"{url}: {self.describe(e)}") from None
            except (openai.APIError, Malformed, ContextTooLong, ValueError, AttributeError) as e:
                tried.append(f"{form}: {self.describe(e)}")
        if setting == "on":
            raise TeacherError(f"{url} does not bind replies to a JSON schema ({'; '.join(tried)}). "
                               f"Fix: --set {self.origin.key('structured')}=auto (falls back to text) or off")
        return "", f"auto: off ({'; '.join(tried)})"
