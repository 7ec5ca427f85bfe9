"""Better data, not just more (issue 14): the judge (score), near-duplicates, selection, logit classification.

The judge talks to the fake OpenAI server; IFD and the embedded model have their own files
(test_ifd.py, test_classify_logprobs.py).
"""

import json
import math

import pytest
from helpers import invoke, read

from pipeline.config import SelectConfig, load_config
from pipeline.errors import Seed2LoraError
from pipeline.neardup import ContentWords, near_duplicates
from pipeline.records import Instance, Task, task_rows
from pipeline.runner import Session
from pipeline.seeds import load_seeds
from pipeline.similarity import rouge_l
from pipeline.stages.calibrate import auc, balanced_accuracy, fit_threshold, yes_no_margin
from pipeline.stages.parse import parse_rating
from pipeline.stages.select import select_rows
from pipeline.store import RunDir, write_jsonl_atomic
from pipeline.teachers.base import GenParams, logprob_reply, params_key, read_logprobs

# ---------------------------------------------------------------- the judge's replies, pure


@pytest.mark.parametrize("reply, rating, reason", [
    ('{"rating": 4, "reason": "Correct, a little terse."}', 4, "Correct, a little terse."),
    ('Sure! Here is my grade:\n```json\n{"rating": "5", "reason": "Complete and right."}\n```', 5, "Complete and right."),
    ('{"score": 2.6, "explanation": "Ignores\\nthe input."}', 3, "Ignores the input."),
    ("4", 4, ""),
    ("**3**", 3, ""),
    (" 5.\n", 5, ""),
    ("Rating: 4/5\nReason: follows the instruction but skips one step.", 4, "follows the instruction but skips one step."),
    ("I would give this response a 2 out of 5 because it ignores the input.", 2, "it ignores the input."),
    ("The answer is wrong. Score: 1", 1, "The answer is wrong. Score: 1"),
    ("This deserves a 5 - it is exactly what was asked.", 5, "This deserves a 5 - it is exactly what was asked."),
])
def test_judge_replies_in_every_shape_give_a_rating_and_a_reason(reply, rating, reason):
    assert parse_rating(reply) == (rating, reason)


@pytest.mark.parametrize("reply, why", [
    ("", "empty reply"),
    ("I cannot judge this.", "no rating in"),
    ("Rating: 7", "rating 7 outside 1-5"),
    ('{"rating": null, "reason": "?"}', "JSON without a numeric rating"),
    ("It lists 3 items where 4 were asked.", "several candidate ratings"),
    ("0", "rating 0 outside 1-5"),
])
def test_garbage_is_rejected_with_its_reason(reply, why):
    rating, reason = parse_rating(reply)
    assert rating is None and reason.startswith(why), reason


def test_new_sampling_fields_leave_old_cache_keys_alone():
    plain = GenParams(max_tokens=3)
    assert "json_mode" not in params_key(plain) and "logprobs" not in params_key(plain)
    assert params_key(GenParams(max_tokens=1, logprobs=20))["logprobs"] == 20
    text = logprob_reply({" Yes": -0.5, " No": -1.0}, greedy=" Yes")
    assert read_logprobs(text) == {" Yes": -0.5, " No": -1.0} and read_logprobs("Yes") is None


# ---------------------------------------------------------------- score: the judge step on the fake server

TASKS = [("Name the colour of a clear daytime sky.", "", "Blue."),
         ("Add the two numbers.", "2 and 3", "5"),
         ("Translate the word into French.", "cat", "chat, which is a cat in French."),
         ("Give a synonym of the given word.", "happy", "sad")]
REPLIES = {"sky": '{"rating": 5, "reason": "Right and brief."}', "numbers": "4",
           "French": "I would rate it 2 out of 5 because it adds an odd remark.", "synonym": "no idea"}


def judge(path, body):
    prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    return next(text for key, text in REPLIES.items() if key in prompt.split("Input:")[0])


def make_run(tmp_path, server, **overrides):
    tasks = [Task(id=f"t{i}", instruction=ins, origin="machine", stage="filter", instances=[Instance(inp, out)])
             for i, (ins, inp, out) in enumerate(TASKS)]
    tasks[1].instances.append(Instance("10 and 20", "30"))
    write_jsonl_atomic(RunDir(tmp_path / "r").ensure().stage_file("filter"), tasks)
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:fake-model",
                             "teacher.base_url": server.url, "teacher.api": "chat", "teacher.max_retries": 1,
                             **overrides})
    return tasks, cfg


