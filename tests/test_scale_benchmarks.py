"""The helpers of benchmarks/alpaca_scale.py and benchmarks/prefix_share.py: the fake Self-Instruct teacher's
replies read as the stages read them, the quarter-rate ratio, and the prefix-share trie."""

import os
import random
import sys

import pytest
from conftest import ROOT

from pipeline.config import FilterConfig, RunConfig
from pipeline.prompts import Prompts
from pipeline.records import Task
from pipeline.stages.bootstrap import build_prompt, free_places
from pipeline.stages.filter import instruction_reject_reason
from pipeline.stages.instances import instance_prompt
from pipeline.stages.parse import parse_input_first, parse_numbered_list, parse_output_first, parse_yes_no

sys.path.insert(0, str(ROOT / "benchmarks"))
from _latency_server import SelfInstructReplies  # noqa: E402
from alpaca_scale import quarter_ratio  # noqa: E402
from prefix_share import shares  # noqa: E402


def test_the_fake_teacher_fills_every_free_place_with_instructions_the_stages_can_read():
    cfg, prompts = RunConfig(), Prompts()
    seeds = [Task(id=f"s{i}", instruction=f"Seed task number {i} about a topic.") for i in range(20)]
    _, prompt, _ = build_prompt(prompts, cfg, random.Random(0), seeds, [])
    replies = SelfInstructReplies(seed=0)
    new = parse_numbered_list(replies(prompt))  # a chat reply, as the benchmark's run asks for
    assert len(new) == free_places(cfg)  # 9. to 15.
    assert sum(instruction_reject_reason(t, FilterConfig()) is None for t in new) >= len(new) - 1
    task = Task(id="t", instruction="Summarize the paragraph in one sentence.")
    assert parse_yes_no(replies(prompts.render("classify.txt", instruction=task.instruction))) is not None
    name, text = instance_prompt(task, prompts)
    read = (parse_input_first if name == "instances_gen.txt" else parse_output_first)(replies(text))
    assert len(read) == 2 and all(i.output for i in read)


def test_quarter_ratio_is_one_when_flat_under_one_when_slower_late_and_none_for_a_file_written_whole():
    flat = [(t, 10 * t) for t in range(41)]
    assert quarter_ratio(flat) == pytest.approx(1.0)
    slowing = [(t, 20 * t) for t in range(11)] + [(10 + t, 200 + 5 * t) for t in range(1, 41)]  # 20/s, then 5/s
    assert quarter_ratio(slowing) == pytest.approx(5 / 20)
    assert quarter_ratio([(0, 0), (1, 0), (2, 3000), (3, 3000)]) is None


def test_prefix_shares_count_only_what_a_prompt_shares_with_earlier_ones():
    constant = list(range(1100))
    got = shares([constant + [5000, 1], constant + [5001, 2], [7, 8, 9]])
    total = 1102 + 1102 + 3
    assert got["shared"] == pytest.approx(1100 / total)  # the first prompt shares nothing, the third nothing
    assert got["block16"] == pytest.approx(1088 / total) and got["openai"] == pytest.approx(1024 / total)


def test_the_side_by_side_benchmarks_share_their_flags_and_child_process(tmp_path):
    """reply_calls.py and stage_threads.py each spelt client_cpu.py's flags, child hand-over and header again; they
    share client_cpu's now: --base, the hidden --child/--out (and --url/--server-pid where a server is used)."""
    import ast
    import json

    import client_cpu

    ap = client_cpu.side_by_side_parser("doc", "main", server=True)
    args = ap.parse_args(["--child", "calls", "--out", str(tmp_path / "r.json"), "--url", "u", "--server-pid", "7"])
    assert (args.base, args.child, args.url, args.server_pid) == ("main", "calls", "u", 7)
    assert "--child" not in ap.format_help() and "--out" not in ap.format_help()
    assert client_cpu.answered_child(args, lambda a: {"child": a.child}) is True
    assert json.loads((tmp_path / "r.json").read_text()) == {"child": "calls"}
    assert client_cpu.answered_child(ap.parse_args([]), lambda a: 1 / 0) is False  # the parent measures nothing
    assert client_cpu.header("main", "what").startswith(f"commit {client_cpu.head()}, base main; what; load average")
    for script in ("reply_calls.py", "stage_threads.py", "client_cpu.py"):
        tree = ast.parse((ROOT / "benchmarks" / script).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        made = [n for n in calls if getattr(n.func, "attr", "") == "ArgumentParser"]
        runs = [n for n in calls if getattr(n.func, "attr", "") == "run"
                and isinstance(n.func.value, ast.Name) and n.func.value.id == "subprocess"
                and "--child" in ast.unparse(n)]
        own = int(script == "client_cpu.py")  # the helpers' own parser and child process
        assert (script, len(made), len(runs)) == (script, own, own)


def test_bootstrap_bound_runs_each_arm_to_the_target():
    """benchmarks/bootstrap_bound.py patches the stage (a reader thread, one thread on the event loop, no filter):
    each arm must still grow the pool to its target through the real teacher stream, or its figures mean nothing
    (the reader arm once ended at a WAIT while its reader held the replies that would have filled the gap)."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bootstrap_bound.py"), "--repeat", "1",
                           "--instructions", "40"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")
            and line.split("|")[2].strip() == "1"}
    assert set(rows) == {"shipped", "own-filter", "reader", "inline", "filter-free"}, done.stdout
    assert all(int(row.split("|")[3].replace(",", "")) > 0 for row in rows.values())


def test_the_one_core_ceiling_is_the_runs_own_process_not_its_forked_filter():
    """client_cpu.py's CPU ceilings: a forked filter has a GIL (and a core) of its own, so the one-core ceiling is
    the run's own process's CPU alone; the all-cores one counts every client CPU with the server's."""
    import client_cpu

    one, every = client_cpu.ceilings(2.0, 0.3, own_ms=1.0)
    assert one == pytest.approx(1000 / 1.0 / client_cpu.IDEAL)
    assert every == pytest.approx(min(1.0, (os.cpu_count() or 1) * 1000 / 2.3 / client_cpu.IDEAL))
    assert client_cpu.ceilings(2.0, 0.3)[0] == pytest.approx(1000 / 2.0 / client_cpu.IDEAL)  # no fork: all of it
