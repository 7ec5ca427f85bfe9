import dataclasses

import pytest

from pipeline.config import FilterConfig
from pipeline.prompts import Prompts
from pipeline.records import Instance, Task
from pipeline.stages.filter import (
    InstructionFilter,
    clean_instances,
    copied_demo_reason,
    filter_tasks,
    instance_demonstrations,
    instruction_reject_reason,
)

CFG = FilterConfig()


@pytest.mark.parametrize("instruction, reason", [
    ("Name three birds.", "too_short: 3 words"),
    ("word " * 151, "too_long: 151 words"),
    ("Describe the image in the text below.", "blacklist: image"),
    ("Please go to the store and buy milk for me.", "blacklist: go to"),
    ("Create a flowchart of the checkout process steps.", "blacklist: flowchart"),
    ("Write a program that sorts a list of numbers.", "banned_prefix: Write a program"),
    ("- List three ways to save water at home.", "starts_with_punctuation: '-'"),  # before: no detail
    ("Étudiez la phrase suivante et traduisez-la.", "starts_with_non_ascii: 'É'"),
])
def test_instruction_rules(instruction, reason):
    assert instruction_reject_reason(instruction, CFG) == reason


def test_rules_are_whole_word_and_keep_good_tasks():
    assert instruction_reject_reason("Summarize the mapping between the two lists below.", CFG) is None
    assert instruction_reject_reason("Explain the profile of a typical customer.", CFG) is None  # 'file' inside a word


def test_rouge_novelty_against_seeds_and_pool_fills_most_similar():
    filt = InstructionFilter(CFG, seeds=["Give three tips for staying healthy.", "Translate the sentence into French."])
    near = Task(id="m1", instruction="Give three tips for staying healthy and fit.")
    reason = filt.check(near)
    assert reason.startswith("rouge_l: 0.8") and "staying healthy." in reason
    novel = Task(id="m2", instruction="Compose a limerick about a forgetful octopus.")
    assert filt.check(novel) is None
    assert len(novel.most_similar_instructions) == 2 and 0 <= novel.avg_similarity_score < 0.3
    filt.add(novel.instruction)
    assert filt.check(Task(id="m3", instruction="Compose a limerick about a forgetful octopus!")).startswith("rouge_l")


def test_exact_point_seven_is_rejected_as_the_reference_does():
    # LCS 7 of 8 and 12 tokens: F is exactly 0.7 on paper, 0.7000000000000001 in rouge-score, so rejected.
    filt = InstructionFilter(CFG, seeds=["a b c d e f g h"])
    assert filt.check(Task(id="x", instruction="A b c d e f g x y z w v")).startswith("rouge_l: 0.700")
    # Equal lengths, 7 of 10: exactly 0.7 in floating point too, so kept (the rule is "> 0.7").
    filt = InstructionFilter(CFG, seeds=["a b c d e f g h i j"])
    assert filt.check(Task(id="y", instruction="A b c d e f g x y z")) is None


def test_instance_cleaning_rules():
    kept, dropped = clean_instances([
        Instance("same", "same"), Instance("q", ""), Instance("Input:", "x"), Instance("a", "b:"),
        Instance("k", "v"), Instance("k", "v"), Instance("", "free text"),
    ], max_instances=5)
    assert kept == [Instance("k", "v"), Instance("", "free text")]
    assert [d["reason"] for d in dropped] == ["input_equals_output", "empty_output", "ends_with_colon",
                                               "ends_with_colon", "duplicate_instance"]


def test_same_input_with_different_outputs_drops_the_tasks_instances():
    kept, dropped = clean_instances([Instance("2+2", "4"), Instance("2+2", "5"), Instance("3+3", "6")], 5)
    assert kept == [] and {d["reason"] for d in dropped} == {"conflicting_outputs"}