def test_score_rates_each_instance_rejects_garbage_after_retries_and_resumes(fake_openai, tmp_path):
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, judge(path, body))
    tasks, cfg = make_run(tmp_path, fake_openai)
    message = Session(cfg).score()
    scored = {r["id"]: r for r in read(tmp_path / "r" / "score.jsonl")}
    assert {r["id"] for r in task_rows(tasks)} == set(scored) | {"t3-0"}  # one record per row, row ids
    assert scored["t0-0"]["meta"]["score"] == {"rating": 5, "reason": "Right and brief."}
    assert scored["t1-0"]["meta"]["score"]["rating"] == scored["t1-1"]["meta"]["score"]["rating"] == 4
    assert scored["t2-0"]["meta"]["score"] == {"rating": 2, "reason": "it adds an odd remark."}
    assert scored["t1-1"]["instances"] == [{"input": "10 and 20", "output": "30"}] and scored["t1-1"]["meta"]["row_of"] == "t1"
    (bad,) = read(tmp_path / "r" / "rejected.jsonl")
    assert bad["id"] == "t3-0" and bad["stage"] == "score" and bad["meta"]["tries"] == 2
    assert bad["reject_reason"] == "unparseable_rating: no rating in 'no idea'"
    bodies = [h["body"] for h in fake_openai.history]
    assert len(bodies) == 6 and all(b["response_format"] == {"type": "json_object"} for b in bodies)
    assert "Instruction: Add the two numbers.\nInput: 10 and 20\nResponse: 30" in "".join(b["messages"][-1]["content"]
                                                                                      for b in bodies)
    assert "4 instances rated" in message and "1 unusable reply asked again, 1 instance rejected" in message
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["usage"]["score"]["calls"] == 6 and manifest["stages"]["score"]["rejected"] == 1
    Session(cfg).score()  # everything done: no call
    assert len(fake_openai.history) == 6


def test_a_judge_of_its_own_is_used_and_the_run_teacher_is_not_touched(fake_openai, tmp_path):
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, judge(path, body))
    _, cfg = make_run(tmp_path, fake_openai, **{"teacher.base_url": "http://127.0.0.1:9/v1",
                                                 "score.teacher.spec": "openai:judge-model",
                                                 "score.teacher.base_url": fake_openai.url,
                                                 "score.teacher.api": "completions", "score.teacher.max_retries": 0})
    Session(cfg).score()
    assert {h["body"]["model"] for h in fake_openai.history} == {"judge-model"}
    assert all("response_format" not in h["body"] and h["path"].endswith("/completions") for h in fake_openai.history)
    assert len(fake_openai.history) == 5  # garbage rejected at once with max_retries 0


def logprob_judge(fake_openai):
    """Chat replies with log-probabilities for "Good example?": log P(No) -1.0 throughout, log P(Yes) by task."""
    yes = {"sky": -0.2, "numbers": -0.7, "French": -1.6, "synonym": -3.0}  # log P(Yes); log P(No) is -1.0 throughout

    def reply(path, body):
        assert body["max_tokens"] == 1 and body["logprobs"] is True
        example = body["messages"][-1]["content"].rsplit("Instruction: ", 1)[-1]  # the last example: ours
        lp = next(v for k, v in yes.items() if k in example.split("Input:")[0])
        top = [{"token": " Yes", "logprob": lp, "bytes": None}, {"token": " No", "logprob": -1.0, "bytes": None}]
        choice = {"index": 0, "message": {"role": "assistant", "content": "Yes"}, "finish_reason": "length",
                  "logprobs": {"content": [{"token": " Yes", "logprob": lp, "bytes": None, "top_logprobs": top}]}}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "fake", "choices": [choice],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

    fake_openai.default_reply = reply


