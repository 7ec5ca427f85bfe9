"""The openai teacher against the fake server: both endpoints, retries, fatal errors, malformed replies."""

import time

import pytest

from pipeline.errors import TeacherError
from pipeline.teachers import GenParams
from pipeline.teachers.base import Request
from pipeline.teachers.openai_compat import OpenAITeacher

PARAMS = GenParams(max_tokens=50, temperature=0.0, top_p=0.0, stop=("\n\n", "X1", "X2", "X3", "END"))


def teacher(server, **kw):
    kw.setdefault("max_retries", 3)
    kw.setdefault("max_wait_s", 0.05)
    return OpenAITeacher("fake-model", base_url=server.url, **kw)


@pytest.mark.parametrize("api, path", [("chat", "/v1/chat/completions"), ("completions", "/v1/completions")])
def test_both_endpoints_send_sampling_and_apply_all_stops(fake_openai, api, path):
    fake_openai.enqueue("first part END second part")
    (c,) = teacher(fake_openai, api=api).generate(["hello"], PARAMS, kind="k")
    assert c.text == "first part " and c.finish_reason == "stop" and c.completion_tokens == 5
    sent = fake_openai.history[0]
    assert sent["path"] == path
    body = sent["body"]
    assert body["model"] == "fake-model" and body["max_tokens"] == 50 and body["top_p"] == 1.0
    assert body["stop"] == ["\n\n", "X1", "X2", "X3"]  # servers take 4; END is applied client-side
    assert (body["messages"][-1]["content"] if api == "chat" else body["prompt"]) == "hello"


def test_results_keep_prompt_order_under_concurrency(fake_openai):
    for i in range(6):
        fake_openai.enqueue(lambda path, body: fake_openai.wrap(path, "reply to " + fake_openai.prompt_of(body)),
                            delay=0.05 * (6 - i))
    t = teacher(fake_openai, concurrency=6)
    out = t.generate([f"p{i}" for i in range(6)], PARAMS, kind="k")
    assert [c.text for c in out] == [f"reply to p{i}" for i in range(6)]
    assert t.usage.to_dict()["k"]["calls"] == 6


def test_a_stream_after_an_abandoned_one_works_on_fresh_clients(fake_openai):
    t = teacher(fake_openai, concurrency=20)
    first = t._shards[0]
    fake_openai.default_delay = 0.05
    stream = t.stream((Request(i, f"p{i}") for i in range(40)), PARAMS, kind="k")
    next(stream)
    stream.close()  # the consumer stops early (an interrupt, a yield floor): the connections are closed
    fake_openai.default_delay = 0.0
    assert first.closed and all(f.done() for f in list(first.in_flight))  # none of its requests is left waiting
    out = t.generate([f"q{i}" for i in range(30)], PARAMS, kind="k")  # fresh clients, not the closed one
    assert all(c.ok for c in out), [c.error for c in out if not c.ok][:2]
    time.sleep(0.3)  # the abandoned stream's calls have ended by now
    assert t._in_flight == [0] and t._failures_in_row == 0  # they touched neither the new counts nor the breaker


def test_transient_errors_are_retried_and_429_honours_retry_after(fake_openai):
    fake_openai.enqueue({"error": {"message": "busy"}}, status=500)
    fake_openai.enqueue({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "0.3"})
    fake_openai.enqueue("ok")
    start = time.monotonic()
    (c,) = teacher(fake_openai, max_wait_s=0.5).generate(["x"], PARAMS, kind="k")
    assert c.text == "ok" and len(fake_openai.history) == 3
    assert time.monotonic() - start >= 0.3


def test_exhausted_retries_give_an_error_completion_not_an_exception(fake_openai):
    for _ in range(3):
        fake_openai.enqueue({"error": {"message": "down"}}, status=500)
    t = teacher(fake_openai, max_retries=2)
    (c,) = t.generate(["x"], PARAMS, kind="k")
    assert not c.ok and "500" in c.error and len(fake_openai.history) == 3
    assert t.usage.to_dict()["k"]["errors"] == 1


