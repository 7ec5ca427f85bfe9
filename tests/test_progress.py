"""Progress: a bar with an ETA on a terminal, plain lines at least every interval off one (a fake clock)."""

import io
import re
import threading
from contextlib import ExitStack

import pytest
from rich.console import Console

from pipeline.errors import InputError
from pipeline.progress import (
    PLAIN_EVERY_ENV,
    EtaColumn,
    PlainProgress,
    format_duration,
    format_rate,
    no_progress,
    plain_interval,
    progress,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> Console:
    return Console(file=io.StringIO(), width=200)  # a StringIO is no terminal: what a log file or CI gets


def lines(console: Console) -> list[str]:
    return console.file.getvalue().splitlines()


def test_off_a_terminal_a_line_appears_once_the_interval_has_passed_with_counts_rate_and_eta():
    clock, out = FakeClock(), plain_console()
    with progress("evolve round 1/1, calls", 300, console=out, every_s=30, clock=clock, heartbeat=False) as advance:
        assert lines(out) == ["evolve round 1/1, calls: 0/300 (0%), started"]
        clock.now += 29
        advance(29)
        assert len(lines(out)) == 1  # not due yet
        clock.now += 1
        advance(1)
        assert lines(out)[-1] == "evolve round 1/1, calls: 30/300 (10%), 1.0/s, ETA 4m30s, 30s elapsed"
        clock.now += 10
        advance(3)
        assert len(lines(out)) == 2  # 10 s after the last line: none
    assert lines(out)[-1] == "evolve round 1/1, calls: 33/300 (11%), done in 40s (49.5/min)"


def test_a_line_is_due_even_when_nothing_advances():
    """The heartbeat calls tick(): a step stuck in one long call still writes its line."""
    clock, out = FakeClock(), plain_console()
    with progress("train, steps", 10, console=out, every_s=30, clock=clock, heartbeat=False) as advance:
        clock.now += 31
        assert advance.tick()
        assert lines(out)[-1] == "train, steps: 0/10 (0%), -/s, ETA ?, 31s elapsed"
        assert not advance.tick()


def test_the_heartbeat_thread_writes_lines_while_nothing_advances():
    out, seen = plain_console(), threading.Event()
    original = out.print

    def spy(*args, **kwargs):
        original(*args, **kwargs)
        if len(lines(out)) >= 3:
            seen.set()

    out.print = spy
    with progress("slow call", 4, console=out, every_s=0.01):
        assert seen.wait(5), lines(out)
    assert lines(out)[-1].startswith("slow call: 0/4 (0%), done in")


def test_an_unknown_total_still_prints_counts_and_rate():
    clock, out = FakeClock(), plain_console()
    with progress("bootstrap: prompts sent", None, console=out, every_s=30, clock=clock, heartbeat=False) as advance:
        clock.now += 60
        advance(120)
    assert lines(out) == ["bootstrap: prompts sent: 0, started", "bootstrap: prompts sent: 120, 2.0/s, 1m00s elapsed",
                          "bootstrap: prompts sent: 120, done in 1m00s (2.0/s)"]


def test_a_note_and_a_resumed_count():
    clock, out = FakeClock(), plain_console()
    p = PlainProgress("train, steps", 100, lambda line: out.print(line), every_s=30, clock=clock, done=40)
    p.note("loss 1.2345")
    clock.now += 30
    p.advance(6)  # 6 steps in this run's 30 s: the 40 resumed ones are not part of the rate
    assert lines(out)[-1] == "train, steps: 46/100 (46%), 12.0/min, ETA 4m30s, 30s elapsed, loss 1.2345"


def test_a_resumed_step_starts_and_ends_at_what_it_had_and_its_rate_is_this_sessions():
    clock, out = FakeClock(), plain_console()
    with progress("classify", 20, done=18, console=out, clock=clock, heartbeat=False) as advance:
        clock.now += 2
        advance(2)
    assert lines(out) == ["classify: 18/20 (90%), 18 from before this session, started",
                          "classify: 20/20 (100%), 18 from before this session, done in 2s (1.0/s)"]


def test_a_finished_run_run_again_counts_every_stage_as_done_before_not_0(fake_openai, tmp_path):
    """The measured bug: a resumed run with nothing left printed "classify: 0/6 (0%), done" (a bar that had
    the tasks' outcomes before this session counted from 0), and bootstrap's "20/20, done in 0s (889/s)"."""
    from helpers import invoke, teacher_flags

    flags = [*teacher_flags(fake_openai, tmp_path), "--num-instructions", 6]
    invoke("run", *flags)
    sent = len(fake_openai.history)
    output = invoke("run", *flags).output
    assert len(fake_openai.history) == sent  # nothing was left to send
    for stage in ("bootstrap: instructions kept", "classify", "instances"):
        assert re.search(rf"^{stage}: 6/6 \(100%\), 6 from before this session, done in \d+s$", output, re.M), output
    assert "0/6" not in output


def test_a_bar_at_its_total_still_open_says_when_it_got_there_not_an_eta():
    """The measured bug: in `run`'s flow bootstrap's bar stays open until classify and instances end, and its line
    said "20/20 (100%), 0.1/s, ETA 0s" every 30 s for minutes, its rate falling. At its total it says when it got
    there, and its last line times what it did, not the wait."""
    clock, out = FakeClock(), plain_console()
    with progress("bootstrap: instructions kept", 20, console=out, every_s=30, clock=clock, heartbeat=False) as adv:
        clock.now += 40
        adv(20)
        clock.now += 260
        assert adv.tick()
        assert lines(out)[-1] == "bootstrap: instructions kept: 20/20 (100%), complete after 40s, 5m00s elapsed"
    assert lines(out)[-1] == "bootstrap: instructions kept: 20/20 (100%), done in 40s (30.0/min)"
    clock, out = FakeClock(), plain_console()
    with progress("bootstrap: instructions kept", 20, done=20, console=out, clock=clock, heartbeat=False) as adv:
        clock.now += 300
        assert adv.tick()
        assert lines(out)[-1] == "bootstrap: instructions kept: 20/20 (100%), complete before this session, " \
                                 "5m00s elapsed"  # it said "-/s, ETA ?"
    clock, out = FakeClock(), plain_console()
    with progress("instances", 6, console=out, every_s=30, clock=clock, heartbeat=False) as adv:
        clock.now += 30
        adv(5)
        adv.set_total(5)  # its last task stopped at classify
        clock.now += 30
        assert adv.tick()
        assert lines(out)[-1] == "instances: 5/5 (100%), complete after 30s, 1m00s elapsed"


def test_on_a_terminal_a_bar_resumed_at_its_total_shows_no_eta():
    """rich marks a task finished only when it advances to its total: a resumed run's bootstrap, complete before it
    started, showed "ETA ?" beside 8/8 until classify and instances ended."""
    out = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    with progress("bootstrap: instructions kept", 8, done=8, console=out) as advance:
        advance.bar.refresh()
        frame = out.file.getvalue().rsplit("\r", 1)[-1]
    assert "8/8" in frame and "ETA" not in frame, frame


def test_in_a_flow_bootstrap_at_its_target_claims_no_eta_while_the_stages_after_it_run(fake_openai, tmp_path,
                                                                                        monkeypatch):
    from helpers import invoke, teacher_flags

    monkeypatch.setenv(PLAIN_EVERY_ENV, "0.02")
    fake_openai.default_delay = 0.05  # classify's and instances' 16 calls take 0.8 s after bootstrap's few
    output = invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                    "--set", "teacher.concurrency=1", "--set", 'stages=["bootstrap","classify","instances"]').output
    boot = [x for x in output.splitlines() if x.startswith("bootstrap: instructions kept: 8/8")]
    waiting = boot[:-1]  # the last is the bar's end, with the flow's
    assert waiting and all(re.fullmatch(r"bootstrap: instructions kept: 8/8 \(100%\), complete after \d+s, "
                                        r"\d+s elapsed", x) for x in waiting), output
    assert re.fullmatch(r"bootstrap: instructions kept: 8/8 \(100%\), done in \d+s \([\d.]+/(s|min)\)", boot[-1])