def test_a_judge_too_small_to_write_a_rating_ranks_rows_by_the_log_probability_of_yes(fake_openai, tmp_path):
    logprob_judge(fake_openai)
    tasks, cfg = make_run(tmp_path, fake_openai, **{"score.method": "logprobs", "select.by": "judge", "select.top": 2})
    Session(cfg).score()
    scored = {r["id"]: r["meta"]["score"] for r in read(tmp_path / "r" / "score.jsonl")}
    assert set(scored) == {r["id"] for r in task_rows(tasks)}  # every row rated, none rejected
    p = 1 / (1 + math.exp(-(-0.2 + 1.0)))
    assert scored["t0-0"]["rating"] == pytest.approx(1 + 4 * p, abs=1e-4) and scored["t0-0"]["p_yes"] == pytest.approx(p, abs=1e-4)
    assert scored["t0-0"]["method"] == "logprobs" and scored["t3-0"]["rating"] < scored["t2-0"]["rating"] < 3
    assert any(h["body"]["messages"][-1]["content"].endswith("Input: (none)\nResponse: Blue.\nGood example?")
               for h in fake_openai.history)  # requests go out 8 at a time: in any order
    Session(cfg).run_steps(["select"])  # the top 2 rows by P(Yes): the sky, then one of the two sums
    kept = [r["id"] for r in read(tmp_path / "r" / "select.jsonl")]
    assert kept == ["t0", "t1"]
    # A reply without Yes or No among its alternatives has no rating.
    from pipeline.stages.score import logprob_score
    assert logprob_score(logprob_reply({" Maybe": -0.1})) is None and logprob_score("4") is None


def test_another_judge_must_rescore_and_a_server_without_logprobs_is_named(fake_openai, tmp_path):
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, judge(path, body))
    tasks, cfg = make_run(tmp_path, fake_openai)
    Session(cfg).score()
    run = RunDir(tmp_path / "r")
    rated = read(run.stage_file("score"))
    assert rated and all(r["meta"]["score_judge"] == "openai:fake-model (text)" for r in rated)
    message = Session(cfg).score()  # nothing left to rate: said, with the way to rate again
    assert "0 instances rated" in message and "--rescore" in message
    flags = ["--set", "score.method=logprobs", "--set", "teacher.api=chat"]
    result = invoke("score", str(run.path), *flags, expect=2)  # two judges' ratings would not rank together
    assert "holds ratings by openai:fake-model (text)" in result.output and "--rescore" in result.output
    assert read(run.stage_file("score")) == rated  # nothing touched
    result = invoke("score", str(run.path), "--rescore", *flags, expect=2)  # this server sends no logprobs
    assert "returned no log-probabilities" in result.output and "score.method=text" in result.output
    assert len(read(run.path / "score_replaced.jsonl")) == 5  # the earlier 4 ratings and 1 rejection, set aside
    logprob_judge(fake_openai)
    invoke("score", str(run.path), "--rescore", *flags)
    rescored = read(run.stage_file("score"))
    assert {r["id"] for r in rescored} == {r["id"] for r in task_rows(tasks)}  # every row, t3-0 included
    assert all(r["meta"]["score"]["method"] == "logprobs" for r in rescored)
    assert not [r for r in read(run.rejected_file) if r["stage"] == "score"]


def test_a_judge_refused_for_another_judges_ratings_changes_nothing_recorded(fake_openai, tmp_path):
    # `score --judge OTHER` on a run scored by another judge stops (exit 2); it wrote OTHER into the manifest first,
    # and every later bare `score`, which takes the manifest's config, stopped the same way.
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, judge(path, body))
    tasks, cfg = make_run(tmp_path, fake_openai)
    Session(cfg).score()
    run = RunDir(tmp_path / "r")
    before = run.manifest()
    posts = fake_openai.posts
    result = invoke("score", str(run.path), "--judge", "openai:other-model", "--judge-base-url", fake_openai.url,
                    expect=2)
    assert "holds ratings by openai:fake-model (text)" in result.output and "openai:other-model" in result.output
    after = run.manifest()
    assert after["judge"] == before["judge"] and after["config"]["score"] == before["config"]["score"]
    assert fake_openai.posts == posts  # stopped before any request, the judge's preflight too
    result = invoke("score", str(run.path))  # the run's own judge goes on: nothing left to rate
    assert "0 instances rated by openai:fake-model" in result.output


def judged_run(tmp_path, server):
    """make_run's run, for the commands: its manifest names the fake judge, which rates by judge()."""
    server.default_reply = lambda path, body: server.wrap(path, judge(path, body))
    make_run(tmp_path, server)
    run = tmp_path / "r"
    RunDir(run).update_manifest(config={"seed_tasks": "", "teacher": {"spec": "openai:fake-model", "api": "chat",
                                                                     "base_url": server.url, "max_retries": 1}})
    return run


