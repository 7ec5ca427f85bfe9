"""Generation at scale without loss: cache, budget, several servers, faults, kill -9 and resume."""

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeOpenAI
from helpers import counts_row, invoke, left_in_files, pending_words, read, run_and_kill, teacher_flags

from pipeline.cli import cli
from pipeline.teachers import GenParams
from pipeline.teachers.base import Request
from pipeline.teachers.openai_compat import OpenAITeacher

ROOT = Path(__file__).resolve().parents[1]


def test_rerunning_a_stage_is_served_from_the_cache(fake_openai, tmp_path):
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 5)
    run = tmp_path / "r"
    before = len(fake_openai.history)
    first = read(run / "instances.jsonl")
    (run / "instances.jsonl").unlink()
    invoke("instances", *teacher_flags(fake_openai, tmp_path))
    assert len(fake_openai.history) == before  # no call repeated
    assert sorted(read(run / "instances.jsonl"), key=lambda t: t["id"]) == sorted(first, key=lambda t: t["id"])
    usage = json.loads((run / "manifest.json").read_text())["usage"]["instances"]
    assert usage["cached"] == 5 and usage["calls"] == 5  # calls: paid, earlier; cached: this time


def test_budget_stops_cleanly_and_a_higher_budget_goes_on(fake_openai, tmp_path):
    result = CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_openai, tmp_path)), "--num-instructions", "20",
                                      "--max-tokens-total", "200", "--set", "teacher.concurrency=1"])
    assert result.exit_code == 3 and "budget reached" in result.output
    run = tmp_path / "r"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "budget" and "budget reached in bootstrap" in manifest["reason"]
    assert 200 <= manifest["spend"]["total_tokens"] < 200 + 60  # one call past the line at most
    kept = read(run / "bootstrap.jsonl")
    assert 0 < len(kept) < 20 and len({t["id"] for t in kept}) == len(kept)
    shown = invoke("show", run).output
    assert "Spend:" in shown
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 20, "--max-tokens-total", 100000)
    assert len(read(run / "bootstrap.jsonl")) == 20 and len(read(run / "filter.jsonl")) > 0


def test_a_run_stopped_by_the_budget_or_ctrl_c_says_what_is_pending(fake_openai, tmp_path, monkeypatch):
    """The stop's message ends with what is pending per stage, the manifest and `show` count it; before, a stop
    inside the flow left "-" in show's kept and pending columns and said nothing of the work left."""
    run = tmp_path / "r"
    result = CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_openai, tmp_path)), "--num-instructions", "20",
                                      "--max-tokens-total", "200", "--set", "teacher.concurrency=1"])
    assert result.exit_code == 3, result.output
    left = left_in_files(run, 20)
    assert left["bootstrap"] > 0, left
    assert " ".join(result.output.split()).endswith(f"{pending_words(left, 20)}; still to run: filter"), result.output
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert {s: stages[s]["pending"] for s in left} == left
    assert [counts_row(run, s)[-1] for s in left] == [str(n) for n in left.values()]

    from pipeline.stages import flow

    arrived, replies = flow._Flow.arrived, []

    def ctrl_c_at_the_fourth_reply(self, req, reply):  # what the SIGINT handler raises, in the middle of the flow
        replies.append(req)
        if len(replies) == 4:
            raise KeyboardInterrupt
        arrived(self, req, reply)

    monkeypatch.setattr(flow._Flow, "arrived", ctrl_c_at_the_fourth_reply)
    result = CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_openai, tmp_path)), "--num-instructions", "20",
                                      "--max-tokens-total", "100000", "--set", "teacher.concurrency=1"])
    assert result.exit_code == 130, result.output
    left = left_in_files(run, 20)
    text = " ".join(result.output.split())
    assert "interrupted: everything written so far is kept" in text, text
    assert text.endswith(f"{pending_words(left, 20)}; still to run: filter"), text
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "interrupted" and pending_words(left, 20) in m["reason"]
    assert {s: m["stages"][s]["pending"] for s in left} == left
    assert sum(m["stages"][s]["generated"] for s in left) > 0  # this session's 3 replies were read and counted


def test_show_counts_what_a_killed_run_left_pending_from_its_files(tmp_path, monkeypatch):
    """kill -9 leaves no word in the manifest: show counts the work left from the files, not "-"."""
    server = FakeOpenAI()
    server.default_delay = 0.03
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    try:
        def kill_when():  # bootstrap about halfway (3 novel tasks a reply), classify and instances under way
            return sum("numbered list" in h["body"]["messages"][-1]["content"] for h in server.history) >= 4

        run_and_kill(server, tmp_path, kill_when, "--num-instructions", "24", "--set", "teacher.concurrency=2")
    finally:
        server.close()
    run = tmp_path / "k"
    left = left_in_files(run, 24)
    assert left["bootstrap"] > 0, left
    shown = " ".join(invoke("show", run, "--sample", 0).output.split())
    assert "status: stopped" in shown
    for stage in ("bootstrap", "classify", "instances"):
        cells = counts_row(run, stage)
        assert cells[1:] == ["-", "-", "-", str(left[stage])], (stage, cells)  # this session's counts died with it


