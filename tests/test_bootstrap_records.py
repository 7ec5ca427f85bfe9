"""Bootstrap's records do not depend on how fast its filter is (issue 20): the fast ROUGE-L index (numba: common
tokens, postings, the tail scanned; or a small pool scanned whole) and the reference one (pure Python, the test
oracle of tests/test_similarity.py) keep and reject the same lines for the same reasons, with the same
most_similar_instructions and avg_similarity_score, byte for byte. So do the rules' one-pattern blacklist check and
the hand-written Task.to_dict, against the per-word searches and dataclasses.asdict they replace."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakeserver import FakeOpenAI
from helpers import invoke, teacher_flags

from pipeline import similarity
from pipeline.cache import ResponseCache
from pipeline.config import FilterConfig, load_config
from pipeline.errors import LowYield
from pipeline.prompts import Prompts
from pipeline.records import Instance, Task
from pipeline.seeds import load_seeds
from pipeline.stages import bootstrap
from pipeline.stages.filter import blacklisted, instruction_reject_reason
from pipeline.store import RunDir
from pipeline.teachers.base import Completion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _synthetic import SentenceGenerator, instructions  # noqa: E402


def replies(n: int) -> list[str]:
    """Chat replies continuing bootstrap's list (items 9-15): synthetic instructions (about 15% near-duplicates
    of earlier ones), lines repeated within and across replies, blacklisted and too-short lines."""
    rnd, gen = random.Random(7), SentenceGenerator(4)
    out, earlier = [], []
    for _ in range(n):
        items = [gen.sentence() for _ in range(5)]
        items.append(rnd.choice(["Draw a picture of a cat.", "Hi.", "Make a graph of the rainfall in Paris.",
                                 *(earlier[-8:] or ["Write a story."])]))
        items.append(items[0])
        earlier += items[:5]
        out.append("Here are more tasks:\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(items, 9)))
    return out


def bootstrap_run(tmp_path, name: str, seeds: Path, extra: list[str] = ()) -> tuple[bytes, bytes]:
    server = FakeOpenAI()  # its own: the replies a run did not take are not the next run's
    try:
        for reply in replies(30):
            server.enqueue(reply)
        invoke("bootstrap", *teacher_flags(server, tmp_path, name), "--seeds", seeds, "--num-instructions", 120,
               "--set", "teacher.concurrency=1", "--set", "bootstrap.yield_stop=0.0", *extra)
    finally:
        server.close()
    run = tmp_path / name
    return (run / "bootstrap.jsonl").read_bytes(), (run / "rejected.jsonl").read_bytes()


@pytest.mark.skipif(similarity.numba is None, reason="the numba backend")
def test_bootstrap_writes_the_same_records_with_the_fast_index_as_with_the_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    seeds = tmp_path / "seeds.jsonl"  # 700 seed tasks: small enough to be scanned whole, by default
    seeds.write_text("".join(json.dumps({"instruction": text, "instances": [{"input": "", "output": "An answer."}]})
                             + "\n" for text in instructions(700, seed=5)))
    whole = bootstrap_run(tmp_path, "whole", seeds)
    monkeypatch.setattr(similarity, "_SCAN_WHOLE", 0)  # the same pool past a freeze, so every path of a row runs
    fast = bootstrap_run(tmp_path, "fast", seeds)
    monkeypatch.setattr(similarity, "_available_backend", lambda: "python")
    reference = bootstrap_run(tmp_path, "reference", seeds)
    kept, rejected = ([json.loads(line) for line in part.splitlines()] for part in fast)
    reasons = {r["reject_reason"].split(":")[0] for r in rejected}
    assert len(kept) == 120 and {"rouge_l", "duplicate", "blacklist", "too_short"} <= reasons, reasons
    assert all(t["most_similar_instructions"] and t["avg_similarity_score"] > 0 for t in kept)
    assert fast == reference and whole == reference


def test_the_blacklist_names_the_first_word_of_the_list_as_the_per_word_search_did():
    cfg = FilterConfig(blacklist=["graph", "image", "images", "draw"])
    assert instruction_reject_reason("Draw the images of a graph for me.", cfg) == "blacklist: graph"
    assert instruction_reject_reason("Describe these IMAGES in two short lines.", cfg) == "blacklist: images"
    assert instruction_reject_reason("Describe the imagery of this short poem.", cfg) is None  # whole words only
    assert instruction_reject_reason("Describe the imagery of this short poem.", FilterConfig(blacklist=[])) is None


def test_to_dict_is_asdict_without_an_empty_reject_reason():
    task = Task(id="t", instruction="Sort these.", instances=[Instance("3, 1", "1, 3")], is_classification=False,
                most_similar_instructions={"Sort those.": 0.8}, avg_similarity_score=0.1,
                meta={"lineage": [{"id": "a", "ops": ("deepen", "widen")}], "tags": {"x": [1, 2.5, None]}})
    for t in (task, task.rejected("rouge_l: 0.8", "bootstrap")):
        expected = dataclasses.asdict(t)
        if expected["reject_reason"] is None:
            del expected["reject_reason"]
        got = t.to_dict()
        assert got == expected and list(got) == list(expected)
        assert json.dumps(got) == json.dumps(expected)
        got["meta"]["tags"]["x"].append(3)  # a copy, as asdict's: the record is untouched
        assert t.meta["tags"]["x"] == [1, 2.5, None]


def test_to_json_is_json_dumps_of_to_dict():
    """Task.to_json (no copy of the values first) writes the very text of json.dumps(to_dict()), instances and
    dataclasses in meta included; what json cannot write still fails."""
    @dataclasses.dataclass
    class Note:
        text: str
        parts: tuple = ()

    task = Task(id="t", instruction="Übersetze «das».", instances=[Instance("3, 1", "1, 3"), Instance()],
                most_similar_instructions={"Sort those.": 0.8, "Sort them.": 0.7000000000000001},
                avg_similarity_score=0.1, meta={"note": Note("n", ("a", 1)), "tags": {"x": [1, 2.5, None, True]},
                                                "ops": ("deepen",)})
    for t in (task, task.rejected("rouge_l: 0.8", "bootstrap"), Task(id="e", instruction="")):
        assert t.to_json() == json.dumps(t.to_dict(), ensure_ascii=False)
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        Task(id="s", instruction="x", meta={"s": {1}}).to_json()


def test_to_json_writes_most_similar_instructions_as_json_does():
    """most_similar_instructions from the kept texts of pool texts and scores (issue 20): json's own text for scores
    that repeat, 0.0 and -0.0 (equal, and written apart), NaN and Infinity, ints and bools equal to a kept float, a
    key that is not a string, and instances whose text spells the field; json.dumps of to_dict each time."""
    class Score(float):
        pass

    pool = ["Sort those.", "Übersetze «das».", 'Say "hi"\n\\ \u0000', ""]
    scores = [0.1, 0.7000000000000001, 1 / 3, 0.0, -0.0, 1.0, 1, True, 0, False, float("nan"), float("inf"),
              -float("inf"), 1e-300, Score(0.5), 0.5]
    rnd = random.Random(11)
    cases = [{rnd.choice(pool): rnd.choice(scores) for _ in range(rnd.randint(1, 4))} for _ in range(400)]
    cases += [{1: 0.5}, {None: 0.5, "a": 0.5}, {"a": 0.0}, {"a": -0.0}, {"a": 0.5, "b": -0.0}, {"a": -0.0}]
    spelt = Instance('"most_similar_instructions": {}', "x")  # a quote of a string has a backslash before it
    for similar in cases:
        for instances in ([], [spelt], [Instance({"most_similar_instructions": {}}, "y")]):
            t = Task(id="t", instruction="Sort these.", instances=instances, most_similar_instructions=similar,
                     avg_similarity_score=0.25, meta={"most_similar_instructions": {}})
            for record in (t, t.rejected("over_target: full", "bootstrap")):
                assert record.to_json() == json.dumps(record.to_dict(), ensure_ascii=False), similar


def test_the_blacklists_ascii_look_through_agrees_with_the_pattern():
    """The lower-cased substring look that spares most ASCII texts the pattern never hides a match: texts with the
    words in any case, inside other words, and non-ASCII ones whose case folding reaches ASCII (the long s, the
    Kelvin sign), against the pattern alone."""
    cfg = FilterConfig(blacklist=["image", "go to", "draw", "k-map"])
    texts = ["Draw a cat.", "DRAW", "Go To the shop", "go  to the shop", "withdraw the money", "images of k-maps",
             "Use a K-MAP here.", "Draw\u017f", "\u212a-map of it", "Describe the \u017fea.", "Plain text, nothing."]
    rnd = random.Random(3)
    texts += ["".join(rnd.choice("dragwimeotk- .\u017f\u212aDRAW") for _ in range(rnd.randint(0, 12)))
              for _ in range(3000)]
    # words that hold others ("images", "withdraw"): the look searches for the words no other holds (issue 20)
    for words in (["images", "image", "withdraw", "draw", "Go to", "go", "K-MAP"], ["k-maps", "toy", "Image"]):
        alone = re.compile("|".join(rf"\b{re.escape(w)}\b" for w in words), re.IGNORECASE)
        assert [t for t in texts if blacklisted(tuple(words))(t)] == [t for t in texts if alone.search(t)]
    pattern = re.compile("|".join(rf"\b{re.escape(w)}\b" for w in cfg.blacklist), re.IGNORECASE)
    found = [t for t in texts if blacklisted(tuple(cfg.blacklist))(t)]
    assert found == [t for t in texts if pattern.search(t)]
    assert {"Draw a cat.", "DRAW", "Go To the shop", "Use a K-MAP here.", "\u212a-map of it"} <= set(found)
    assert not {"withdraw the money", "go  to the shop", "Plain text, nothing."} & set(found)
    assert instruction_reject_reason("Please do not draw a cat here.", cfg) == "blacklist: draw"
    assert instruction_reject_reason("Please withdraw the money now.", cfg) is None


def new_bootstrap(tmp_path, target: int) -> tuple[bootstrap.Bootstrap, RunDir, ResponseCache]:
    cfg = load_config(None, {"bootstrap.num_instructions": target, "bootstrap.yield_stop": 0.0})
    run, log = RunDir(tmp_path / "r"), ResponseCache(tmp_path / "r" / "cache.sqlite")
    teacher = SimpleNamespace(api="chat", structured=False, name="openai:test", cached=lambda req, params: False,
                              usage=SimpleNamespace(by_kind={}))
    return bootstrap.Bootstrap(teacher, load_seeds(None), cfg, run, Prompts(), log), run, log


def a_reply(gen: SentenceGenerator) -> Completion:
    return Completion("\n".join(f"{i}. {gen.sentence()}" for i in range(9, 16)), "stop")


def test_a_replys_done_mark_goes_with_the_next_prompts_log_and_at_exit(tmp_path):
    """A reply read is marked done in the commit that logs the next prompt, or when bootstrap ends, never before
    its records are in the files: until then a resume would re-read it from the cache and find them written."""
    boot, run, log = new_bootstrap(tmp_path, 40)
    gen = SentenceGenerator(9)
    with boot:
        prompts = boot.requests()
        first, second = next(prompts), next(prompts)
        boot.read(first, a_reply(gen))
        assert [n for n, _ in log.requests("bootstrap")[1]] == [first.key, second.key]  # read, not yet marked
        assert len(run.read_stage("bootstrap")) + len(run.read_rejected()) == 7  # its records already written
        third = next(prompts)
        assert [n for n, _ in log.requests("bootstrap")[1]] == [second.key, third.key]  # marked with the third's log
        boot.read(second, a_reply(gen))
    assert [n for n, _ in log.requests("bootstrap")[1]] == [third.key]  # the second marked at exit; the third unread


def test_a_wait_or_the_last_prompt_marks_the_replies_read_at_once(tmp_path):
    """With no prompt to log (WAIT: those in flight should fill the pool; or the prompts are over) the replies read
    are marked at once, so a kill leaves a reply or two to re-read at most: a resume's yield watch never sees a
    run of re-read replies that keep nothing."""
    boot, run, log = new_bootstrap(tmp_path, 10)  # two prompts of 7 new lines each cover the gap: then WAIT
    gen = SentenceGenerator(9)
    with boot:
        prompts = boot.requests()
        first, second = next(prompts), next(prompts)
        boot.read(first, a_reply(gen))
        assert [n for n, _ in log.requests("bootstrap")[1]] == [first.key, second.key]
        assert next(prompts) is None  # WAIT
        assert [n for n, _ in log.requests("bootstrap")[1]] == [second.key]
        boot.read(second, a_reply(gen))
        for req in prompts:  # to the end of the prompts, each read as it comes
            if req is not None:
                boot.read(req, a_reply(gen))
        assert boot.pool.full and boot.ended
        assert log.requests("bootstrap")[1] == []  # every reply read is marked, before the exit


def test_a_new_prompt_is_fresh_and_a_resumed_runs_logged_prompt_is_not(tmp_path):
    """A prompt logged just now was never sent: its request says so (fresh) and the stream asks the cache nothing
    for it. A resumed run's logged prompt, its reply perhaps paid and cached, is not fresh: it is looked up."""
    boot, run, log = new_bootstrap(tmp_path, 40)
    with boot:
        prompts = boot.requests()
        first, second = next(prompts), next(prompts)
        boot.read(first, a_reply(SentenceGenerator(9)))
    assert first.fresh and second.fresh
    boot = bootstrap.Bootstrap(boot.teacher, load_seeds(None), boot.cfg, run, Prompts(), log)
    with boot:
        prompts = boot.requests()
        again, new = next(prompts), next(prompts)
    assert (again.key, again.prompt, again.fresh) == (second.key, second.prompt, False) and new.fresh