def test_filter_stage_rejects_with_reasons_and_caps_instances():
    seeds = [Task(id="s", instruction="Give three tips for staying healthy.", origin="seed")]
    tasks = [
        Task(id="a", instruction="Compose a limerick about a forgetful octopus.",
             instances=[Instance(str(i), f"out {i}") for i in range(7)]),
        Task(id="b", instruction="Compose a limerick about a forgetful octopus!", instances=[Instance("", "x")]),
        Task(id="c", instruction="Plot the sales figures for each quarter.", instances=[Instance("", "x")]),
        Task(id="d", instruction="Suggest a name for a grey kitten.", instances=[Instance("x", "x")]),
    ]
    kept, rejected = filter_tasks(tasks, seeds, CFG)
    assert [t.id for t in kept] == ["a"] and len(kept[0].instances) == 5
    reasons = {t.id: t.reject_reason.split(":")[0] for t in rejected}
    assert reasons == {"b": "rouge_l", "c": "blacklist", "d": "no_valid_instances", "a#0": "instance_over_max_instances",
                       "a#1": "instance_over_max_instances", "d#0": "instance_input_equals_output"}
    drop = next(t for t in rejected if t.id == "a#0")  # each dropped instance is its own record, with its instance
    assert drop.meta["instance_of"] == "a" and drop.instances == [Instance("5", "out 5")]
    assert all(t.stage == "filter" for t in rejected)


# ---------------------------------------------------------------- copied_demo: an instance repeating its prompt's example

DEMOS = instance_demonstrations(Prompts())  # read from the bundled templates, as the filter stage reads them


def made_with(template, instruction, *instances, origin="machine", task_id="t"):
    return Task(id=task_id, instruction=instruction, origin=origin, prompt=f"bootstrap.txt,{template}",
                is_classification=template == "instances_clf.txt", instances=[Instance(a, b) for a, b in instances])


def test_the_demonstrations_are_read_from_the_rendered_templates():
    gen, clf = DEMOS["instances_gen.txt"], DEMOS["instances_clf.txt"]
    assert "Libraries will open until nine." in gen and "-10 degrees Celsius" in gen
    assert "The museum opens at ten on Sundays." in clf and "Positive" in clf and "47" in clf
    assert not any("SEED2LORA" in d or d.startswith("Task") for d in gen + clf)  # the task's own slot is no example
    assert "<noinput>" not in gen and "" not in gen  # "no input" is read as empty, as in a reply


def test_the_filter_stage_drops_an_instance_copied_from_its_own_prompt():
    """Gemma-3-270M as a base teacher through completions: 3 of 20 kept instances were prompt examples."""
    tasks = [
        made_with("instances_gen.txt", "Suggest a name for a new bakery in a small town.",
                  ("<noinput>", "Libraries will open until nine."), ("", "The Rolling Pin")),
        made_with("instances_gen.txt", "Describe the weather you would expect in a rainforest.",
                  ("", "after three weeks of heavy rain, the farmers in the valley finally saw the sun and began "
                       "harvesting their wheat")),  # case and punctuation aside, the example's input
        made_with("instances_clf.txt", "Is the animal in the sentence a mammal or a bird?",
                  ("Close the window before you leave.", "Mammal"), ("The sparrow sang on the fence.", "Bird"),
                  task_id="c"),
        made_with("instances_gen.txt", "Write a headline for the news item.",
                  ("Council extends hours.", "Breaking: Libraries will open until nine. More at ten."),
                  task_id="h"),  # the example held whole, word for word
    ]
    tasks[1].id = "w"
    kept, rejected = filter_tasks(tasks, [], CFG, DEMOS)
    reasons = {t.id: t.reject_reason for t in rejected}
    assert reasons["t#0"] == ("instance_copied_demo: the output repeats the prompt's example 'Libraries will open "
                              "until nine.'; dropped from t")
    assert reasons["w#0"].startswith("instance_copied_demo: the output repeats") and reasons["w"] == "no_valid_instances"
    assert reasons["c#0"].startswith("instance_copied_demo: the input repeats the prompt's example 'Close the window")
    assert reasons["h#0"].startswith("instance_copied_demo: the output")
    assert {t.id: [i.output for i in t.instances] for t in kept} == {"t": ["The Rolling Pin"], "c": ["Bird"]}
    drop = next(t for t in rejected if t.id == "t#0")
    assert drop.meta["instance_of"] == "t" and drop.instances == [Instance("<noinput>", "Libraries will open until nine.")]


