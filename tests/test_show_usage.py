"""`seed2lora show`'s usage table after a kill -9: every paid call of every session, read from the usage log that
each call is written to as it is paid (its title says so), not from the manifest's copy of an earlier session."""

from fakeserver import FakeOpenAI
from helpers import invoke, run_and_kill, teacher_flags

from pipeline.cache import CACHE_FILE, ResponseCache


def usage_rows(run, column=1):
    """show's usage table: {kind: calls} (column 1; 3: retries)."""
    out, rows, inside = invoke("show", run, "--sample", 0).output.splitlines(), {}, False
    for line in out:
        inside = inside or "Teacher usage" in line
        cells = [c.strip() for c in line.strip().strip("│┃|").split("│")]
        if inside and len(cells) > 2 and cells[1].replace(",", "").isdigit():
            rows[cells[0]] = int(cells[column].replace(",", ""))
        if inside and line.startswith("└"):
            break
    return rows


def test_show_counts_the_calls_of_a_session_killed_mid_run_from_the_usage_log(fake_openai: FakeOpenAI, tmp_path):
    fake_openai.default_delay = 0.05
    invoke("run", "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", tmp_path,
           "--run-name", "k", "--num-instructions", 4, "--set", "teacher.concurrency=2")  # a session that ended
    is_instances = lambda h: fake_openai.prompt_of(h["body"]).rstrip().endswith(("Input:", "Class label:"))  # noqa: E731
    before = sum(map(is_instances, fake_openai.history))
    run_and_kill(fake_openai, tmp_path, lambda: sum(map(is_instances, fake_openai.history)) >= before + 3,
                 "--num-instructions", 8, "--set", "teacher.concurrency=2")  # a larger target, named: a change
    cache = ResponseCache(tmp_path / "k" / CACHE_FILE)
    try:
        logged = {kind: u["calls"] for kind, u in cache.usage().items()}
    finally:
        cache.close()
    assert logged["instances"] > 4  # the killed session's calls are in the log
    assert usage_rows(tmp_path / "k") == logged


def test_each_stage_line_counts_its_retries_as_show_does(fake_openai: FakeOpenAI, tmp_path):
    """A run's line said "2 replies came only after a failed call" where `show` listed 11 retries of classify: it
    counted the replies that had any, once each, and a task that failed in the end not at all; bootstrap's and
    evolve's lines said nothing of theirs. Every stage now says "N retries of failed calls", N what `show` lists."""
    flags = [*teacher_flags(fake_openai, tmp_path, "q"), "--set", "teacher.concurrency=1",
             "--set", "teacher.max_wait_s=0.05", "--set", "teacher.max_retries=1"]
    broke = {"error": {"message": "upstream broke", "type": "server_error"}}
    ok = lambda path, body: fake_openai.default_reply(path, body)  # noqa: E731

    def line(out, stage):  # the stage's closing line ("incomplete: classify: ..." where a task is pending)
        return next(x for x in out.splitlines() if f" {stage}: " in f" {x}" and ("so far" in x or "done over" in x
                                                                                  or "tasks written" in x))

    causes = "(a 429, 5xx, timeout or dropped connection)"
    fake_openai.enqueue(broke, status=500)  # bootstrap's first prompt is sent again once
    out = invoke("bootstrap", *flags, "--num-instructions", 3).output
    assert f"; 1 retry of a failed call {causes}" in line(out, "bootstrap"), out
    # classify: the first task answered at its second try, the second failed twice (max_retries 1: pending)
    for status, reply in ((500, broke), (200, ok), (500, broke), (500, broke)):
        fake_openai.enqueue(reply, status=status)
    out = invoke("classify", *flags, expect=5).output
    assert f"; 2 retries of failed calls {causes}" in line(out, "classify"), out
    fake_openai.enqueue(broke, status=500)
    out = invoke("evolve", *flags, "--input", tmp_path / "q" / "bootstrap.jsonl", "--rounds", 1).output
    assert f"teacher errors; 1 retry of a failed call {causes}" in line(out, "evolve"), out
    retries = usage_rows(tmp_path / "q", column=3)
    assert (retries["bootstrap"], retries["classify"]) == (1, 2), retries
    assert sum(retries.get(k, 0) for k in ("evolve", "evolve_judge", "evolve_answer")) == 1, retries


def test_shows_usage_table_groups_thousands_as_its_spend_line_and_cost_do(tmp_path):
    """A real run's tokens came out as 3940 and 2880 in the usage table, beside "Spend: 8,565 tokens" and cost's
    "2,880": a million tokens read as 1234567."""
    from pipeline.records import Task
    from pipeline.store import RunDir, write_jsonl_atomic

    run = RunDir(tmp_path / "r").ensure().path
    write_jsonl_atomic(run / "classify.jsonl", [Task(id="t0", instruction="Name a colour.", stage="classify")])
    RunDir(run).update_manifest(status="done")
    cache = ResponseCache(run / CACHE_FILE)
    try:
        cache.log_usage("s1", "classify", {"calls": 1234, "prompt_tokens": 1234567, "completion_tokens": 2468},
                        "fake-model")
    finally:
        cache.close()
    assert usage_rows(run) == {"classify": 1234}
    out = invoke("show", run, "--sample", 0).output
    row = next(line for line in out[out.index("Teacher usage"):].splitlines() if line.startswith("│ classify"))
    assert [c.strip() for c in row.strip("│").split("│")][1:] == ["1,234", "0", "0", "0", "0", "1,234,567", "0", "2,468"]


def test_show_and_cost_read_a_run_in_a_folder_they_cannot_write(fake_openai: FakeOpenAI, tmp_path, monkeypatch):
    """A finished run on a read-only mount: show, cost and the dry run died with SQLite's "unable to open database
    file" (WAL mode makes files beside the cache). The cache is opened read-only there, and reads what it holds.
    (As root chmod cannot make a folder read-only: the folder's refusal is os.access's answer here.)"""
    import os
    import sqlite3
    from pathlib import Path

    invoke("run", "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", tmp_path,
           "--run-name", "k", "--num-instructions", 4, "--set", "teacher.concurrency=2")
    run = tmp_path / "k"
    want = usage_rows(run)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == run and mode == os.W_OK
                        else real_access(p, mode, *a, **k))
    connect = sqlite3.connect
    opened: list[str] = []
    monkeypatch.setattr(sqlite3, "connect", lambda target, *a, **k: opened.append(str(target))
                        or connect(target, *a, **k))
    assert usage_rows(run) == want and want["bootstrap"] >= 1
    assert any(t.startswith("file:") and t.endswith("?mode=ro&immutable=1") for t in opened), opened
    assert "bootstrap" in invoke("cost", run).output  # exit 0, its stages priced from the read-only cache
    dry = invoke("run", "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", tmp_path,
                 "--run-name", "k", "--num-instructions", 4, "--dry-run").output
    assert "bootstrap" in dry, dry
