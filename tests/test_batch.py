"""Batch mode (teacher.batch, --batch) against a fake Batch API that is rude like real ones: batches that take
several polls, lines that fail, a batch that expires, a server killed mid-batch, a client killed mid-batch."""

import json
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakebatch import FakeBatchOpenAI
from fakeserver import FakeOpenAI
from helpers import invoke, read, run_and_kill, teacher_flags

from pipeline.budget import Budget, attach_run
from pipeline.cache import ResponseCache
from pipeline.cli import cli
from pipeline.config import BudgetConfig, TeacherConfig
from pipeline.errors import TeacherError
from pipeline.teachers import GenParams, make_teacher
from pipeline.teachers.base import Request

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--batch", "--set", "teacher.batch_poll_s=0.02"]
STAGES = ("bootstrap", "classify", "instances", "filter")


@pytest.fixture
def fake_batch(monkeypatch):
    server = FakeBatchOpenAI()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield server
    server.close()


def batch_teacher(server, tmp_path, **teacher):
    """A batch teacher on its own run cache, its events in a list."""
    cfg = TeacherConfig(spec="openai:fake-model", base_url=server.url, api="chat", batch=True, batch_poll_s=0.01,
                        structured="off", **teacher)
    t = make_teacher(cfg, seed=1)
    t.preflight()
    events = []
    t.on_event = events.append
    attach_run(t, ResponseCache(tmp_path / "cache.sqlite"), "s1", Budget(BudgetConfig(), {}))
    return t, events


def shape(records):
    """What kinds of records a stage file holds: the sorted field names of each, counted."""
    return Counter(tuple(sorted(r)) for r in records)


def test_a_self_instruct_run_in_batch_mode_makes_the_records_of_a_direct_run(fake_batch, tmp_path):
    fake_batch.fail_every, fake_batch.expire_next = 7, 1  # a failed line in 7, and the first batch expires half done
    invoke("run", *teacher_flags(fake_batch, tmp_path, "b"), "--num-instructions", 12, *FAST)
    direct = FakeOpenAI()
    try:
        invoke("run", *teacher_flags(direct, tmp_path, "d"), "--num-instructions", 12)
    finally:
        direct.close()
    for stage in STAGES:
        b, d = read(tmp_path / "b" / f"{stage}.jsonl"), read(tmp_path / "d" / f"{stage}.jsonl")
        assert len(b) == len(d) == 12 and shape(b) == shape(d), stage
    assert fake_batch.history == []  # no prompt went the direct way
    assert fake_batch.creations >= 4  # bootstrap's waves, classify, instances, and the waves of failed lines
    sent = Counter(line["custom_id"] for line in fake_batch.lines)
    failed = sum(n - 1 for n in sent.values())
    assert 0 < failed <= len(sent) // 2  # only failed and expired lines went again
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["usage"]["instances"]["calls"] == 12 and manifest["usage"]["instances"]["errors"] == 0
    db = ResponseCache(tmp_path / "b" / "cache.sqlite")
    assert set(db.usage_by_model()) == {"fake-model@batch"} and db.open_waves() == [] and db.open_lines() == {}
    db.close()


def test_a_record_made_from_a_batch_reply_names_its_batch_and_wave_and_keeps_them_from_the_cache(fake_batch,
                                                                                                  tmp_path):
    """Only export.json said "batch": true. Every kept or rejected record whose reply came through a batch now
    names it (meta[f"{stage}_reply"]: batch, wave), read back from cache.sqlite too; a stage whose lines failed
    into a later wave no longer says every reply came at the first try."""
    fake_batch.fail_every = 5  # a failed line in 5 goes into the next wave
    out = invoke("run", *teacher_flags(fake_batch, tmp_path, "b"), "--num-instructions", 12, *FAST).output
    batches = set(fake_batch.batches)
    records = {stage: read(tmp_path / "b" / f"{stage}.jsonl") for stage in ("bootstrap", "classify", "instances")}
    for stage, rows in records.items():
        origins = [r["meta"][f"{stage}_reply"] for r in rows]
        assert rows and all(o["batch"] in batches and o["wave"] >= 1 for o in origins), stage
    later = [r for stage in ("classify", "instances") for r in records[stage] if r["meta"][f"{stage}_reply"]["wave"] > 1]
    assert later, "fail_every = 5 sends some lines in a second wave"
    for stage in ("classify", "instances"):
        line = next(x for x in out.splitlines() if f"{stage}: " in x and " tasks written (" in x)
        if any(r["meta"][f"{stage}_reply"]["wave"] > 1 for r in records[stage]):
            assert "first try" not in line and "of failed call" in line and "(a batch line failed in a wave" in line, line
    # Read back from the cache, by a direct teacher: the same batch and wave, and nothing sent
    (tmp_path / "b" / "classify.jsonl").unlink()
    invoke("classify", *teacher_flags(fake_batch, tmp_path, "b"))
    again = {r["id"]: r["meta"]["classify_reply"] for r in read(tmp_path / "b" / "classify.jsonl")}
    assert again == {r["id"]: r["meta"]["classify_reply"] for r in records["classify"]}
    assert fake_batch.history == []