def test_labels_short_inputs_and_other_prompts_examples_are_kept():
    tasks = [  # a label, a number and an empty input are what tasks of their kind share with the examples
        made_with("instances_clf.txt", "Classify the movie review as positive or negative.",
                  ("A moving film with a clumsy ending.", "Positive"), ("Two hours I will never get back.", "Negative")),
        made_with("instances_clf.txt", "Is the number a prime number? Answer Prime or Composite.",
                  ("47", "Prime"), ("318", "Composite"), task_id="p"),
        made_with("instances_gen.txt", "Convert the temperature from Fahrenheit to Kelvin.",
                  ("25 degrees Celsius", "298.15 Kelvin"), ("<noinput>", "Give me a temperature first."), task_id="k"),
        # the example of the other template: this task was never shown it
        made_with("instances_gen.txt", "Rewrite the sentence as a question.",
                  ("The museum opens at ten on Sundays.", "Does the museum open at ten on Sundays?"), task_id="q"),
        made_with("instances_gen.txt", "Summarize the news in one line.",  # a sentence that only shares words
                  ("The library will stay open late.", "Libraries will stay open until nine"), task_id="s"),
    ]
    kept, rejected = filter_tasks(tasks, [], CFG, DEMOS)
    assert not rejected and len(kept) == 5


def test_seeds_and_a_disabled_rule_are_never_filtered_by_it():
    seed = made_with("instances_gen.txt", "Summarize the sentence in five words or fewer.",
                     ("The city council voted on Tuesday to extend the opening hours of all public libraries until "
                      "nine in the evening.", "Libraries will open until nine."), origin="seed")
    seed.prompt = ""  # seeds have no prompt: a person wrote them (and the examples are theirs)
    also_seed = dataclasses.replace(seed, id="s2", prompt="instances_gen.txt",  # a seed is never filtered by it
                                    instruction="Shorten the news item to one plain sentence.")
    copied = made_with("instances_gen.txt", "Suggest a name for a new bakery.", ("", "Libraries will open until nine."))
    kept, rejected = filter_tasks([seed, also_seed], [], CFG, DEMOS)
    assert len(kept) == 2 and not rejected
    off = dataclasses.replace(CFG, drop_copied_demos=False)
    kept, rejected = filter_tasks([copied], [], off, DEMOS)
    assert len(kept) == 1 and not rejected


@pytest.mark.parametrize("inst, reason", [
    (Instance("", "LIBRARIES   will open until nine"), "copied_demo: the output repeats the prompt's example "
                                                          "'Libraries will open until nine.'"),
    (Instance("", "Libraries will open until ninety."), None),  # whole words only
    (Instance("", "Libraries will open until nine tonight"), "copied_demo: the output repeats the prompt's example "
                                                             "'Libraries will open until nine.'"),  # held whole
    (Instance("", "Positive"), None),  # under copied_demo_min_words: a label
    (Instance("-10 degrees Celsius", "14 degrees Fahrenheit"), None),  # 3 words: a short input any such task may use
])
def test_copied_demo_rule(inst, reason):
    assert copied_demo_reason(inst, DEMOS["instances_gen.txt"] + DEMOS["instances_clf.txt"],
                              CFG.copied_demo_min_words) == reason


def test_a_template_of_ones_own_is_checked_against_its_own_examples(tmp_path):
    for name in ("instances_gen.txt", "instances_clf.txt"):
        text = (Prompts().path(name)).read_text(encoding="utf-8")
        if name == "instances_gen.txt":
            text = text.replace("Libraries will open until nine.", "Libraries open late on weekdays now.")
        (tmp_path / name).write_text(text, encoding="utf-8")
    demos = instance_demonstrations(Prompts(tmp_path))
    assert "Libraries open late on weekdays now." in demos["instances_gen.txt"]
    assert "Libraries will open until nine." not in demos["instances_gen.txt"]


