"""wire.py: request bodies, replies read without the SDK's models, and the SDK's exceptions for each status."""

import json

import httpx
import openai
import pytest

from pipeline.teachers.base import GenParams
from pipeline.teachers.wire import (
    Client,
    Malformed,
    Sending,
    context_too_long,
    describe_error,
    is_context_error,
    read_reply,
    request_body,
    status_error,
)

BODIES = [
    b'{"error": {"message": "This model\'s maximum context length is 4096 tokens", "type": "invalid_request_error"}}',
    b'{"error": "plain string error"}', b'{"detail": "Not Found"}', b"upstream connect error", b"", b"[1, 2]",
]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 418])
@pytest.mark.parametrize("content", BODIES)
def test_a_status_raises_what_the_sdk_raises_with_its_message_and_body(status, content):
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx.Response(status, content=content, headers={"retry-after": "3"}, request=request)
    sdk = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")._make_status_error_from_response(response)
    ours = status_error(response)
    assert type(ours) is type(sdk)
    assert (str(ours), ours.status_code, ours.body, ours.message) == (str(sdk), sdk.status_code, sdk.body, sdk.message)
    assert ours.response.headers["retry-after"] == "3"


def test_a_chat_reply_is_read_with_its_usage_and_cached_tokens():
    reply = {"choices": [{"message": {"role": "assistant", "content": "Hi"}, "finish_reason": "length"}],
             "usage": {"prompt_tokens": 120, "completion_tokens": 5,
                       "prompt_tokens_details": {"cached_tokens": 64}}}
    c = read_reply("chat", reply, logprobs_asked=False)
    assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.cached_tokens) == ("Hi", "length", 120, 5, 64)
    no_details = read_reply("completions", {"choices": [{"text": "x", "finish_reason": None}],
                                            "usage": {"prompt_tokens": 3, "prompt_tokens_details": None}}, False)
    assert (no_details.text, no_details.finish_reason, no_details.cached_tokens) == ("x", "stop", 0)


@pytest.mark.parametrize("reply, why", [
    ({"choices": []}, "no choices"), ({}, "no choices"), ([], "not an object"),
    ({"choices": [{"message": {"role": "assistant", "content": None}}]}, "no choices"),
    ({"choices": [{"message": {"content": None, "refusal": "I can't help with that."}}]}, "refused: I can't"),
])
def test_a_reply_with_no_text_is_malformed(reply, why):
    with pytest.raises(Malformed, match=why):
        read_reply("chat", reply, logprobs_asked=False)