def test_the_stream_looks_up_every_request_but_a_fresh_one(tmp_path):
    from pipeline.teachers import make_teacher
    from pipeline.teachers.base import GenParams, Request

    server = FakeOpenAI()
    try:
        cfg = load_config(None, {"teacher.spec": "openai:m", "teacher.base_url": server.url, "teacher.api": "chat"})
        teacher = make_teacher(cfg.teacher)
        teacher.cache = ResponseCache(tmp_path / "cache.sqlite")
        asked = []
        lookup = teacher.cache.get_alone
        teacher.cache.get_alone = lambda key: asked.append(key) or lookup(key)
        requests = [Request(0, "one", "s0"), Request(1, "two", "s1", fresh=True), Request(2, "three", "s2")]
        replies = dict(teacher.stream(requests, GenParams(max_tokens=8), kind="bootstrap"))
    finally:
        server.close()
    assert sorted(r.key for r in replies) == [0, 1, 2] and len(asked) == 2


def test_the_yield_watch_says_its_line_each_window_warns_once_and_stops_below_the_floor():
    """_YieldWatch sums up the reject reasons only when it says something (issue 20): a line each window, the
    warning once below yield_warn, the stop below yield_stop, each naming the main reasons."""
    cfg = load_config(None, {"bootstrap.yield_window": 4, "bootstrap.yield_warn": 1.0, "bootstrap.yield_stop": 0.3,
                             "bootstrap.num_instructions": 1000})
    said: list[str] = []
    teacher = SimpleNamespace(usage=SimpleNamespace(by_kind={"bootstrap": {"prompt_tokens": 900,
                                                                            "completion_tokens": 100}}))
    watch = bootstrap._YieldWatch(cfg, teacher, SimpleNamespace(rejected_file="rejected.jsonl"), said.append)
    pool = SimpleNamespace(full=False, machine=["x"] * 30, new=30, reasons=Counter({"rouge_l": 5, "duplicate": 2}))
    for done, kept in enumerate([3, 2, 2, 1, 2, 3, 2, 2], 1):  # rates 2.0, 1.75, 2.0, 2.25, 2.25: no warning
        watch.after(kept, done, pool)
    assert said == [f"bootstrap: 30 of 1000 kept; {r} kept per prompt over the last 4 prompts, 30.00 per 1K tokens; "
                    "main reject reasons: rouge_l 5, duplicate 2" for r in ("2.00", "2.25")]
    for done, kept in enumerate([0, 1, 0], 9):  # rates 1.75, 1.25, 0.75: the warning
        watch.after(kept, done, pool)
    assert said[2:] == ["bootstrap: warning: only 0.75 instructions kept per prompt over the last 4 prompts; main "
                        "reject reasons: rouge_l 5, duplicate 2"]
    watch.after(2, 12, pool)  # 0.75 again: no second warning, the window's line, no stop
    assert len(said) == 4 and said[3].startswith("bootstrap: 30 of 1000 kept; 0.75 kept")
    with pytest.raises(LowYield, match=r"kept 0\.00 .*main reject reasons: rouge_l 5, duplicate 2"):
        for done in range(13, 17):  # rates 0.75, 0.5, 0.5, then 0.0 at 16: its line, then the stop
            watch.after(0, done, pool)
    assert len(said) == 5 and said[4].startswith("bootstrap: 30 of 1000 kept; 0.00 kept")


def test_bootstraps_line_says_one_prompt_and_one_instruction_in_the_singular():
    line = bootstrap.step_result(bootstrap.BootstrapResult(kept=1, new=1, rejected=0, requests=1)).message
    assert line.startswith("bootstrap: 1 new instruction kept (1 in the pool), 0 rejected, 1 prompt sent so far")
    line = bootstrap.step_result(bootstrap.BootstrapResult(kept=9, new=2, rejected=5, requests=3)).message
    assert "2 new instructions kept" in line and "3 prompts sent so far" in line
