"""Endpoint failover and outage waiting (issue #18): one dead endpoint is not the end of a run.

The fakes die as real servers do: `kill()` stops listening and drops every connection mid-request.
"""

import json
import re
import threading
import time

import httpx
import openai
import pytest
from click.testing import CliRunner
from fakeserver import FakeOpenAI
from helpers import read, teacher_flags

from pipeline.cli import cli
from pipeline.errors import TeacherUnavailable
from pipeline.teachers import GenParams, openai_compat
from pipeline.teachers.base import Request
from pipeline.teachers.openai_compat import OpenAITeacher


@pytest.fixture(autouse=True)
def quick_prober(monkeypatch):
    monkeypatch.setattr(openai_compat, "PROBE_EVERY_S", 0.2)
    monkeypatch.setattr(openai_compat, "OUTAGE_LINE_EVERY_S", 0.5)


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def sent(server):
    """What a server was asked: (prompt, request seed) pairs, the same on a retry."""
    return [(server.prompt_of(h["body"]), h["body"].get("seed")) for h in server.history]


def when(condition, then) -> None:
    """Run `then` in the background once `condition()` holds."""

    def wait():
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        then()

    threading.Thread(target=wait, daemon=True).start()


def is_instances(prompt):
    return prompt.rstrip().endswith(("Input:", "Class label:"))


def test_a_run_goes_on_when_one_of_two_endpoints_dies_and_its_requests_go_to_the_other(fake_openai, tmp_path):
    dying = FakeOpenAI()
    try:
        for _ in range(3):
            dying.enqueue(lambda path, body: dying.default_reply(path, body), delay=0.02)  # it serves a while
        dying.default_delay = 30.0  # then hangs: every later request is in flight when it dies
        fake_openai.default_delay = 0.02
        in_flight = []
        when(lambda: len(dying.history) >= 4, lambda: (in_flight.extend(sent(dying)[3:]), dying.kill()))
        flags = teacher_flags(fake_openai, tmp_path)
        flags[flags.index(fake_openai.url)] = f"{fake_openai.url},{dying.url}"
        started = time.monotonic()
        result = cli_run("run", *flags, "--num-instructions", 8, "--set", "teacher.concurrency=4")
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started < 20  # not the dead endpoint's 30 s, nor an outage wait
        run = tmp_path / "r"
        assert len(read(run / "instances.jsonl")) == 8
        assert json.loads((run / "manifest.json").read_text())["status"] == "done"
        assert in_flight and all(r in sent(fake_openai) for r in in_flight)  # answered by the other endpoint
        text = " ".join(result.output.split())
        assert f"endpoint down: {dying.url}" in text and "go to the 1 other endpoint" in text
        # On record after the run too, not only in its log: the manifest and show say what each endpoint did
        live, dead = json.loads((run / "manifest.json").read_text())["teacher"]["endpoints"]
        assert live == {"url": fake_openai.url, "replies": len(fake_openai.history), "falls": 0, "in_rotation": True}
        assert dead["url"] == dying.url and dead["replies"] == 3 and dead["falls"] == 1 and not dead["in_rotation"]
        shown = " ".join(cli_run("show", run).output.split())
        assert (f"endpoints, last session: {fake_openai.url} {len(fake_openai.history)} replies; "
                f"{dying.url} 3 replies, left the rotation 1 time") in shown
    finally:
        dying.close()


def test_a_dead_endpoint_that_comes_back_rejoins(fake_openai):
    other = FakeOpenAI()
    try:
        events = []
        t = OpenAITeacher("m", base_url=f"{fake_openai.url},{other.url}", concurrency=2, max_wait_s=0.05)
        t.on_event = events.append
        t.preflight()
        other.kill()
        fake_openai.default_delay = other.default_delay = 0.05
        served_before = []

        def requests():
            for i in range(60):
                if i == 10:
                    served_before.append(len(other.history))
                    other.come_back()
                yield Request(i, f"p{i}")

        out = [c for _, c in t.stream(requests(), GenParams(max_tokens=5), kind="k")]
        assert len(out) == 60 and all(c.ok for c in out)
        assert served_before == [0] and len(other.history) > 5  # the prober let it back in, and it took requests
        assert any(e.startswith(f"endpoint down: {other.url}") for e in events)
        assert any(e.startswith(f"endpoint back: {other.url}") for e in events)
    finally:
        other.close()