@pytest.mark.parametrize("status, hint", [(401, "API key was refused"), (404, "unknown model")])
def test_fatal_errors_stop_at_once_with_a_clear_message(fake_openai, status, hint):
    fake_openai.enqueue({"error": {"message": "nope"}}, status=status)
    with pytest.raises(TeacherError, match=hint):
        teacher(fake_openai).generate(["x"], PARAMS, kind="k")
    assert len(fake_openai.history) == 1


def test_context_length_error_halves_max_tokens(fake_openai):
    fake_openai.enqueue({"error": {"message": "This model's maximum context length is 4097 tokens"}}, status=400)
    fake_openai.enqueue("fits now")
    (c,) = teacher(fake_openai).generate(["x"], PARAMS, kind="k")
    assert c.text == "fits now"
    assert [h["body"]["max_tokens"] for h in fake_openai.history] == [50, 25]


def test_tgis_422_context_error_halves_max_tokens_as_a_400_does(fake_openai):
    """TGI refuses a prompt and max_new_tokens over its total with a 422, which only 400s were checked for: the
    request was refused after one try where half the max_tokens fit."""
    fake_openai.enqueue({"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 60. Given: "
                                  "20 `inputs` tokens and 50 `max_new_tokens`", "error_type": "validation"}, status=422)
    fake_openai.enqueue("fits now")
    (c,) = teacher(fake_openai).generate(["x"], PARAMS, kind="k")
    assert c.text == "fits now"
    assert [h["body"]["max_tokens"] for h in fake_openai.history] == [50, 25]


@pytest.mark.parametrize("error", [
    {"code": 400, "message": "request (600 tokens) exceeds the available context size (512 tokens), try increasing it",
     "type": "exceed_context_size_error", "n_prompt_tokens": 600, "n_ctx": 512},  # llama.cpp's llama-server
    {"object": "error", "message": "This model's maximum context length is 512 tokens. However, your request has 600 "
     "input tokens. Please reduce the length of the input messages.", "type": "BadRequestError", "code": 400},  # vLLM
])
def test_a_prompt_alone_over_the_context_is_sent_once_and_not_counted_against_the_server(fake_openai, error):
    """llama.cpp's wording was not known as a context error: its refusal counted as a failed answer toward
    teacher.max_consecutive_failures. vLLM's prompt-alone one was, and the prompt was sent 4 times, max_tokens
    halved, where no max_tokens could make it fit."""
    fake_openai.enqueue({"error": error}, status=400)
    t = teacher(fake_openai)
    (c,) = t.generate(["x"], PARAMS, kind="k")
    assert (c.ok, c.error) == (False, "prompt longer than the model's context")
    assert len(fake_openai.history) == 1 and t._failures_in_row == 0


def test_empty_choices_and_malformed_json_are_retried_then_counted(fake_openai):
    fake_openai.enqueue({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []})
    fake_openai.enqueue(b"{not json")
    fake_openai.enqueue("third time lucky")
    t = teacher(fake_openai, concurrency=1)
    (c,) = t.generate(["a"], PARAMS, kind="k")
    assert (c.ok, c.text, c.retries) == (True, "third time lucky", 2)
    assert t.usage.to_dict()["k"]["retries"] == 2
    for _ in range(3):
        fake_openai.enqueue(b"{not json")
    (c,) = teacher(fake_openai, concurrency=1, max_retries=2).generate(["b"], PARAMS, kind="k")
    assert not c.ok and "malformed" in c.error


def test_missing_key_for_openai_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(TeacherError, match=r"\$OPENAI_API_KEY is not set"):
        OpenAITeacher("gpt-4o-mini")