def test_a_rejected_record_keeps_its_batch_beside_the_reply_text():
    from pipeline.stages.common import reply_meta
    from pipeline.teachers import Completion

    assert reply_meta(Completion("No task here.", "stop", batch="batch_7", retries=1)) == {
        "reply": "No task here.", "finish_reason": "stop", "batch": "batch_7", "wave": 2}
    assert reply_meta(Completion("No task here.", "stop", retries=3)) == {"reply": "No task here.",
                                                                           "finish_reason": "stop"}


def test_a_direct_reply_adds_nothing_to_a_record(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    direct = FakeOpenAI()
    try:
        invoke("run", *teacher_flags(direct, tmp_path, "d"), "--num-instructions", 4)
    finally:
        direct.close()
    assert all("classify_reply" not in r["meta"] and "instances_reply" not in r["meta"]
               for stage in ("classify", "instances") for r in read(tmp_path / "d" / f"{stage}.jsonl"))
    assert all("bootstrap_reply" not in r["meta"] for r in read(tmp_path / "d" / "bootstrap.jsonl"))


def test_a_batch_line_is_the_request_a_direct_call_sends(fake_batch, tmp_path):
    params = GenParams(max_tokens=20, temperature=0.7, stop=("\n\n", "16."), presence_penalty=2.0)
    direct = make_teacher(TeacherConfig(spec="openai:fake-model", base_url=fake_batch.url, api="chat",
                                        structured="off"), seed=1)
    direct.generate(["Name a colour."], params, kind="classify", salts=["s"])
    t, _ = batch_teacher(fake_batch, tmp_path)
    (reply,) = t.generate(["Name a colour."], params, kind="classify", salts=["s"])
    (line,) = fake_batch.lines
    assert line["body"] == fake_batch.history[0]["body"] and line["url"] == "/v1/chat/completions"
    assert line["custom_id"] == t.cache_key(Request(0, "Name a colour.", "s"), params)  # the cache key
    assert reply.ok and not reply.cached and t.cache.get(line["custom_id"]).text == reply.text
    assert t.usage.by_kind["classify"]["calls"] == 1


def test_progress_lines_come_from_request_counts_with_an_eta(fake_batch, tmp_path):
    fake_batch.polls_to_finish = 5
    t, events = batch_teacher(fake_batch, tmp_path)
    replies = t.generate([f"Question {i}?" for i in range(8)], GenParams(max_tokens=5), kind="classify")
    assert all(r.ok for r in replies) and fake_batch.creations == 1
    progress = [e for e in events if "batch progress" in e]
    assert 3 <= len(progress) <= 6  # one a poll, no flood
    assert any("/8 done" in e for e in progress) and any(" left" in e for e in progress)
    assert any("classify batch submitted: 8 classify requests" in e for e in events)


def test_failed_lines_go_into_the_next_wave_up_to_max_retries(fake_batch, tmp_path):
    fake_batch.fail_every = 1  # every line fails
    t, events = batch_teacher(fake_batch, tmp_path, max_retries=2)
    (reply,) = t.generate(["Hello?"], GenParams(max_tokens=5), kind="classify")
    assert not reply.ok and "HTTP 500" in reply.error and reply.retries == 2
    assert fake_batch.creations == 3  # the first try and 2 retries, one line each
    assert t.usage.by_kind["classify"]["errors"] == 1


def test_a_cancelled_batch_stops_the_run_and_its_unanswered_lines_are_not_resent(fake_batch, tmp_path):
    """OpenAI cancels a batch only at its owner's request: what it left unanswered is not sent again by itself."""
    from pipeline.teachers.batch_api import BatchCancelled
    advance = fake_batch._advance

    def cancel(batch):  # cancelled half answered, as a batch cancelled while it runs
        batch["_expires"] = True
        fake_batch._finish(batch)
        batch["status"] = "cancelled"
        return batch
    fake_batch._advance = cancel
    t, events = batch_teacher(fake_batch, tmp_path)
    prompts = [f"Question {i}?" for i in range(4)]
    with pytest.raises(BatchCancelled, match="2 of its requests unanswered"):
        t.generate(prompts, GenParams(max_tokens=5), kind="classify")
    assert fake_batch.creations == 1 and "not sent again" in [e for e in events if "batch ended" in e][0]
    fake_batch._advance = advance
    replies = t.generate(prompts, GenParams(max_tokens=5), kind="classify")  # the same command again
    assert all(r.ok for r in replies) and fake_batch.creations == 2
    sent = Counter(line["custom_id"] for line in fake_batch.lines)
    assert sorted(sent.values()) == [1, 1, 2, 2]  # the two answered went once; the two cancelled once more, by hand


def test_a_re_run_adopts_a_batch_created_before_its_id_was_recorded(fake_batch, tmp_path):
    """Killed between the create and recording its id: the batch is found by its input file, not created again."""
    t, _ = batch_teacher(fake_batch, tmp_path)
    req, params = Request(0, "Why is the sky blue?"), GenParams(max_tokens=5)
    body = t._body(req, params)
    key = t.cache_key(req, params)
    line = json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body})
    client = t._clients[0]
    f = client.files.create(file=("w.jsonl", line.encode()), purpose="batch")
    t.cache.log_wave(f.id, "/v1/chat/completions", [(key, "classify", '{"stop": [], "logprobs": 0}')], 0.0, 0)
    client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert t.cached(req, params)  # sent: paid for, to be awaited
    (reply,) = t.generate([req.prompt], params, kind="classify")
    assert reply.ok and fake_batch.uploads == 1 and fake_batch.creations == 1
    assert t.cache.open_waves() == []


