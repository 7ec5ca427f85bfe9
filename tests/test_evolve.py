"""Evol-Instruct: prompts, parsers, elimination rules, rounds with re-entry, resume, user data, CLI."""

import itertools
import json
import re
import time

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import EvolveConfig, EvolveWeights, load_config
from pipeline.datasets_io import Fields, load_pool
from pipeline.errors import InputError, Seed2LoraError
from pipeline.prompts import PROMPT_VARS, Prompts
from pipeline.records import Instance, Task
from pipeline.runner import Session
from pipeline.show import summary
from pipeline.stages.evolve import (
    OPERATIONS,
    answer_prompt,
    answer_reject_reason,
    evolution_prompt,
    evolvable_text,
    generation,
    judge_prompt,
    operation_rng,
    pick_operation,
    prompt_copy_reason,
)
from pipeline.stages.parse import parse_answer, parse_equal, parse_evolved_instruction
from pipeline.store import RunDir

# ---------------------------------------------------------------- prompts, rendered by the stage's own helpers

P = Prompts()
PARENT = Task(id="p", instruction="Summarize the text below.",
              instances=[Instance("Bees pollinate many crops.", "Bees help crops.")])
CHILD = Task(id="c", instruction="Summarize the text below in exactly two sentences.")
E = EvolveConfig(min_added_words=5, max_added_words=12)

EXPECTED_EVOLUTION = {
    "constraints": (
        "Your job is to rewrite an instruction for an AI assistant so that answering it well takes more skill, while a capable person could still answer it.\n"
        "\n"
        "Method: add one further constraint or requirement that the answer has to meet.\n"
        "\n"
        "Rules:\n"
        "- Keep everything the instruction already asks for, including any text, table or code it contains.\n"
        "- Add between 5 and 12 words, no more.\n"
        "- Reply with the rewritten instruction alone. It must read as a request of its own: do not refer to an earlier version of it, to this rewriting, or to these rules.\n"
        "\n"
        "Instruction:\n"
        "Summarize the text below.\n"
        "Bees pollinate many crops.\n"
        "\n"
        "Rewritten instruction:"
    ),
    "deepen": (
        "Your job is to rewrite an instruction for an AI assistant so that answering it well takes more skill, while a capable person could still answer it.\n"
        "\n"
        "Method: if the instruction asks about a topic, widen and deepen what it asks: more aspects to cover, more detail expected, causes and consequences instead of bare facts.\n"
        "\n"
        "Rules:\n"
        "- Keep everything the instruction already asks for, including any text, table or code it contains.\n"
        "- Add between 5 and 12 words, no more.\n"
        "- Reply with the rewritten instruction alone. It must read as a request of its own: do not refer to an earlier version of it, to this rewriting, or to these rules.\n"
        "\n"
        "Instruction:\n"
        "Summarize the text below.\n"
        "Bees pollinate many crops.\n"
        "\n"
        "Rewritten instruction:"
    ),
    "concretize": (
        "Your job is to rewrite an instruction for an AI assistant so that answering it well takes more skill, while a capable person could still answer it.\n"
        "\n"
        "Method: replace general words with specific ones: a named situation, audience, quantity, place, tool or example instead of a broad category.\n"
        "\n"
        "Rules:\n"
        "- Keep everything the instruction already asks for, including any text, table or code it contains.\n"
        "- Add between 5 and 12 words, no more.\n"
        "- Reply with the rewritten instruction alone. It must read as a request of its own: do not refer to an earlier version of it, to this rewriting, or to these rules.\n"
        "\n"
        "Instruction:\n"
        "Summarize the text below.\n"
        "Bees pollinate many crops.\n"
        "\n"
        "Rewritten instruction:"
    ),
    "reasoning": (
        "Your job is to rewrite an instruction for an AI assistant so that answering it well takes more skill, while a capable person could still answer it.\n"
        "\n"
        "Method: if the instruction can be answered in one easy step, change it so that the answer needs several explicit steps of reasoning, each building on the one before.\n"
        "\n"
        "Rules:\n"
        "- Keep everything the instruction already asks for, including any text, table or code it contains.\n"
        "- Add between 5 and 12 words, no more.\n"
        "- Reply with the rewritten instruction alone. It must read as a request of its own: do not refer to an earlier version of it, to this rewriting, or to these rules.\n"
        "\n"
        "Instruction:\n"
        "Summarize the text below.\n"
        "Bees pollinate many crops.\n"
        "\n"
        "Rewritten instruction:"
    ),
    "complicate_input": (
        "Your job is to rewrite an instruction for an AI assistant so that answering it well takes more skill, while a capable person could still answer it.\n"
        "\n"
        "Method: give the instruction structured data to work on, written out in full inside it: a small table, a JSON object, an XML snippet, a short piece of code or a formula. The answer must use that data.\n"
        "\n"
        "Rules:\n"
        "- Keep everything the instruction already asks for, including any text, table or code it contains.\n"
        "- Besides the data, add between 5 and 12 words, no more.\n"
        "- Reply with the rewritten instruction alone. It must read as a request of its own: do not refer to an earlier version of it, to this rewriting, or to these rules.\n"
        "\n"
        "Instruction:\n"
        "Summarize the text below.\n"
        "Bees pollinate many crops.\n"
        "\n"
        "Rewritten instruction:"
    ),
    "breadth": (
        "Your job is to write a brand-new instruction for an AI assistant, taking the instruction below as a starting point.\n"
        "\n"
        "The new instruction must:\n"
        "- belong to the same domain, but ask for something rarer, a task people seldom think to ask;\n"
        "- be about as long and as hard to answer as the one below;\n"
        "- make sense on its own and be answerable by a capable person.\n"
        "\n"
        "Reply with the new instruction alone. Do not refer to the instruction below, to this task, or to these rules.\n"
        "\n"
        "Instruction:\n"
        "Summarize the text below.\n"
        "Bees pollinate many crops.\n"
        "\n"
        "New instruction:"
    ),
}