def test_an_interrupted_step_says_stopped():
    clock, out = FakeClock(), plain_console()
    with pytest.raises(KeyboardInterrupt), progress("x", 5, console=out, clock=clock, heartbeat=False) as advance:
        advance(2)
        raise KeyboardInterrupt
    assert lines(out)[-1] == "x: 2/5 (40%), stopped in 0s"


def test_a_step_at_its_total_when_the_run_stops_ends_done_not_stopped():
    """The measured bug: a Ctrl-C in `run`'s flow closed every bar "stopped", bootstrap's finished one too:
    "bootstrap: instructions kept: 12/12 (100%), stopped in 25s". A bar at its total is done; only one short of
    it stopped."""
    clock, out = FakeClock(), plain_console()
    with pytest.raises(KeyboardInterrupt), ExitStack() as bars:
        boot = bars.enter_context(progress("bootstrap: instructions kept", 12, console=out, clock=clock,
                                           heartbeat=False))
        inst = bars.enter_context(progress("instances", 12, console=out, clock=clock, heartbeat=False))
        clock.now += 25
        boot(12)
        clock.now += 35
        inst(4)
        raise KeyboardInterrupt
    assert lines(out)[-2] == "instances: 4/12 (33%), stopped in 1m00s (4.0/min)"
    assert lines(out)[-1] == "bootstrap: instructions kept: 12/12 (100%), done in 25s (28.8/min)"