def test_an_endpoint_that_keeps_answering_5xx_leaves_the_rotation(fake_openai, monkeypatch):
    monkeypatch.setattr(openai_compat, "PROBE_EVERY_S", 60.0)  # its one-token probe works: the prober would let it back
    sick = FakeOpenAI()
    try:
        for _ in range(100):
            sick.enqueue({"error": {"message": "overloaded"}}, status=500)
        t = OpenAITeacher("m", base_url=f"{sick.url},{fake_openai.url}", concurrency=2, max_wait_s=0.01,
                          max_retries=6)
        events = []
        t.on_event = events.append
        out = t.generate([f"p{i}" for i in range(20)], GenParams(max_tokens=5), kind="k")
        assert all(c.ok for c in out)
        assert len(sick.history) <= 6  # three strikes (or so, with two in flight), not one try in two
        assert any(e.startswith(f"endpoint down: {sick.url}") for e in events)
    finally:
        sick.close()


def _outage_during_instances(server, back_after):
    def back():
        time.sleep(back_after)
        server.come_back()

    when(lambda: sum(is_instances(server.prompt_of(h["body"])) for h in server.history) >= 3,
         lambda: (server.kill(), back_after is not None and threading.Thread(target=back, daemon=True).start()))


def test_a_single_server_that_had_answered_is_waited_for_and_the_run_finishes(fake_openai, tmp_path):
    fake_openai.default_delay = 0.02
    _outage_during_instances(fake_openai, back_after=3.0)
    started = time.monotonic()
    # connect_window_s=1 no longer ends the run: the server has answered, so it gets outage_wait_s.
    # max_wait_s stays at 60 s: the retries wake when the prober sees the server back.
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                     "--set", "teacher.connect_window_s=1", "--set", "teacher.outage_wait_s=10",
                     "--set", "teacher.concurrency=2")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30  # woken when the server is back, not after a 60 s backoff (load-proof)
    run = tmp_path / "r"
    assert len(read(run / "instances.jsonl")) == 8
    assert json.loads((run / "manifest.json").read_text())["status"] == "done"
    text = " ".join(result.output.split())
    assert "waiting up to 10 s for an endpoint to answer again (teacher.outage_wait_s)" in text
    assert re.search(rf"endpoint back: {re.escape(fake_openai.url)} answers again after \d+ s", text)


def test_a_single_server_down_past_outage_wait_stops_the_run_naming_url_and_wait(fake_openai, tmp_path):
    fake_openai.default_delay = 0.02
    _outage_during_instances(fake_openai, back_after=None)
    started = time.monotonic()
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                     "--set", "teacher.connect_window_s=1", "--set", "teacher.outage_wait_s=2",
                     "--set", "teacher.concurrency=2")
    assert result.exit_code == 4, result.output
    assert time.monotonic() - started < 15
    text = " ".join(result.output.split())
    assert re.search(rf"{re.escape(fake_openai.url)} has not answered for \d s \(teacher.outage_wait_s: 2 s\)", text)
    assert "outage: " in text and "s more for one to answer (teacher.outage_wait_s)" in text  # the waiting line
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["status"] == "failed" and fake_openai.url in m["reason"]



def test_stopping_a_stream_wakes_requests_waiting_out_an_outage(fake_openai):
    t = OpenAITeacher("m", base_url=fake_openai.url, concurrency=4, max_wait_s=60.0)  # backoffs of up to a minute
    t.preflight()
    fake_openai.kill()
    out = []
    prompts = [f"p{i}" for i in range(8)]
    worker = threading.Thread(target=lambda: out.extend(t.generate(prompts, GenParams(max_tokens=5), kind="k")),
                              daemon=True)
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive()  # its requests wait out the outage (teacher.outage_wait_s), sleeping between tries
    started = time.monotonic()
    t._halt(t._stop)  # what an interrupt does to the stream
    worker.join(timeout=5)
    assert not worker.is_alive() and time.monotonic() - started < 1
    assert len(out) == 8 and not any(c.ok for c in out)