EXPECTED_JUDGE = (
    "Compare the two instructions for an AI assistant below. They are equal when they ask for the same thing: the same constraints and requirements, and an inquiry of the same depth and breadth. Wording may differ.\n"
    "\n"
    "First instruction:\n"
    "Summarize the text below.\n"
    "Bees pollinate many crops.\n"
    "\n"
    "Second instruction:\n"
    "Summarize the text below in exactly two sentences.\n"
    "\n"
    "Reply with one word or two: Equal or Not equal.\n"
    "Judgement:"
)

EXPECTED_ANSWER = (
    "Below is a request from a user. Write a helpful, correct and complete response to it.\n"
    "\n"
    "Request:\n"
    "Summarize the text below in exactly two sentences.\n"
    "\n"
    "Response:"
)


@pytest.mark.parametrize("op", OPERATIONS)
def test_each_evolution_prompt_renders_in_full(op):
    name, text = evolution_prompt(P, op, evolvable_text(PARENT), E)
    assert name == f"evol_{op}.txt"
    assert text == EXPECTED_EVOLUTION[op]


def test_judge_and_answer_prompts_render_in_full():
    assert judge_prompt(P, PARENT, CHILD) == EXPECTED_JUDGE
    assert answer_prompt(P, CHILD) == EXPECTED_ANSWER


def test_every_evolve_template_declares_exactly_its_variables():
    names = {f"evol_{op}.txt" for op in OPERATIONS} | {"evol_equal.txt", "evol_answer.txt"}
    assert names <= set(PROMPT_VARS)
    for name in names:  # render() checks a template against PROMPT_VARS; rendering all eight ran that check
        assert PROMPT_VARS[name] == ({"first", "second"} if name == "evol_equal.txt" else {"instruction"}
                                     if name in ("evol_answer.txt", "evol_breadth.txt") else
                                     {"instruction", "min_added_words", "max_added_words"})


# ---------------------------------------------------------------- parsers and rules (pure)