def test_on_a_terminal_the_bar_has_an_eta_column():
    clock = FakeClock()
    out = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    with progress("classify: tasks labelled", 100, console=out, clock=clock) as advance:
        assert any(isinstance(c, EtaColumn) for c in advance.bar.columns)
        for _ in range(5):
            clock.now += 2
            advance(5)
        advance.note("loss 0.5")
        advance.bar.refresh()
        frame = out.file.getvalue().rsplit("\r", 1)[-1]
    assert re.search(r"classify: tasks labelled .*25/100 2\.5/s ETA 30s 10s loss 0\.5", frame), frame
    assert "started" not in out.file.getvalue()  # no plain lines on a terminal


def test_steps_opened_inside_one_another_share_one_bar():
    out = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    with progress("train, steps", 10, console=out) as outer:
        with progress("train: eval loss, batches", 3, console=out) as inner:  # rich refuses a second live display
            assert inner.bar is outer.bar and len(outer.bar.tasks) == 2
        assert len(outer.bar.tasks) == 1


def test_the_interval_setting():
    assert plain_interval() == 30.0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PLAIN_EVERY_ENV, "0.5")
        assert plain_interval() == 0.5
        mp.setenv(PLAIN_EVERY_ENV, "soon")
        with pytest.raises(InputError, match="SEED2LORA_PROGRESS_EVERY_S: 'soon' is not a positive number"):
            plain_interval()


def test_formats():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 7620)] == ["0s", "59s", "1m01s", "59m59s", "2h07m"]
    assert [format_rate(r) for r in (None, 250, 2, 0.5, 1 / 600)] == ["-/s", "250/s", "2.0/s", "30.0/min", "6.0/h"]


def test_no_progress_is_silent():
    with no_progress("x", 3) as advance:
        advance(1)
        advance.note("y")


def test_a_stage_with_its_output_captured_writes_plain_progress_lines(fake_openai, tmp_path, monkeypatch):
    """The measured bug: off a terminal, evolve printed nothing for 23 minutes. Now every stage writes lines."""
    from helpers import invoke, teacher_flags

    monkeypatch.setenv(PLAIN_EVERY_ENV, "0.01")
    fake_openai.default_delay = 0.05  # slow replies: lines are due between them
    user = tmp_path / "mine.jsonl"
    user.write_text("".join(f'{{"instruction": "Suggest a name for bakery number {i}."}}\n' for i in range(4)))
    output = invoke("classify", *teacher_flags(fake_openai, tmp_path, "u"), "--input", user,
                    "--set", "teacher.concurrency=1").output
    progress_lines = [x for x in output.splitlines() if x.startswith("classify: ") and "/4 (" in x]
    assert progress_lines[0] == "classify: 0/4 (0%), started"
    assert any(re.fullmatch(r"classify: \d/4 \(\d+%\), [-\d.]+/(s|min), ETA [\dms?]+, \d+s elapsed", x)
               for x in progress_lines[1:-1]), output
    assert re.fullmatch(r"classify: 4/4 \(100%\), done in \d+s \([\d.]+/(s|min)\)", progress_lines[-1]), output



