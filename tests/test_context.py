"""The run context keeps a run's teacher and judge: one left out by omission stops, one named on purpose is noted."""

import pytest
from helpers import invoke, teacher_flags

from pipeline.api import Run
from pipeline.config import RunConfig, load_config
from pipeline.context import RunContext
from pipeline.errors import Seed2LoraError
from pipeline.store import RunDir


def made_with(tmp_path, teacher, judge=None, base_url="http://127.0.0.1:9/v1"):
    """A run folder whose manifest names the teacher (and judge) that made it; the config of a command on it."""
    recorded = {"teacher": {"name": teacher, "base_url": base_url}}
    if judge:
        recorded["judge"] = {"name": judge}
    RunDir(tmp_path / "r").ensure().update_manifest(**recorded)
    return {"output_dir": str(tmp_path), "run_name": "r", "teacher.base_url": base_url,
            "score.teacher.base_url": base_url}  # a server that need not answer: nothing here sends a request


def test_the_config_records_what_was_named(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[teacher]\nspec = "openai:x"\n[eval]\njudge = "openai:j"\n')
    assert load_config(config).given >= {"teacher.spec", "eval.judge.spec"}
    named = load_config(None, {"teacher.spec": "embedded"})
    assert named.was_given("teacher.spec") and not named.was_given("score.teacher.spec")
    assert not load_config(None, {}).was_given("teacher.spec")
    in_code = RunConfig()  # built in code: a key differing from its default counts as named
    assert not in_code.was_given("teacher.spec") and not in_code.was_given("score.teacher.spec")
    in_code.teacher.spec = "openai:x"
    assert in_code.was_given("teacher.spec")
    in_code.teacher.spec = "embedded"
    in_code.give(["teacher.spec"])
    assert in_code.was_given("teacher.spec") and not in_code.was_given("score.teacher.spec")


def test_the_default_teacher_by_omission_stops_and_a_named_one_goes_on(tmp_path):
    where = made_with(tmp_path, "openai:gpt-4o-mini")
    with pytest.raises(Seed2LoraError, match="names no teacher") as e:
        RunContext(load_config(None, where)).bare_teacher  # noqa: B018
    assert "give --set teacher.spec=openai:gpt-4o-mini --set teacher.base_url=http://127.0.0.1:9/v1 (run and evolve " \
           "take --teacher openai:gpt-4o-mini --base-url http://127.0.0.1:9/v1 too) to go on with it" in str(e.value)
    notes = []
    ctx = RunContext(load_config(None, {**where, "teacher.spec": "openai:other"}), log=notes.append)
    assert ctx.bare_teacher.name == "openai:other" and "will mix the two" in notes[0]
    # The Python API: teacher= names it; a RunConfig built in code names what differs from the default
    with pytest.raises(Seed2LoraError, match="names no teacher"):
        Run(name="r", output_dir=tmp_path, base_url=where["teacher.base_url"], progress=False).run(["bootstrap"])
    assert Run(name="r", output_dir=tmp_path, teacher="embedded", progress=False).config.was_given("teacher.spec")
    cfg = RunConfig(output_dir=str(tmp_path), run_name="r")
    cfg.teacher.spec, cfg.teacher.base_url = "openai:other", where["teacher.base_url"]
    assert RunContext(Run(cfg, progress=False).config).bare_teacher.name == "openai:other"
    in_code = RunConfig(output_dir=str(tmp_path), run_name="r")
    assert Run(in_code, teacher="embedded", progress=False).config.was_given("teacher.spec")


def test_a_run_the_default_teacher_made_goes_on_without_the_flag(tmp_path):
    ctx = RunContext(load_config(None, made_with(tmp_path, "embedded")))
    ctx.keep_recorded("teacher", "embedded", given=False)  # the same teacher: nothing to stop or say


def test_a_run_scored_by_its_own_judge_keeps_it(tmp_path):
    where = made_with(tmp_path, "openai:cheap", judge="openai:dear")
    given_teacher = {**where, "teacher.spec": "openai:cheap"}
    with pytest.raises(Seed2LoraError, match="scored by judge openai:dear") as e:
        RunContext(load_config(None, given_teacher)).bare_judge  # noqa: B018
    assert "give --set score.teacher.spec=openai:dear (score takes --judge openai:dear too) to go on with it" \
        in str(e.value)
    assert RunContext(load_config(None, {**given_teacher, "score.teacher.spec": "openai:dear"})).bare_judge.name \
        == "openai:dear"
    notes = []
    ctx = RunContext(load_config(None, {**given_teacher, "score.teacher.spec": "openai:third"}), log=notes.append)
    assert ctx.bare_judge.name == "openai:third" and "scored by judge openai:dear" in notes[0]


def test_a_judge_that_was_the_teacher_follows_a_named_teacher(tmp_path):
    where = made_with(tmp_path, "openai:cheap", judge="openai:cheap")
    del where["score.teacher.base_url"]  # no judge of its own: a judge's URL alone is refused (unused)
    notes = []
    ctx = RunContext(load_config(None, {**where, "teacher.spec": "openai:new"}), log=notes.append)
    assert ctx.bare_judge is ctx.bare_teacher and ctx.bare_judge.name == "openai:new"
    assert len(notes) == 2 and "made with teacher openai:cheap" in notes[0]  # the teacher's note, and the judge's


def test_a_recorded_config_names_nothing_for_this_command(tmp_path):
    """`score RUN_DIR` reads the config the manifest recorded, which a teacher-less command (`filter`) wrote with the
    default teacher before it kept the recorded one: that default is no choice made now, so the judge (the teacher) stops instead of scoring."""
    from pipeline.config import recorded_config

    made_with(tmp_path, "openai:gpt-4o-mini")
    run = tmp_path / "r"
    recorded = {"teacher": {"spec": "embedded"}}
    with pytest.raises(Seed2LoraError, match="names no teacher"):
        RunContext(recorded_config(recorded, run)).bare_judge  # noqa: B018
    assert not recorded_config(recorded, run).was_given("teacher.spec")
    assert recorded_config(recorded, run, overrides={"teacher.spec": "embedded"}).was_given("teacher.spec")
    kept = recorded_config({"teacher": {"spec": "openai:gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1"}}, run)
    assert RunContext(kept).bare_judge.name == "openai:gpt-4o-mini"  # the run's own teacher: goes on


def test_a_command_records_only_the_model_tables_it_built(tmp_path):
    """A command's own settings reach the manifest; a teacher or judge table it built nothing from stays as recorded."""
    run = RunDir(tmp_path / "r").ensure()
    run.update_manifest(config={"teacher": {"spec": "openai:x", "base_url": "http://127.0.0.1:9/v1"},
                                "score": {"teacher": {"spec": "openai:j"}}, "eval": {"judge": {"spec": "openai:e"}}})
    where = {"output_dir": str(tmp_path), "run_name": "r", "filter.rouge_threshold": 0.6}
    cfg = RunContext(load_config(None, where)).recorded_config()  # filter: no teacher built
    assert (cfg["teacher"]["spec"], cfg["score"]["teacher"]["spec"], cfg["eval"]["judge"]["spec"]) == \
        ("openai:x", "openai:j", "openai:e")
    assert cfg["filter"]["rouge_threshold"] == 0.6
    ctx = RunContext(load_config(None, {**where, "teacher.spec": "openai:x", "teacher.base_url": "http://127.0.0.1:8/v1"}))
    ctx.bare_teacher  # noqa: B018  # built: this command's [teacher] is recorded, the judges' tables are kept
    cfg = ctx.recorded_config()
    assert cfg["teacher"]["base_url"] == "http://127.0.0.1:8/v1" and cfg["score"]["teacher"]["spec"] == "openai:j"
    passed = RunContext(load_config(None, where), teacher=ctx.bare_teacher)  # handed in, but no step asked for it
    assert passed.recorded_config()["teacher"]["base_url"] == "http://127.0.0.1:9/v1"
    fresh = RunContext(load_config(None, {"output_dir": str(tmp_path), "run_name": "new"})).recorded_config()
    assert fresh["teacher"]["spec"] == "embedded"  # nothing recorded yet: the command's own config


def test_the_event_log_rate_limits_each_kind_per_endpoint_so_one_endpoints_news_never_hides_anothers():
    from pipeline.context import RateLimitedLog

    lines = []
    log = RateLimitedLog(lines.append)
    a, b = "http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"
    for url in (a, b):  # before, B's line shared A's kind ("cannot reach http", "http", "endpoint down") and vanished
        log(f"cannot reach {url} (APIConnectionError: Connection refused); trying for 20 s (teacher.connect_window_s)")
        log(f"{url} does not answer (APIConnectionError: Connection refused); requests go to the other endpoints")
        log(f"endpoint down: {url} (APIConnectionError: Server disconnected); waiting up to 600 s")
    assert [line.split(" (")[0] for line in lines] == [
        f"teacher: cannot reach {a}", f"teacher: {a} does not answer", f"teacher: endpoint down: {a}",
        f"teacher: cannot reach {b}", f"teacher: {b} does not answer", f"teacher: endpoint down: {b}"]
    for _ in range(3):  # a flood of one kind is still one line, then a count of the rest
        log("retrying after APIConnectionError: Connection error: Cannot connect to host 127.0.0.1:9")
    log(f"endpoint down: {a} (APIConnectionError: Server disconnected); waiting up to 600 s")
    assert len(lines) == 7 and lines[-1].startswith("teacher: retrying after")
    log.last = {kind: at - 60 for kind, at in log.last.items()}  # the window has passed
    log("retrying after APIConnectionError: again")
    assert lines[-1].endswith("(and 2 more like it)")


def test_events_a_rate_limit_held_back_are_said_by_the_end_of_the_step(fake_openai, tmp_path):
    """A burst of retries: the first line is said, the rest are held back for EVENT_EVERY_S and counted on the next
    line of their kind. When no later line came (the step ended first), they vanished without a count; the step's end
    now says the last of them with the count of the others."""
    for _ in range(3):
        fake_openai.enqueue({"error": {"message": "upstream down"}}, status=502)
    result = invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 3,
                    "--set", "teacher.concurrency=1", "--set", "teacher.max_wait_s=0")
    retries = [line for line in result.output.splitlines() if line.startswith("teacher: retrying")]
    assert len(retries) == 2, result.output  # before: the first alone
    assert retries[1].endswith("(and 1 more like it)"), retries


