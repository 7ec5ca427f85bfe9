"""A fake OpenAI-compatible server on 127.0.0.1 (stdlib only) for tests.

`FakeOpenAI.enqueue(...)` scripts replies in order; with nothing queued, `default_reply`
answers like a well-behaved teacher of the Self-Instruct prompts. Every request is kept
in `history` (path, JSON body, headers) so tests can check what was sent.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Long, distinct topic phrases so that every generated instruction is novel (ROUGE-L < 0.7)
# against the others and the seeds, at least for the first len(TOPICS) of them.
TOPICS = ["why volcanoes erupt under pressure", "filling in an annual tax return form", "classic chess openings",
          "baking bread with a sourdough starter", "answering tricky job interview questions",
          "creatures living in rocky tide pools", "fixing a flat bicycle tyre", "habits that improve deep sleep",
          "the fall of the western roman empire", "nested spreadsheet lookup formulas",
          "how migrating birds navigate", "calming nerves before public speaking", "keeping houseplants alive",
          "travelling cheaply across europe by train", "iambic meter in english poetry",
          "installing rooftop solar panels", "knitting a first scarf", "treating a minor burn at home",
          "seventh chords in jazz harmony", "keeping bees in a city garden", "cooperative board games for families",
          "collecting rainwater in tanks", "folding an origami crane", "training for a first marathon",
          "choosing a laptop for programming"]
VERBS = ["Explain", "Summarize", "List facts about", "Compare approaches to", "Describe", "Give advice on",
         "Outline", "Critique common myths about", "Plan a lesson on", "Evaluate sources on"]


class QueuedServer(ThreadingHTTPServer):
    # The listen backlog. socketserver's 5 let a burst of connections (a wave of 7 prompts, 16 in flight) overflow it
    # while a loaded machine was slow to accept: the kernel dropped the SYN and the client's retry came 1 s later
    # (ListenOverflows in /proc/net/netstat), long enough to read as a client that had stopped sending.
    request_queue_size = 128
    daemon_threads = True


def _novel_instructions():
    """Endless instructions; the first len(TOPICS) are mutually novel."""
    for n in itertools.count():
        yield f"{VERBS[n % len(VERBS)]} {TOPICS[n % len(TOPICS)]}."


class FakeOpenAI:
    def __init__(self) -> None:
        self.queue: deque[tuple[int, Any, dict[str, str], float]] = deque()
        self.default_delay = 0.0  # seconds before each default (unqueued) reply
        # While set, every POST (probes too) gets no reply: a wedged engine, or a proxy whose backend hangs, that
        # still answers GET /models. Cleared, the requests waiting reply at once.
        self.hang = False
        # While set, every POST (probes too) gets the 503 that llama.cpp's llama-server answers while it loads its
        # model (GET /models answers, as llama-server's does then); `loading_replies` counts them.
        self.loading = False
        self.loading_replies = 0
        # The pipeline's requests, each with "at" (time.monotonic() on arrival) and "replied" (once its reply is sent).
        self.history: list[dict[str, Any]] = []
        self.posts = 0  # POSTs received, those still waiting included
        self.probes: list[dict[str, Any]] = []  # preflight: GET /models and api auto's one-token probe
        # GET /models lists these ids (llama.cpp's servers list their one model and serve it under any name, as
        # this fake does) and answers after models_delay s (llama-cpp-python's waits for the generation under way)
        self.models = ["fake-model"]
        self.models_delay = 0.0
        self.probe_delays: list[float] = []  # each one-token probe waits the next of these (a busy server), if any
        self.completions_endpoint = False  # api auto's probe of /completions gets a 404 unless this is set
        self.probe_errors: list[int] = []  # statuses the next probes of /completions get first (a hiccup: 500, 429)
        # response_format forms whose JSON schema binds the reply (as OpenAI: {"json_schema"}; llama-cpp-python's
        # server: {"json_object"}). Others are ignored (the reply is text), or refused with a 422 when
        # refuse_other_forms is set, as llama-cpp-python refuses type json_schema.
        self.schema_forms: set[str] = set()
        self.refuse_other_forms = False
        self.prompt_tokens = 11  # what every reply's usage counts as its prompt
        # prompt -> the message of the 400 that refuses it, or None to answer it (a server whose context some
        # prompts exceed, or that rejects a parameter); before the queue, and each refusal kept in `history` too
        self.refuse: Callable[[str], str | None] | None = None
        # Of them, what usage.prompt_tokens_details.cached_tokens reports as served by a prefix cache (as OpenAI);
        # None: no prompt_tokens_details at all (as most local servers)
        self.cached_tokens: int | None = None
        self._novel = _novel_instructions()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # connections being served: kill() drops them
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer._open.add(self.connection)

            def finish(self) -> None:
                with outer._lock:
                    outer._open.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass  # killed under us

            def do_GET(self) -> None:
                outer.probes.append({"path": self.path, "body": None})
                time.sleep(outer.models_delay)
                try:
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]},
                               {})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    outer.posts += 1
                while outer.hang:
                    time.sleep(0.02)
                if outer.loading:
                    with outer._lock:
                        outer.loading_replies += 1
                    self._send(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                               {})
                    return
                try:
                    self._post(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def _post(self, body: dict[str, Any]) -> None:
                if outer.refuse_other_forms and outer.form_of(body) not in (None, *outer.schema_forms):
                    self._send(422, {"detail": [{"type": "literal_error", "loc": ["body", "response_format", "type"],
                                                 "msg": "Input should be 'text' or 'json_object'"}]}, {})
                    return
                if outer.prompt_of(body).startswith("Is water wet?"):  # teacher.structured's probe
                    outer.probes.append({"path": self.path, "body": body})
                    bound = outer.form_of(body) in outer.schema_forms
                    self._send(200, outer.wrap(self.path, '{"answer": "Yes"}' if bound else "Yes, water is wet."), {})
                    return
                if body.get("max_tokens") == 1 and outer.prompt_of(body) == "Say OK.":  # api auto's probe, and the prober's
                    outer.probes.append({"path": self.path, "body": body})
                    if outer.probe_delays:
                        time.sleep(outer.probe_delays.pop(0))
                    if outer.probe_errors and not self.path.endswith("/chat/completions"):
                        status = outer.probe_errors.pop(0)
                        self._send(status, {"error": {"message": f"a hiccup ({status})"}}, {})
                        return
                    if self.path.endswith("/chat/completions") or outer.completions_endpoint:
                        self._send(200, outer.wrap(self.path, "OK"), {})
                    else:
                        self._send(404, {"error": {"message": "no completions endpoint for this model"}}, {})
                    return
                entry = {"path": self.path, "body": body, "headers": dict(self.headers), "at": time.monotonic()}
                refusal = outer.refuse(outer.prompt_of(body)) if outer.refuse else None
                with outer._lock:
                    outer.history.append(entry)
                    if refusal is not None:
                        status, payload, headers, delay = 400, {"error": {"code": 400, "message": refusal,
                                                                          "type": "invalid_request_error"}}, {}, 0.0
                    else:
                        status, payload, headers, delay = outer.queue.popleft() if outer.queue else \
                            (200, outer.default_reply(self.path, body), {}, outer.default_delay)
                if delay:
                    time.sleep(delay)
                if callable(payload):
                    payload = payload(self.path, body)
                if isinstance(payload, str) and status == 200:
                    payload = outer.wrap(self.path, payload)
                self._send(status, payload, headers)
                entry["replied"] = time.monotonic()

        self.server = QueuedServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def go_down(self) -> None:
        """Stop listening: connections are refused, as with a killed server."""
        self.close()

    def kill(self) -> None:
        """Die as a killed process does: stop listening, and drop every connection mid-request."""
        self.close()
        with self._lock:
            dropped, self._open = list(self._open), set()
        for conn in dropped:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # the client reads end-of-stream, no reply; the fd stays its handler's
            except OSError:
                pass

    def come_back(self) -> None:
        """Listen again on the same port, as a restarted server."""
        handler, port = self.server.RequestHandlerClass, self.server.server_address[1]
        self.server = QueuedServer(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def enqueue(self, reply: Any, *, status: int = 200, finish_reason: str = "stop",
                headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        """Queue one reply: text (wrapped as a completion), a dict/bytes body, or a callable(path, body)."""
        if isinstance(reply, str) and status == 200:
            text = reply
            reply = lambda path, body: self.wrap(path, text, finish_reason)  # noqa: E731
        self.queue.append((status, reply, headers or {}, delay))

    @staticmethod
    def form_of(body: dict[str, Any]) -> str | None:
        """The response_format form of a request that carries a JSON schema; None for none."""
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema" or (rf.get("type") == "json_object" and "schema" in rf):
            return rf["type"]
        return None

    def schema_of(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The schema that binds this request's reply, if the server honours its form."""
        if self.form_of(body) not in self.schema_forms:
            return None
        rf = body["response_format"]
        return rf["json_schema"]["schema"] if rf["type"] == "json_schema" else rf["schema"]

    @staticmethod
    def prompt_of(body: dict[str, Any]) -> str:
        if "messages" in body:
            return body["messages"][-1]["content"]
        return body.get("prompt", "")

    def wrap(self, path: str, text: str, finish_reason: str = "stop") -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(text.split()),
                                 "total_tokens": self.prompt_tokens + len(text.split())}
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            return {"id": "c", "object": "chat.completion", "created": 0, "model": "fake", "choices": [choice],
                    "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return {"id": "c", "object": "text_completion", "created": 0, "model": "fake", "choices": [choice],
                "usage": usage}

    def structured_reply(self, prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
        """What a competent teacher bound to the schema answers (the schemas of pipeline/stages/schemas.py)."""
        props = schema["properties"]
        if "tasks" in props:
            return {"tasks": [next(self._novel) for _ in range(3)]}
        if "answer" in props:
            return {"answer": "Yes" if "Compare" in prompt.rsplit("Task:", 1)[-1] else "No"}
        task = prompt.rsplit("Task:", 1)[-1].split("\n")[0].strip()
        if "label" in props["examples"]["items"]["properties"]:
            return {"examples": [{"label": "First", "input": "the first option"},
                                 {"label": "Second", "input": "the other option"}]}
        return {"examples": [{"input": f"a question about {task[:20]}", "output": f"a careful answer about {task[-20:]}"},
                             {"input": "", "output": f"a general answer for: {task}"}]}

    def default_reply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A competent teacher for each of seed2lora's prompts, in chat style."""
        prompt = self.prompt_of(body)
        schema = self.schema_of(body)
        if schema is not None:
            return self.wrap(path, json.dumps(self.structured_reply(prompt, schema)))
        if "numbered list of" in prompt:  # bootstrap
            items = [next(self._novel) for _ in range(3)]  # called under the server's lock
            text = "Sure! Here are some new tasks:\n\n" + "\n".join(f"{i + 9}. {t}" for i, t in enumerate(items))
            if not path.endswith("/chat/completions"):  # a completion model continues the prompt's "9."
                text = f" {items[0]}\n" + "\n".join(f"{i + 10}. {t}" for i, t in enumerate(items[1:]))
        elif "Is it classification?" in prompt:
            task = prompt.rsplit("Task:", 1)[-1]
            text = "Yes" if "Compare" in task else "No"
        elif prompt.rstrip().endswith("Class label:"):
            text = "Class label: First\nInput: the first option\n\nClass label: Second\nInput: the other option"
        elif prompt.rstrip().endswith("Input:"):
            task = prompt.rsplit("Task:", 1)[-1].split("\n")[0].strip()
            text = (f"Example 1\nInput: a question about {task[:20]}\nOutput: a careful answer about {task[-20:]}\n\n"
                    f"Example 2\nInput: <noinput>\nOutput: a general answer for: {task}")
        else:
            text = "I am not sure what you want."
        return self.wrap(path, text)