def resume_awaiting_open_batches(fake_batch, cmd, env, point: str) -> None:
    """Run `cmd` again after a kill -9 mid-batch: each batch the killed run left running is named as awaited (before:
    nothing said it until its first poll's progress line), and no request is submitted twice."""
    fake_batch.polls_to_finish = 3
    running = [b for b in fake_batch.batches.values() if b["status"] != "completed"]
    again = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    said = " ".join((again.stdout + again.stderr).split())
    for b in running:
        assert f"{point} batch resumed: {b['id']} holds the {len(b['_lines'])} {point} requests an earlier session " \
               "submitted: awaited here, none sent again" in said, said
    sent = Counter(line["custom_id"] for line in fake_batch.lines)
    assert max(sent.values()) == 1  # no request submitted twice


@pytest.mark.parametrize("point", ["bootstrap", "classify"])
def test_kill_9_during_a_batch_then_a_re_run_resubmits_nothing(fake_batch, tmp_path, point):
    fake_batch.polls_to_finish = 40  # about a second of polls: the kill lands while the batch runs

    def kill_when():
        kinds = [(b["metadata"] or {}).get("seed2lora") for b in list(fake_batch.batches.values())]
        return point in kinds and all(b["_polls"] >= 2 for b in list(fake_batch.batches.values())
                                      if (b["metadata"] or {}).get("seed2lora") == point)

    cmd, env = run_and_kill(fake_batch, tmp_path, kill_when, "--num-instructions", "12", *FAST)
    before = fake_batch.creations
    waiting = sum(len(b["_lines"]) for b in fake_batch.batches.values() if b["status"] != "completed")
    for command in ("show", "cost", "run"):  # what was submitted and is not read yet: paid, and where
        shown = invoke(*cmd[3:], "--dry-run").output if command == "run" else invoke(command, tmp_path / "k").output
        assert f"{waiting} requests submitted and not read yet" in shown and "run the same command" in shown
        assert shown.count("not read yet") == 1, command
    if point == "classify":  # its one wave holds every task: the re-run sends none of them again
        dry = invoke(*cmd[3:], "--dry-run").output
        calls = {cells[0]: int(cells[2].replace(",", "")) for cells in (
            [c.strip() for c in line.strip("│ ").split("│")] for line in dry.splitlines() if line.startswith("│ "))}
        assert calls["classify"] == 0 and calls["instances"] == 12, dry  # before: classify 12, beside the open line
    resume_awaiting_open_batches(fake_batch, cmd, env, point)
    assert fake_batch.uploads == fake_batch.creations > before  # the re-run went on with new waves only
    for stage in STAGES:
        records = read(tmp_path / "k" / f"{stage}.jsonl")
        assert len({r["id"] for r in records}) == len(records) == 12, stage


