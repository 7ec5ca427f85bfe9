"""Bootstrap's filter in a forked process of its own (issue 20): the same records as the filter in the run's own
process, byte for byte; a child that dies is replaced by a filter of the parent's own, said and lossless; the child
holds none of the parent's files or sockets, ignores Ctrl-C, and ends with its parent."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_bootstrap_records import bootstrap_run

from pipeline.config import FilterConfig, load_config
from pipeline.errors import Seed2LoraError
from pipeline.records import Task
from pipeline.stages import bootstrap, filter_worker
from pipeline.stages.filter import InstructionFilter, Passed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _synthetic import SentenceGenerator, instructions  # noqa: E402

pytestmark = pytest.mark.skipif(not filter_worker.can_fork(), reason="the forked filter runs on Linux only")
ROOT = Path(__file__).resolve().parents[1]


def seeds_file(tmp_path) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": text, "instances": [{"input": "", "output": "An answer."}]})
                             + "\n" for text in instructions(300, seed=5)))
    return seeds


@pytest.mark.parametrize("seeds_only", [False, True])
def test_the_forked_filter_writes_the_records_of_the_filter_in_process(tmp_path, monkeypatch, seeds_only):
    """Kept and rejected lines, reasons, most_similar_instructions (named from the parent's copy of the pool, or of
    the seeds) and scores: byte for byte those of the filter in the run's own process."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    forked: list[int] = []
    start = filter_worker.ForkedFilter.__init__
    monkeypatch.setattr(filter_worker.ForkedFilter, "__init__",
                        lambda self, *a, **k: (start(self, *a, **k), forked.append(self.pid))[0])
    seeds, extra = seeds_file(tmp_path), ["--set", f"filter.rouge_against_seeds_only={str(seeds_only).lower()}"]
    own = bootstrap_run(tmp_path, "own", seeds, [*extra, "--set", "bootstrap.filter_process=off"])
    assert forked == []
    child = bootstrap_run(tmp_path, "child", seeds, [*extra, "--set", "bootstrap.filter_process=on"])
    assert len(forked) == 1
    kept, rejected = ([json.loads(line) for line in part.splitlines()] for part in child)
    reasons = {r["reject_reason"].split(":")[0] for r in rejected}
    assert len(kept) == 120 and {"duplicate", "blacklist", "too_short"} <= reasons, reasons
    assert seeds_only or "rouge_l" in reasons
    assert all(t["most_similar_instructions"] for t in kept)
    assert child == own
    with pytest.raises(ChildProcessError):  # reaped when bootstrap ended
        os.waitpid(forked[0], os.WNOHANG)


def lines_of(gen: SentenceGenerator, n: int) -> list[tuple[str, str]]:
    texts = [gen.sentence() for _ in range(n)]
    texts += texts[:2]  # the same line twice in one reply: the second is the caller's duplicate
    return [(f"id-{t}", t) for t in texts]


def test_a_dead_child_is_replaced_by_a_filter_here_said_and_with_the_same_verdicts():
    cfg = FilterConfig()
    seeds = instructions(50, seed=3)
    said: list[str] = []
    forked = filter_worker.ForkedFilter(InstructionFilter(cfg, seeds=seeds), said.append)
    own = InstructionFilter(cfg, seeds=seeds)
    gen = SentenceGenerator(8)
    try:
        for i in range(6):
            lines = lines_of(gen, 7)
            if i == 3:
                os.kill(forked.pid, signal.SIGKILL)
                pool = len(own.index)
            verdicts = forked.decide(lines)
            assert verdicts == own.decide(lines)
            assert verdicts[-2:] == [None, None]
        assert forked.local is not None and forked.pid is None
        assert len(said) == 1 and "the filter's process ended" in said[0] and "exit status -9" in said[0]
        assert f"the pool's {pool} instructions are indexed again here" in said[0]
        assert [forked.text_of(v)(v.top[0][0]) for v in verdicts if isinstance(v, Passed)] == \
            [own.index.text(v.top[0][0]) for v in verdicts if isinstance(v, Passed)]
    finally:
        forked.close()