def test_score_select_export_from_the_command_line(fake_openai, tmp_path):
    run = judged_run(tmp_path, fake_openai)
    out = invoke("score", run).output
    assert "4 instances rated by openai:fake-model" in out
    invoke("select", run, "--by", "judge", "--top", "2", "--set", "select.near_dup_threshold=0")
    selected = read(run / "select.jsonl")
    assert [(t["id"], len(t["instances"])) for t in selected] == [("t0", 1), ("t1", 1)]
    assert selected[1]["meta"]["select"] == {"by": "judge", "rows": ["t1-0"], "values": [4.0]} or \
        selected[1]["meta"]["select"]["rows"] == ["t1-1"]
    summary = json.loads((run / "select.json").read_text())
    assert summary["kept_rows"] == 2 and {d["why"] for d in summary["dropped"]} == {"below the cut"}
    assert [d["value"] for d in summary["dropped"]][-1] is None  # the unrated row ranks last
    invoke("export", run, "--include", "selected", "--no-seed-tasks", "--formats", "alpaca", "--eval-fraction", "0")
    rows = json.loads((run / "export" / "alpaca" / "train.json").read_text())
    assert len(rows) == 2 and rows[0]["output"] == "Blue."
    invoke("export", run, "--include", "selected,evolve", expect=2)


# ---------------------------------------------------------------- near-duplicates beyond ROUGE-L

PAIRS = [  # (kept, near-duplicate): reordered clauses, synonyms, number words
    ("Provide 3 tips for a good night's sleep.", "For a good night's sleep, give three tips."),
    ("If the weather is nice tomorrow, plan a picnic for the family.",
     "Plan a family picnic for tomorrow if the weather is nice."),
    ("Write a short story about a dragon who is afraid of fire.", "Compose a brief tale about a dragon afraid of fire."),
    ("Explain why the sky is blue, using simple words.", "Using simple words, describe why the sky is blue."),
]


@pytest.mark.parametrize("kept, copy", PAIRS)
def test_near_duplicates_rouge_l_misses_are_caught(kept, copy):
    assert rouge_l(kept, copy) < 0.7  # the filter keeps both
    (dup,) = near_duplicates([kept, copy], 0.7, synonyms=SelectConfig().near_dup_synonyms)
    assert (dup.index, dup.kept) == (1, 0) and dup.jaccard >= 0.7


def test_no_false_positive_among_the_175_distinct_seed_tasks():
    seeds = load_seeds(None)
    assert len(seeds) == 175
    synonyms = SelectConfig().near_dup_synonyms
    for threshold in (0.5, 0.7):  # the default, and a stricter setting
        for texts in ([s.instruction for s in seeds], [f"{s.instruction}\n{s.instances[0].input}" for s in seeds]):
            assert near_duplicates(texts, threshold, synonyms=synonyms) == []


def test_content_words_drop_order_stop_words_and_inflection():
    words = ContentWords(["give provide"])
    assert words("Provide three tips, please!") == words("give 3 TIPS") == frozenset({"give", "3", "tip"})


# ---------------------------------------------------------------- selection, pure

def rows_of(n):
    return [Task(id=f"t{i}", instruction=f"Distinct task number {i} about topic {chr(97 + i)}{i}{i}.", origin="machine",
                 instances=[Instance(f"input {i}", f"output {i}")]) for i in range(n)]


def test_select_by_judge_keeps_the_top_and_near_duplicates_lose_to_the_better_row():
    tasks = rows_of(6)
    tasks.append(Task(id="dup", instruction="Tips for a good night's sleep: give three.", instances=[Instance("", "z")]))
    tasks.append(Task(id="orig", instruction="Provide 3 tips for a good night's sleep.", instances=[Instance("", "y")]))
    scores = {"t0-0": 1, "t1-0": 5, "t2-0": 3, "t3-0": 4, "t4-0": 2, "t5-0": 2, "dup-0": 5, "orig-0": 3}
    sel = select_rows(tasks, SelectConfig(by="judge", top=3), scores=scores, ifd={})
    assert sel.summary["kept"] == [{"id": "t1-0", "value": 5.0}, {"id": "dup-0", "value": 5.0},
                                   {"id": "t3-0", "value": 4.0}] or [k["id"] for k in sel.summary["kept"]] == \
        ["dup-0", "t1-0", "t3-0"]
    (near,) = sel.rejected
    assert near.id == "orig-0" and near.meta["near_duplicate_of"] == "dup-0"
    assert near.reject_reason.startswith("near_duplicate: jaccard 1.00 >= 0.7 vs dup-0")
    assert [t.id for t in sel.kept] == ["t1", "t3", "dup"]  # run order, not rank order