def test_a_run_without_batch_over_open_batches_says_they_are_paid_already(fake_batch, tmp_path):
    """Killed mid-batch, then run again without --batch: the requests in the open batch are sent directly, and
    paid twice; the run says so before it sends them."""
    fake_batch.polls_to_finish = 400

    def kill_when():
        return any((b["metadata"] or {}).get("seed2lora") == "classify" and b["_polls"] >= 1
                   for b in list(fake_batch.batches.values()))

    cmd, _ = run_and_kill(fake_batch, tmp_path, kill_when, "--num-instructions", "6", *FAST)
    direct = invoke(*[a for a in cmd[3:] if a != "--batch"]).output
    assert "6 requests of this run wait in open Batch API batches" in direct and "add --batch" in direct
    assert direct.count("open Batch API batches") == 1  # once a command, not once a stage


def test_the_open_batches_note_gives_each_command_a_fix_it_takes(fake_batch, tmp_path):
    """The note came from the teacher with "add --batch" on any command, score's too, which has no --batch flag:
    each teacher now gets the fix the command that built it takes, for the table it was built from (its origin)."""
    from pipeline.cli import SCORE_FLAGS
    from pipeline.teachers import origin_of
    from pipeline.train.commands import EVAL_FLAGS

    db = ResponseCache(tmp_path / "cache.sqlite")
    db.log_wave("file-open", "/v1/chat/completions", [("k1", "classify", "{}"), ("k2", "classify", "{}")], 0.0, 0)
    direct = FakeOpenAI()
    try:
        for kind, origin, fix in (("classify", origin_of("teacher"), "--batch"),
                                  ("score", origin_of("teacher", SCORE_FLAGS), "--set teacher.batch=true"),
                                  ("score", origin_of("score.teacher", SCORE_FLAGS), "--set score.teacher.batch=true"),
                                  ("judge", origin_of("eval.judge", EVAL_FLAGS), "--set eval.judge.batch=true")):
            t = make_teacher(TeacherConfig(spec="openai:fake-model", base_url=direct.url, api="chat",
                                           structured="off"), seed=1, origin=origin)
            events = []
            t.on_event = events.append
            attach_run(t, db, "s1", Budget(BudgetConfig(), {}))
            (reply,) = t.generate(["Hello?"], GenParams(max_tokens=5), kind=kind)
            notes = [e for e in events if "wait in open Batch API batches" in e]
            assert reply.ok and len(notes) == 1 and notes[0].startswith("note: 2 requests"), (kind, events)
            assert f"add {fix}" in notes[0], (kind, notes[0])
            if kind != "classify":
                assert "add --batch" not in notes[0], notes[0]  # score and eval have no such flag
    finally:
        direct.close()
        db.close()


def test_a_server_killed_mid_batch_is_waited_for(fake_batch, tmp_path):
    fake_batch.polls_to_finish = 6

    def outage():
        while not fake_batch.creations:
            time.sleep(0.01)
        fake_batch.kill()
        time.sleep(1.0)
        fake_batch.come_back()

    threading.Thread(target=outage, daemon=True).start()
    result = invoke("run", *teacher_flags(fake_batch, tmp_path), "--num-instructions", 6, *FAST)
    assert "batch outage" in result.output
    assert max(Counter(line["custom_id"] for line in fake_batch.lines).values()) == 1
    assert len(read(tmp_path / "r" / "filter.jsonl")) > 0


def test_the_budget_stops_before_a_wave_over_max_cost_and_prices_at_the_batch_discount(fake_batch, tmp_path):
    prices = ["--set", 'budget.prices={"fake-model" = [100.0, 100.0]}']
    # At the batch price ($50 per 1M tokens), a bootstrap request at most (about 1,250 tokens) is about $0.06.
    result = CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_batch, tmp_path)), "--num-instructions",
                                      "12", *FAST, *prices, "--max-cost", "0.2"])
    assert result.exit_code == 3 and "budget reached" in result.output, result.output
    # Waves go while the spend and the waves in flight fit; the one that would pass the limit is cut to what fits.
    assert fake_batch.creations >= 1 and fake_batch.lines
    assert "the rest are not sent" in result.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["spend"]["cost_usd"] <= 0.2
    c = json.loads(invoke("cost", tmp_path / "r", "--json").output)[0]
    usage = c["models"]["fake-model@batch"]
    assert c["dataset_usd"] == pytest.approx((usage["prompt_tokens"] + usage["completion_tokens"]) * 50 / 1e6)
    assert "batch discount" in invoke("cost", tmp_path / "r").output
    shown = invoke("show", tmp_path / "r").output
    assert "fake-model@batch" in shown
    dry = invoke("run", *teacher_flags(fake_batch, tmp_path), "--num-instructions", 12, *FAST, *prices, "--dry-run")
    assert "fake-model@batch" in dry.output and "0.5 x the model's price" in dry.output
    lines_before = len(fake_batch.lines)
    invoke("run", *teacher_flags(fake_batch, tmp_path), "--num-instructions", 12, *FAST, *prices, "--max-cost", 100)
    sent = Counter(line["custom_id"] for line in fake_batch.lines)
    assert max(sent.values()) == 1 and len(fake_batch.lines) > lines_before
    assert len(read(tmp_path / "r" / "instances.jsonl")) == 12