def test_the_decisions_of_one_reply_add_each_passing_line_before_the_next_and_skip_its_repeats():
    filt = InstructionFilter(FilterConfig(), seeds=["Write a short poem about the sea at night."])
    lines = [("a", "Summarize the following news article in three sentences."),
             ("b", "Summarize the following news article in three short sentences."),  # close to "a": rouge_l
             ("a", "Summarize the following news article in three sentences."),  # a's repeat: not checked
             ("c", "Hi."),
             ("d", "List five fruits that are high in vitamin C.")]
    verdicts = filt.decide(lines)
    assert isinstance(verdicts[0], Passed) and verdicts[0].top[0][0] == 0
    assert verdicts[1].startswith("rouge_l: ") and "news article in three sentences" in verdicts[1]
    assert verdicts[2] is None and verdicts[3] == "too_short: 1 words" and isinstance(verdicts[4], Passed)
    assert len(filt.index) == 3  # the seed, a and d


def test_the_child_holds_no_file_of_the_parents_and_ignores_ctrl_c(tmp_path):
    held = open(tmp_path / "held.txt", "w")  # noqa: SIM115 (open across the fork on purpose)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    forked = filter_worker.ForkedFilter(InstructionFilter(FilterConfig(), seeds=["Write a poem about rain."]))
    try:
        time.sleep(0.2)  # the child closes what it inherited first thing
        fds = os.listdir(f"/proc/{forked.pid}/fd")
        targets = {os.readlink(f"/proc/{forked.pid}/fd/{fd}") for fd in fds if int(fd) > 2}
        assert len(targets) == 1 and next(iter(targets)).startswith("socket:"), targets  # its pipe alone
        os.kill(forked.pid, signal.SIGINT)
        verdicts = forked.decide([("x", "Describe the water cycle for a ten year old child.")])
        assert isinstance(verdicts[0], Passed) and forked.local is None
    finally:
        forked.close()
        held.close()
        server.close()