def test_select_by_ifd_takes_high_ifd_below_the_cap_and_random_is_seeded():
    tasks = rows_of(5)
    ifd = {"t0-0": 0.2, "t1-0": 0.9, "t2-0": 1.3, "t3-0": 0.5, "t4-0": 0.7}
    sel = select_rows(tasks, SelectConfig(by="ifd", frac=0.5), scores={}, ifd=ifd)
    assert [k["id"] for k in sel.summary["kept"]] == ["t1-0", "t4-0"]  # 4 below 1.0, half of them, highest first
    assert {"id": "t2-0", "value": 1.3, "why": "ifd >= 1.0"} in sel.summary["dropped"]
    cut = select_rows(tasks, SelectConfig(by="ifd", top=9), scores={}, ifd={k: v for k, v in ifd.items() if k != "t1-0"},
                      no_ifd={"t1-0"})
    assert {"id": "t1-0", "value": None, "why": "no ifd"} in cut.summary["dropped"] and cut.summary["kept_rows"] == 3
    a = select_rows(tasks, SelectConfig(by="random", top=2, seed=1), scores={}, ifd={})
    b = select_rows(tasks, SelectConfig(by="random", top=2, seed=1), scores={}, ifd={})
    assert a.summary["kept"] == b.summary["kept"] and len(a.kept) == 2


def test_select_names_the_missing_step_as_the_command_to_type():
    with pytest.raises(Seed2LoraError, match="Fix: `seed2lora score outputs/r` rates the rows not yet rated"):
        select_rows(rows_of(2), SelectConfig(by="judge"), scores={"t0-0": 3}, ifd={}, run_path="outputs/r")
    with pytest.raises(Seed2LoraError, match="rated none of the 2 rows.*`seed2lora score outputs/r --rescore --judge"):
        select_rows(rows_of(2), SelectConfig(by="judge"), scores={}, ifd={}, unrated={"t0-0", "t1-0"},
                    run_path="outputs/r")
    with pytest.raises(Seed2LoraError, match="Fix: `seed2lora ifd outputs/r` scores the rows not yet scored"):
        select_rows(rows_of(2), SelectConfig(by="ifd"), scores={}, ifd={}, run_path="outputs/r")


def test_select_on_a_partly_scored_run_names_the_score_command_with_the_runs_path(fake_openai, tmp_path):
    """The measured bug: the refusal said `seed2lora score RUN`; the user must type the run's path."""
    run = judged_run(tmp_path, fake_openai)
    invoke("score", run)
    scored = read(run / "score.jsonl")
    write_jsonl_atomic(run / "score.jsonl", [Task.from_dict(r) for r in scored[1:]])  # one row's rating lost
    output = " ".join(invoke("select", run, "--by", "judge", expect=2).output.split())
    assert f"Fix: `seed2lora score {run}` rates the rows not yet rated" in output, output
    invoke("score", run)  # the command named: it rates the one row, and select goes through
    invoke("select", run, "--by", "judge", "--top", "2")


def test_a_generated_near_copy_of_a_seed_is_rejected_naming_the_seed():
    seeds = [Task(id="s1", instruction="Give three tips for sleeping well.", instances=[Instance("", "...")])]
    tasks = [Task(id="m", instruction="For sleeping well, provide 3 tips.", instances=[Instance("", "x")])]
    sel = select_rows(tasks, SelectConfig(by="all"), scores={}, ifd={}, seeds=seeds)
    assert sel.kept == [] and sel.rejected[0].meta["near_duplicate_of"] == "seed:s1"


def test_select_on_a_users_file_keeps_a_row_near_a_seed_it_never_used(tmp_path):
    """`filter --input` then `select`: a user's row near a bundled seed went to rejected.jsonl as `near_duplicate:
    ... vs seed:seed_task_1`, though the run never used the seed file and export adds none of its tasks. With
    export.include_seeds = true (they are exported) it is still a near-duplicate of one."""
    from helpers import filtered_file_run

    near_seed = load_seeds()[1].instruction.replace("I just received", "I have just received")
    run, _ = filtered_file_run(tmp_path, [near_seed, "Plan a picnic for six friends in the spring."])
    invoke("select", run, "--by", "all")
    assert [t.instruction for t in RunDir(run).read_stage("select")] == [near_seed, "Plan a picnic for six friends "
                                                                         "in the spring."]
    invoke("select", run, "--by", "all", "--set", "export.include_seeds=true")
    [dup] = RunDir(run).read_rejected()
    assert dup.instruction == near_seed and dup.meta["near_duplicate_of"] == "seed:seed_task_1"


