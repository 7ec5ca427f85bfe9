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
        if inside and len(cells) > 2 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
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