def test_flush_says_each_kinds_last_held_event_with_the_count_of_the_rest():
    from pipeline.context import RateLimitedLog

    lines = []
    log = RateLimitedLog(lines.append)
    for i in range(4):
        log(f"retrying after APIConnectionError: try {i}")
    log("endpoint down: http://127.0.0.1:9/v1 (x)")
    log.flush()
    assert lines == ["teacher: retrying after APIConnectionError: try 0", "teacher: endpoint down: http://127.0.0.1:9/v1 (x)",
                     "teacher: retrying after APIConnectionError: try 3 (and 2 more like it)"]
    log.flush()  # nothing held: nothing said twice
    assert len(lines) == 3


def test_a_batchs_progress_held_back_is_never_said_after_its_batch_ended():
    """Seen in batch mode against the fake Batch API: 'classify batch ended: batch_8 completed', 'classify: 20/20
    done', then the step's flush said the held poll 'batch_8 finalizing, 12/20 done, about 9 s left (and 2 more like
    it)', as if the batch still ran. Its ended line now makes that held line stale; another batch's is kept."""
    from types import SimpleNamespace

    from pipeline.context import RateLimitedLog
    from pipeline.teachers.batch_api import ended_line, progress_line

    def batch(batch_id, status, done):
        return SimpleNamespace(id=batch_id, status=status,
                               request_counts=SimpleNamespace(completed=done, failed=0, total=20))

    lines, seen = [], {}
    log = RateLimitedLog(lines.append)
    for done, status in ((4, "in_progress"), (8, "in_progress"), (12, "finalizing")):  # the 2nd and 3rd held back
        log(progress_line("classify", {"file_id": "file-7"}, batch("batch_8", status, done), seen))
    log(ended_line("classify", batch("batch_8", "completed", 20), 20, 0, []))
    log.flush()
    assert [line.split(":")[1].strip() for line in lines] == ["classify batch progress", "classify batch ended"], lines
    assert "left" not in lines[-1] and lines[-1].startswith("teacher: classify batch ended: batch_8 completed")

    log(progress_line("instances", {"file_id": "file-9"}, batch("batch_9", "in_progress", 4), seen))
    log(progress_line("instances", {"file_id": "file-9"}, batch("batch_9", "in_progress", 8), seen))  # held
    log(ended_line("instances", batch("batch_5", "completed", 20), 20, 0, []))  # another batch ends: batch_9 runs on
    log.flush()
    assert "batch_9 in_progress, 8/20 done" in lines[-1], lines


def test_an_endpoint_back_is_never_said_above_its_down_held_back_by_the_rate_limit():
    """Seen against a real llama.cpp server killed and restarted mid-run: 'endpoint back ... (and 2 more like it)',
    then the stages done, then a held 'endpoint down ... (and 2 more like it)' flushed at the step's end, as if the
    server had died again. A held event of the opposite state is now said before the new one."""
    from pipeline.context import RateLimitedLog

    lines = []
    log = RateLimitedLog(lines.append)
    url = "http://127.0.0.1:9/v1"
    log(f"endpoint down: {url} (x); waiting up to 600 s")
    log(f"endpoint back: {url} answers again after 0 s")
    log(f"endpoint down: {url} (y); it fell again soon after it rejoined")  # held back
    log.last = {kind: at - 60 for kind, at in log.last.items()}  # 18 s on: the rate limit's window has passed
    log(f"endpoint back: {url} answers again after 18 s")
    log.flush()
    assert [line.split(":")[1].strip() for line in lines] == ["endpoint down", "endpoint back"] * 2, lines
    assert lines[-1].endswith("after 18 s")