# ---------------------------------------------------------------- logit classification, pure and on the fake server

def test_margin_counts_every_spelling_and_bounds_a_missing_label():
    assert yes_no_margin({" Yes": -1.0, "yes": -3.0, " No": -0.5}) == pytest.approx(-0.373, abs=1e-3)
    assert yes_no_margin({" No": -0.2, " Maybe": -4.0}) == pytest.approx(-3.8)  # Yes below the listed floor
    assert yes_no_margin({" The": -0.1}) is None


def test_threshold_fit_maximises_accuracy():
    margins = [-3.0, -2.5, -2.0, -1.8, -1.6, -1.0, -0.9, -0.5]
    truth = [False, False, False, False, False, True, False, True]
    threshold, accuracy = fit_threshold(margins, truth)
    assert -0.9 < threshold < -0.5 and accuracy == 7 / 8  # one miss either way (-1.3 or -0.7): the middle of the ties
    assert balanced_accuracy([m > threshold for m in margins], truth) == 0.75
    assert balanced_accuracy([False] * 8, truth) == 0.5  # always No: what greedy did
    assert auc(margins, truth) == pytest.approx(11 / 12)


def logprob_server(fake_openai):
    """Chat replies with logprobs: a task about spam or labels is Yes-ish, others No-ish; every margin below 0."""
    def reply(path, body):
        task = body["messages"][-1]["content"].rsplit("Task:", 1)[-1]
        yes = -0.9 if any(w in task.lower() for w in ("spam", "label", "classify")) else -2.5
        top = [{"token": " No", "logprob": -0.4, "bytes": None}, {"token": " Yes", "logprob": yes, "bytes": None}]
        choice = {"index": 0, "message": {"role": "assistant", "content": "No"}, "finish_reason": "length",
                  "logprobs": {"content": [{"token": " No", "logprob": -0.4, "bytes": None, "top_logprobs": top}]}}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "fake", "choices": [choice],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    fake_openai.default_reply = reply


def test_logprob_classify_calibrates_on_seeds_where_greedy_says_no(fake_openai, tmp_path):
    logprob_server(fake_openai)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": ins, "is_classification": c,
                                         "instances": [{"input": "", "output": "x"}]}) + "\n"
                             for i, (ins, c) in enumerate([("Is this email spam?", True), ("Label the tone.", True),
                                                           ("Write a poem.", False), ("Plan a trip.", False),
                                                           ("Explain gravity.", False)])))
    tasks = [Task(id="a", instruction="Classify the review as positive or negative."),
             Task(id="b", instruction="Describe your favourite meal.")]
    write_jsonl_atomic(RunDir(tmp_path / "r").ensure().stage_file("bootstrap"), tasks)
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "seed_tasks": str(seeds),
                             "teacher.spec": "openai:fake-model", "teacher.base_url": fake_openai.url,
                             "teacher.api": "chat", "classify.method": "logprobs"})
    Session(cfg).classify()
    out = {r["id"]: r for r in read(tmp_path / "r" / "classify.jsonl")}
    assert out["a"]["is_classification"] is True and out["b"]["is_classification"] is False
    assert out["a"]["meta"]["classify_margin"] == pytest.approx(0.5 - 1.0)  # below 0: greedy would say No
    calibration = json.loads((tmp_path / "r" / "classify_calibration.json").read_text())
    assert calibration["n"] == 5 and calibration["accuracy"] == 1.0 and calibration["balanced_accuracy_at_0"] == 0.5
    bodies = [h["body"] for h in fake_openai.history]
    assert len(bodies) == 7 and all(b["logprobs"] is True and b["top_logprobs"] == 20 and b["max_tokens"] == 1
                                    for b in bodies)


def test_a_server_without_logprobs_falls_back_to_the_text(fake_openai, tmp_path):
    tasks = [Task(id="a", instruction="Compare the two options and pick one."), Task(id="b", instruction="Write a poem.")]
    write_jsonl_atomic(RunDir(tmp_path / "r").ensure().stage_file("bootstrap"), tasks)
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:fake-model",
                             "teacher.base_url": fake_openai.url, "teacher.api": "chat", "classify.method": "logprobs",
                             "classify.calibrate": False})
    Session(cfg).classify()
    out = {r["id"]: r["is_classification"] for r in read(tmp_path / "r" / "classify.jsonl")}
    assert out == {"a": True, "b": False}  # the fake server's text answers (it sends no logprobs)