def test_batch_mode_needs_a_server_with_the_batch_api(fake_batch, tmp_path):
    fake_batch.batch_api = False
    with pytest.raises(TeacherError, match="has no Batch API") as refused:
        batch_teacher(fake_batch, tmp_path)
    assert "/batches answered HTTP 404" in str(refused.value) and "unknown model" not in str(refused.value)
    with pytest.raises(TeacherError, match="--batch needs a server"):
        make_teacher(TeacherConfig(spec="embedded", batch=True))


def vllm_run_batch(server, wave: Path) -> None:
    """What `python -m vllm.entrypoints.openai.run_batch -i wave.jsonl -o wave.out.jsonl` writes: one output line
    per input line, the reply's body under response, answered here by the fake teacher."""
    out = []
    for n, text in enumerate(wave.read_text().splitlines()):
        line = json.loads(text)
        body = server.default_reply(line["url"], line["body"])
        out.append({"id": f"vllm-{n:08x}", "custom_id": line["custom_id"], "error": None,
                    "response": {"status_code": 200, "request_id": f"vllm-batch-{n:08x}", "body": body}})
    wave.with_name(wave.stem + ".out.jsonl").write_text("".join(json.dumps(x) + "\n" for x in out))


def test_a_folder_batch_runs_elsewhere_and_its_output_comes_back(tmp_path, monkeypatch):
    """teacher.batch_dir: each wave is written and the run stops (exit 5) naming the vLLM command; with the
    output beside it, the same command goes on. No server is asked anything, and no key is needed."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    teacher = FakeOpenAI()  # stands in for the model on the GPU box; never reached over HTTP
    folder = tmp_path / "waves"
    cmd = ["run", "--teacher", "openai:fake-model", "--output-dir", tmp_path, "--run-name", "f",
           "--num-instructions", 8, "--batch", "--set", f"teacher.batch_dir={folder}"]
    trips = 0
    try:
        for _ in range(12):
            result = CliRunner().invoke(cli, [str(a) for a in cmd])
            if result.exit_code == 0:
                break
            trips += 1
            assert result.exit_code == 5 and "vllm.entrypoints.openai.run_batch -i wave-" in result.output, \
                result.output
            for wave in folder.glob("wave-*.jsonl"):
                if not wave.name.endswith(".out.jsonl") and not wave.with_name(wave.stem + ".out.jsonl").exists():
                    vllm_run_batch(teacher, wave)
        else:
            raise AssertionError("the run never finished")
    finally:
        teacher.close()
    assert teacher.history == [] and teacher.probes == []
    assert trips >= 3  # bootstrap, classify and instances each waited for their wave at least once
    for stage in STAGES:
        assert len(read(tmp_path / "f" / f"{stage}.jsonl")) == 8, stage
    sent = Counter(json.loads(x)["custom_id"] for w in folder.glob("wave-*.jsonl") if ".out." not in w.name
                   for x in w.read_text().splitlines())
    assert max(sent.values()) == 1


def folder_teacher(tmp_path, **teacher):
    """A folder batch teacher (teacher.batch_dir) on its own run cache, its events in a list."""
    cfg = TeacherConfig(spec="openai:fake-model", batch=True, batch_dir=str(tmp_path / "waves"), **teacher)
    t = make_teacher(cfg, seed=1)
    events = []
    t.on_event = events.append
    attach_run(t, ResponseCache(tmp_path / "cache.sqlite"), "s1", Budget(BudgetConfig(), {}))
    return t, events


def write_output(wave: Path, line_of) -> None:
    """A wave's .out.jsonl: line_of(custom_id) is each output line's response and error."""
    rows = [{"id": "vllm-0", "custom_id": json.loads(x)["custom_id"], **line_of(json.loads(x))}
            for x in wave.read_text().splitlines()]
    wave.with_name(wave.stem + ".out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_relative_batch_dir_is_recorded_whole_and_a_missing_wave_names_the_folder(tmp_path, monkeypatch):
    """teacher.batch_dir relative to the directory the command ran in: the manifest records it whole, so a later
    command from elsewhere sees where they are. A folder without the run's wave stops with exit 2 naming it."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    cmd = ["run", "--teacher", "openai:fake-model", "--output-dir", "runs", "--run-name", "f", "--num-instructions",
           "8", "--batch", "--set", "teacher.batch_dir=waves"]
    result = CliRunner().invoke(cli, cmd)
    assert result.exit_code == 5 and "run_batch -i wave-" in result.output, result.output
    manifest = json.loads((tmp_path / "runs" / "f" / "manifest.json").read_text())
    assert manifest["config"]["teacher"]["batch_dir"] == str(tmp_path / "waves")
    assert manifest["teacher"]["batch_dir"] == str(tmp_path / "waves")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = CliRunner().invoke(cli, [*cmd[:3], "--output-dir", str(tmp_path / "runs"), *cmd[5:]])
    assert moved.exit_code == 2, moved.output
    assert "neither wave-" in moved.output and str(tmp_path / "elsewhere" / "waves") in moved.output
    again = CliRunner().invoke(cli, [*cmd[:3], "--output-dir", str(tmp_path / "runs"), *cmd[5:-1],
                                     f"teacher.batch_dir={tmp_path / 'waves'}"])
    assert again.exit_code == 5 and str(tmp_path / "waves" / "wave-") in again.output, again.output
    assert "teacher.batch_dir" in moved.output