def test_logprobs_are_read_from_chat_and_completions_replies():
    chat = {"choices": [{"message": {"content": "Yes"}, "logprobs": {"content": [
        {"token": "Yes", "logprob": -0.1, "top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                            {"token": "No", "logprob": -2.5}]}]}}]}
    assert json.loads(read_reply("chat", chat, True).text) == {"top_logprobs": {"Yes": -0.1, "No": -2.5}}
    completions = {"choices": [{"text": "Yes", "logprobs": {"top_logprobs": [{"Yes": -0.2, "No": -1.9}]}}]}
    assert json.loads(read_reply("completions", completions, True).text) == {"top_logprobs": {"Yes": -0.2, "No": -1.9}}
    missing = read_reply("chat", {"choices": [{"message": {"content": "Yes"}}]}, True)
    assert missing.text == "Yes" and not missing.cacheable  # asked for and not sent: not kept in the cache


def test_the_body_carries_the_settings_the_server_takes():
    s = Sending("m", system_prompt="Be brief.", seed=7)
    params = GenParams(max_tokens=9, top_p=0.0, stop=("a", "b", "c", "d", "e"), logprobs=3)
    body = request_body(s, "chat", "hi", params, "salt")
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert body["top_p"] == 1.0 and body["stop"] == ["a", "b", "c", "d"] and body["top_logprobs"] == 3
    assert body["seed"] == request_body(s, "chat", "other", params, "salt")["seed"]  # the salt decides it
    s.send_seed = s.send_logprobs = False
    body = request_body(s, "completions", "hi", params, "salt")
    assert body["prompt"] == "hi" and "seed" not in body and "logprobs" not in body


def test_a_refused_connection_and_a_timeout_raise_the_sdks_exceptions(fake_openai):
    with pytest.raises(openai.APIConnectionError) as refused:
        Client("http://127.0.0.1:9/v1", "k", 5.0).post("/chat/completions", {"model": "m"})
    assert not isinstance(refused.value, openai.APITimeoutError)
    fake_openai.enqueue(fake_openai.wrap("/chat/completions", "late"), delay=2.0)
    with pytest.raises(openai.APITimeoutError):
        Client(fake_openai.url, "k", 0.3).post("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    fake_openai.enqueue(b"{not json")
    with pytest.raises(Malformed, match="malformed reply"):
        Client(fake_openai.url, "k", 5.0).post("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def test_the_organization_and_project_of_the_environment_are_sent_as_the_sdk_sends_them(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-test")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_test")
    sdk = openai.OpenAI(api_key="k", base_url=fake_openai.url)
    client = Client(fake_openai.url, "k", 5.0, sdk)
    assert {k: client.headers[k] for k in ("OpenAI-Organization", "OpenAI-Project")} == {
        k: sdk.default_headers[k] for k in ("OpenAI-Organization", "OpenAI-Project")}
    assert "OpenAI-Project" not in Client(fake_openai.url, "k", 5.0).headers


def test_the_cache_key_is_the_one_every_cached_reply_was_stored_under():
    import hashlib

    from pipeline.teachers.base import BaseTeacher, Request, params_key

    class Teacher(BaseTeacher):
        def cache_identity(self):
            return {"name": "openai:m", "kind": "openai", "model": "m", "api": "chat", "é": [1, 2.5, None]}

    t = Teacher()
    for req, params in [
        (Request(1, 'héllo "q"\n\t\u2028 😀', "s:1"),
         GenParams(16, 0.7, stop=("\n\n", "ü"), json_mode=True, logprobs=3, schema_name="n", schema='{"a": 1}')),
        (Request(2, "", ""), GenParams(1)), (Request(3, "x" * 300, "é"), GenParams(300, top_p=0.0)),
    ]:
        blob = json.dumps({"teacher": t.cache_identity(), "prompt": req.prompt, "params": params_key(params),
                           "salt": req.salt}, sort_keys=True, ensure_ascii=False)
        assert t.cache_key(req, params) == hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_proxies_come_from_the_environment_as_httpx_takes_them(monkeypatch):
    from pipeline.teachers.wire import env_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.corp:3128"
    assert env_proxy("http://gpu-box:8000/v1") is None  # HTTPS_PROXY is for https URLs only
    monkeypatch.setenv("ALL_PROXY", "http://all:1")
    assert env_proxy("http://gpu-box:8000/v1") == "http://all:1"
    monkeypatch.setenv("NO_PROXY", "gpu-box,localhost")
    assert env_proxy("http://gpu-box:8000/v1") is None and env_proxy("https://api.openai.com/v1")


def test_transport_errors_are_the_sdks_and_a_closed_client_sends_nothing():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}/v1", "sk-secret", timeout_s=5)
    with pytest.raises(openai.APIConnectionError) as refused:
        client.post("/chat/completions", {"model": "m"})
    assert not isinstance(refused.value, openai.APITimeoutError)
    client.close()
    with pytest.raises(openai.APIConnectionError, match="closed"):
        client.post("/chat/completions", {"model": "m"})


def test_a_429_over_the_wire_carries_retry_after_and_the_sdks_body(fake_openai):
    client = Client(fake_openai.url, "k", timeout_s=5)
    fake_openai.enqueue({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "2"})
    with pytest.raises(openai.RateLimitError, match="slow down") as e:
        client.post("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert e.value.response.headers["retry-after"] == "2" and e.value.body == {"message": "slow down"}
    assert fake_openai.history[0]["headers"]["Authorization"] == "Bearer k"


def test_a_session_being_shut_is_held_until_it_has_closed():
    """The loop holds tasks weakly: a closing task that only its own awaits referenced was collected mid-close,
    and its session printed "Unclosed client session" at exit (three in a whole test run)."""
    import asyncio
    import gc
    import time
    import weakref

    from pipeline.teachers.wire import transport

    waits: list[weakref.ref] = []

    class Session:  # closes as aiohttp's does: awaiting what only the closing coroutine references
        closed = False

        async def close(self):
            done = asyncio.get_running_loop().create_future()
            waits.append(weakref.ref(done))
            await done
            self.closed = True

    t, session = transport(), Session()
    t.shut(session)
    deadline = time.monotonic() + 5
    while not waits and time.monotonic() < deadline:
        time.sleep(0.01)
    gc.collect()
    done = waits[0]()
    assert done is not None, "the closing task was collected before the session closed"
    t.loop.call_soon_threadsafe(done.set_result, None)
    while not session.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.closed  # (other tests' sessions may be closing too: t.closing is not checked)


def test_a_socks_proxy_stops_the_teacher_naming_its_variable_and_not_its_password(monkeypatch):
    """aiohttp speaks HTTP to any proxy: a SOCKS one made every request a connection error, retried to the end."""
    from pipeline.errors import TeacherError
    from pipeline.teachers.wire import env_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://me:hunter2@socks.corp:1080")
    with pytest.raises(TeacherError, match=r"ALL_PROXY is a socks5 proxy \(socks5://socks.corp:1080\)") as e:
        Client("http://gpu-box:8000/v1", "sk-secret", timeout_s=5)
    assert "hunter2" not in str(e.value) and "NO_PROXY" in str(e.value)
    from pipeline.teachers.openai_compat import OpenAITeacher

    with pytest.raises(TeacherError, match="ALL_PROXY is a socks5 proxy"):  # before the SDK's ImportError (socksio)
        OpenAITeacher("m", base_url="http://gpu-box:8000/v1")
    monkeypatch.setenv("NO_PROXY", "gpu-box")
    assert env_proxy("http://gpu-box:8000/v1") is None  # bypassed: no proxy, no error
    OpenAITeacher("m", base_url="http://gpu-box:8000/v1")  # nor from the SDK's client (httpx wanted socksio)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.corp:3128"  # the scheme's own variable first


def test_a_client_dropped_in_a_reference_cycle_closes_its_connections_without_a_warning(fake_openai):
    """Collected in one pass with its client, an aiohttp session's own finalizer warned "Unclosed client session"
    before the client's __del__ could close it (pytest printed three such lines at exit). A client's pool of
    connections (http1.Pool, or through a proxy its aiohttp session) must stay out of its client's garbage, and be
    closed."""
    import gc
    import time
    import weakref

    client = Client(fake_openai.url, "sk-test", timeout_s=5)
    client.post("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    client.cycle = client  # as a teacher and its clients, holding each other, are collected
    assert client.session is None and client.pool is not None  # a direct connection: its pool
    ids, session = (id(client), id(client.pool)), weakref.ref(client.pool)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a pass finds unreachable is kept in gc.garbage, to be looked at
    try:
        del client
        gc.collect()
        unreachable = {id(o) for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ids[0] in unreachable and ids[1] not in unreachable
    deadline = time.monotonic() + 5
    while session() is not None and (not session().closed or session().open) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session() is None or (session().closed and not session().open)


AIOHTTP_BLOCKED = """
import os
import sys
import openai  # noqa: F401  (the SDK's own import: some versions import aiohttp for their aiohttp client)
sys.modules["aiohttp"] = None  # from here, an import of aiohttp raises ImportError
from pipeline.cli import cli
from pipeline.errors import TeacherError
from pipeline.teachers.wire import Client
cli(sys.argv[1:], standalone_mode=False)
print("run done")
os.environ["HTTP_PROXY"] = "http://proxy.corp:3128"
try:
    Client("http://gpu-box:8000/v1", "sk-test", timeout_s=5)
except TeacherError as e:
    print(e)
"""


def test_a_direct_connection_never_imports_aiohttp(fake_openai, tmp_path):
    """The transport imported aiohttp as it started, proxy or not (~0.1 s of every process): a run with no proxy
    now goes through with aiohttp not importable at all, and a client with a proxy says it needs it. (The openai SDK
    3.x imports aiohttp itself where it is installed, for its own aiohttp client: hence blocked after the SDK's.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    root = Path(__file__).resolve().parents[1]
    env.update(OPENAI_API_KEY="sk-test", PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", AIOHTTP_BLOCKED, "bootstrap", "--teacher", "openai:m", "--base-url",
                           fake_openai.url, "--output-dir", str(tmp_path), "--run-name", "a", "--num-instructions",
                           "3"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "run done" in done.stdout, done.stdout + done.stderr
    assert "bootstrap: 3 new instructions kept" in done.stderr
    assert "needs aiohttp to send through a proxy. Fix: pip install aiohttp" in done.stdout, done.stdout


# What servers answer a request over the model's context, each as the server words it: (the body of its 400, whether
# a smaller max_tokens could make the request fit). Where the prompt alone is over the context, halving max_tokens
# sent the same refused prompt 3 more times.
CONTEXT_ERRORS = [
    # llama.cpp's llama-server (tools/server/server-context.cpp): the prompt alone is checked (n_tokens >= n_ctx),
    # older and newer wordings, and the non-causal one (embeddings, rerank)
    ({"code": 400, "message": "the request exceeds the available context size, try increasing it",
      "type": "exceed_context_size_error", "n_prompt_tokens": 4476, "n_ctx": 4096}, False),
    ({"code": 400, "message": "request (4476 tokens) exceeds the available context size (4096 tokens), try "
      "increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 4476, "n_ctx": 4096}, False),
    ({"code": 400, "message": "input (600 tokens) is larger than the max context size (512 tokens). skipping",
      "type": "exceed_context_size_error"}, False),
    # llama-cpp-python: Llama's own ValueError (the prompt alone; it shortens max_tokens itself), and its server's
    # rewording of it in OpenAI's words, chat and completions
    ({"message": "Requested tokens (9437) exceed context window of 8192", "type": "invalid_request_error"}, False),
    ({"message": "This model's maximum context length is 512 tokens. However, you requested 628 tokens (600 in the "
      "messages, 28 in the completion). Please reduce the length of the messages or completion.",
      "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}, False),
    ({"message": "This model's maximum context length is 512 tokens, however you requested 628 tokens (600 in your "
      "prompt; 28 for the completion). Please reduce your prompt; or completion length.",
      "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}, False),
    # vLLM: the prompt and max_tokens together, older and newer wordings
    ({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 "
      "tokens (3000 in the messages, 2000 in the completion). Please reduce the length of the messages or "
      "completion.", "type": "BadRequestError", "param": None, "code": 400}, True),
    ({"object": "error", "message": "'max_tokens' or 'max_completion_tokens' is too large: 2000. This model's maximum "
      "context length is 2048 tokens and your request has 100 input tokens (2000 > 2048 - 100).",
      "type": "BadRequestError", "param": None, "code": 400}, True),
    ({"object": "error", "message": "This model's maximum context length is 131072 tokens. However, you requested "
      "65536 output tokens and your prompt contains at least 65537 input tokens, for a total of at least 131073 "
      "tokens. Please reduce the length of the input prompt or the number of requested output tokens. "
      "(parameter=input_tokens, value=65537)", "type": "BadRequestError", "param": "input_tokens", "code": 400}, True),
    ({"object": "error", "message": "You passed 12289 input tokens and requested 4096 output tokens. However, the "
      "model's context length is only 16384 tokens, resulting in a maximum input length of 12288 tokens. Please "
      "reduce the length of the input prompt. (parameter=input_tokens, value=12289)",
      "type": "BadRequestError", "param": "input_tokens", "code": 400}, True),
    # vLLM: the prompt alone
    ({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, your request has "
      "5000 input tokens. Please reduce the length of the input messages.",
      "type": "BadRequestError", "param": "input_tokens", "code": 400}, False),
    ({"object": "error", "message": "The decoder prompt (length 5951) is longer than the maximum model length of 4096. "
      "Make sure that `max_model_len` is no smaller than the number of text tokens.",
      "type": "BadRequestError", "param": None, "code": 400}, False),
    ({"object": "error", "message": "The prompt (total length 25938) is too long to fit into the model (context "
      "length 4096). Make sure that `max_model_len` is no smaller than the number of text tokens plus multimodal "
      "tokens.", "type": "BadRequestError", "param": None, "code": 400}, False),
    # Ollama (its runner's errorInputTooLong, where it does not truncate the prompt)
    ({"message": "the input length exceeds the context length", "type": "invalid_request_error"}, False),
    # OpenAI: the prompt and max_tokens together, the prompt alone, and the prompt over a model's input limit
    ({"message": "This model's maximum context length is 8192 tokens. However, you requested 9850 tokens (7850 in the "
      "messages, 2000 in the completion). Please reduce the length of the messages or completion.",
      "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}, True),
    ({"message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130021 "
      "tokens. Please reduce the length of the messages.", "type": "invalid_request_error", "param": "messages",
      "code": "context_length_exceeded"}, False),
    ({"message": "Input tokens exceed the configured limit of 272000 tokens. Your messages resulted in 300007 tokens. "
      "Please reduce the length of the messages.", "type": "invalid_request_error", "param": "messages",
      "code": "context_length_exceeded"}, False),
]
# TGI (text-generation-inference) answers with a 422 and its words as a string: {"error": "...", "error_type": ...}
TGI_422S = [
    ({"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` "
      "tokens and 200 `max_new_tokens`", "error_type": "validation"}, True),
    ({"error": "Input validation error: `inputs` must have less than 4095 tokens. Given: 5000",
      "error_type": "validation"}, False),
]
OTHER_400S = [  # refusals that are not about the context: a smaller max_tokens changes nothing
    {"message": "Unrecognized request argument supplied: seed", "type": "invalid_request_error"},
    {"code": 400, "message": "Failed to parse grammar", "type": "invalid_request_error"},
    {"object": "error", "message": "temperature must be non-negative, got -1.0.", "type": "BadRequestError"},
]


def bad_request(error: dict) -> openai.BadRequestError:
    e = status_error(httpx.Response(400, json={"error": error}, request=httpx.Request("POST", "http://x/v1/chat")))
    assert isinstance(e, openai.BadRequestError)
    return e


@pytest.mark.parametrize("error, shrinkable", CONTEXT_ERRORS, ids=lambda x: str(x)[:60] if isinstance(x, dict) else "")
def test_each_servers_context_error_is_known_and_whether_a_shorter_reply_could_fit(error, shrinkable):
    e = bad_request(error)
    assert is_context_error(e), error["message"]
    assert context_too_long(e).shrinkable is shrinkable, error["message"]


@pytest.mark.parametrize("body, shrinkable", TGI_422S, ids=["prompt and reply", "prompt alone"])
def test_tgis_422_is_a_context_error_and_its_words_reach_the_message(body, shrinkable):
    """TGI's words come as {"error": "..."}, which the SDK's message leaves out ("Error code: 422"), and as a 422,
    which only 400s were checked for: its context error was a plain refusal, sent once, where a smaller max_tokens
    would fit."""
    e = status_error(httpx.Response(422, json=body, request=httpx.Request("POST", "http://x/v1/chat")))
    assert isinstance(e, openai.UnprocessableEntityError) and e.body == body["error"]
    assert body["error"] in describe_error(e)  # was "HTTP 422 UnprocessableEntityError: Error code: 422"
    for text in ("upstream connect error", "upstream connect error."):  # a body that is the message: said once
        plain = status_error(httpx.Response(502, text=text, request=e.request))
        assert describe_error(plain).count("upstream connect error") == 1, describe_error(plain)
    assert is_context_error(e)
    assert context_too_long(e).shrinkable is shrinkable


@pytest.mark.parametrize("error", OTHER_400S)
def test_other_refusals_are_not_context_errors(error):
    assert not is_context_error(bad_request(error))


@pytest.fixture(scope="module")
def sdk_errors():
    """What the installed SDK raises, made by the SDK itself: for a refused connection, and for a server that takes
    the connection and never answers. openai 3 sends through httpx2 and wraps its errors; httpx's never arrive."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # connected by the kernel, never answered
    raised = {}
    for name, port in (("refused", 1), ("timeout", silent.getsockname()[1])):
        client = openai.OpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=0.3)
        with pytest.raises(openai.APIConnectionError) as e:
            client.models.list()
        raised[name] = e.value
    silent.close()
    return raised


def test_what_the_sdk_raises_is_its_own_exception_that_each_path_knows(sdk_errors):
    """The `except httpx.TransportError` clauses of the teacher's paths never matched: the SDK raises
    openai.APIConnectionError (APITimeoutError for a timeout) from httpx2's error, and the wire client the same
    from OSError or aiohttp's. What arrives is told apart by the openai classes alone."""
    import threading
    from types import SimpleNamespace

    from pipeline.errors import TeacherUnavailable
    from pipeline.teachers.batch_api import Calls
    from pipeline.teachers.origin import RUN_TEACHER
    from pipeline.teachers.wire import is_transient, refused, unavailable

    refused_e, timeout_e = sdk_errors["refused"], sdk_errors["timeout"]
    for e in (refused_e, timeout_e):
        assert not isinstance(e, httpx.TransportError) and not isinstance(e.__cause__, httpx.TransportError)
        assert type(e.__cause__).__module__.startswith("httpx2") and is_transient(e)
    assert refused(refused_e) and unavailable(refused_e)
    assert isinstance(timeout_e, openai.APITimeoutError) and not refused(timeout_e)
    assert type(timeout_e.__cause__).__name__ == "ReadTimeout"  # what the preflight takes for a slow server
    events: list[str] = []
    calls = Calls("http://127.0.0.1:1/v1", 0.0, events.append, SimpleNamespace(origin=RUN_TEACHER,
                                                                                stop=threading.Event()))

    def fails(e: Exception):
        def call():
            raise e
        return call

    for e in (refused_e, timeout_e):  # a Batch API files or batches call: an outage, waited out, then named
        with pytest.raises(TeacherUnavailable, match="did not answer for 0 s"):
            calls(fails(e), "list the batches")
