"""Faults between stages: each one stops, retries or is recorded; nothing is silent (issue #11).

Every test here failed before the runner loop: a dead URL hung for minutes, a re-run
after an outage re-sent every unfinished prompt, a task the teacher failed on was
reported done, duplicates and unparseable replies vanished, Ctrl-C lost usage, a failed
command rewrote a finished run, and a repetitive teacher was paid 20x the target.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeOpenAI
from helpers import counts_row, invoke, left_in_files, pending_words, read, teacher_flags

from pipeline.cache import ResponseCache
from pipeline.cli import cli
from pipeline.teachers import GenParams
from pipeline.teachers.openai_compat import OpenAITeacher

ROOT = Path(__file__).resolve().parents[1]


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def prompts_of(server, marker):
    return [h for h in server.history if marker(server.prompt_of(h["body"]))]


def is_bootstrap(prompt):
    return "numbered list of" in prompt


def is_instances(prompt):
    return prompt.rstrip().endswith(("Input:", "Class label:"))


def outage_during_instances(server, back_after: float | None, after: int = 3, marker=is_instances) -> None:
    """Take the server down once `after` instances prompts (or prompts `marker` picks) have come in; back after
    `back_after` s (None: never)."""

    def outage():
        while len(prompts_of(server, marker)) < after:
            time.sleep(0.01)
        server.go_down()
        if back_after is not None:
            time.sleep(back_after)
            server.come_back()

    threading.Thread(target=outage, daemon=True).start()


# 1. A dead server or a wrong port fails fast, naming the URL, and writes nothing.
def test_an_unreachable_url_fails_within_seconds_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    result = cli_run("run", "--teacher", "openai:m", "--base-url", url, "--output-dir", tmp_path, "--run-name", "x",
                     "--set", "teacher.connect_window_s=2")
    assert time.monotonic() - started < 60
    assert result.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert url in text and "Connection refused" in text and "--base-url" in text
    assert not (tmp_path / "x").exists()  # validation comes before any write


# 1. A server killed mid-run and back within the connect window: the run completes.
def test_a_server_that_goes_down_mid_run_and_comes_back_completes_the_run(fake_openai, tmp_path):
    fake_openai.default_delay = 0.02
    outage_during_instances(fake_openai, back_after=2.0)
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                     "--set", "teacher.connect_window_s=15", "--set", "teacher.max_wait_s=0.5",
                     "--set", "teacher.concurrency=1")
    assert result.exit_code == 0, result.output
    run = tmp_path / "r"
    assert len(read(run / "instances.jsonl")) == 8 and manifest(run)["status"] == "done"
    assert manifest(run)["usage"]["instances"]["retries"] > 0  # the outage was retried, and counted


# 1 and 3. A server gone for good: exit 4 after its wait, status failed with the URL; a re-run finishes.
def test_a_server_that_stays_down_stops_the_run_and_a_rerun_finishes_it(fake_openai, tmp_path):
    fake_openai.default_delay = 0.02
    outage_during_instances(fake_openai, back_after=None)
    started = time.monotonic()
    result = cli_run("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                     "--set", "teacher.outage_wait_s=2", "--set", "teacher.max_wait_s=0.5",
                     "--set", "teacher.concurrency=1")
    assert result.exit_code == 4 and time.monotonic() - started < 30, result.output
    run = tmp_path / "r"
    m = manifest(run)
    assert m["status"] == "failed" and fake_openai.url in m["reason"]
    done = len(read(run / "instances.jsonl"))
    assert done < 8
    fake_openai.come_back()
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8)
    assert len(read(run / "instances.jsonl")) == 8 and manifest(run)["status"] == "done"


# 1, 3 and 7. An outage that stops the run (exit 4) says what is pending, per stage, in the exit message, the
# manifest and `show`; a resume while the server is still down says it again and writes nothing; once the
# server is back, the resume finishes. Before, the message named only the URL and `show` printed "-".
def test_a_run_stopped_by_an_outage_says_what_is_pending_and_a_resume_finishes_it(fake_openai, tmp_path):
    fake_openai.default_delay = 0.05
    # Down once 4 bootstrap prompts are in: bootstrap is about halfway to its 24 then (the fake teacher gives 3
    # novel tasks a reply), and classify and instances have tasks waiting, which flowed on from it
    outage_during_instances(fake_openai, back_after=None, after=4, marker=is_bootstrap)
    flags = [*teacher_flags(fake_openai, tmp_path), "--num-instructions", 24, "--set", "teacher.concurrency=2",
             "--set", "teacher.outage_wait_s=2", "--set", "teacher.max_wait_s=0.5"]
    result = cli_run("run", *flags)
    assert result.exit_code == 4, result.output
    run = tmp_path / "r"
    left = left_in_files(run, 24)
    assert left["bootstrap"] > 0 and left["classify"] + left["instances"] > 0, left
    text = " ".join(result.output.split())
    assert text.endswith(f"{pending_words(left, 24)}; still to run: filter"), text
    m = manifest(run)
    assert m["status"] == "failed" and pending_words(left, 24) in m["reason"]
    for stage in ("bootstrap", "classify", "instances"):
        entry = m["stages"][stage]
        assert entry["pending"] == left[stage], (stage, entry)
        assert entry["generated"] == entry["kept"] + entry["rejected"], (stage, entry)
    assert m["stages"]["classify"]["kept"] == len(read(run / "classify.jsonl")) > 0
    assert m["stages"]["bootstrap"]["kept"] == len(read(run / "bootstrap.jsonl"))  # a fresh run: all of this session
    for stage in ("bootstrap", "classify", "instances"):
        cells = counts_row(run, stage)
        assert cells[2:] == [str(m["stages"][stage][k]) for k in ("kept", "rejected", "pending")], (stage, cells)

    def snapshot():
        return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}

    before = snapshot()
    again = cli_run("run", *flags, "--set", "teacher.connect_window_s=1")  # the server is still down
    assert again.exit_code == 4, again.output
    assert " ".join(again.output.split()).endswith(f"{pending_words(left, 24)}; still to run: filter"), again.output
    # The startup check failed before any request: no record, no cache row, no status or config; only the attempt
    # (time, command, cause), which `show` says after the last session's status (it showed "failed" as if nothing
    # had been tried since)
    after = snapshot()
    m_before, m_after = (json.loads(files.pop(run / "manifest.json")) for files in (before, after))
    assert after == before
    attempt, _ = m_after.pop("attempt"), m_before.pop("attempt")
    assert {k: v for k, v in m_after.items() if k != "updated"} == {k: v for k, v in m_before.items() if k != "updated"}
    assert fake_openai.url in attempt["cause"] and attempt["pending"].startswith(pending_words(left, 24))
    assert set(attempt) == {"at", "command", "cause", "pending"}
    shown = " ".join(invoke("show", run, "--sample", 0).output.split())
    assert "status: failed; then a command stopped at the teacher's connection check" in shown
    assert "stopped before any request (teacher unavailable): no endpoint answers" in shown
    fake_openai.come_back()
    invoke("run", *flags)
    assert manifest(run)["attempt"] is None  # a session that ran clears it
    assert len(read(run / "instances.jsonl")) + sum(r["stage"] in ("classify", "instances")
                                                   for r in read(run / "rejected.jsonl")) == 24
    assert manifest(run)["status"] == "done" and left_in_files(run, 24) == {"bootstrap": 0, "classify": 0,
                                                                           "instances": 0}


# 2. A re-run after an outage sends no more bootstrap prompts than the target needs.
def test_a_rerun_after_an_outage_sends_only_the_prompts_the_target_needs(fake_openai, tmp_path):
    for _ in range(40):
        fake_openai.enqueue({"error": {"message": "overloaded"}}, status=500)
    result = cli_run("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 12,
                     "--set", "teacher.max_retries=0", "--set", "teacher.max_consecutive_failures=16")
    assert result.exit_code == 4 and "16 requests in a row failed" in " ".join(result.output.split())
    run = tmp_path / "r"
    cache = ResponseCache(run / "cache.sqlite")
    sent, unfinished = cache.requests("bootstrap")
    assert len(unfinished) >= 8  # the outage left many logged prompts open
    fake_openai.queue.clear()
    before = len(prompts_of(fake_openai, is_bootstrap))
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 12,
           "--set", "teacher.concurrency=1")
    rerun = len(prompts_of(fake_openai, is_bootstrap)) - before
    assert len(read(run / "bootstrap.jsonl")) == 12
    assert rerun == 4, rerun  # the fake teacher gives 3 novel tasks a reply: 12 / 3, not every open prompt


# 3 and 7. A task the teacher failed on is pending: exit 5, status incomplete; a re-run retries exactly it.
def test_a_task_the_teacher_failed_on_is_pending_not_done(fake_openai, tmp_path):
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 4, "--set",
           'stages=["bootstrap", "classify"]')
    fake_openai.enqueue({"error": {"message": "boom"}}, status=500)
    result = cli_run("instances", *teacher_flags(fake_openai, tmp_path), "--set", "teacher.max_retries=0",
                     "--set", "teacher.concurrency=1")
    assert result.exit_code == 5, result.output
    text = " ".join(result.output.split())
    assert text.endswith("run the same command again to retry what is pending pending: instances 1 task"), text
    run = tmp_path / "r"
    assert manifest(run)["status"] == "incomplete" and len(read(run / "instances.jsonl")) == 3
    shown = " ".join(invoke("show", run).output.split())
    assert "status: incomplete" in shown and "pending: instances 1 task" in shown and "retries" in shown
    assert manifest(run)["stages"]["instances"]["pending"] == 1
    before = len(fake_openai.history)
    invoke("instances", *teacher_flags(fake_openai, tmp_path))
    assert len(fake_openai.history) - before == 1 and len(read(run / "instances.jsonl")) == 4
    assert manifest(run)["status"] == "done"


# 6 and 7. Every record ends kept, rejected or pending: duplicates and unparseable replies get a reason.
def test_duplicates_and_unparseable_replies_land_in_rejected_with_a_reason(fake_openai, tmp_path):
    fake_openai.enqueue("9. Describe how tide pools form along rocky coasts.\n"
                        "10. Describe how tide pools form along rocky coasts.")
    fake_openai.enqueue("I cannot help with that request, sorry about it.")
    fake_openai.enqueue("9. Describe how tide pools form along rocky coasts.")
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 4,
           "--set", "teacher.concurrency=1")
    rejected = read(tmp_path / "r" / "rejected.jsonl")
    reasons = [r["reject_reason"].split(":")[0] for r in rejected]
    assert reasons.count("duplicate") == 2 and reasons.count("unparseable_reply") == 1
    unparseable = next(r for r in rejected if r["reject_reason"].startswith("unparseable_reply"))
    assert "cannot help" in unparseable["meta"]["bootstrap_reply"]["reply"]
    # Instances: a reply with no instance is asked again (another salt, sampled), then rejected with it.
    invoke("classify", *teacher_flags(fake_openai, tmp_path))
    hard = read(tmp_path / "r" / "classify.jsonl")[0]["instruction"]
    competent = fake_openai.default_reply
    fake_openai.default_reply = lambda path, body: (fake_openai.wrap(path, "Nothing useful here.")
                                                    if hard in fake_openai.prompt_of(body) else competent(path, body))
    invoke("instances", *teacher_flags(fake_openai, tmp_path), "--set", "teacher.max_retries=2",
           "--set", "teacher.concurrency=1")
    tries = [h["body"] for h in prompts_of(fake_openai, lambda p: is_instances(p) and hard in p)]
    assert [b["temperature"] for b in tries] == [0.0, 0.7, 0.7] and len({b["seed"] for b in tries}) == 3
    run = tmp_path / "r"
    dropped = [r for r in read(run / "rejected.jsonl") if r["stage"] == "instances"]
    assert len(dropped) == 1 and dropped[0]["reject_reason"].startswith("unparseable_reply")
    assert dropped[0]["meta"]["tries"] == 3
    generated = len(read(run / "classify.jsonl"))
    assert len(read(run / "instances.jsonl")) + len(dropped) == generated  # kept + rejected + pending (0)
    assert manifest(run)["stages"]["instances"] == {"input": 4, "generated": 4, "kept": 3, "rejected": 1,
                                                    "pending": 0, "retried": 2}


# 8. Usage survives kill -9: the next session's budget counts the killed session's calls.
def test_usage_survives_kill_9_and_the_budget_holds_across_sessions(tmp_path, monkeypatch):
    server = FakeOpenAI()
    server.default_delay = 0.05
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cmd = [sys.executable, "-m", "pipeline", "run", "--teacher", "openai:fake-model", "--base-url", server.url,
           "--output-dir", str(tmp_path), "--run-name", "k", "--num-instructions", "40", "--api", "chat",
           "--set", "teacher.concurrency=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(server.history) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = len(server.history)
        usage = ResponseCache(tmp_path / "k" / "cache.sqlite").usage()  # by kind: classify flows on from bootstrap
        calls = sum(u["calls"] for u in usage.values())
        assert answered - 2 <= calls <= answered  # all but those in flight at the kill
        spent = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage.values())
        before = len(server.history)
        result = subprocess.run([*cmd, "--max-tokens-total", str(spent)], cwd=ROOT, env=env, capture_output=True,
                                text=True)
        assert result.returncode == 3, result.stderr
        assert len(server.history) == before  # nothing sent: the killed session's spend already fills the budget
    finally:
        server.close()


# 9. A command that fails validation leaves a finished run byte-identical and makes no folder.
def test_a_failed_command_leaves_a_finished_run_byte_identical(fake_openai, tmp_path, monkeypatch):
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 3)
    run = tmp_path / "r"

    def snapshot():
        return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    before = snapshot()
    flags = ["--output-dir", tmp_path, "--run-name", "r"]
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    for args in (["--teacher", "nope:x"], ["--teacher", "openai:m", "--base-url", dead,
                                            "--set", "teacher.connect_window_s=1"],
                 ["--teacher", "openai:m", "--set", "bootstrap.num_instructions=eight"]):
        result = cli_run("run", *flags, *args)
        assert result.exit_code in (2, 4), result.output
        assert snapshot() == before, args
    monkeypatch.delenv("OPENAI_API_KEY")
    result = cli_run("run", *flags, "--teacher", "openai:gpt-4o-mini")
    assert result.exit_code == 2 and "OPENAI_API_KEY is not set" in result.output
    assert snapshot() == before
    result = cli_run("run", "--output-dir", tmp_path, "--run-name", "new", "--teacher", "nope:x")
    assert result.exit_code == 2 and not (tmp_path / "new").exists()


# 11. Server runs are reproducible: each request sends a seed from the run seed and its RNG state.
def test_requests_send_a_seed_that_a_rerun_repeats(fake_openai, tmp_path):
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path, "a"), "--num-instructions", 3,
           "--set", "teacher.concurrency=1")
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path, "b"), "--num-instructions", 3,
           "--set", "teacher.concurrency=1")
    seeds = [h["body"]["seed"] for h in fake_openai.history]
    half = len(seeds) // 2
    assert seeds[:half] == seeds[half:] and len(set(seeds[:half])) == half


# 12. api auto: the completions endpoint where the server offers it; the choice is recorded.
def test_api_auto_takes_the_completions_endpoint_when_the_server_has_one(fake_openai, tmp_path):
    fake_openai.completions_endpoint = True
    invoke("bootstrap", "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", tmp_path,
           "--run-name", "r", "--num-instructions", 2)
    teacher = manifest(tmp_path / "r")["teacher"]
    assert teacher["api"] == "completions" and teacher["api_choice"].startswith("auto: completions")
    assert all(h["path"].endswith("/v1/completions") for h in fake_openai.history)


def test_api_auto_asks_again_after_a_hiccup_and_keeps_the_completions_endpoint(fake_openai, tmp_path):
    """One 500 (or 429) on the completions probe put a server that has the endpoint on chat for the whole run."""
    fake_openai.completions_endpoint = True
    fake_openai.probe_errors = [500, 429]
    invoke("bootstrap", "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", tmp_path,
           "--run-name", "r", "--num-instructions", 2)
    teacher = manifest(tmp_path / "r")["teacher"]
    assert teacher["api"] == "completions" and not fake_openai.probe_errors
    # A server whose completions endpoint keeps failing is given up after PROBE_TRIES, naming how often it was asked
    fake_openai.probe_errors = [500] * 5
    invoke("bootstrap", "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", tmp_path,
           "--run-name", "r2", "--num-instructions", 2)
    choice = manifest(tmp_path / "r2")["teacher"]["api_choice"]
    assert choice.startswith("auto: chat (completions: HTTP 500") and choice.endswith("asked 3 times)"), choice
    assert len(fake_openai.probe_errors) == 2


def test_api_auto_falls_back_to_chat(fake_openai, tmp_path):
    invoke("bootstrap", "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", tmp_path,
           "--run-name", "r", "--num-instructions", 2)
    teacher = manifest(tmp_path / "r")["teacher"]
    assert teacher["api"] == "chat" and "auto: chat" in teacher["api_choice"]
    # The 404 is the answer the probe asked for: no hint to check the model or the URL, which work
    assert teacher["api_choice"].startswith("auto: chat (no completions endpoint: HTTP 404")
    assert "--base-url" not in teacher["api_choice"] and "unknown model" not in teacher["api_choice"]


# 12. Requests in flight adapt to a server that serves fewer at a time, and the user is told.
def test_slow_replies_shrink_the_requests_in_flight(fake_openai):
    fake_openai.default_delay = 0.6  # over half the 1 s timeout
    events = []
    t = OpenAITeacher("m", base_url=fake_openai.url, concurrency=4, timeout_s=1.0, max_wait_s=0.05)
    t.on_event = events.append
    out = t.generate([f"p{i}" for i in range(6)], GenParams(max_tokens=5), kind="k")
    assert all(c.ok for c in out) and t.limit < 4
    assert any("keeping" in e and "in flight" in e for e in events)


# 13. A teacher that only repeats itself stops at the yield floor, long before 20x the target.
def test_a_teacher_that_repeats_itself_stops_at_the_yield_floor(fake_openai, tmp_path):
    same = "9. Describe how tide pools form along rocky coasts.\n10. Explain the rules of cricket to a child."
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, same)
    result = cli_run("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 100,
                     "--set", "bootstrap.yield_window=10", "--set", "teacher.concurrency=1")
    assert result.exit_code == 6, result.output
    text = " ".join(result.output.split())
    assert "duplicate" in text and "yield_stop" in text
    assert len(fake_openai.history) <= 12  # 10 prompts judged, not 2,000
    assert manifest(tmp_path / "r")["status"] == "failed"


# 14. SIGTERM (and Ctrl-C) stop within 2 s with status interrupted.
def test_sigterm_and_ctrl_c_stop_within_2_s_with_status_interrupted(tmp_path, monkeypatch):
    server = FakeOpenAI()
    server.default_delay = 5.0  # every request is still in flight at the signal
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
            name = f"s{code}"
            cmd = [sys.executable, "-m", "pipeline", "run", "--teacher", "openai:fake-model", "--base-url", server.url,
                   "--output-dir", str(tmp_path), "--run-name", name, "--api", "chat", "--num-instructions", "20"]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            before = len(server.history)
            deadline = time.monotonic() + 60
            while len(server.history) < before + 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            sent = time.monotonic()
            proc.send_signal(sig)
            proc.wait(timeout=30)
            assert time.monotonic() - sent < 2.0
            assert proc.returncode == code, proc.stderr.read().decode()[-2000:]
            m = manifest(tmp_path / name)
            assert m["status"] == "interrupted" and m["stage"] == "bootstrap"
    finally:
        server.close()


# 4. Evolve stops at the budget through the runner (exit 3) and a higher budget finishes the same round.
def test_evolve_stops_at_the_budget_and_a_higher_budget_finishes_the_round(fake_openai, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Describe the {w} in three sentences for a child."}) + "\n"
                            for w in ("ocean", "desert", "forest", "glacier", "volcano", "savanna")))
    flags = [*teacher_flags(fake_openai, tmp_path), "--seeds", pool, "--rounds", 1,
             "--set", "evolve.source=seeds", "--set", "teacher.concurrency=1"]
    result = cli_run("evolve", *flags, "--max-tokens-total", 80)
    assert result.exit_code == 3, result.output
    run = tmp_path / "r"
    assert manifest(run)["status"] == "budget" and "evolve" in manifest(run)["reason"]
    outcomes = [t for t in [*read(run / "evolve.jsonl"), *read(run / "rejected.jsonl")] if t["stage"] == "evolve"]
    assert len(outcomes) < 6
    invoke("evolve", *flags, "--max-tokens-total", 100000)
    outcomes = [t for t in [*read(run / "evolve.jsonl"), *read(run / "rejected.jsonl")] if t["stage"] == "evolve"]
    assert sorted(t["parent_id"] for t in outcomes) == sorted({t["parent_id"] for t in outcomes})  # one each
    assert len(outcomes) == 6 and manifest(run)["status"] == "done"


def test_evolve_refuses_a_second_input_in_the_same_run_before_recording_it(fake_openai, tmp_path):
    for name, word in (("a", "ocean"), ("b", "desert")):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"instruction": f"Describe the {word} for a child."}) + "\n")
    invoke("evolve", *teacher_flags(fake_openai, tmp_path), "--input", tmp_path / "a.jsonl", "--rounds", 1)
    result = cli_run("evolve", *teacher_flags(fake_openai, tmp_path), "--input", tmp_path / "b.jsonl", "--rounds", 1)
    assert result.exit_code == 2 and "a.jsonl" in " ".join(result.output.split())
    assert manifest(tmp_path / "r")["state"]["evolve_input"].endswith("a.jsonl")


def test_a_server_slower_than_the_timeout_stops_the_run_naming_teacher_timeout_s(fake_openai, tmp_path):
    """Seen against a real llama.cpp server with teacher.timeout_s=0.3: 'a request timed out after 0 s', and a stop
    whose fix named only the server's log and max_consecutive_failures, not the timeout that caused it."""
    fake_openai.default_delay = 1.0  # every reply slower than the timeout
    result = cli_run("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 4,
                     "--set", "teacher.timeout_s=0.3", "--set", "teacher.max_retries=0",
                     "--set", "teacher.max_consecutive_failures=3", "--set", "teacher.concurrency=2")
    text = " ".join(result.output.split())
    assert result.exit_code == 4, text
    assert "timed out after 0.3 s" in text
    assert "Fix: a reply takes the server over teacher.timeout_s (0.3 s): raise it" in text