@pytest.mark.parametrize("reply, expected", [
    (" Explain how tides work, naming both the moon and the sun.", "Explain how tides work, naming both the moon and the sun."),
    ("Sure! Here is the rewritten version:\n\nRewritten instruction: \"Explain tides in three steps.\"",
     "Explain tides in three steps."),
    ("**New instruction:** Describe the tide tables of a river estuary.", "Describe the tide tables of a river estuary."),
    ("Total the sales below by region.\n| region | sales |\n|---|---|\n| north | 4 |\n| south | 7 |\n",
     "Total the sales below by region.\n| region | sales |\n|---|---|\n| north | 4 |\n| south | 7 |"),
    # A copied WizardLM marker is not a label of ours: it stays, for rule 4 to eliminate.
    ("#Rewritten Prompt#: Explain tides.", "#Rewritten Prompt#: Explain tides."),
    ("", ""),
])
def test_parse_evolved_instruction(reply, expected):
    assert parse_evolved_instruction(reply) == expected


def test_parse_equal_and_answer():
    assert parse_equal("Not equal.") is False and parse_equal("  Equal") is True
    assert parse_equal("They are NOT  EQUAL because ...") is False and parse_equal("the same") is True
    assert parse_equal("Instruction 2 adds a budget.") is None
    assert parse_answer("Response: Bees carry pollen.\nSecond line.") == "Bees carry pollen.\nSecond line."


@pytest.mark.parametrize("answer, reason", [
    ("I'm sorry, but I cannot help with that request.", "elimination_sorry: 'sorry' in a 9-word answer"),
    ("Sorry! " + "word " * 78, "elimination_sorry: 'sorry' in a 79-word answer"),
    ("Sorry for the long answer. " + "detail " * 80, None),  # 80 words or more: an answer, not a refusal
    ("It is the...", "elimination_stopwords: 'It is the...'"),
    ("?! ...", "elimination_stopwords: '?! ...'"),
    ("", "elimination_stopwords: ''"),
    ("Bees carry pollen.", None),
])
def test_answer_rules(answer, reason):
    assert answer_reject_reason(answer, EvolveConfig()) == reason


def test_prompt_copy_rule():
    markers = EvolveConfig().prompt_markers
    assert prompt_copy_reason("#Created Prompt#: Plan a garden.", markers) == "elimination_prompt_copy: 'created prompt'"
    assert prompt_copy_reason("Unlike the given prompt, plan a garden.", markers) == "elimination_prompt_copy: 'given prompt'"
    assert prompt_copy_reason("Plan a small garden for shade-loving herbs.", markers) is None


def test_operation_draw_is_seeded_and_weighted():
    ops = [pick_operation(operation_rng(42, 1, f"t{i}"), EvolveWeights()) for i in range(300)]
    assert set(ops) == set(OPERATIONS)
    assert ops == [pick_operation(operation_rng(42, 1, f"t{i}"), EvolveWeights()) for i in range(300)]
    assert ops != [pick_operation(operation_rng(42, 2, f"t{i}"), EvolveWeights()) for i in range(300)]
    only = EvolveWeights(constraints=0, deepen=0, concretize=0, reasoning=0, complicate_input=0, breadth=1)
    assert {pick_operation(operation_rng(1, 1, f"t{i}"), only) for i in range(50)} == {"breadth"}


def test_generation_keeps_kept_children_and_re_enters_failed_parents():
    pool = [Task(id="a", instruction="A"), Task(id="b", instruction="B")]
    a1 = Task(id="a1", instruction="A1", parent_id="a", round=1, origin="evolved")
    b2 = Task(id="b2", instruction="B2", parent_id="b", round=2, origin="evolved")
    assert [t.id for t in generation(pool, [a1, b2], 1)] == ["a", "b"]
    assert [t.id for t in generation(pool, [a1, b2], 2)] == ["a1", "b"]  # b failed in round 1: b again
    assert [t.id for t in generation(pool, [a1, b2], 3)] == ["a1", "b2"]  # a1 failed in round 2


# ---------------------------------------------------------------- user data