def test_an_endpoint_that_answers_get_models_but_never_a_prompt_stays_out_and_the_other_keeps_its_pace(fake_openai):
    hung = FakeOpenAI()  # a wedged engine, or a proxy whose backend hangs
    try:
        hung.hang = True
        fake_openai.default_delay = 0.05
        t = OpenAITeacher("m", base_url=f"{fake_openai.url},{hung.url}", concurrency=4, timeout_s=1.0, max_wait_s=0.05)
        events = []
        t.on_event = events.append
        t.preflight()  # both answer GET /models: both start in rotation
        alone = OpenAITeacher("m", base_url=fake_openai.url, concurrency=4, timeout_s=1.0, max_wait_s=0.05)
        started = time.monotonic()  # the healthy endpoint's own pace, on this machine now: the yardstick
        alone.generate([f"q{i}" for i in range(320)], GenParams(max_tokens=5), kind="k")
        took_alone = time.monotonic() - started
        started = time.monotonic()
        out = t.generate([f"p{i}" for i in range(320)], GenParams(max_tokens=5), kind="k")
        took = time.monotonic() - started
        assert all(c.ok for c in out)
        assert any(e.startswith(f"endpoint down: {hung.url}") for e in events)
        assert not any(e.startswith(f"endpoint back: {hung.url}") for e in events), events  # however often probed
        assert t._endpoints[0].limit == 4 and not any(f"{fake_openai.url}: keeping" in e for e in events)
        assert t._endpoints[1].limit < 4 and any(f"{hung.url}: keeping at most" in e for e in events)
        # At the healthy pace, plus the hung tries' 1 s timeouts and slack; measured against the same endpoint
        # alone in this test, not against the clock, so a loaded machine slows both.
        assert took < took_alone * 1.25 + 2.5, (took, took_alone)
        hung.hang = False  # the probes waiting there arrive: they were one-token POSTs, not GET /models
        time.sleep(0.3)
        assert sum(p["body"] is not None and p["body"]["max_tokens"] == 1 for p in hung.probes) >= 2
    finally:
        hung.hang = False
        hung.close()


def test_an_endpoint_that_hangs_then_mends_rejoins(fake_openai):
    mending = FakeOpenAI()
    try:
        mending.hang = True
        t = OpenAITeacher("m", base_url=f"{fake_openai.url},{mending.url}", concurrency=2, timeout_s=1.0,
                          max_wait_s=0.05)
        events = []
        t.on_event = events.append
        t.preflight()
        fake_openai.default_delay = mending.default_delay = 0.05
        when(lambda: any(e.startswith(f"endpoint down: {mending.url}") for e in events),
             lambda: setattr(mending, "hang", False))
        out = t.generate([f"p{i}" for i in range(100)], GenParams(max_tokens=5), kind="k")
        assert all(c.ok for c in out)
        assert any(e.startswith(f"endpoint back: {mending.url}") for e in events)
        assert len(mending.history) > 10  # it took requests again
    finally:
        mending.hang = False
        mending.close()


def test_an_endpoint_that_keeps_falling_after_it_rejoins_waits_twice_as_long_each_time(monkeypatch):
    monkeypatch.setattr(openai_compat, "PROBE_BACKOFF_MAX_S", 1.0)
    t = OpenAITeacher("m", base_url="http://127.0.0.1:9/v1,http://127.0.0.1:10/v1", concurrency=8)
    events = []
    t.on_event = events.append
    timeout = openai.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1:10/v1/chat/completions"))
    sick = t._endpoints[1]

    def fall():
        for _ in range(openai_compat.STRIKES_TO_DOWN):
            t._failed(timeout, 1)
        return round(sick.probe_wait_s, 3)

    waits = [fall()]
    for _ in range(4):
        t._revive(1)
        waits.append(fall())
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0]  # doubled at each fall soon after a rejoin, up to the cap
    assert sum("it fell again soon after it rejoined" in e for e in events) == 4
    t._revive(1)
    for _ in range(openai_compat.PROVEN_AFTER):
        t._succeeded(0.01, 1)
    assert fall() == 0.2  # it served a while: well again, so its next fall starts the backoff over
    assert t._endpoints[0].limit == 8 and sick.limit == 1 and t.limit == 8  # only the sick one's limit was cut


