"""Tasks flow on as they are kept (stages/flow.py): in `run`, classify and instances calls go out while bootstrap
is still under way, through one stream, and the run's files, counts and resume are those of the stages alone."""

import itertools
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from fakeserver import FakeOpenAI
from helpers import invoke, read, run_and_kill, teacher_flags

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.runner import STEPS, groups

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("bootstrap", "classify", "instances", "filter")


def kind(prompt: str) -> str:
    if "numbered list of" in prompt:
        return "bootstrap"
    if "Is it classification?" in prompt:
        return "classify"
    if prompt.rstrip().endswith(("Input:", "Class label:")):
        return "instances"
    return "other"


def kinds_sent(server: FakeOpenAI) -> list[str]:
    return [kind(server.prompt_of(h["body"])) for h in server.history]


def first_sent(server: FakeOpenAI, k: str) -> float:
    return min(h["at"] for h in server.history if kind(server.prompt_of(h["body"])) == k)


def last_reply(server: FakeOpenAI, k: str) -> float:
    return max(h["replied"] for h in server.history if kind(server.prompt_of(h["body"])) == k)


def summary(run: Path) -> dict:
    """What a run made, by kind: records per stage file, rejections per stage and rule, the manifest's counts."""
    manifest = json.loads((run / "manifest.json").read_text())
    rejected = Counter((r["stage"], r["reject_reason"].split(":")[0]) for r in read(run / "rejected.jsonl"))
    return {"records": {s: len(read(run / f"{s}.jsonl")) for s in STAGES}, "rejected": rejected,
            "stages": {s: manifest["stages"][s] for s in STAGES}, "status": manifest["status"],
            "labels": Counter(t["is_classification"] for t in read(run / "classify.jsonl")),
            "instances": sum(len(t["instances"]) for t in read(run / "instances.jsonl"))}


def test_classify_and_instances_go_out_before_bootstrap_ends_and_make_what_the_stages_alone_make(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    flags = ["--set", "bootstrap.num_instructions=24", "--set", "teacher.concurrency=16"]
    flowing, alone = FakeOpenAI(), FakeOpenAI()
    try:
        for server in (flowing, alone):
            server.default_delay = 0.1  # replies take a while, so several calls are in flight at once
        invoke("run", *teacher_flags(flowing, tmp_path, "flow"), *flags)
        for stage in STAGES[:3]:  # the stage commands: one stage each
            invoke(stage, *teacher_flags(alone, tmp_path, "alone"), *flags)
        invoke("filter", tmp_path / "alone")
        sent_flowing, sent_alone = kinds_sent(flowing), kinds_sent(alone)
    finally:
        flowing.close()
        alone.close()
    # A task bootstrap kept was classified while bootstrap's last prompts were out, and given instances while
    # classify's were; alone, each stage waits for the whole of the one before.
    assert first_sent(flowing, "classify") < last_reply(flowing, "bootstrap")
    assert first_sent(flowing, "instances") < last_reply(flowing, "classify")
    assert first_sent(alone, "classify") > last_reply(alone, "bootstrap")
    assert first_sent(alone, "instances") > last_reply(alone, "classify")
    assert Counter(sent_flowing) == Counter(sent_alone)
    assert summary(tmp_path / "flow") == summary(tmp_path / "alone")
    usage = json.loads((tmp_path / "flow" / "manifest.json").read_text())["usage"]
    assert {k: usage[k]["calls"] for k in ("bootstrap", "classify", "instances")} == \
        {k: n for k, n in Counter(sent_flowing).items()}


def test_only_run_flows_and_never_in_batch_mode(tmp_path):
    steps = [s for s in STEPS if s.name in STAGES]

    def plan(**settings):
        ctx = RunContext(load_config(None, {"output_dir": str(tmp_path), **settings}))
        return [[s.name for s in g] for g in groups(ctx, steps)]

    assert plan() == [["bootstrap", "classify", "instances"], ["filter"]]
    assert plan(**{"teacher.batch": True}) == [["bootstrap"], ["classify"], ["instances"], ["filter"]]
    ctx = RunContext(load_config(None, {"output_dir": str(tmp_path)}), input_path="x.jsonl")
    assert [[s.name for s in g] for g in groups(ctx, steps[1:])] == [["classify"], ["instances"], ["filter"]]


def test_kill_9_mid_flow_then_resume_makes_the_same_kinds_of_records_and_pays_nothing_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    flags = ["--num-instructions", "24", "--set", "teacher.concurrency=16"]
    server, whole = FakeOpenAI(), FakeOpenAI()
    server.default_delay = whole.default_delay = 0.1
    own, nth = server.default_reply, itertools.count()

    def staggered(path, body):  # bootstrap's replies come one by one, so the kill point lasts: its pool fills slowly
        if "numbered list of" in server.prompt_of(body):
            time.sleep(min(0.1 * next(nth), 0.6))
        return own(path, body)

    server.default_reply = staggered
    try:
        def mid_flow() -> bool:  # classify under way, bootstrap not done
            kept = tmp_path / "k" / "bootstrap.jsonl"
            return "classify" in kinds_sent(server) and kept.exists() and len(read(kept)) < 24

        cmd, env = run_and_kill(server, tmp_path, mid_flow, *flags)
        killed_with = len(read(tmp_path / "k" / "bootstrap.jsonl"))
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        invoke("run", *teacher_flags(whole, tmp_path, "whole"), *flags)
    finally:
        server.close()
        whole.close()
    assert killed_with < 24
    run = tmp_path / "k"
    for stage in STAGES:
        ids = [r["id"] for r in read(run / f"{stage}.jsonl")]
        assert len(ids) == len(set(ids)), f"duplicates in {stage}"
    resumed, uninterrupted = summary(run), summary(tmp_path / "whole")
    assert resumed["records"] == uninterrupted["records"] and resumed["status"] == "done"
    # Which instructions the re-sent prompts got differs (the fake teacher never repeats one); each record's kind not.
    assert all(t["is_classification"] == ("Compare" in t["instruction"]) for t in read(run / "classify.jsonl"))
    assert all(t["instances"] for t in read(run / "instances.jsonl"))
    # The fake teacher repeats itself past its 25 topics: the re-sent prompts' lines may be duplicates, nothing worse.
    assert set(resumed["rejected"]) <= {("bootstrap", r) for r in ("over_target", "duplicate", "rouge_l")}
    # Only calls in flight at the kill (at most `concurrency` = 16) were sent twice: the rest came from the cache.
    # The preflight's one-token probes (api auto's "Say OK." on /completions) are sent once per process: not calls.
    prompts = Counter(json.dumps(h["body"].get("messages") or h["body"].get("prompt"), sort_keys=True)
                      for h in server.history if h["body"].get("max_tokens") != 1)
    assert sum(n - 1 for n in prompts.values()) <= 16
    usage = json.loads((run / "manifest.json").read_text())["usage"]
    assert sum(u["calls"] for u in usage.values()) <= len(server.history)


def test_the_yield_stop_in_a_flow_stops_the_run_with_exit_6_and_consistent_files(fake_openai, tmp_path):
    """Bootstrap's replies are read on the flow's reader thread: its stop (LowYield) still ends the run, exit 6."""
    same = "9. Describe how tide pools form along rocky coasts.\n10. Explain the rules of cricket to a child."
    competent = fake_openai.default_reply
    fake_openai.default_reply = lambda path, body: (fake_openai.wrap(path, same) if "numbered list of" in
                                                    fake_openai.prompt_of(body) else competent(path, body))
    result = CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_openai, tmp_path)), "--num-instructions",
                                      "100", "--set", "bootstrap.yield_window=10", "--set", "teacher.concurrency=4"])
    assert result.exit_code == 6, result.output
    assert "yield_stop" in " ".join(result.output.split())
    run = tmp_path / "r"
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    kept = {t["id"] for t in read(run / "bootstrap.jsonl")}
    assert len(kept) == 2 and {t["id"] for t in read(run / "classify.jsonl")} <= kept
    assert sum(kind(fake_openai.prompt_of(h["body"])) == "bootstrap" for h in fake_openai.history) <= 16