def test_load_pool_formats_and_field_names(tmp_path):
    rows = [{"prompt": "Translate the phrase into Spanish.", "context": "good morning", "response": "buenos días"},
            {"prompt": "Name a prime number above ten.", "context": "", "response": "11"}]
    fields = Fields(instruction="prompt", input="context", output="response")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import datasets
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hf"))
    loaded = {name: load_pool(tmp_path / name, fields) for name in ("a.json", "a.jsonl", "a.csv", "a.parquet", "hf")}
    first = loaded["a.json"]
    assert [t.instruction for t in first] == ["Translate the phrase into Spanish.", "Name a prime number above ten."]
    assert first[0].instances == [Instance("good morning", "buenos días")] and first[1].instances == [Instance("", "11")]
    for name, tasks in loaded.items():
        assert [(t.id, t.instruction, t.instances) for t in tasks] == [(t.id, t.instruction, t.instances) for t in first], name
    with pytest.raises(InputError, match=r"a.jsonl:1: has no 'instruction' text \(fields: context, prompt, response\)"):
        load_pool(tmp_path / "a.jsonl")


# ---------------------------------------------------------------- the stage against a scripted teacher

POOL = [
    {"id": "h", "instruction": "Recommend three podcasts about personal finance for beginners."},  # HTTP 500
    {"id": "a", "instruction": "Explain how the moon causes ocean tides."},  # rule 4
    {"id": "b", "instruction": "Suggest a weekly meal plan for a vegetarian student."},  # rule 1, judged
    {"id": "c", "instruction": "Describe the castling rule in chess."},  # rule 2
    {"id": "d", "instruction": "Compose a haiku about autumn leaves."},  # rule 3
    {"id": "g", "instruction": "Name four famous painters of the Renaissance."},  # ROUGE-L vs pool
    {"id": "s", "instruction": "Explain why the sky looks blue during the day."},  # keyword rule
    {"id": "i", "instruction": "Give two tips for learning to juggle."},  # rule 1, same text
    {"id": "e", "instruction": "List three benefits of regular exercise for adults."},  # kept twice
    {"id": "f", "instruction": "Summarize the paragraph in one sentence.",
     "input": "Honeybees carry pollen between flowers, which lets many fruit crops set seed.", "output": "x"},
]
TEXT = {r["id"]: r["instruction"] for r in POOL}
F_EVOLVED = ("Summarize the paragraph in one sentence of at most twelve words that names the insects.\n"
             "Honeybees carry pollen between flowers, which lets many fruit crops set seed.")
EVOLUTIONS = {  # round-1 replies, by the instruction in the prompt; later rounds get the default
    TEXT["a"]: "#Rewritten Prompt#: Explain how the moon and the sun together cause ocean tides.",
    TEXT["b"]: "Suggest a weekly meal plan for a vegetarian student on a tight budget.",
    TEXT["c"]: "Describe the castling rule in chess and the three conditions that forbid it.",
    TEXT["d"]: "Compose a haiku about autumn leaves that mentions a red maple.",
    TEXT["g"]: TEXT["e"],
    TEXT["s"]: "Explain why the sky looks blue during the day, and draw the path of sunlight.",
    TEXT["i"]: "Give two tips for learning to juggle.",
    evolvable_text(Task(id="f", instruction=POOL[-1]["instruction"], instances=[Instance(POOL[-1]["input"])])):
        F_EVOLVED,
}
JUDGEMENTS = {EVOLUTIONS[TEXT["b"]]: "Equal"}
ANSWERS = {EVOLUTIONS[TEXT["c"]]: "I'm sorry, but I can't help with that.", EVOLUTIONS[TEXT["d"]]: "It is the..."}
EXTRAS = ["Use exactly five bullet points.", "Mention one historical example.", "Keep it under ninety words.",
          "Address a curious twelve-year-old.", "Finish with a practical checklist.", "Cite two reputable sources.",
          "Compare costs in euros.", "Avoid technical jargon entirely.", "Include a short analogy.",
          "Organize it as questions and answers.", "Add a warning about common pitfalls.",
          "Assume the reader lives in Canada.", "Give numbers wherever possible.", "Start with a bold thesis sentence.",
          "Limit each paragraph to two sentences.", "Suggest a follow-up experiment.",
          "Highlight what experts disagree on.", "Frame everything around winter conditions.",
          "Rank the ideas by importance.", "Tie the topic to personal budgeting.",
          "Explain every term in parentheses.", "Include a brief timeline.", "Contrast urban and rural settings.",
          "Close with an open question."]