def test_a_dead_endpoint_before_a_live_one_does_not_hold_the_start_for_its_connect_window(fake_openai):
    dead = FakeOpenAI()
    dead.go_down()  # connections refused, as a server that is not running
    t = OpenAITeacher("m", base_url=f"{dead.url},{fake_openai.url}", connect_window_s=10.0)
    events = []
    t.on_event = events.append
    started = time.monotonic()
    t.preflight()  # before, the dead one was tried for its whole 10 s before the live one was asked
    assert time.monotonic() - started < 5
    assert not any("trying for" in e for e in events), events  # no wait is announced: the other one answered
    assert any(e.startswith(f"{dead.url} does not answer") for e in events)
    out = t.generate(["p0", "p1"], GenParams(max_tokens=5), kind="k")
    assert all(c.ok for c in out) and len(fake_openai.history) == 2


def test_every_endpoint_dead_at_the_start_is_tried_within_one_window_and_each_is_named():
    dead = [FakeOpenAI(), FakeOpenAI()]
    for server in dead:
        server.go_down()
    t = OpenAITeacher("m", base_url=",".join(s.url for s in dead), connect_window_s=3.0)
    started = time.monotonic()
    with pytest.raises(TeacherUnavailable) as e:
        t.preflight()
    assert time.monotonic() - started < 5.5  # one window for both, not 3 s each in turn
    text = str(e.value)
    assert all(f"{s.url}: " in text for s in dead) and "within 3 s (teacher.connect_window_s)" in text


def test_a_busy_server_whose_get_models_waits_for_its_generation_is_reached_not_called_dead(fake_openai):
    """llama-cpp-python's server answers GET /models only once the generation under way is done: 8 to 11 s behind
    another run's requests. The 10 s that a connection is given stopped the start (exit 4: "start the server")."""
    fake_openai.models_delay = 10.5
    t = OpenAITeacher("fake-model", base_url=fake_openai.url, connect_window_s=1.0)
    events = []
    t.on_event = events.append
    t.preflight()  # the first ask is given 10 s, the second 60 s: its window (1 s) is over, but it took the connection
    assert len([p for p in fake_openai.probes if p["path"].endswith("/models")]) == 2
    assert any(e.startswith(f"{fake_openai.url} took the connection but did not answer GET /models within 10 s; asking "
                            "again, waiting up to 60 s") for e in events), events


def test_a_server_that_takes_connections_but_never_answers_is_not_called_missing(fake_openai, monkeypatch):
    """A stopped (SIGSTOP) or wedged server: its exit 4 said "start the server, or check --base-url (host and port)",
    and "within 20 s" after 71 s of waiting."""
    from pipeline.teachers import preflight
    monkeypatch.setattr(preflight, "REACH_TIMEOUT_S", 0.5)
    monkeypatch.setattr(preflight, "PREFLIGHT_TIMEOUT_S", 1.0)
    fake_openai.models_delay = 3.0
    t = OpenAITeacher("fake-model", base_url=fake_openai.url, connect_window_s=0.2)
    with pytest.raises(TeacherUnavailable) as e:
        t.preflight()
    text = str(e.value)
    assert re.search(r"no endpoint answers within [23] s \(teacher.connect_window_s, then up to 1 s for a server that "
                     r"took the connection\)", text), text
    assert text.endswith("Fix: check the server: it takes connections but answers nothing (stopped, wedged, or busy "
                         "with other clients)"), text


def test_a_hung_endpoint_does_not_hold_the_start_while_another_answers(fake_openai):
    hung = FakeOpenAI()
    hung.models_delay = 30.0
    t = OpenAITeacher("fake-model", base_url=f"{hung.url},{fake_openai.url}")
    started = time.monotonic()
    t.preflight()
    assert time.monotonic() - started < 15  # its 10 s, not the 60 s a busy server alone gets
    assert t._endpoints[0].down_since is not None and t._endpoints[1].down_since is None
    hung.close()