def test_servers_keep_the_text_path_by_default(fake_openai, tmp_path):
    write_jsonl_atomic(RunDir(tmp_path / "r").ensure().stage_file("bootstrap"), [Task(id="a", instruction="Write a poem.")])
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:fake-model",
                             "teacher.base_url": fake_openai.url, "teacher.api": "chat"})
    Session(cfg).classify()
    # chat: room for "**Answer:** Yes." (classify.chat_max_tokens), where a completion's 3 tokens suffice
    assert [("logprobs" in h["body"], h["body"]["max_tokens"]) for h in fake_openai.history] == [(False, 24)]


def test_the_score_prompt_renders_the_rubric_with_one_instance():
    from pipeline.prompts import Prompts

    text = Prompts().render("score.txt", instruction="Add the two numbers.", input="2 and 3", output="5")
    assert text == """You are grading one example of a dataset that will teach a small assistant model to follow instructions.
Rate the response from 1 to 5 on this rubric:
- Follows the instruction: it does what the instruction asks, using the input if there is one.
- Correct: its facts, reasoning, code or label are right.
- Helpful: it is complete and clear, with nothing off-topic.
5 = meets all three fully; 4 = small flaws; 3 = usable but clearly lacking in one; 2 = mostly fails one or more; 1 = wrong, off-topic, empty or harmful.
Reply with a JSON object and nothing else: {"rating": <1-5>, "reason": "<one line>"}

Instruction: Add the two numbers.
Input: 2 and 3
Response: 5"""


def test_the_report_shows_scores_ifd_and_what_the_selection_kept_and_dropped(tmp_path):
    from pipeline.report.html import _details
    from pipeline.report.plots import plot_quality
    from pipeline.report.quality import quality
    from pipeline.stages.select import select_run

    run = RunDir(tmp_path / "r").ensure()
    assert quality(run) is None  # nothing scored: no section
    tasks = rows_of(4)
    write_jsonl_atomic(run.stage_file("filter"), tasks)
    write_jsonl_atomic(run.stage_file("score"), [Task(id=f"t{i}-0", instruction=t.instruction, meta={
        "score": {"rating": r, "reason": "ok"}, "score_teacher": "judge"}) for i, (t, r) in enumerate(zip(tasks, [5, 2, 4, 1], strict=True))])
    write_jsonl_atomic(run.stage_file("ifd"), [Task(id=f"t{i}-0", instruction=t.instruction, meta={"ifd": {"ifd": v}})
                                               for i, (t, v) in enumerate(zip(tasks, [0.4, 0.9, 1.2, 0.7], strict=True))])
    select_run(run, SelectConfig(by="judge", top=2), ["self-instruct"])
    q = quality(run)
    assert q["score"]["counts"] == {"1": 1, "2": 1, "3": 0, "4": 1, "5": 1} and q["ifd"]["at_least_1"] == 1
    assert q["select"]["kept_rows"] == 2 and q["select"]["dropped_by_why"] == {"below the cut": 2}
    assert [(e["id"], e["instruction"]) for e in q["select"]["kept_examples"]] == [("t0-0", tasks[0].instruction),
                                                                                   ("t2-0", tasks[2].instruction)]
    assert q["select"]["kept_values"]["min"] == 4.0 and q["select"]["dropped_values"]["max"] == 2.0
    assert plot_quality({"quality": q}, tmp_path / "q.png").stat().st_size > 1000
    page = _details("quality.png", {"quality": q})
    assert "by judge: kept 2 of 4 rows" in page and "dropped: below the cut" in page


def test_score_and_select_are_steps_a_run_config_names(fake_openai, tmp_path):
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, judge(path, body))
    _, cfg = make_run(tmp_path, fake_openai, stages=["score", "select", "export"], **{
        "select.by": "judge", "select.top": 3, "export.include": ["selected"], "export.include_seeds": False,
        "export.formats": "alpaca"})
    messages = Session(cfg).run_all()
    assert [m.split(":")[0] for m in messages] == ["score", "select", "export"]
    assert "3 of 5 rows kept by judge" in messages[1]
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["stages"]["select"]["kept"] == 3