def test_max_cost_needs_a_price(fake_openai, tmp_path):
    result = CliRunner().invoke(cli, ["bootstrap", *map(str, teacher_flags(fake_openai, tmp_path)), "--max-cost", "1"])
    assert result.exit_code == 2 and "no price for model 'fake-model'" in result.output.replace("\n", " ")


def test_requests_are_balanced_over_several_servers(fake_openai):
    other = FakeOpenAI()
    try:
        t = OpenAITeacher("m", base_url=f"{fake_openai.url},{other.url}", concurrency=4)
        for server in (fake_openai, other):
            for _ in range(10):
                server.enqueue("ok", delay=0.05)
        out = t.generate([f"p{i}" for i in range(16)], GenParams(max_tokens=5), kind="k")
        assert all(c.text == "ok" for c in out)
        assert len(fake_openai.history) >= 4 and len(other.history) >= 4
        assert len(fake_openai.history) + len(other.history) == 16
    finally:
        other.close()


def test_one_slow_request_does_not_hold_back_the_others(fake_openai):
    fake_openai.enqueue("slow", delay=1.5)
    for _ in range(12):
        fake_openai.enqueue("fast", delay=0.02)
    t = OpenAITeacher("m", base_url=fake_openai.url, concurrency=4)
    order = [c.text for _, c in t.stream((Request(i, f"p{i}") for i in range(13)), GenParams(max_tokens=5), kind="k")]
    assert order[-1] == "slow" and order.count("fast") == 12  # the other slots kept refilling meanwhile


def test_faults_hang_length_and_counts(fake_openai, tmp_path):
    """A hang past the timeout is retried; a reply cut by the length limit loses its last item."""
    fake_openai.enqueue("1. never arrives", delay=3.0)  # past the 1 s timeout: retried
    fake_openai.enqueue("Here you go:\n9. Describe how tide pools form along rocky coasts.\n"
                        "10. Explain the rules of cricket to an American baseball fan.\n11. Tell me a bedtime st",
                        finish_reason="length")
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", "teacher.timeout_s=1.0",
           "--set", "teacher.concurrency=1")
    kept = [t["instruction"] for t in read(tmp_path / "r" / "bootstrap.jsonl")]
    assert kept == ["Describe how tide pools form along rocky coasts.",
                    "Explain the rules of cricket to an American baseball fan."]
    usage = json.loads((tmp_path / "r" / "manifest.json").read_text())["usage"]["bootstrap"]
    assert usage["calls"] == 1 and usage["errors"] == 0 and len(fake_openai.history) == 2


@pytest.mark.parametrize("point", ["bootstrap", "instances"])
def test_kill_9_then_resume_loses_nothing_and_repeats_nothing(tmp_path, monkeypatch, point):
    server = FakeOpenAI()
    server.default_delay = 0.03  # every reply takes a little while, so calls are in flight at the kill
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    try:
        def kill_when():
            paths = [h["body"]["messages"][-1]["content"] for h in server.history]
            if point == "bootstrap":
                return sum("numbered list" in p for p in paths) >= 5
            return sum(p.rstrip().endswith(("Input:", "Class label:")) for p in paths) >= 6

        cmd, env = run_and_kill(server, tmp_path, kill_when, "--num-instructions", "24", "--set", "teacher.concurrency=4")
        sent_before = len(server.history)
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        server.close()
    run = tmp_path / "k"
    for stage in ("bootstrap", "classify", "instances", "filter"):
        records = read(run / f"{stage}.jsonl")  # every line valid JSON
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)), f"duplicates in {stage}"
        if stage != "filter":
            assert len(records) == 24, stage
    # No prompt was paid twice, except those in flight at the kill (at most `concurrency` = 4).
    prompts = Counter(json.dumps(h["body"]["messages"], sort_keys=True) for h in server.history)
    repeated = sum(n - 1 for n in prompts.values())
    assert repeated <= 4, (repeated, sent_before, len(server.history))


def test_a_key_in_the_config_is_used_but_never_written(fake_openai, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    config = tmp_path / "run.toml"
    config.write_text(f'[teacher]\napi_key = "sk-config-SECRET-9876543210"\nbase_url = "{fake_openai.url}"\n'
                      'spec = "openai:fake-model"\n')
    invoke("run", "--config", config, "--output-dir", tmp_path / "out", "--num-instructions", 3)
    headers = {k.lower(): v for k, v in fake_openai.history[0]["headers"].items()}
    assert headers["authorization"] == "Bearer sk-config-SECRET-9876543210"
    manifest = json.loads((tmp_path / "out" / "run" / "manifest.json").read_text())
    assert manifest["config"]["teacher"]["api_key"] == "***"
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert b"sk-config-SECRET" not in f.read_bytes(), f


def test_a_refused_key_is_masked_in_the_error(fake_openai, tmp_path):
    fake_openai.enqueue({"error": {"message": "Incorrect API key provided: sk-test-PLANTED-SECRET-0123456789"}},
                        status=401)
    result = CliRunner().invoke(cli, ["bootstrap", *map(str, teacher_flags(fake_openai, tmp_path))])
    assert result.exit_code == 2 and "API key was refused" in result.output.replace("\n", " ")
    assert "PLANTED-SECRET" not in result.output