def test_in_a_flow_a_task_that_stops_at_classify_lowers_the_instances_total(fake_openai, tmp_path):
    """The measured bug: in `run`'s flow the instances bar's total was num_instructions, and it ended "instances:
    5/6" when a task stopped at classify (the teacher failed on it). Now its total drops as tasks stop before it."""
    from helpers import invoke, read, teacher_flags

    plain, bad = fake_openai.default_reply, []

    def reply(path, body):  # the first task classify is asked about gets no usable reply, however often it is asked
        prompt = fake_openai.prompt_of(body)
        if "Is it classification?" in prompt and (not bad or bad[0] == prompt):
            bad[:] = [prompt]
            return {"choices": []}
        return plain(path, body)

    fake_openai.default_reply = reply
    flags = [*teacher_flags(fake_openai, tmp_path), "--num-instructions", 6, "--set", "teacher.max_retries=0"]
    output = invoke("run", *flags, expect=5).output  # incomplete: 1 pending in classify
    run = tmp_path / "r"
    assert len(read(run / "classify.jsonl")) == len(read(run / "instances.jsonl")) == 5
    # The task whose call failed is pending, not done: the bar never says 100% above "pending: classify 1 task"
    assert re.search(r"^classify: 5/6 \(83%\), 1 failed, ended in \d+s", output, re.M), output
    assert "pending: classify 1 task" in output and "classify: 6/6" not in output
    assert re.search(r"^instances: 5/5 \(100%\), done in \d+s \([\d.]+/(s|min)\), 1 stopped at an earlier stage$",
                     output, re.M), output
    fake_openai.default_reply = plain
    output = invoke("run", *flags).output  # resumed: the task goes through, and the bar counts it again
    assert re.search(r"^instances: 6/6 \(100%\), 5 from before this session, done in \d+s", output, re.M), output


def test_a_flow_bar_leaves_out_tasks_an_earlier_stage_rejected_in_earlier_sessions(tmp_path):
    from pipeline.config import load_config
    from pipeline.context import RunContext
    from pipeline.records import Task
    from pipeline.stages.common import map_progress

    ctx = RunContext(load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "bootstrap.num_instructions": 6}))
    ctx.run.ensure().replace_rejected("classify", [Task(id="t1", instruction="x").rejected("unparseable_reply: x", "classify")])
    assert map_progress(ctx, "classify", None) == ("classify", 6, 1)  # its own rejection: an outcome, done
    assert map_progress(ctx, "instances", None) == ("instances", 5, 0)  # never comes to instances


def test_units_whose_call_failed_are_not_counted_done():
    """The measured bug: "classify: 20/20 (100%), stopped" above "pending: classify 8 tasks" (a failed call
    advanced the bar). A failed unit is counted apart, and the bar ends short of 100% without saying done."""
    clock, out = FakeClock(), plain_console()
    with progress("classify", 20, console=out, every_s=30, clock=clock, heartbeat=False) as advance:
        clock.now += 30
        advance(12)
        assert lines(out)[-1] == "classify: 12/20 (60%), 24.0/min, ETA 20s, 30s elapsed"
        advance.fail(8)  # not due: said in the next line
        clock.now += 30
        assert advance.tick()
        assert lines(out)[-1] == "classify: 12/20 (60%), 8 failed, 12.0/min, ETA 0s, 1m00s elapsed"
    assert lines(out)[-1] == "classify: 12/20 (60%), 8 failed, ended in 1m00s (12.0/min)"
    with no_progress("x", 3) as silent:
        silent.fail(1)