def test_select_keeps_every_row_by_default_refuses_a_cut_without_a_ranking_and_names_unused_scores(
        fake_openai, tmp_path):
    """The default is all (the experiment's judge and IFD quarters did worse than random): every row kept, a
    --top or --frac without --by is an error and not ignored, and scores the run has are named as unused."""
    assert SelectConfig().by == "all"
    kept = select_rows(rows_of(5), SelectConfig(), scores={}, ifd={})
    assert kept.summary["kept_rows"] == 5 and kept.summary["by"] == "all"
    for cut in ({"top": 3}, {"frac": 0.25}):
        with pytest.raises(Seed2LoraError, match=r"select.(top|frac) = .* cuts a ranking.*Fix: set select.by"):
            select_rows(rows_of(5), SelectConfig(**cut), scores={}, ifd={})
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, judge(path, body))
    _, cfg = make_run(tmp_path, fake_openai, stages=["score", "select"])
    messages = Session(cfg).run_all()
    assert "5 of 5 rows kept by all" in messages[1] and "not ranked by score.jsonl (--by judge)" in messages[1]
    before = (tmp_path / "r" / "manifest.json").read_text()
    result = invoke("select", tmp_path / "r", "--top", "2", expect=2)
    assert "select.top = 2" in result.output and "--by" in result.output
    result = invoke("select", tmp_path / "r", "--by", "ifd", expect=2)
    assert "ifd.jsonl, which does not exist" in result.output and "seed2lora ifd" in result.output
    # Refused before anything is written: the run is as it was, and its flags are not the next select's defaults.
    assert (tmp_path / "r" / "manifest.json").read_text() == before
    assert "5 of 5 rows kept by all" in invoke("select", tmp_path / "r").output


def test_completions_logprobs_are_read_too(fake_openai, tmp_path):
    def reply(path, body):
        assert path.endswith("/completions") and body["logprobs"] == 20 and body["max_tokens"] == 1
        choice = {"index": 0, "text": " No", "finish_reason": "length",
                  "logprobs": {"tokens": [" No"], "token_logprobs": [-0.3], "text_offset": [0],
                               "top_logprobs": [{" No": -0.3, " Yes": -1.5, " no": -4.0}]}}
        return {"id": "c", "object": "text_completion", "created": 0, "model": "fake", "choices": [choice],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    fake_openai.default_reply = reply
    write_jsonl_atomic(RunDir(tmp_path / "r").ensure().stage_file("bootstrap"), [Task(id="a", instruction="Write a poem.")])
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:fake-model",
                             "teacher.base_url": fake_openai.url, "teacher.api": "completions",
                             "classify.method": "logprobs", "classify.calibrate": False, "classify.threshold": -2.0})
    Session(cfg).classify()
    (out,) = read(tmp_path / "r" / "classify.jsonl")
    no = math.log(math.exp(-0.3) + math.exp(-4.0))  # " No" and " no" both count as No
    assert out["is_classification"] is True and out["meta"]["classify_margin"] == pytest.approx(-1.5 - no, abs=1e-4)


def test_instances_of_one_task_are_not_near_duplicates_of_each_other():
    task = Task(id="t", instruction="What is the most expensive thing you could buy with money today?",
                instances=[Instance("", "A house!"), Instance("", "A car!")])
    copy = Task(id="u", instruction="Today, what is the most expensive thing money could buy?", instances=[Instance("", "A boat.")])
    sel = select_rows([task, copy], SelectConfig(by="all"), scores={}, ifd={})
    assert sel.summary["kept_rows"] == 2 and [r.id for r in sel.rejected] == ["u-0"]
    assert sel.rejected[0].meta["near_duplicate_of"] == "t-0"


def test_scores_bar_and_line_tell_the_rated_from_the_unusable(fake_openai, tmp_path, monkeypatch):
    """The bar counted rows rejected as unusable as rated ("17/17" with 8 unusable among them): it now counts them
    done and says how many were unusable, as classify's says "2 failed"; the command's line says both too."""
    monkeypatch.setenv("SEED2LORA_PROGRESS_EVERY_S", "300")  # only the start and end lines
    run = judged_run(tmp_path, fake_openai)
    out = " ".join(invoke("score", run).output.split())
    assert "score: instances judged: 5/5 (100%), 1 unusable, done in" in out, out  # t3-0: "no idea", twice
    assert "4 instances rated" in out and "1 instance rejected (still unusable after 1 retry)" in out
