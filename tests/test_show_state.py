"""What a run says about its own state after a stop: `show` after later steps went on, and the pending counts of
the steps that count their own (evolve, score)."""

import json

from click.testing import CliRunner
from helpers import counts_row, invoke, read, teacher_flags

from pipeline.cli import cli

SAME = "9. Describe how tide pools form along rocky coasts.\n10. Explain the rules of cricket to a child."


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


def test_show_says_bootstrap_stopped_short_after_later_steps_ran_on_what_it_kept(fake_openai, tmp_path):
    """The measured bug: a low-yield stop of bootstrap (exit 6), then classify, instances and filter: `show` said
    "status: done" (the last command's), as if the run had reached its 20 instructions."""
    plain, replies = fake_openai.default_reply, []

    def repetitive(path, body):  # three good replies, then the same two tasks again and again
        replies.append(path)
        return plain(path, body) if len(replies) <= 3 else fake_openai.wrap(path, SAME)

    fake_openai.default_reply = repetitive
    flags = [*teacher_flags(fake_openai, tmp_path), "--num-instructions", 20, "--set", "bootstrap.yield_window=10",
             "--set", "teacher.concurrency=1"]
    result = CliRunner().invoke(cli, [str(a) for a in ("bootstrap", *flags)])
    assert result.exit_code == 6, result.output
    fake_openai.default_reply = plain
    run = tmp_path / "r"
    kept = len(read(run / "bootstrap.jsonl"))
    assert 0 < kept < 20
    invoke("classify", *teacher_flags(fake_openai, tmp_path))
    invoke("instances", *teacher_flags(fake_openai, tmp_path))
    invoke("filter", run)
    assert manifest(run)["status"] == "done"  # the last command's status: filter finished
    stop = manifest(run)["stages"]["bootstrap"]["stopped"]
    assert stop["status"] == "failed" and stop["reason"].startswith("LowYield: ") and stop["at"] and stop["command"]
    shown = " ".join(invoke("show", run, "--sample", 0).output.split())
    assert "status: stopped short" in shown and "status: done" not in shown
    assert (f"bootstrap stopped short ({kept} of 20 instructions kept), and classify, instances, filter ran since on "
            "what it kept. The stop, ") in shown
    assert "LowYield: bootstrap kept 0.00 instructions per prompt" in shown
    assert counts_row(run, "bootstrap")[-1] == str(20 - kept)
    invoke("bootstrap", *flags)  # a resume that reaches the target clears the stop
    assert "stopped" not in manifest(run)["stages"]["bootstrap"] and len(read(run / "bootstrap.jsonl")) == 20
    shown = " ".join(invoke("show", run, "--sample", 0).output.split())
    assert "status: done" in shown and "stopped short" not in shown