def test_base_url_from_environment(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    fake_openai.enqueue("from env")
    (c,) = OpenAITeacher("m").generate(["x"], PARAMS, kind="k")
    assert c.text == "from env"
    headers = {k.lower(): v for k, v in fake_openai.history[0]["headers"].items()}
    assert headers["authorization"] == "Bearer sk-test-PLANTED-SECRET-0123456789"


@pytest.mark.parametrize("url, fix", [("localhost:8765", "--base-url http://localhost:8765/v1"),
                                      ("127.0.0.1:8000/v1", "--base-url http://127.0.0.1:8000/v1"),
                                      ("ftp://host/v1", "--base-url http://host/v1")])
def test_a_base_url_without_http_is_refused_at_once(url, fix, monkeypatch):
    """Before, "localhost:8765" was tried for connect_window_s (20 s) and ended as an unreachable server, exit 4."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(TeacherError, match="is not an http:// or https:// URL") as e:
        OpenAITeacher("m", base_url=f"http://127.0.0.1:1/v1,{url}")
    assert repr(url) in str(e.value) and fix in str(e.value)


CONTEXT_400 = "This model's maximum context length is 512 tokens"


def test_a_teacher_that_refuses_every_prompt_stops_after_a_few_naming_the_refusal(fake_openai):
    """Every prompt over a small server's context: each was tried 4 times (max_tokens halved) and the stage walked
    on through all of them (bootstrap.max_requests: 800 requests); now the stream stops after
    max_consecutive_refusals, in the server's words."""
    fake_openai.refuse = lambda prompt: CONTEXT_400
    t = teacher(fake_openai, concurrency=2, max_consecutive_refusals=3)
    with pytest.raises(TeacherError) as e:
        t.generate([f"prompt {i}" for i in range(40)], PARAMS, kind="bootstrap")
    text = str(e.value)
    assert text.startswith("3 bootstrap requests in a row were refused by") and CONTEXT_400 in text, text
    assert "give the server a longer one" in text and "teacher.max_consecutive_refusals sets this limit" in text
    assert len(fake_openai.history) <= 4 * (3 + 2)  # the 3 refused and those in flight, each prompt at most 4 tries


def test_refusals_among_replies_and_of_another_kind_are_counted_apart(fake_openai):
    """A refused prompt among replies fails alone; a kind whose every prompt is refused (classify's prompts over
    the context) is not kept going by another kind's replies in the same stream (bootstrap's, in a flow)."""
    fake_openai.refuse = lambda prompt: CONTEXT_400 if prompt.startswith("long") else None
    t = teacher(fake_openai, concurrency=1, max_consecutive_refusals=2)
    mixed = [Request(i, f"{'long' if i % 2 else 'short'} {i}") for i in range(8)]  # refused, answered, in turn
    out = dict(t.stream(mixed, PARAMS, kind="classify"))
    assert [c.ok for _, c in sorted((r.key, c) for r, c in out.items())] == [True, False] * 4
    kinds = [Request(i, f"{'long' if i % 2 else 'short'} {i}", kind="classify" if i % 2 else "bootstrap")
             for i in range(8)]
    with pytest.raises(TeacherError, match="^2 classify requests in a row were refused"):
        list(t.stream(kinds, PARAMS, kind="bootstrap"))


@pytest.mark.parametrize("message", ["Unrecognized request argument supplied: seed", CONTEXT_400])
def test_a_400_the_teacher_gets_past_is_no_refusal(fake_openai, message):
    """A field the server refuses is dropped and the request sent again; a context error that a smaller max_tokens
    fits: both end in a reply, and count towards no stop even at a limit of 1."""
    fake_openai.enqueue({"error": {"message": message}}, status=400)
    fake_openai.enqueue("fine")
    fake_openai.enqueue("fine")
    t = teacher(fake_openai, concurrency=1, max_consecutive_refusals=1, seed=7)  # seed: the field it refuses
    assert [c.text for c in t.generate(["a", "b"], PARAMS, kind="k")] == ["fine", "fine"]
    assert t.failover.refusals == {} and t.failover.fatal is None