def test_bootstraps_first_wave_in_a_flow_is_the_fewest_prompts_that_can_fill_the_pool(fake_openai, tmp_path,
                                                                                       monkeypatch):
    """Before any reply, each prompt counts as filling its 7 free places (9. to 15.): for 43 instructions the first
    wave is 7 prompts (6 give 42; 6 or 8 places a prompt would make it 8 or 6), with 16 slots free; a teacher that
    fills every list needs no second wave. benchmarks/stream_flow.py's bound rests on this wave (29 for 200).

    The wave is counted where it is decided: the prompts bootstrap has made when it reads its first reply. The
    stream pulls a wave without handing a reply over, so that count does not hang on thread scheduling, and the
    server answers at once. (Counted at the server, as prompts that arrived before the first reply went out, it
    did: the server held its replies until the client had sent nothing for a second, and on a loaded machine the
    wave's 7th prompt once came later than that.)"""
    import itertools

    from pipeline.stages import bootstrap

    words = itertools.count()
    competent = fake_openai.default_reply

    def full_list(path, body):
        if "numbered list of" not in fake_openai.prompt_of(body):
            return competent(path, body)
        items = [f"Describe the history of invented topic number {next(words)} in four sentences." for _ in range(7)]
        return fake_openai.wrap(path, "\n".join(f"{i}. {t}" for i, t in enumerate(items, 9)))

    made_at_first_read = []
    read_reply = bootstrap.Bootstrap.read

    def counting_read(self, req, reply):
        if not made_at_first_read:
            made_at_first_read.append(self.log.requests("bootstrap")[0])
        return read_reply(self, req, reply)

    monkeypatch.setattr(bootstrap.Bootstrap, "read", counting_read)
    fake_openai.default_reply = full_list
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 43, "--set", "teacher.concurrency=16",
           "--set", "filter.rouge_threshold=1.0")
    assert made_at_first_read == [7]
    assert Counter(kinds_sent(fake_openai)) == {"bootstrap": 7, "classify": 43, "instances": 43}
    over = [r for r in read(tmp_path / "r" / "rejected.jsonl") if r["reject_reason"].startswith("over_target")]
    assert len(read(tmp_path / "r" / "filter.jsonl")) == 43 and len(over) == 7 * 7 - 43