def test_evolve_and_score_stops_say_their_pending_counts(fake_openai, tmp_path):
    """The measured bug: a stop in evolve or score listed it as "still to run" though it had run partly; now the
    exit message, the manifest and `show` count what is left, as for the stages before them."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Describe the {w} in three sentences for a child."}) + "\n"
                            for w in ("ocean", "desert", "forest", "glacier", "volcano", "savanna")))
    flags = [*teacher_flags(fake_openai, tmp_path), "--seeds", pool, "--rounds", 1,
             "--set", "evolve.source=seeds", "--set", "teacher.concurrency=1"]
    result = CliRunner().invoke(cli, [str(a) for a in ("evolve", *flags, "--max-tokens-total", 80)])
    assert result.exit_code == 3, result.output
    run = tmp_path / "r"
    left = 6 - len([t for t in [*read(run / "evolve.jsonl"), *read(run / "rejected.jsonl")] if t["stage"] == "evolve"])
    assert left > 0
    text = " ".join(result.output.split())
    assert text.endswith(f"pending: evolve {left} slots with rounds to go"), text
    assert "still to run" not in text
    entry = manifest(run)["stages"]["evolve"]
    assert entry["pending"] == left and entry["stopped"]["status"] == "budget"
    assert counts_row(run, "evolve")[-1] == str(left)

    invoke("run", *teacher_flags(fake_openai, tmp_path, "s"), "--num-instructions", 4)
    scored = tmp_path / "s"
    rated = '{"rating": 4, "reason": "fine"}'
    fake_openai.default_reply = lambda path, body, plain=fake_openai.default_reply: (
        fake_openai.wrap(path, rated) if "Rate the response" in fake_openai.prompt_of(body) else plain(path, body))
    for _ in range(2):
        fake_openai.enqueue({"error": {"message": "boom"}}, status=500)
    result = CliRunner().invoke(cli, ["score", str(scored), "--set", "teacher.max_retries=0",
                                      "--set", "teacher.concurrency=1"])
    assert result.exit_code == 5, result.output
    text = " ".join(result.output.split())
    assert text.endswith("run the same command again to retry what is pending pending: score 2 rows to rate"), text
    assert manifest(scored)["stages"]["score"]["pending"] == 2
    invoke("score", scored)  # the two rows, rated now
    assert manifest(scored)["stages"]["score"]["pending"] == 0 and "stopped" not in manifest(scored)["stages"]["score"]


def test_ifd_counts_the_rows_it_has_left_once_it_has_started(tmp_path):
    """An interrupted ifd (minutes on CPU) was "still to run" though ifd.jsonl held part of its rows."""
    from pipeline.config import load_config
    from pipeline.context import RunContext
    from pipeline.records import Instance, Task
    from pipeline.runner import STEPS
    from pipeline.stops import left
    from pipeline.store import pending_line, write_jsonl_atomic

    ctx = RunContext(load_config(None, {"output_dir": str(tmp_path), "run_name": "r"}))
    run = ctx.run.ensure()
    write_jsonl_atomic(run.stage_file("filter"), [
        Task(id=f"t{i}", instruction=f"Name a garden bird, number {i}.", origin="machine", stage="filter",
             instances=[Instance("", "A robin."), Instance("small", "A wren.")]) for i in range(3)])
    write_jsonl_atomic(run.stage_file("ifd"), [Task(id="t0-0", instruction="Name a garden bird, number 0.",
                                                    stage="ifd")])
    ifd = next(s for s in STEPS if s.name == "ifd")
    assert left(ctx, [ifd], []) == {}  # not started this session: "still to run"
    todo = left(ctx, [ifd], [ifd])
    assert todo == {"ifd": 5}  # 6 rows, 1 scored
    assert pending_line(todo, 100, ["ifd"], set()) == "pending: ifd 5 rows to score"


def test_show_says_one_line_per_stop_and_leaves_out_the_stop_its_status_says(tmp_path):
    from pipeline.records import Task
    from pipeline.store import RunDir, write_jsonl_atomic

    run = RunDir(tmp_path / "r").ensure()
    write_jsonl_atomic(run.stage_file("bootstrap"), [Task(id=f"b{i}", instruction=f"Task {i}.") for i in range(11)])
    stop = {"status": "failed", "reason": "TeacherUnavailable: no endpoint answers", "at": "2026-12-07T10:00:00+0000",
            "command": "seed2lora run r"}
    flow = {"bootstrap": {"pending": 29, "stopped": stop}, "classify": {"pending": 2, "stopped": stop},
            "instances": {"pending": 0}, "filter": {"kept": 9}}
    run.update_manifest(status="done", reason=None, stages=flow, config={"bootstrap": {"num_instructions": 40}})
    shown = " ".join(invoke("show", run.path, "--sample", 0).output.split())
    assert "status: stopped short" in shown
    assert ("bootstrap, classify stopped short (11 of 40 instructions kept; pending: classify 2 tasks), and "
            "instances, filter ran since on what they kept. The stop, 2026-12-07T10:00:00+0000, seed2lora run r: "
            "TeacherUnavailable: no endpoint answers") in shown
    # The same stop, as the manifest's own status and reason: said once, by the reason line
    run.update_manifest(status="failed", reason=f"{stop['reason']}. pending: bootstrap 29 of 40 instructions to go")
    shown = " ".join(invoke("show", run.path, "--sample", 0).output.split())
    assert "status: failed" in shown and "stopped short" not in shown


def test_a_killed_flow_is_shown_as_the_process_writing_all_its_stages(tmp_path):
    """After a kill -9 during instances of `seed2lora run`, `show` said "the process writing bootstrap ended": the
    manifest named the flow's first stage only, though bootstrap, classify and instances were all running."""
    from pipeline.show import summary
    from pipeline.store import RunDir

    run = RunDir(tmp_path / "r").ensure()
    run.update_manifest(status="running", stage="bootstrap", running=["bootstrap", "classify", "instances"])
    reason = summary(run)["reason"]  # no process holds the run: it was killed
    assert "the process writing bootstrap, classify, instances ended without a word" in reason, reason


def test_show_names_the_configured_teacher_of_a_run_killed_before_it_recorded_one(fake_openai, tmp_path):
    """A run killed (kill -9) before its teacher's first record: `show` said "teacher: ?", though the run's config
    names it. Now it gives that spec and says why it is not the recorded one; a run no teacher-calling step touched
    says none was recorded, and why."""
    from helpers import run_and_kill

    for _ in range(2):  # two bootstrap replies; every request after them waits past the kill
        fake_openai.enqueue(fake_openai.default_reply)
    fake_openai.default_delay = 30
    run = tmp_path / "k"

    def written():
        return (run / "bootstrap.jsonl").exists() and (run / "bootstrap.jsonl").read_text().strip()

    run_and_kill(fake_openai, tmp_path, written, "--num-instructions", 40, "--set", "teacher.concurrency=1")
    assert "teacher" not in manifest(run)  # the state the bug was seen in
    head = " ".join(invoke("show", run).output.split()).split("status:")[0]
    assert "teacher: openai:fake-model (as configured: the run stopped before it recorded its teacher)" in head, head

    seeds = tmp_path / "tasks.jsonl"  # a run made by `filter --input` alone: no teacher was ever called
    seeds.write_text(json.dumps({"instruction": "Name three rivers of Europe.",
                                "instances": [{"input": "", "output": "The Danube, the Rhine and the Seine."}]}) + "\n")
    invoke("filter", "--input", seeds, "--output-dir", tmp_path, "--run-name", "f")
    head = " ".join(invoke("show", tmp_path / "f").output.split()).split("status:")[0]
    assert "teacher: none recorded: no step that calls a teacher has run here" in head, head