def test_the_in_flight_line_says_one_request_not_one_requests(fake_openai):
    events = []
    t = OpenAITeacher("m", base_url=fake_openai.url, concurrency=2, timeout_s=1.0)
    t.on_event = events.append
    with t.failover.lock:
        t.failover.shrink(0, "slow replies")
    assert any("keeping 1 request in flight (of teacher.concurrency 2)" in e for e in events), events


# Seen on a tour against llama.cpp: a Ctrl-C that landed while numba compiled (in filter) was raised inside
# llvmlite's ObjectRef.__del__, where Python prints "Exception ignored" and drops it; the run went on to status
# done and exit 0. The loop now acts on a stop signal its KeyboardInterrupt never reached.
SWALLOWED_CTRL_C = """
import dataclasses, os, signal, sys, time
from pipeline import runner
from pipeline.cli import main

class Finalizer:
    def __del__(self):  # Python drops an exception raised here, as it dropped llvmlite's
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here, inside the finalizer, whichever thread the signal reached

i = next(i for i, s in enumerate(runner.STEPS) if s.name == "filter")
real = runner.STEPS[i].run

def filter_step(ctx, records):
    Finalizer()
    return real(ctx, records)

runner.STEPS[i] = dataclasses.replace(runner.STEPS[i], run=filter_step)
main(sys.argv[1:])
"""