def test_units_not_sent_after_a_failed_call_are_neither_done_nor_failed():
    """A chain of calls (an evolve slot) stops at its failed call: its later calls are counted apart, not as failed
    (a run with about 10 calls refused said "120 failed"), and the ETA does not wait for them."""
    clock, out = FakeClock(), plain_console()
    with progress("evolve round 1/4, calls", 120, console=out, every_s=30, clock=clock, heartbeat=False) as advance:
        clock.now += 30
        advance(60)
        advance.fail(1)
        advance.skip(11)
        clock.now += 30
        assert advance.tick()
        assert lines(out)[-1] == ("evolve round 1/4, calls: 60/120 (50%), 1 failed, 11 not sent after a failed call, "
                                  "1.0/s, ETA 48s, 1m00s elapsed")
    terminal = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    with progress("evolve", 12, console=terminal) as advance:
        advance.fail(1)
        advance.skip(11)
        advance.bar.refresh()
        frame = terminal.file.getvalue().rsplit("\r", 1)[-1]
    assert re.search(r"evolve .*0/12 .*1 failed, 11 not sent after a failed call", frame), frame
    with no_progress("x", 3) as silent:
        silent.skip(1)


def test_on_a_terminal_the_bar_names_its_failed_units_beside_its_note():
    out = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    with progress("classify", 10, console=out) as advance:
        advance(7)
        advance.fail(3)
        advance.note("1 stopped at an earlier stage")
        advance.bar.refresh()
        frame = out.file.getvalue().rsplit("\r", 1)[-1]
    assert re.search(r"classify .*7/10 .*3 failed, 1 stopped at an earlier stage", frame), frame


def test_a_stage_whose_calls_failed_ends_short_and_says_its_pending_count_once(fake_openai, tmp_path):
    """Items measured: "classify: 6/6 (100%), done" printed above "pending: classify 2 tasks", and the exit 5
    message said the count twice ("... 2 pending in classify; ..." and the pending line)."""
    from helpers import invoke, teacher_flags

    user = tmp_path / "mine.jsonl"
    user.write_text("".join(f'{{"instruction": "Suggest a name for bakery number {i}."}}\n' for i in range(6)))
    for _ in range(2):
        fake_openai.enqueue({"error": {"message": "boom"}}, status=500)
    output = invoke("classify", *teacher_flags(fake_openai, tmp_path, "u"), "--input", user,
                    "--set", "teacher.max_retries=0", "--set", "teacher.concurrency=1", expect=5).output
    assert re.search(r"^classify: 4/6 \(67%\), 2 failed, ended in \d+s", output, re.M), output
    assert "6/6" not in output and "100%" not in output
    text = " ".join(output.split())
    assert text.endswith("run the same command again to retry what is pending pending: classify 2 tasks"), text
    assert "2 pending" not in text and text.count("classify 2 tasks") == 1


def test_an_evolve_slot_stopped_by_a_failed_call_leaves_its_calls_out_of_the_count(fake_openai, tmp_path):
    """Evolve's bar counts calls: a slot whose call failed stops with its calls left pending, which the bar named
    as nothing (it ended "12/18, done" above exit 5); the message said the slots to go twice. Then it counted them
    all failed: a run with about 10 calls refused said "120 failed". One call failed; the slot's 5 others were
    never sent, and the bar says so apart."""
    import json

    from helpers import invoke, teacher_flags

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Describe the {w} in three sentences for a child."}) + "\n"
                            for w in ("ocean", "desert", "forest")))
    fake_openai.enqueue({"error": {"message": "boom"}}, status=500)  # the first slot's first call
    output = invoke("evolve", *teacher_flags(fake_openai, tmp_path), "--seeds", pool, "--rounds", 2,
                    "--set", "evolve.source=seeds", "--set", "teacher.concurrency=1", "--set", "teacher.max_retries=0",
                    expect=5).output
    assert re.search(r"^evolve rounds 1-2, calls: 12/18 \(67%\), 1 failed, 5 not sent after a failed call, "
                     r"ended in \d+s", output, re.M), output
    text = " ".join(output.split())
    assert text.endswith("1 teacher errors; run the same command again to retry what is pending "
                         "pending: evolve 1 slot with rounds to go"), text
