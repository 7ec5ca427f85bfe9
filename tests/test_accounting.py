"""Nothing paid for is lost: every task line a teacher sends ends kept or rejected (issue #18).

Before: lines that arrived after the pool reached its target were dropped by a `break`, with no
record (about 91 parsed candidates in a 200-instruction run at 16 in flight), and every prompt in
flight near the target was sent for nothing.
"""

import json
import sqlite3
from collections import Counter

from helpers import invoke, read, teacher_flags

from pipeline.stages.parse import parse_numbered_list


def bootstrap_prompts(server):
    return [h for h in server.history if "numbered list of" in server.prompt_of(h["body"])]


def lines_sent(server) -> int:
    """Task lines in every bootstrap reply the fake server sent (it writes 3 per reply)."""
    return 3 * len(bootstrap_prompts(server))


def bootstrap_records(run):
    kept = read(run / "bootstrap.jsonl")
    rejected = [r for r in read(run / "rejected.jsonl") if r["stage"] == "bootstrap"] \
        if (run / "rejected.jsonl").exists() else []
    return kept, rejected


def test_every_line_past_the_target_is_recorded_as_over_target(fake_openai, tmp_path):
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 7,
           "--set", "teacher.concurrency=1")
    kept, rejected = bootstrap_records(tmp_path / "r")
    assert len(kept) == 7
    # 3 prompts of 3 lines: 7 kept, 2 past the target, each with its reason and its text.
    assert len(kept) + len(rejected) == lines_sent(fake_openai) == 9
    assert [r["reject_reason"].split(":")[0] for r in rejected] == ["over_target"] * 2
    assert all(r["instruction"] for r in rejected)
    shown = invoke("show", tmp_path / "r").output.replace("\n", " ")
    assert "over_target" in shown and "2 bootstrap lines passed the filter after the pool was full" in shown


def test_near_the_target_only_the_prompts_the_gap_needs_are_in_flight(fake_openai, tmp_path):
    fake_openai.default_delay = 0.2  # replies take a while, so a careless client would fill all 16 slots
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 4,
           "--set", "teacher.concurrency=16")
    kept, rejected = bootstrap_records(tmp_path / "r")
    assert len(kept) == 4
    # 2 prompts at the assumed 2 per prompt cover the gap of 4; the fake keeps 3 per prompt.
    assert len(bootstrap_prompts(fake_openai)) == 2
    assert len(kept) + len(rejected) == lines_sent(fake_openai)


def test_a_large_concurrent_run_accounts_for_every_line(fake_openai, tmp_path):
    """Sixteen in flight, replies racing each other: still every line ends kept or rejected."""
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 20,
           "--set", "teacher.concurrency=16")
    run = tmp_path / "r"
    kept, rejected = bootstrap_records(run)
    assert len(kept) == 20
    assert len(kept) + len(rejected) == lines_sent(fake_openai)
    reasons = Counter(r["reject_reason"].split(":")[0] for r in rejected)
    assert reasons["over_target"] > 0 and all(reasons), reasons
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done"


def test_a_resumed_run_reads_paid_replies_even_when_the_pool_is_full(fake_openai, tmp_path):
    """A reply paid for (cached) but not yet read when the run stopped is read on resume, without a call."""
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 6,
           "--set", "teacher.concurrency=1")
    run = tmp_path / "r"
    with sqlite3.connect(run / "cache.sqlite") as db:
        # Forget that the last prompt's reply was read, and the records it made: as after kill -9 at that moment.
        (sent,) = db.execute("SELECT count(*) FROM requests WHERE stage = 'bootstrap'").fetchone()
        db.execute("UPDATE requests SET done = 0 WHERE stage = 'bootstrap' AND n = ?", (sent - 1,))
    kept = [t for t in read(run / "bootstrap.jsonl") if t["round"] != sent - 1]
    (run / "bootstrap.jsonl").write_text("".join(json.dumps(t) + "\n" for t in kept))
    rejected = [r for r in read(run / "rejected.jsonl") if r["round"] != sent - 1]
    (run / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
    calls = len(fake_openai.history)
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 6,
           "--set", "teacher.concurrency=1")
    assert len(fake_openai.history) == calls  # nothing sent
    kept, rejected = bootstrap_records(run)
    assert len(kept) == 6 and len(kept) + len(rejected) == lines_sent(fake_openai)


def test_the_parser_count_matches_the_fake_server():
    reply = "Sure! Here are some new tasks:\n\n9. A b c d.\n10. E f g h.\n11. I j k l."
    assert len(parse_numbered_list(reply)) == 3


def test_instances_past_the_maximum_are_recorded_not_cut(fake_openai, tmp_path):
    """A chat model asked for examples may write seven; the five kept and the two past the maximum both show."""
    seven = "\n\n".join(f"Example {i}\nInput: question number {i} about the weather\nOutput: answer number {i}"
                        for i in range(1, 8))

    def reply(path, body):
        prompt = fake_openai.prompt_of(body)
        if prompt.rstrip().endswith(("Input:", "Class label:")) or "Write examples" in prompt:
            return fake_openai.wrap(path, seven)
        return fake_openai.default_reply(path, body)

    for _ in range(50):
        fake_openai.enqueue(reply)
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", "teacher.concurrency=1",
           "--set", "classify.method=text")
    run = tmp_path / "r"
    assert all(len(t["instances"]) == 7 for t in read(run / "instances.jsonl"))
    assert all(len(t["instances"]) == 5 for t in read(run / "filter.jsonl"))
    over = [r for r in read(run / "rejected.jsonl") if r["reject_reason"].startswith("instance_over_max_instances")]
    assert len(over) == 2 * 2 and sorted(r["instances"][0]["output"] for r in over[:2]) == ["answer number 6",
                                                                                          "answer number 7"]


def test_a_strong_teacher_is_not_paid_for_a_first_burst_past_the_target(fake_openai, tmp_path):
    """A teacher that fills every list (9 to 15 kept: the stop sequence cuts "16."): 2 prompts for 14 places,
    where 8 in flight at once would have paid for 42 lines past the target."""
    import itertools

    words = itertools.count()

    def full_list(path, body):
        items = [f"Describe the history of invented topic number {next(words)} in four sentences." for _ in range(8)]
        return fake_openai.wrap(path, "\n".join(f"{i}. {t}" for i, t in enumerate(items, 9)))

    for _ in range(20):
        fake_openai.enqueue(full_list, delay=0.2)
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 14,
           "--set", "teacher.concurrency=8", "--set", "filter.rouge_threshold=1.0")
    kept, rejected = bootstrap_records(tmp_path / "r")
    assert len(kept) == 14 and len(bootstrap_prompts(fake_openai)) == 2
    assert not [r for r in rejected if r["reject_reason"].startswith("over_target")]


def test_lines_past_the_target_are_checked_against_each_other(fake_openai, tmp_path):
    reply = "9. Plan a week of vegetarian dinners for two.\n10. Name the planets of the solar system in order.\n" \
            "11. Write a limerick about a forgetful cat.\n12. Write a limerick about a forgetful cat."
    fake_openai.enqueue(reply)
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 1,
           "--set", "teacher.concurrency=1")
    kept, rejected = bootstrap_records(tmp_path / "r")
    reasons = [r["reject_reason"].split(":")[0] for r in rejected]
    assert len(kept) == 1 and reasons == ["over_target", "over_target", "duplicate"]