def test_a_ctrl_c_that_python_drops_in_a_finalizer_still_stops_the_run(fake_openai, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-test"}
    cmd = [sys.executable, "-c", SWALLOWED_CTRL_C, "run", *map(str, teacher_flags(fake_openai, tmp_path)),
           "--api", "chat", "--num-instructions", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "Exception ignored" in proc.stderr  # the interrupt was dropped where llvmlite's was
    assert proc.returncode == 130, proc.stderr[-2000:]
    m = manifest(tmp_path / "r")
    assert m["status"] == "interrupted" and m["stage"] == "filter", m["status"]
    assert "interrupted: everything written so far is kept" in " ".join(proc.stderr.split())


def test_a_ctrl_c_dropped_in_a_finalizer_while_replies_stream_stops_the_stream_not_hours_later(fake_openai, tmp_path):
    """numba compiles as bootstrap's filter first runs, at the start of a flow that may stream for hours: a Ctrl-C
    dropped there must not wait for the whole flow to end. The teacher's stream acts on it within 0.2 s."""
    fake_openai.default_delay = 0.05
    # The Finalizer goes with the flow's first reply, on the thread that reads the stream
    head, _ = SWALLOWED_CTRL_C.split("i = next(")
    driver = head + (
        "from pipeline.stages import flow\n"
        "arrived = flow._Flow.arrived\n\n"
        "def first(self, *a):\n"
        "    flow._Flow.arrived = arrived\n"
        "    Finalizer()\n"
        "    return arrived(self, *a)\n\n"
        "flow._Flow.arrived = first\n"
        "main(sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-test"}
    cmd = [sys.executable, "-c", driver, "run", *map(str, teacher_flags(fake_openai, tmp_path)), "--api", "chat",
           "--num-instructions", "40", "--set", "teacher.concurrency=1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "Exception ignored" in proc.stderr
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert manifest(tmp_path / "r")["status"] == "interrupted"
    assert len(fake_openai.history) < 10, len(fake_openai.history)  # not the 100-odd calls of the whole flow


def test_an_in_process_teachers_stream_stops_at_a_dropped_ctrl_c_once_the_reply_in_hand_is_given(monkeypatch):
    """The embedded and hf: teachers stream through BaseTeacher.stream: a Ctrl-C Python dropped in a finalizer
    stops it after the reply it came with, which is handed on (its record written), not hours later."""
    from pipeline import errors
    from pipeline.teachers.base import BaseTeacher, Completion, Request

    class Local(BaseTeacher):
        def _stream(self, requests, params):
            for req in requests:
                if req.key == 1:
                    errors.STOP_SIGNALS.append(130)  # as on_stop_signal notes it, its KeyboardInterrupt dropped
                yield req, Completion(f"reply {req.key}", "stop")

    monkeypatch.setattr(errors, "STOP_SIGNALS", [])
    got = []
    with pytest.raises(KeyboardInterrupt):
        for _req, c in Local().stream([Request(i, f"p{i}") for i in range(4)], GenParams(max_tokens=5), kind="k"):
            got.append(c.text)
    assert got == ["reply 0", "reply 1"] and errors.STOP_SIGNALS == []


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(fake_openai, tmp_path):
    """A shell's background job (`seed2lora run ... &` in a script) starts with SIGINT ignored, so that a Ctrl-C
    meant for the script does not stop it; Python keeps that, and the CLI's handler must not undo it."""
    fake_openai.default_delay = 0.05
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-test"}
    cmd = [sys.executable, "-m", "pipeline", "run", *map(str, teacher_flags(fake_openai, tmp_path)), "--api", "chat",
           "--num-instructions", "6", "--set", "teacher.concurrency=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 60
    while len(fake_openai.history) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    assert manifest(tmp_path / "r")["status"] == "done"


def test_a_ctrl_c_the_loop_acted_on_does_not_stop_the_next_run_in_the_same_process(fake_openai, tmp_path, monkeypatch):
    """on_stop_signal notes each stop in case Python drops its exception in a finalizer; one that reached the loop was
    acted on, and left noted it stopped the next run of the same process (main called again, or the Python API after
    it) at its first step."""
    from pipeline import Run, errors
    from pipeline.stages import bootstrap

    monkeypatch.setattr(errors, "STOP_SIGNALS", [])
    real = bootstrap.run_bootstrap
    monkeypatch.setattr(bootstrap, "run_bootstrap", lambda *a, **k: errors.on_stop_signal(signal.SIGINT, None))
    settings = {"bootstrap.num_instructions": 3}
    with Run(settings=settings, teacher="openai:fake-model", base_url=fake_openai.url, name="r", output_dir=tmp_path,
             progress=False, log=lambda line: None) as run, pytest.raises(KeyboardInterrupt):
        run.run("bootstrap")
    assert manifest(tmp_path / "r")["status"] == "interrupted"
    monkeypatch.setattr(bootstrap, "run_bootstrap", real)
    with Run.open(tmp_path / "r", progress=False, log=lambda line: None) as run:
        run.run("bootstrap")  # before: KeyboardInterrupt at its first step
    assert manifest(tmp_path / "r")["status"] == "done" and errors.STOP_SIGNALS == []