def test_the_child_ends_with_its_parent_even_after_kill_9(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.config import FilterConfig
        from pipeline.stages.filter import InstructionFilter
        from pipeline.stages.filter_worker import ForkedFilter
        f = ForkedFilter(InstructionFilter(FilterConfig(), seeds=["Write a poem about rain."]))
        print(f.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and not zombie(child):
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or zombie(child)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_filter_process_is_on_at_16_in_flight_and_on_needs_linux(monkeypatch):
    auto = load_config(None, {})
    assert bootstrap.forks(auto, 16) and not bootstrap.forks(auto, 8) and not bootstrap.forks(auto, 64, flowing=True)
    assert not bootstrap.forks(load_config(None, {"bootstrap.filter_process": "off"}), 64)
    assert bootstrap.forks(load_config(None, {"bootstrap.filter_process": "on"}), 1)
    monkeypatch.setattr(filter_worker.sys, "platform", "darwin")
    assert not bootstrap.forks(auto, 64)
    with pytest.raises(Seed2LoraError, match="bootstrap.filter_process = 'on' needs Linux.*Fix: --set"):
        bootstrap.forks(load_config(None, {"bootstrap.filter_process": "on"}), 64)


def test_a_passing_task_is_named_by_the_index_it_was_checked_against():
    cfg = FilterConfig(rouge_against_seeds_only=True)
    forked = filter_worker.ForkedFilter(InstructionFilter(cfg, pool=["Tell me a joke about cats and dogs."],
                                                          seeds=["Write a poem about rain in the city."]))
    try:
        task = Task(id="t", instruction="Compose some verses on the snow falling over a quiet city.")
        verdict = forked.decide([(task.id, task.instruction)])[0]
        assert isinstance(verdict, Passed) and verdict.seeds_only
        filter_worker.fill(forked, task, verdict)
        assert list(task.most_similar_instructions) == ["Write a poem about rain in the city."]
    finally:
        forked.close()


@pytest.mark.parametrize("setting", ["auto", "on"])
def test_a_flowing_run_forks_the_filter_only_when_told_and_reaps_it(tmp_path, monkeypatch, fake_openai, setting):
    """`run` (bootstrap flowing into classify and instances) reads each reply whole before its next prompt, so a
    forked filter never overlaps its work there: auto keeps it in process even at 16 in flight; on forks it, and
    the child ends with bootstrap."""
    from helpers import invoke, read, teacher_flags

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    forked: list[int] = []
    start = filter_worker.ForkedFilter.__init__
    monkeypatch.setattr(filter_worker.ForkedFilter, "__init__",
                        lambda self, *a, **k: (start(self, *a, **k), forked.append(self.pid))[0])
    invoke("run", *teacher_flags(fake_openai, tmp_path, "r"), "--num-instructions", 24, "--set",
           "teacher.concurrency=16", "--set", f"bootstrap.filter_process={setting}")
    assert len(forked) == (setting == "on") and len(read(tmp_path / "r" / "bootstrap.jsonl")) == 24
    for pid in forked:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_lines_sent_ahead_are_decided_in_order_and_a_repeat_of_one_passed_ahead_is_a_duplicate():
    """Bootstrap sends a reply's lines before it writes the reply before it (run_bootstrap's overlap): the child
    decides them in the order sent, a line repeating one it passed in an earlier batch not yet received comes back
    None, and a child killed with batches unreceived leaves them to the parent's own filter, in order."""
    cfg, seeds = FilterConfig(), instructions(40, seed=2)
    gen = SentenceGenerator(12)
    batches = [lines_of(gen, 6) for _ in range(5)]
    batches[1].append(batches[0][0])  # a repeat, across batches, of a line that passes
    own = InstructionFilter(cfg, seeds=seeds)
    expected = [own.decide(lines) for lines in batches]
    assert expected[1][-1] is None and isinstance(expected[0][0], Passed)
    for kill_after in (None, 1):
        forked = filter_worker.ForkedFilter(InstructionFilter(cfg, seeds=seeds))
        try:
            for lines in batches[:3]:
                forked.send(lines)
            got = [forked.receive()]
            if kill_after is not None:
                os.kill(forked.pid, signal.SIGKILL)
                time.sleep(0.1)
            for lines in batches[3:]:
                forked.send(lines)
            got += [forked.receive() for _ in range(4)]
            assert got == expected
            forked.send(lines_of(gen, 1))
            with pytest.raises(ValueError, match="sent and not received: receive"):  # its verdicts would come first
                forked.decide(lines_of(gen, 1))
            assert (forked.local is not None) == (kill_after is not None)
        finally:
            forked.close()


def test_kill_9_while_the_forked_filter_holds_a_reply_then_resume_loses_and_pays_nothing(tmp_path):
    """`bootstrap` at 16 in flight: a reply's lines wait at the filter while the one before is written (overlap).
    kill -9 then: a resume writes every line of every paid reply once, re-reads the unwritten ones from the cache,
    and re-sends only the requests in flight at the kill."""
    from collections import Counter

    from fakeserver import FakeOpenAI
    from helpers import read

    server = FakeOpenAI()
    server.default_delay = 0.05
    own, nth = server.default_reply, itertools.count()

    def staggered(path, body):  # replies come one by one, so the kill point lasts: the pool fills slowly
        time.sleep(min(0.05 * next(nth), 0.5))
        return own(path, body)

    server.default_reply = staggered
    cmd = [sys.executable, "-m", "pipeline", "bootstrap", "--teacher", "openai:fake-model", "--base-url", server.url,
           "--output-dir", str(tmp_path), "--run-name", "k", "--num-instructions", "30", "--set",
           "teacher.concurrency=16", "--set", "bootstrap.yield_stop=0.0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-test"}
    kept = tmp_path / "k" / "bootstrap.jsonl"
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (kept.exists() and len(read(kept)) >= 9) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.kill()
        proc.wait()
        killed_with = len(read(kept))
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        server.close()
    records = read(kept) + [r for r in read(tmp_path / "k" / "rejected.jsonl") if r["stage"] == "bootstrap"]
    assert 9 <= killed_with < 30 and len(read(kept)) == 30
    assert len({t["id"] for t in read(kept)}) == 30
    by_request = Counter(r["round"] for r in records)
    prompts = Counter(json.dumps(h["body"].get("messages") or h["body"].get("prompt"), sort_keys=True)
                      for h in server.history if h["body"].get("max_tokens") != 1)
    assert sum(n - 1 for n in prompts.values()) <= 16  # only those in flight at the kill were sent again
    assert set(by_request.values()) == {3}, by_request  # each reply's 3 lines, written once


def forked_bootstrap_parts(tmp_path):
    """A 40-instruction run's config (its filter forked), run folder, prompt log and a teacher that caches nothing,
    for driving Bootstrap's reads by hand."""
    from pipeline.cache import ResponseCache
    from pipeline.store import RunDir

    cfg = load_config(None, {"bootstrap.num_instructions": 40, "bootstrap.yield_stop": 0.0,
                             "bootstrap.filter_process": "on"})
    run, log = RunDir(tmp_path / "r"), ResponseCache(tmp_path / "r" / "cache.sqlite")
    teacher = type("T", (), {"api": "chat", "structured": False, "name": "openai:test", "concurrency": 1,
                             "cached": lambda self, req, params: False,
                             "usage": type("U", (), {"by_kind": {}})()})()
    return cfg, run, log, teacher


def test_a_reply_held_at_the_filter_is_not_marked_done_and_a_resume_reads_it_again(tmp_path):
    """With overlap a read leaves its reply at the filter, unwritten: it is not marked done by the next prompt's
    log, so a process that dies then leaves it open, and the resumed run writes its lines once."""
    from test_bootstrap_records import a_reply

    from pipeline.cache import ResponseCache
    from pipeline.prompts import Prompts
    from pipeline.seeds import load_seeds

    cfg, run, log, teacher = forked_bootstrap_parts(tmp_path)
    gen = SentenceGenerator(9)
    boot = bootstrap.Bootstrap(teacher, load_seeds(None), cfg, run, Prompts(), log)
    boot.__enter__()
    prompts = boot.requests()
    first, second = next(prompts), next(prompts)
    held = a_reply(gen)
    assert boot.read(first, held, overlap=1) == []  # at the filter, not written
    third = next(prompts)  # its log commits the marks waiting: none
    assert [n for n, _ in log.requests("bootstrap")[1]] == [first.key, second.key, third.key]
    assert not run.stage_file("bootstrap").exists() or run.read_stage("bootstrap") == []
    boot.pool.close()  # the process dies: nothing more is written
    log.close()
    log = ResponseCache(tmp_path / "r" / "cache.sqlite")
    with bootstrap.Bootstrap(teacher, load_seeds(None), cfg, run, Prompts(), log) as again:
        prompts = again.requests()
        req = next(prompts)
        assert (req.key, req.prompt) == (first.key, first.prompt)
        kept = again.read(req, held)
    lines = [r for r in run.read_stage("bootstrap") + run.read_rejected() if r.round == first.key]
    assert len(lines) == 7 and kept


def test_a_fork_that_fails_is_said_and_the_filter_runs_in_process(tmp_path, monkeypatch):
    from test_bootstrap_records import a_reply

    from pipeline.cache import ResponseCache
    from pipeline.prompts import Prompts
    from pipeline.seeds import load_seeds
    from pipeline.store import RunDir

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(filter_worker.os, "fork", no_fork)
    cfg = load_config(None, {"bootstrap.num_instructions": 20, "bootstrap.filter_process": "on"})
    teacher = type("T", (), {"api": "chat", "structured": False, "name": "openai:test", "concurrency": 64,
                             "cached": lambda self, req, params: False,
                             "usage": type("U", (), {"by_kind": {}})()})()
    said: list[str] = []
    run = RunDir(tmp_path / "r")
    with bootstrap.Bootstrap(teacher, load_seeds(None), cfg, run, Prompts(), ResponseCache(tmp_path / "c.sqlite"),
                             say=said.append) as boot:
        first = next(boot.requests())
        assert boot.read(first, a_reply(SentenceGenerator(3)))
    assert said == ["bootstrap: the filter's process could not start ([Errno 11] Resource temporarily unavailable); "
                    "it filters in this process"]
    assert isinstance(boot.pool.filter, InstructionFilter)