def test_the_filter_step_writes_copied_demos_to_rejected_and_counts_them(tmp_path):
    import json

    from pipeline.config import load_config
    from pipeline.runner import Session
    from pipeline.store import RunDir, write_jsonl_atomic

    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:unused"})
    copied = made_with("instances_gen.txt", "Suggest a name for a new bakery in a small town.",
                       ("<noinput>", "Libraries will open until nine."), ("", "The Rolling Pin"))
    write_jsonl_atomic(RunDir(cfg.run_dir).ensure().stage_file("instances"), [copied])
    assert "1 kept, 0 rejected, 1 instances dropped" in Session(cfg).filter()
    run = RunDir(cfg.run_dir)
    (drop,) = run.read_rejected()
    assert drop.stage == "filter" and drop.reject_reason.startswith("instance_copied_demo: ")
    counts = json.loads(run.manifest_file.read_text())["counts"]
    assert counts["rejected_by_reason"] == {"filter: instance_copied_demo": 1}


def test_filter_input_compares_a_users_rows_with_each_other_not_the_bundled_seeds(tmp_path):
    """`filter --input` on a user's file put the seed file (the bundled 175, never given) in the ROUGE-L pool: a row
    near a bundled seed went to rejected.jsonl as `rouge_l: ... vs` that seed. A row near another row of the same
    file is still a near-duplicate."""
    from helpers import filtered_file_run

    from pipeline.seeds import load_seeds
    from pipeline.store import RunDir

    bundled = load_seeds()[1].instruction
    near_seed = bundled.replace("I just received", "I have just received")
    run, result = filtered_file_run(tmp_path, [near_seed, "Plan a picnic for six friends in the spring.",
                                               "Plan a picnic for six of my friends in the spring."])
    kept = [t.instruction for t in RunDir(run).read_stage("filter")]
    assert kept == [near_seed, "Plan a picnic for six friends in the spring."]
    [rejected] = RunDir(run).read_rejected()
    assert rejected.instruction == "Plan a picnic for six of my friends in the spring."
    assert rejected.reject_reason.startswith("rouge_l: ")
    assert rejected.reject_reason.endswith("vs 'Plan a picnic for six friends in the spring.'")
    assert "1 rejected" in result.output


def test_rouge_against_seeds_only_on_a_users_file_says_no_novelty_check_was_done(tmp_path):
    """`filter --input my_data.jsonl --set filter.rouge_against_seeds_only=true`: the pool is the seed tasks alone and
    a user's file has none, so two near-copies both passed, with nothing said. Both still pass (the setting asks for
    no other pool), but the command says why, naming the setting and its fix, and the export's card says it."""
    import json

    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.store import RunDir

    rows = tmp_path / "my_data.jsonl"
    asks = ["Plan a picnic for six friends in the spring.", "Plan a picnic for six of my friends in the spring."]
    rows.write_text("".join(json.dumps({"instruction": a, "input": "", "output": "Bring fruit."}) + "\n" for a in asks))
    result = CliRunner().invoke(cli, ["filter", "--input", str(rows), "--output-dir", str(tmp_path / "out"),
                                      "--run-name", "r", "--set", "filter.rouge_against_seeds_only=true"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "out" / "r"
    assert [t.instruction for t in RunDir(run).read_stage("filter")] == asks
    said = " ".join(result.output.split())
    assert ("note: filter.rouge_against_seeds_only = true compares the rows with the seed tasks alone, and the rows "
            "came from a user's file, not from the seeds: no ROUGE-L novelty check was done. Fix: set it false") in said
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "exp"), "--formats", "alpaca",
                                      "--set", "decontaminate=off"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "- ROUGE-L: no novelty check (`filter.rouge_against_seeds_only` compares with the seed tasks alone" in card