def test_a_model_name_the_server_does_not_list_is_said_at_the_start(fake_openai, tmp_path):
    """llama.cpp's servers list their one model and serve it under any name: "openai:MODEL" from the README ran
    with no word, and the run's records named MODEL as their teacher."""
    fake_openai.models = ["/models/SmolLM2-135M-Instruct.Q4_1.gguf"]
    flags = teacher_flags(fake_openai, tmp_path)
    flags[1] = "openai:MODEL"
    result = cli_run("bootstrap", *flags, "--num-instructions", 2)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert (f"teacher: {fake_openai.url} lists the model '/models/SmolLM2-135M-Instruct.Q4_1.gguf', not 'MODEL': "
            "a server that serves its one model under any name (llama.cpp's) answers anyway") in text, text
    assert "Fix, if the name is a mistake: --teacher openai:/models/SmolLM2-135M-Instruct.Q4_1.gguf" in text
    other = FakeOpenAI()  # two servers of the same model: one line for both
    other.models = fake_openai.models
    flags[3] = f"{fake_openai.url},{other.url}"
    result = cli_run("bootstrap", *flags, "--num-instructions", 2, "--run-name", "two")
    text = " ".join(result.output.split())
    assert text.count("lists the model") == 0 and text.count(f"{fake_openai.url} and {other.url} list the model ") == 1
    other.close()
    flags[3] = fake_openai.url
    fake_openai.models = ["qwen2.5:1.5b", "llama3.2:1b", "phi3:mini", "gemma2:2b"]  # Ollama lists each one pulled
    result = cli_run("bootstrap", *flags, "--num-instructions", 2, "--run-name", "many")
    text = " ".join(result.output.split())
    assert "lists the models 'qwen2.5:1.5b', 'llama3.2:1b', 'phi3:mini' and 1 more, not 'MODEL'" in text, text
    assert "Fix, if the name is a mistake: --teacher openai:MODEL with one of them" in text
    fake_openai.models = ["/models/SmolLM2-135M-Instruct.Q4_1.gguf", "MODEL"]
    result = cli_run("bootstrap", *flags, "--num-instructions", 3)
    assert result.exit_code == 0 and "lists the model" not in result.output, result.output


# llama.cpp's llama-server answers 503 "Loading model" to every prompt until its model is loaded (tests/fakeserver.py,
# `loading`): it is there, not ready. Seen on a run started before the server had loaded: api auto chose chat on
# the probe's 503, and the 503s of the run's requests tripped the circuit breaker within 40 s while the run said
# it was waiting 570 s more.
def test_a_llama_server_still_loading_its_model_is_waited_for_and_api_auto_still_picks_completions(fake_openai,
                                                                                                  tmp_path):
    fake_openai.completions_endpoint = True
    fake_openai.loading = True
    threading.Timer(1.5, lambda: setattr(fake_openai, "loading", False)).start()
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 4)
    assert result.exit_code == 0, result.output
    assert fake_openai.loading_replies >= 2  # it was asked while loading, and again after
    text = " ".join(result.output.split())
    assert "api auto: completions (the server offers the endpoint)" in text, text
    assert f"not ready: {fake_openai.url}: HTTP 503 InternalServerError: Error code: 503 - Loading model" in text
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["teacher"]["api"] == "completions" and m["status"] == "done"


def test_a_probe_that_times_out_on_a_busy_server_is_asked_again_and_api_auto_still_picks_completions(fake_openai,
                                                                                                     monkeypatch):
    """A timeout is no answer to "is there a completions endpoint?": on a llama-cpp-python server busy with another
    run's requests, api auto chose chat (what small models follow worst) and the schema probes timed out too."""
    from pipeline.teachers import preflight
    monkeypatch.setattr(preflight, "PREFLIGHT_TIMEOUT_S", 0.5)
    fake_openai.completions_endpoint = True
    fake_openai.probe_delays = [1.0]
    t = OpenAITeacher("fake-model", base_url=fake_openai.url)
    events = []
    t.on_event = events.append
    t.preflight()
    assert t.api == "completions" and t.api_choice == "auto: completions (the server offers the endpoint)"
    assert any(e.startswith(f"not ready: {fake_openai.url}: APITimeoutError") for e in events), events