GOOD_ANSWER = ("A careful response: first set out the main facts, then weigh the practical trade-offs, "
               "and finally give a clear recommendation with one worked example.")
EVOLVE_RE = re.compile(r"\nInstruction:\n(.*)\n\n(?:Rewritten|New) instruction:$", re.DOTALL)


def script(server, evolutions=EVOLUTIONS, judgements=JUDGEMENTS, answers=ANSWERS):
    """Answer each evolve prompt by what it asks about; an unscripted evolution appends the next EXTRA."""
    remaining = dict(evolutions)
    extras = (EXTRAS[n % len(EXTRAS)] for n in itertools.count())

    def reply(path, body):
        prompt = server.prompt_of(body)
        if prompt.endswith("Judgement:"):
            second = prompt.split("Second instruction:\n", 1)[1].rsplit("\n\nReply with", 1)[0]
            text = judgements.get(second, "Not equal")
        elif prompt.endswith("Response:"):
            text = answers.get(prompt.split("Request:\n", 1)[1].rsplit("\n\nResponse:", 1)[0], GOOD_ANSWER)
        else:
            given = EVOLVE_RE.search(prompt).group(1)
            text = remaining.pop(given) if given in remaining else f"{given.splitlines()[0]} {next(extras)}"
        return server.wrap(path, text)

    server.default_reply = reply


def evolve_prompts(server, start=0):
    return [EVOLVE_RE.search(p).group(1) for h in server.history[start:]
            if EVOLVE_RE.search(p := server.prompt_of(h["body"]))]


@pytest.fixture
def session_for(tmp_path, fake_openai):
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("".join(json.dumps(r) + "\n" for r in POOL))

    def make(rounds=2, **overrides):
        cfg = load_config(None, {
            "output_dir": str(tmp_path / "out"), "run_name": "r", "seed_tasks": str(pool_file),
            "teacher.spec": "openai:fake-model", "teacher.base_url": fake_openai.url, "teacher.concurrency": 1,
            "teacher.max_retries": 0, "evolve.source": "seeds", "evolve.rounds": rounds, **overrides})
        return Session(cfg)

    return make


