"""`seed2lora show`'s usage table after a kill -9: every paid call of every session, read from the usage log that
each call is written to as it is paid (its title says so), not from the manifest's copy of an earlier session."""

from fakeserver import FakeOpenAI
from helpers import invoke, run_and_kill

from pipeline.cache import CACHE_FILE, ResponseCache


def usage_rows(run):
    """show's usage table: {kind: calls}."""
    out, rows, inside = invoke("show", run, "--sample", 0).output.splitlines(), {}, False
    for line in out:
        inside = inside or "Teacher usage" in line
        cells = [c.strip() for c in line.strip().strip("│┃|").split("│")]
        if inside and len(cells) > 2 and cells[1].replace(",", "").isdigit():
            rows[cells[0]] = int(cells[1].replace(",", ""))
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