def test_a_folder_wave_sent_again_after_its_lines_failed_is_a_new_wave(tmp_path):
    """The same lines again (a one-line wave whose line failed) make a new wave file, not the earlier one's id."""
    from pipeline.teachers.batch_api import WaveWritten
    t, _ = folder_teacher(tmp_path, max_retries=2)
    ask = lambda: t.generate(["Hello?"], GenParams(max_tokens=5), kind="classify")  # noqa: E731
    with pytest.raises(WaveWritten):
        ask()
    (first,) = (tmp_path / "waves").glob("wave-*.jsonl")
    write_output(first, lambda _: {"response": {"status_code": 500, "request_id": "r", "body": None},
                                   "error": "engine died"})
    with pytest.raises(WaveWritten) as waits:
        ask()
    waves = sorted(w for w in (tmp_path / "waves").glob("wave-*.jsonl") if ".out." not in w.name)
    (second,) = [w for w in waves if w != first]
    assert second.read_text() == first.read_text() and second.name in str(waits.value)
    fake = FakeOpenAI()
    try:
        write_output(second, lambda line: {"response": {"status_code": 200, "request_id": "r",
                                                        "body": fake.default_reply(line["url"], line["body"])},
                                           "error": None})
    finally:
        fake.close()
    (reply,) = ask()
    assert reply.ok and t.cache.open_waves() == []


def test_an_output_file_cut_short_is_read_up_to_the_cut_and_the_rest_goes_into_the_next_wave(tmp_path):
    """vLLM's run_batch writes its output as it goes: a copy taken early (or a killed run) ends in half a line."""
    from pipeline.teachers.batch_api import WaveWritten
    t, events = folder_teacher(tmp_path)
    ask = lambda: t.generate(["Hello?", "Bye?"], GenParams(max_tokens=5), kind="classify")  # noqa: E731
    with pytest.raises(WaveWritten):
        ask()
    (wave,) = (tmp_path / "waves").glob("wave-*.jsonl")
    write_output(wave, lambda _: {"response": {"status_code": 200, "request_id": "r", "body": {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "prompt_tokens_details": None}}},
        "error": None})
    out = wave.with_name(wave.stem + ".out.jsonl")
    out.write_text(out.read_text()[:-40])  # the second line cut short
    with pytest.raises(WaveWritten):  # the cut line's request, in a new wave
        ask()
    assert any("1 line of its results unreadable" in e for e in events), events
    (ended,) = [e for e in events if "batch ended" in e]
    assert "1 replies read" in ended and "1 line failed" in ended


