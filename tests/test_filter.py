import pytest

from pipeline.config import FilterConfig
from pipeline.records import Instance, Task
from pipeline.stages.filter import InstructionFilter, clean_instances, filter_tasks, instruction_reject_reason

CFG = FilterConfig()


@pytest.mark.parametrize("instruction, reason", [
    ("Name three birds.", "too_short: 3 words"),
    ("word " * 151, "too_long: 151 words"),
    ("Describe the image in the text below.", "blacklist: image"),
    ("Please go to the store and buy milk for me.", "blacklist: go to"),
    ("Create a flowchart of the checkout process steps.", "blacklist: flowchart"),
    ("Write a program that sorts a list of numbers.", "banned_prefix: Write a program"),
    ("- List three ways to save water at home.", "starts_with_punctuation"),
    ("Étudiez la phrase suivante et traduisez-la.", "starts_with_non_ascii"),
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