def test_rounds_eliminate_by_each_rule_and_failed_parents_re_enter(session_for, fake_openai):
    script(fake_openai)
    fake_openai.enqueue("unused", status=500)  # the first request: h's round-1 evolution fails
    s = session_for(rounds=2)
    message = s.evolve()
    assert message.startswith("evolve: 2 of 2 rounds done over 10 instructions; 12 evolutions kept")
    run = s.run
    kept = run.read_stage("evolve")
    rejected = {t.parent_id: t for t in run.read_rejected()}
    assert all(t.stage == "evolve" and t.round == 1 for t in rejected.values())
    assert {pid: t.reject_reason for pid, t in rejected.items()} == {
        "a": "elimination_prompt_copy: 'rewritten prompt'",
        "b": "elimination_no_gain: judged equal to its parent",
        "c": "elimination_sorry: 'sorry' in a 8-word answer",
        "d": "elimination_stopwords: 'It is the...'",
        "g": f"rouge_l: 1.000 > 0.7 vs {TEXT['e']!r}",
        "s": "blacklist: draw",
        "i": "elimination_no_gain: same text as an ancestor",
    }
    assert rejected["c"].instances == [Instance("", "I'm sorry, but I can't help with that.")]
    assert rejected["b"].meta["parent_instruction"] == TEXT["b"]

    # Round 1 keeps e and f; every other parent (h failed at the teacher) re-enters round 2 ...
    round1 = {t.parent_id: t for t in kept if t.round == 1}
    assert set(round1) == {"e", "f"}
    assert round1["f"].instruction == F_EVOLVED and round1["f"].instances == [Instance("", GOOD_ANSWER)]
    round2 = {t.parent_id: t for t in kept if t.round == 2}
    assert set(round2) == {"h", "a", "b", "c", "d", "g", "s", "i", round1["e"].id, round1["f"].id}
    # ... and the server saw each failed parent's instruction in an evolution prompt again.
    sent = evolve_prompts(fake_openai)
    for pid in "habcdgsi":
        assert sent.count(TEXT[pid]) == 2, pid
    assert sent.count(TEXT["e"]) == 1 and sent.count(round1["e"].instruction) == 1
    judged = [fake_openai.prompt_of(h["body"]) for h in fake_openai.history]
    assert not any(f"Second instruction:\n{TEXT['i']}\n\n" in p for p in judged)  # same text: no judge call needed

    # Lineage: the full chain of ancestors, root first, with the operation and round that made each.
    grandchild = round2[round1["e"].id]
    assert grandchild.origin == "evolved" and grandchild.parent_id == round1["e"].id and grandchild.round == 2
    assert grandchild.meta["lineage"] == [{"id": "e", "operation": None, "round": 0},
                                          {"id": round1["e"].id, "operation": round1["e"].meta["operation"], "round": 1}]
    for t in kept:  # the operation is the seeded draw for (seed, round, parent), and its template was used
        assert t.meta["operation"] == pick_operation(operation_rng(42, t.round, t.parent_id), EvolveWeights())
        assert t.prompt == f"evol_{t.meta['operation']}.txt" and t.teacher == "openai:fake-model"
        assert t.meta["judge"] == "not equal" and len(t.instances) == 1 and t.instances[0].input == ""

    ev = summary(run)["evolve"]
    assert ev["kept"] == 12 and ev["rounds_done"] == 2 and ev["by_round"] == {1: 2, 2: 10}
    assert ev["eliminated_by_rule"] == {"elimination_prompt_copy": 1, "elimination_no_gain": 2, "elimination_sorry": 1,
                                        "elimination_stopwords": 1, "rouge_l": 1, "blacklist": 1}
    usage = run.manifest()["usage"]
    assert usage["evolve"]["calls"] == 20 and usage["evolve"]["errors"] == 1
    assert usage["evolve_judge"]["calls"] == 15 and usage["evolve_answer"]["calls"] == 14


def test_resume_never_redoes_a_round_and_finishes_a_broken_one(session_for, fake_openai):
    script(fake_openai, evolutions={}, judgements={}, answers={})
    session_for(rounds=2).evolve()
    n = len(fake_openai.history)
    assert session_for(rounds=2).evolve().startswith("evolve: 2 of 2 rounds done over 10 instructions; 0 evolutions kept")
    assert len(fake_openai.history) == n  # nothing re-sent

    # Simulate a crash in round 2: three of its evolutions never written, round 2 not marked done.
    run = RunDir(session_for().cfg.run_dir)
    kept = run.read_stage("evolve")
    lost = kept[-3:]
    run.stage_file("evolve").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in kept[:-3]))
    run.update_manifest(state={"evolve_rounds_done": 1})
    message = session_for(rounds=2).evolve()
    assert message.startswith("evolve: 2 of 2 rounds done over 10 instructions; 3 evolutions kept")
    lost_parents = {t.parent_id for t in lost}
    assert evolve_prompts(fake_openai, n) == []  # their replies come from the run's cache: none is paid twice
    assert sorted(t.id for t in run.read_stage("evolve")) == sorted(t.id for t in kept)
    again = [t for t in run.read_stage("evolve") if t.round == 2 and t.parent_id in lost_parents]
    assert [t.meta["operation"] for t in again] == [t.meta["operation"] for t in lost]  # same seeded draws

    # More rounds continue from the last generation: round 3 evolves each slot's latest instruction.
    n = len(fake_openai.history)
    session_for(rounds=3).evolve()
    round2 = [t.instruction for t in run.read_stage("evolve") if t.round == 2]
    assert len(round2) == 10 and sorted(evolve_prompts(fake_openai, n)) == sorted(round2)