@pytest.mark.parametrize("error", [
    {"error": {"message": "The model `fake-model` does not exist.", "type": "NotFoundError", "code": 404}},  # vLLM now
    {"object": "error", "message": "The model `fake-model` does not exist.", "type": "NotFoundError", "code": 404},
])
def test_a_line_refused_for_its_model_stops_the_run_with_the_reason(tmp_path, error):
    """vLLM's run_batch with another --model answers every line 404 (its ErrorResponse under `error`): the run
    stops with that reason, as a direct 404 does, and no line is said to go into the next wave."""
    from pipeline.teachers.batch_api import WaveWritten
    t, events = folder_teacher(tmp_path)
    ask = lambda: t.generate(["Hello?", "Bye?"], GenParams(max_tokens=5), kind="classify")  # noqa: E731
    with pytest.raises(WaveWritten):
        ask()
    (wave,) = (tmp_path / "waves").glob("wave-*.jsonl")
    write_output(wave, lambda _: {"response": {"status_code": 404, "request_id": "r", "body": None}, "error": error})
    with pytest.raises(TeacherError, match=r"HTTP 404 The model `fake-model` does not exist"):
        ask()
    ended = [e for e in events if "batch ended" in e]
    assert ended and "next wave" not in ended[-1] and "2 lines given up" in ended[-1]
    assert len(list((tmp_path / "waves").glob("wave-*.jsonl"))) == 2  # nothing more was written
    assert t.cache.open_waves() == []


def test_a_line_refused_with_a_400_is_an_error_whose_reason_is_shown(fake_batch, tmp_path):
    """A 4xx line is an error at once; the batch's line says so and why, not that it goes into the next wave."""
    t, events = batch_teacher(fake_batch, tmp_path)
    finish = fake_batch._finish

    def finish_400(batch):  # every line answered 400, as a prompt over the model's context is
        finish(batch)
        out = [json.loads(x) for x in fake_batch.files[batch["output_file_id"]].decode().splitlines()]
        for row in out:
            row["response"] = {"status_code": 400, "request_id": "r", "body": {"error": {
                "message": "This model's maximum context length is 8 tokens", "type": "invalid_request_error"}}}
        fake_batch.files[batch["output_file_id"]] = "".join(json.dumps(r) + "\n" for r in out).encode()
    fake_batch._finish = finish_400
    (reply,) = t.generate(["Hello?"], GenParams(max_tokens=5), kind="classify")
    assert not reply.ok and "maximum context length" in reply.error and fake_batch.creations == 1
    (ended,) = [e for e in events if "batch ended" in e]
    assert "1 line given up" in ended
    assert "maximum context length" in ended and "next wave" not in ended


# -- evolve and score through the Batch API --------------------------------------------------------------------------
EVOLVE_SCORE = ["--set", 'stages=["evolve", "score"]', "--set", "evolve.source=seeds", "--set", "evolve.rounds=2"]


def evolve_and_score_teacher(server):
    """Replies for evolve's three prompts and score's rubric; the server's own for the rest."""
    own = server.default_reply

    def reply(path, body):
        prompt = server.prompt_of(body)
        if "You are grading one example" in prompt:
            text = json.dumps({"rating": 2 if "jacket" in prompt else 4, "reason": "follows the instruction"})
        elif prompt.endswith("Judgement:"):
            text = "Not equal"
        elif prompt.endswith("Response:"):
            text = "A careful answer: first the facts, then the reasoning, then a short worked example."
        elif prompt.endswith(("Rewritten instruction:", "New instruction:")):
            given = prompt.rsplit("Instruction:\n", 1)[1].rsplit("\n\n", 1)[0].splitlines()[0]
            text = f"{given} Answer in three short steps and add one worked example."
        else:
            return own(path, body)
        return server.wrap(path, text)

    server.default_reply = reply


def seeds_file(tmp_path, n=4):
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join((ROOT / "seeds" / "seed_tasks.jsonl").read_text().splitlines(keepends=True)[:n]))
    return path