def test_a_server_still_loading_past_outage_wait_stops_the_start_naming_it(fake_openai, tmp_path):
    fake_openai.loading = True
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 4,
                     "--set", "teacher.outage_wait_s=2")
    assert result.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert re.search(r"no endpoint serves a prompt after [23] s \(teacher.outage_wait_s: 2 s\): "
                     + re.escape(fake_openai.url) + r": HTTP 503 .*Loading model", text), text
    assert not (tmp_path / "r").exists()  # stopped at the preflight: nothing written


def test_503s_mid_run_are_waited_out_as_an_outage_not_counted_by_the_circuit_breaker(fake_openai, tmp_path):
    fake_openai.default_delay = 0.02

    def reload():  # the server restarts and loads its model again for a second
        fake_openai.loading = True
        threading.Timer(1.0, lambda: setattr(fake_openai, "loading", False)).start()

    when(lambda: sum(is_instances(fake_openai.prompt_of(h["body"])) for h in fake_openai.history) >= 3, reload)
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                     "--set", "teacher.max_consecutive_failures=3", "--set", "teacher.concurrency=2",
                     "--set", "teacher.max_wait_s=0.2")
    assert result.exit_code == 0, result.output
    assert fake_openai.loading_replies >= 3  # past the breaker's limit, had it counted them
    text = " ".join(result.output.split())
    assert "waiting up to 600 s for an endpoint to answer again (teacher.outage_wait_s)" in text
    assert "more requests in a row fail" not in text  # an outage: the breaker does not count it
    assert re.search(rf"endpoint back: {re.escape(fake_openai.url)} answers again", text)
    assert len(read(tmp_path / "r" / "instances.jsonl")) == 8


def test_an_endpoint_down_on_5xx_says_the_breaker_may_end_the_wait_sooner(fake_openai, tmp_path):
    """A lone endpoint that fell on failed answers (5xx), not an outage, said "waiting up to 600 s" though the circuit
    breaker can stop the run long before; an outage (a refused connection, a 503) is not counted by the breaker."""
    fake_openai.default_delay = 0.02

    def fail_three():
        for _ in range(3):
            fake_openai.enqueue({"error": {"message": "internal error", "type": "server_error"}}, status=500)

    when(lambda: sum(is_instances(fake_openai.prompt_of(h["body"])) for h in fake_openai.history) >= 2, fail_three)
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                     "--set", "teacher.concurrency=1", "--set", "teacher.max_wait_s=0.2")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert re.search(r"waiting up to 600 s for an endpoint to answer again \(teacher.outage_wait_s\), or until \d+ "
                     r"more requests in a row fail \(teacher.max_consecutive_failures\)", text), text


def test_a_reply_sent_before_its_endpoint_fell_does_not_bring_it_back(fake_openai):
    """SIGTERM to a server: it stops taking requests (503s here, probes included) and still finishes the one in
    flight. That reply landed after the endpoint was marked down and counted as it coming back ("answers again after
    0 s"); the next request failed, and it "fell again" with its wait doubled. It comes back once it answers a
    request sent since: here the prober's, when the server serves again."""
    fake_openai.enqueue(lambda path, body: fake_openai.default_reply(path, body), delay=1.0)  # in flight at the fall

    def stopping(path, body):  # the second request: the server stops serving (both requests are in)
        while len(fake_openai.history) < 2:
            time.sleep(0.01)
        fake_openai.loading = True
        threading.Timer(1.5, lambda: setattr(fake_openai, "loading", False)).start()
        return {"error": {"code": 503, "message": "shutting down", "type": "unavailable_error"}}

    fake_openai.enqueue(stopping, status=503)
    t = OpenAITeacher("m", base_url=fake_openai.url, concurrency=2, max_wait_s=0.05)
    events = []
    t.on_event = events.append
    out = t.generate(["p0", "p1"], GenParams(max_tokens=5), kind="k")
    assert all(c.ok for c in out), out
    assert [e.split(":")[0] for e in events if e.startswith("endpoint ")] == ["endpoint down", "endpoint back"], events
    assert not any("fell again" in e for e in events), events
    back = next(e for e in events if e.startswith("endpoint back"))
    assert int(re.search(r"after (\d+) s", back)[1]) >= 1, back  # when the server served again, not at the late reply
    assert t._endpoints[0].falls == 1 and t._endpoints[0].replies >= 2