def test_another_input_in_the_same_run_is_refused(session_for, fake_openai, tmp_path):
    script(fake_openai, evolutions={}, judgements={}, answers={})
    session_for(rounds=1).evolve()
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"instruction": "Plan a picnic for six friends in spring."}]))
    with pytest.raises(Seed2LoraError, match="was evolved from seeds"):
        session_for(rounds=1, **{"evolve.source": str(other)}).evolve()


def test_cli_evolve_run_and_show(fake_openai, tmp_path):
    script(fake_openai, evolutions={}, judgements={}, answers={})
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": r["instruction"], "input": r.get("input", ""),
                                   "output": r.get("output", "")} for r in POOL[:4]]))
    flags = ["--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--output-dir", str(tmp_path),
             "--set", "teacher.concurrency=1"]
    runner = CliRunner()
    result = runner.invoke(cli, ["evolve", "--input", str(alpaca), "--rounds", "1", "--run-name", "cli",
                                 "--weights", "constraints=0,deepen=0,concretize=0,reasoning=0,complicate_input=0",
                                 *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "evolve: 1 of 1 rounds done over 4 instructions; 4 evolutions kept" in result.output
    evolved = RunDir(tmp_path / "cli").read_stage("evolve")
    assert {t.meta["operation"] for t in evolved} == {"breadth"}
    assert all(fake_openai.prompt_of(h["body"]).endswith(("New instruction:", "Judgement:", "Response:"))
               for h in fake_openai.history)
    shown = runner.invoke(cli, ["show", str(tmp_path / "cli")], catch_exceptions=False)
    assert shown.exit_code == 0 and "Evolved (4 kept, 1 rounds done)" in shown.output and "breadth" in shown.output

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in POOL[:3]))
    result = runner.invoke(cli, ["run", "--run-name", "all", "--seeds", str(seeds), "--set", 'stages=["evolve"]',
                                 "--set", "evolve.source=seeds", "--set", "evolve.rounds=1", *flags],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(RunDir(tmp_path / "all").read_stage("evolve")) == 3


# ---------------------------------------------------------------- the embedded teacher, for real

@pytest.mark.slow
def test_embedded_teacher_two_rounds_over_ten_seeds(embedded_teacher, tmp_path):
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "emb", "evolve.source": "seeds",
                             "evolve.rounds": 2, "evolve.max_tokens": 32, "evolve.answer_max_tokens": 32,
                             "evolve.judge_max_tokens": 4})
    s = Session(cfg, teacher=embedded_teacher)
    s.seeds = s.seeds[:10]
    started = time.monotonic()
    message = s.evolve()
    elapsed = time.monotonic() - started
    print(f"\n{message}\n{elapsed:.0f} s")
    run = s.run
    assert run.manifest()["state"]["evolve_rounds_done"] == 2
    kept, rejected = run.read_stage("evolve"), [t for t in run.read_rejected() if t.stage == "evolve"]
    assert kept or rejected
    evolutions = len(kept) + len(rejected)
    assert evolutions == run.manifest()["usage"]["evolve"]["calls"] - run.manifest()["usage"]["evolve"]["errors"]
    seed_ids, by_id = {t.id for t in s.seeds}, {t.id: t for t in kept}
    for t in [*kept, *rejected]:
        assert t.origin == "evolved" and t.round in (1, 2) and t.meta["operation"] in OPERATIONS
        chain, parent = t.meta["lineage"], by_id.get(t.parent_id)
        assert chain[0]["id"] in seed_ids and chain[-1]["id"] == t.parent_id
        assert chain == ([*parent.meta["lineage"], {"id": parent.id, "operation": parent.meta["operation"], "round": 1}]
                         if parent else [{"id": t.parent_id, "operation": None, "round": 0}])