def test_evolve_and_score_in_batch_mode_make_the_records_of_a_direct_run(fake_batch, tmp_path):
    evolve_and_score_teacher(fake_batch)
    fake_batch.fail_every = 5  # a failed line in 5 goes into the next wave
    seeds = seeds_file(tmp_path)
    invoke("run", *teacher_flags(fake_batch, tmp_path, "b"), "--seeds", seeds, *EVOLVE_SCORE, *FAST)
    direct = FakeOpenAI()
    evolve_and_score_teacher(direct)
    try:
        invoke("run", *teacher_flags(direct, tmp_path, "d"), "--seeds", seeds, *EVOLVE_SCORE)
    finally:
        direct.close()
    for stage in ("evolve", "score"):
        b, d = read(tmp_path / "b" / f"{stage}.jsonl"), read(tmp_path / "d" / f"{stage}.jsonl")
        assert b and len(b) == len(d) and shape(b) == shape(d), stage
    assert len(read(tmp_path / "b" / "evolve.jsonl")) == 8  # 4 seeds, 2 rounds, every evolution kept
    batches = set(fake_batch.batches)
    for r in read(tmp_path / "b" / "evolve.jsonl"):  # each of its three replies names the batch that paid it
        for kind in ("evolve", "evolve_judge", "evolve_answer"):
            assert r["meta"][f"{kind}_reply"]["batch"] in batches and r["meta"][f"{kind}_reply"]["wave"] >= 1, kind
    assert not any(k.endswith("_reply") for r in read(tmp_path / "d" / "evolve.jsonl") for k in r["meta"])
    ratings = [{r["id"]: r["meta"]["score"]["rating"] for r in read(tmp_path / run / "score.jsonl")} for run in "bd"]
    assert ratings[0] == ratings[1] and set(ratings[0].values()) == {2, 4}  # the same rows, read the same way
    assert fake_batch.history == []  # no prompt went the direct way
    kinds = {(b["metadata"] or {}).get("seed2lora") for b in fake_batch.batches.values()}
    assert {"evolve", "score"} <= kinds, kinds
    assert max(Counter(line["custom_id"] for line in fake_batch.lines).values()) >= 2  # failed lines went again
    db = ResponseCache(tmp_path / "b" / "cache.sqlite")
    assert db.open_waves() == [] and db.open_lines() == {}
    db.close()


@pytest.mark.parametrize("point", ["evolve", "score"])
def test_kill_9_during_an_evolve_or_score_batch_then_a_re_run_resubmits_nothing(fake_batch, tmp_path, point):
    evolve_and_score_teacher(fake_batch)
    fake_batch.polls_to_finish = 40  # about a second of polls: the kill lands while the batch runs

    def kill_when():
        ours = [b for b in list(fake_batch.batches.values()) if (b["metadata"] or {}).get("seed2lora") == point]
        return bool(ours) and all(b["_polls"] >= 2 for b in ours)

    cmd, env = run_and_kill(fake_batch, tmp_path, kill_when, "--seeds", seeds_file(tmp_path), *EVOLVE_SCORE, *FAST)
    before = fake_batch.creations
    resume_awaiting_open_batches(fake_batch, cmd, env, point)
    assert fake_batch.uploads == fake_batch.creations >= before
    evolved = read(tmp_path / "k" / "evolve.jsonl")
    assert len({r["id"] for r in evolved}) == len(evolved) == 8
    scored = read(tmp_path / "k" / "score.jsonl")
    assert len({r["id"] for r in scored}) == len(scored) > 0


def test_every_waves_submitted_and_ended_line_is_said_at_a_short_poll(fake_batch, tmp_path):
    """Teacher events are limited to one a kind every 10 s: with a short teacher.batch_poll_s, a second wave's
    "batch submitted" and "batch ended" lines fell in the first's window and vanished unsaid (never even counted
    in an "and N more like it"). A wave's own lines are now every one said; progress lines stay limited."""
    fake_batch.fail_every = 5  # failed lines go again in later waves: several waves a stage, within a second
    out = invoke("run", *teacher_flags(fake_batch, tmp_path, "b"), "--num-instructions", 12, *FAST).output
    lines = " ".join(out.split()).replace("teacher: ", "\n").splitlines()
    submitted = [x for x in lines if re.match(r"\w+ batch submitted: ", x)]
    ended = [x for x in lines if re.match(r"\w+ batch ended: ", x)]
    assert fake_batch.creations >= 4
    assert len(submitted) == len(ended) == fake_batch.creations, out
    assert {re.search(r"as batch (\S+)", x).group(1) for x in submitted} == set(fake_batch.batches)


def test_the_open_batches_note_says_one_request_in_the_singular():
    from types import SimpleNamespace

    from pipeline.teachers.openai_compat import OpenAITeacher
    from pipeline.teachers.origin import Origin

    said = []
    teacher = SimpleNamespace(said_open_batches=False, cache=SimpleNamespace(open_lines=lambda: ["one"]),
                              origin=Origin(), _event=said.append)
    OpenAITeacher.note_open_batches(teacher)
    assert said and said[0].startswith("note: 1 request of this run waits in open Batch API batches"), said
