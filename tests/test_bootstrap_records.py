"""Bootstrap's records do not depend on how fast its filter is (issue 20): the fast ROUGE-L index (numba: common
tokens, postings, the tail scanned; or a small pool scanned whole) and the reference one (pure Python, the test
oracle of tests/test_similarity.py) keep and reject the same lines for the same reasons, with the same
most_similar_instructions and avg_similarity_score, byte for byte. So do the rules' one-pattern blacklist check and
the hand-written Task.to_dict, against the per-word searches and dataclasses.asdict they replace."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import pytest
from fakeserver import FakeOpenAI
from helpers import invoke, teacher_flags

from pipeline import similarity
from pipeline.config import FilterConfig
from pipeline.records import Instance, Task
from pipeline.stages.filter import instruction_reject_reason

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


def bootstrap_run(tmp_path, name: str, seeds: Path) -> tuple[bytes, bytes]:
    server = FakeOpenAI()  # its own: the replies a run did not take are not the next run's
    try:
        for reply in replies(30):
            server.enqueue(reply)
        invoke("bootstrap", *teacher_flags(server, tmp_path, name), "--seeds", seeds, "--num-instructions", 120,
               "--set", "teacher.concurrency=1", "--set", "bootstrap.yield_stop=0.0")
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
