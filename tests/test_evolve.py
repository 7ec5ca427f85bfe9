"""Evol-Instruct: prompts, parsers, elimination rules, rounds with re-entry, resume, user data, CLI."""

import itertools
import json
import re
import time
from collections import Counter
from contextlib import contextmanager

import pytest
from click.testing import CliRunner
from fakeserver import TOPICS, VERBS

from pipeline.budget import Budget, attach_run
from pipeline.cache import CACHE_FILE, ResponseCache
from pipeline.cli import cli
from pipeline.config import EvolveConfig, EvolveWeights, load_config
from pipeline.datasets_io import Fields, load_pool
from pipeline.errors import InputError, Seed2LoraError
from pipeline.prompts import PROMPT_VARS, Prompts
from pipeline.records import Instance, Task
from pipeline.seeds import load_seeds
from pipeline.show import summary
from pipeline.stages.evolve import (
    OPERATIONS,
    answer_prompt,
    answer_reject_reason,
    check_source,
    evolution_prompt,
    evolvable_text,
    judge_prompt,
    lineages_left,
    operation_rng,
    pick_operation,
    prompt_copy_reason,
    run_evolve,
)
from pipeline.stages.parse import parse_answer, parse_equal, parse_evolved_instruction
from pipeline.store import RunDir
from pipeline.teachers import BaseTeacher, Completion, make_teacher
from pipeline.teachers.hf import HFTeacher

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


def test_a_slot_keeps_its_kept_children_and_a_failed_parent_re_enters():
    pool = [Task(id="a", instruction="A"), Task(id="b", instruction="B"), Task(id="c", instruction="C")]
    a1 = Task(id="a1", instruction="A1", parent_id="a", round=1, origin="evolved")
    b2 = Task(id="b2", instruction="B2", parent_id="b", round=2, origin="evolved")
    # Outcomes: a kept in round 1, a1 rejected in round 2; b rejected in round 1, kept in round 2; c none.
    done = {"a": 1, "a1": 2, "b": 2}
    where = [(x.current.id, x.round) for x in lineages_left(pool, [a1, b2], done, 3)]
    assert where == [("a1", 3), ("b2", 3), ("c", 1)]  # a1 failed in round 2: a1 again; b failed in 1: b again
    assert [(x.current.id, x.round) for x in lineages_left(pool, [a1, b2], done, 2)] == [("a1", 3), ("b2", 3), ("c", 1)]
    assert [(x.current.id, x.round) for x in lineages_left(pool, [a1, b2], {}, 2)] == [("a", 1), ("b", 1), ("c", 1)]


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


def test_a_pool_row_that_reuses_an_id_is_refused_and_a_repeated_row_is_named(tmp_path, fake_openai):
    """Rows were kept once per id, silently: a file whose "id" column repeated lost every later row with that id,
    whatever it held, and a row pasted twice was evolved once with nothing said."""
    clash = tmp_path / "clash.csv"
    clash.write_text("id,instruction,output\n1,Name a prime number above ten.,11\n2,Name a colour.,Red\n"
                     "1,Translate the phrase into Spanish.,hola\n")
    with pytest.raises(InputError, match=r"clash.csv:4: repeats id '1' of line 2 with other content"):
        load_pool(clash)
    twice = tmp_path / "twice.jsonl"
    rows = [{"instruction": "Plan a picnic for six friends in spring.", "output": "Bring fruit."},
            {"instruction": "Name a colour of the sea.", "output": "Blue"}]
    write_pool(twice, [rows[0], rows[1], rows[0]])
    assert [t.instruction for t in load_pool(twice)] == [r["instruction"] for r in rows]
    script(fake_openai, evolutions={}, judgements={}, answers={})
    result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "run"), "--input", str(twice), "--rounds", "0",
                                      "--teacher", "openai:fake-model", "--base-url", fake_openai.url],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "note: line 3 of twice.jsonl repeats an earlier row whole: loaded once" in result.output
    assert "over 2 instructions" in result.output


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


def scripted(evolutions=EVOLUTIONS, judgements=JUDGEMENTS, answers=ANSWERS):
    """A teacher's text for each evolve prompt, by what it asks about; an unscripted evolution
    appends the next EXTRA, a scripted one is used once (a retry or a later round gets the default)."""
    remaining = dict(evolutions)
    extras = (EXTRAS[n % len(EXTRAS)] for n in itertools.count())

    def reply(prompt):
        if prompt.endswith("Judgement:"):
            second = prompt.split("Second instruction:\n", 1)[1].rsplit("\n\nReply with", 1)[0]
            return judgements.get(second, "Not equal")
        if prompt.endswith("Response:"):
            return answers.get(prompt.split("Request:\n", 1)[1].rsplit("\n\nResponse:", 1)[0], GOOD_ANSWER)
        given = EVOLVE_RE.search(prompt).group(1)
        return remaining.pop(given) if given in remaining else f"{given.splitlines()[0]} {next(extras)}"

    return reply


def script(server, evolutions=EVOLUTIONS, judgements=JUDGEMENTS, answers=ANSWERS):
    reply = scripted(evolutions, judgements, answers)
    server.default_reply = lambda path, body: server.wrap(path, reply(server.prompt_of(body)))


def evolve_prompts(server, start=0):
    return [EVOLVE_RE.search(p).group(1) for h in server.history[start:]
            if EVOLVE_RE.search(p := server.prompt_of(h["body"]))]


def kind_of(prompt):
    return "judge" if prompt.endswith("Judgement:") else "answer" if prompt.endswith("Response:") else "evolve"


def outcomes(run):
    """(parent_id, round) of every evolution outcome written, kept or rejected."""
    return sorted((t.parent_id, t.round) for t in [*run.read_stage("evolve"), *run.read_rejected()]
                  if t.stage == "evolve")


def per_round(run):
    """Outcomes per round; each slot has at most one per round."""
    done = outcomes(run)
    assert len(set(done)) == len(done), "a slot has two outcomes in one round"
    return Counter(r for _, r in done)


def write_pool(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def stage_for(tmp_path, fake_openai):
    """Run the stage function itself as the runner would: a fresh teacher per call with the run's
    response cache and a budget that counts what earlier calls spent. Returns (result, run, teacher)."""
    pool_file = write_pool(tmp_path / "pool.jsonl", POOL)
    spent: dict = {}  # usage of the earlier calls, as the runner's manifest carries it

    @contextmanager
    def progress(desc, total):
        bar = [desc, total, 0]
        run_stage.bars.append(bar)

        def advance(n):
            bar[2] += n

        yield advance

    def run_stage(rounds=2, pool_file=pool_file, **overrides):
        cfg = load_config(None, {
            "output_dir": str(tmp_path / "out"), "run_name": "r", "seed_tasks": str(pool_file),
            "teacher.spec": "openai:fake-model", "teacher.base_url": fake_openai.url, "teacher.concurrency": 1,
            "teacher.max_retries": 0, "evolve.source": "seeds", "evolve.rounds": rounds, **overrides})
        run = RunDir(cfg.run_dir)
        run.ensure()
        teacher = make_teacher(cfg.teacher, seed=cfg.seed)
        teacher.cache = ResponseCache(run.path / CACHE_FILE)
        attach_run(teacher, teacher.cache, "s", Budget(cfg.budget, {"fake-model": dict(spent)}))
        pool = load_seeds(pool_file)
        try:
            result = run_evolve(teacher, pool, cfg, run, Prompts(), source=f"seeds:{pool_file}",
                                seeds=[t.instruction for t in pool], progress=progress)
        finally:
            teacher.cache.close()
            spent.update(teacher.budget.by_model()["fake-model"])
        return result, run, teacher

    run_stage.bars = []  # [description, total, advanced] of each progress bar, in order
    return run_stage


def test_rounds_eliminate_by_each_rule_and_failed_parents_re_enter(stage_for, fake_openai):
    script(fake_openai)
    fake_openai.enqueue("unused", status=500)  # the first request: h's round-1 evolution fails
    first, run, _ = stage_for(rounds=2)
    # h's slot has no outcome: round 1 is not done, but the other slots go on to round 2 (a slot's
    # round needs only its own last outcome).
    assert (first.rounds_done, first.pending, first.errors, first.kept) == (0, 1, 1, 11)
    assert first.source.startswith("seeds:") and "evolve_rounds_done" not in run.manifest().get("state", {})
    assert per_round(run) == {1: 9, 2: 9} and ("h", 1) not in outcomes(run)
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
    assert first.rejected == {"elimination_no_gain": 2, "elimination_prompt_copy": 1, "elimination_sorry": 1,
                              "elimination_stopwords": 1, "rouge_l": 1, "blacklist": 1}
    assert rejected["c"].instances == [Instance("", "I'm sorry, but I can't help with that.")]
    assert rejected["b"].meta["parent_instruction"] == TEXT["b"]

    # The re-run finishes h's slot alone: its round 1, then its round 2.
    second, run, _ = stage_for(rounds=2)
    assert (second.rounds_done, second.pending, second.errors, second.kept, second.total) == (2, 0, 0, 2, 13)
    kept = run.read_stage("evolve")
    round1 = {t.parent_id: t for t in kept if t.round == 1}
    assert set(round1) == {"e", "f", "h"}
    assert round1["f"].instruction == F_EVOLVED and round1["f"].instances == [Instance("", GOOD_ANSWER)]
    # Round 1 keeps e, f, h; every other parent re-enters round 2 ...
    round2 = {t.parent_id: t for t in kept if t.round == 2}
    assert set(round2) == {"a", "b", "c", "d", "g", "s", "i", round1["e"].id, round1["f"].id, round1["h"].id}
    # ... and the server saw each failed parent's instruction in an evolution prompt again (h: its retry).
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
    assert ev["kept"] == 13 and ev["by_round"] == {1: 3, 2: 10}
    assert ev["eliminated_by_rule"] == {"elimination_prompt_copy": 1, "elimination_no_gain": 2, "elimination_sorry": 1,
                                        "elimination_stopwords": 1, "rouge_l": 1, "blacklist": 1}
    calls = {h: sum(kind_of(fake_openai.prompt_of(x["body"])) == h for x in fake_openai.history)
             for h in ("evolve", "judge", "answer")}
    assert calls == {"evolve": 21, "judge": 16, "answer": 15}  # h's evolution twice, nothing else paid twice


def test_resume_never_redoes_a_round_and_finishes_a_broken_one(stage_for, fake_openai):
    script(fake_openai, evolutions={}, judgements={}, answers={})
    stage_for(rounds=2)
    n = len(fake_openai.history)
    again, run, teacher = stage_for(rounds=2)
    assert (again.rounds_done, again.pending, again.kept, again.total) == (2, 0, 0, 20)
    assert len(fake_openai.history) == n and teacher.usage.to_dict() == {}  # nothing re-sent, nothing even looked up

    # Simulate a crash in round 2: three of its evolutions never written.
    kept = run.read_stage("evolve")
    lost = kept[-3:]
    assert {t.round for t in lost} == {2}
    run.stage_file("evolve").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in kept[:-3]))
    resumed, run, teacher = stage_for(rounds=2)
    assert (resumed.rounds_done, resumed.pending, resumed.kept) == (2, 0, 3)
    assert len(fake_openai.history) == n  # their replies come from the run's cache: none is paid twice
    assert {u["cached"] for u in teacher.usage.to_dict().values()} == {3}
    assert sorted(t.id for t in run.read_stage("evolve")) == sorted(t.id for t in kept)
    lost_parents = {t.parent_id for t in lost}
    again = [t for t in run.read_stage("evolve") if t.round == 2 and t.parent_id in lost_parents]
    assert sorted(t.meta["operation"] for t in again) == sorted(t.meta["operation"] for t in lost)  # same draws

    # More rounds continue from the last generation: round 3 evolves each slot's latest instruction.
    stage_for(rounds=3)
    round2 = [t.instruction for t in run.read_stage("evolve") if t.round == 2]
    assert len(round2) == 10 and sorted(evolve_prompts(fake_openai, n)) == sorted(round2)


def test_an_older_run_marked_done_past_a_failed_slot_is_not_redone(stage_for, fake_openai):
    """Older versions marked round 1 done although h's evolution failed; h then re-entered
    round 2 and has its outcome there, so round 1 is complete as far as the outputs go."""
    script(fake_openai, evolutions={}, judgements={}, answers={})
    _, run, _ = stage_for(rounds=2)
    kept = run.read_stage("evolve")
    h1 = next(t for t in kept if t.parent_id == "h" and t.round == 1)
    older = [t for t in kept if t.id != h1.id and t.parent_id != h1.id]
    h2 = Task(id="evolved_h2", instruction=f"{TEXT['h']} Compare costs in euros.", origin="evolved", parent_id="h",
              round=2, stage="evolve", instances=[Instance("", GOOD_ANSWER)])
    run.stage_file("evolve").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in [*older, h2]))
    n = len(fake_openai.history)
    result, run, _ = stage_for(rounds=2)
    assert (result.rounds_done, result.pending, result.kept) == (2, 0, 0) and len(fake_openai.history) == n


def test_another_input_in_the_same_run_is_refused(stage_for, fake_openai, tmp_path):
    script(fake_openai, evolutions={}, judgements={}, answers={})
    result, run, _ = stage_for(rounds=1)
    run.update_manifest(state={"evolve_input": result.source})  # what the runner records from the result
    other = write_pool(tmp_path / "other.jsonl", [{"instruction": "Plan a picnic for six friends in spring."}])
    with pytest.raises(Seed2LoraError, match="pool.jsonl, not seeds:.*other.jsonl"):
        stage_for(rounds=1, pool_file=other)
    # The same check, for the runner to make before it records a new input in the manifest.
    check_source(run, result.source)
    with pytest.raises(Seed2LoraError, match="delete evolve.jsonl to start over"):
        check_source(run, f"seeds:{other}")
    run.stage_file("evolve").write_text("")  # started over: any input may come next
    check_source(run, f"seeds:{other}")


# ---------------------------------------------------------------- nothing lost: budget, outages, bad replies

def test_budget_stops_mid_round_and_a_higher_budget_finishes_that_round(stage_for, fake_openai):
    script(fake_openai, evolutions={}, judgements={}, answers={})
    # One call at a time, the slot with the most calls left first: every round-1 evolution, then every
    # judgement, then the answers; the budget runs out among the answers.
    first, run, _ = stage_for(rounds=2, **{"budget.max_tokens_total": 660})
    assert first.rounds_done == 0 and 0 < first.kept < 10 and first.errors == 0
    assert first.pending == 10  # every slot has a round to go: round 2, or the rest of round 1
    assert "evolve_rounds_done" not in run.manifest().get("state", {})
    done = {pid for pid, _ in outcomes(run)}
    assert {r for _, r in outcomes(run)} == {1} and len(done) == first.kept  # round 2 never started
    n = len(fake_openai.history)
    sent_before = {fake_openai.prompt_of(h["body"]) for h in fake_openai.history}

    second, run, _ = stage_for(rounds=2, **{"budget.max_tokens_total": 1_000_000})
    assert (second.rounds_done, second.pending, second.kept) == (2, 0, 20 - first.kept)
    assert per_round(run) == {1: 10, 2: 10}
    # Every slot costs 3 calls (evolution, judgement, answer) a round; across both runs the server
    # got exactly those 60, all different: the re-run sent only what round 1 still lacked.
    prompts = [fake_openai.prompt_of(h["body"]) for h in fake_openai.history]
    assert len(prompts) == 60 and len(set(prompts)) == 60 and not sent_before & set(prompts[n:])
    # The re-run first finished round 1: the answers it lacked (evolutions and judgements came from the cache).
    assert [kind_of(p) for p in prompts[n:n + 10 - first.kept]] == ["answer"] * (10 - first.kept)


def test_a_server_outage_leaves_slots_pending_and_a_rerun_completes_them(stage_for, fake_openai):
    script(fake_openai, evolutions={}, judgements={}, answers={})
    # One call at a time, no retries, the slot with the most calls left first: the ten round-1
    # evolutions (calls 0-9), then the judgements (10-15) of the six slots whose evolution came back,
    # then answers. The server fails slot 6's evolution, the evolutions of slots 8 to 10 (an outage),
    # slot 1's judgement and slot 2's answer.
    for up in [True] * 5 + [False, True] + [False] * 3 + [False] + [True] * 5 + [False]:
        if up:
            fake_openai.enqueue(fake_openai.default_reply)
        else:
            fake_openai.enqueue({"error": {"message": "upstream down"}}, status=502)
    first, run, teacher = stage_for(rounds=2)
    failed = [fake_openai.prompt_of(fake_openai.history[i]["body"]) for i in (5, 7, 8, 9, 10, 16)]
    assert [kind_of(p) for p in failed] == ["evolve"] * 4 + ["judge", "answer"]  # the outage hit every kind of call
    assert {kind: u["errors"] for kind, u in teacher.usage.to_dict().items()} == \
        {"evolve": 4, "evolve_judge": 1, "evolve_answer": 1}  # each call counted under its own kind
    # One slot stopped per failed call; the four others went on through round 2.
    assert first.errors == 6 and first.rounds_done == 0 and first.pending == 6
    assert per_round(run) == {1: 4, 2: 4}  # nothing written for the failed slots
    ev = summary(run)["evolve"]
    assert (ev["last_round"], ev["kept"]) == (2, 8)  # `show`: "... rounds done by every slot; outcomes reach round 2"
    # The bar counts calls, 3 per slot-round: 24 for the 8 slot-rounds with an outcome, and the 3 calls
    # of the failed slots that came back (slot 1's evolution, slot 2's evolution and judgement).
    assert stage_for.bars == [["evolve rounds 1-2, calls", 60, 27]]
    n = len(fake_openai.history)

    second, run, _ = stage_for(rounds=2)
    assert (second.rounds_done, second.pending, second.errors) == (2, 0, 0)
    assert per_round(run) == {1: 10, 2: 10}
    assert stage_for.bars[1:] == [["evolve rounds 1-2, calls", 36, 36]]
    # 60 calls that succeeded, plus the 6 that failed and were sent again: nothing else twice.
    prompts = [fake_openai.prompt_of(h["body"]) for h in fake_openai.history]
    assert len(prompts) == 66 and len(set(prompts)) == 60 and set(failed) <= set(prompts[n:])


def test_an_empty_reply_is_asked_again_with_a_new_salt_then_rejected(stage_for, fake_openai):
    answer_less = EVOLUTIONS[TEXT["c"]]
    reply = scripted(evolutions={TEXT["b"]: "Rewritten instruction:"},  # empty once, then a good one
                     judgements={}, answers={answer_less: "Response:"})  # always empty

    def server_reply(path, body):
        prompt = fake_openai.prompt_of(body)
        if kind_of(prompt) == "evolve" and EVOLVE_RE.search(prompt).group(1) == TEXT["a"]:
            return fake_openai.wrap(path, "Sure! Here is the rewritten instruction:\n\n")  # always empty
        if kind_of(prompt) == "evolve" and EVOLVE_RE.search(prompt).group(1) == TEXT["c"]:
            return fake_openai.wrap(path, answer_less)
        return fake_openai.wrap(path, reply(prompt))

    fake_openai.default_reply = server_reply
    result, run, teacher = stage_for(rounds=1, **{"teacher.max_retries": 2})
    assert (result.rounds_done, result.pending, result.errors) == (1, 0, 0)
    sent = evolve_prompts(fake_openai)
    # The same prompt went out again: a retry's salt differs, so the cached empty reply was not reused.
    assert sent.count(TEXT["a"]) == 3 and sent.count(TEXT["b"]) == 2 and sent.count(TEXT["c"]) == 1
    answers = [p for h in fake_openai.history if kind_of(p := fake_openai.prompt_of(h["body"])) == "answer"]
    assert sum(answer_less in p for p in answers) == 3
    rejected = {t.parent_id: t for t in run.read_rejected()}
    assert rejected["a"].reject_reason == "unparseable_reply: empty evolution after 2 retries"
    assert rejected["a"].meta["evolve_reply"] == {"reply": "Sure! Here is the rewritten instruction:\n\n",
                                                  "finish_reason": "stop"}
    assert rejected["a"].meta["tries"] == 3
    assert rejected["a"].meta["operation"] in OPERATIONS and rejected["a"].round == 1
    assert rejected["c"].reject_reason == "unparseable_reply: empty answer after 2 retries"
    assert rejected["c"].instruction == answer_less and rejected["c"].meta["evolve_reply"]["reply"] == "Response:"
    assert result.rejected["unparseable_reply"] == 2
    assert "b" in {t.parent_id for t in run.read_stage("evolve")}

    n = len(fake_openai.history)  # written outcomes are final: a re-run asks nothing again
    again, run, _ = stage_for(rounds=1, **{"teacher.max_retries": 2})
    assert (again.rounds_done, again.kept, len(fake_openai.history)) == (1, 0, n)


def test_no_barrier_a_slots_next_round_starts_while_other_slots_are_in_this_one(stage_for, fake_openai, tmp_path):
    rows = [{"instruction": f"{verb} {topic}."} for verb, topic in zip(itertools.cycle(VERBS), TOPICS)]
    pool_file = write_pool(tmp_path / "topics.jsonl", rows[:20])
    reply, arrivals = scripted(evolutions={}, judgements={}, answers={}), []

    def timed_reply(path, body):
        prompt = fake_openai.prompt_of(body)
        arrivals.append((time.monotonic(), prompt))
        return fake_openai.wrap(path, reply(prompt))

    fake_openai.default_reply, fake_openai.default_delay = timed_reply, 0.1  # every reply takes 0.1 s; 8 in flight
    result, run, _ = stage_for(rounds=2, pool_file=pool_file, **{"teacher.concurrency": 8})
    assert (result.rounds_done, result.pending) == (2, 0) and per_round(run) == {1: 20, 2: 20}

    def round_of(prompt):  # each evolution appends one EXTRA: count them in what the call is about
        extras = sum(x in prompt for x in EXTRAS)
        return {"evolve": extras + 1, "judge": (extras + 1) // 2, "answer": extras}[kind_of(prompt)]

    last_round1 = max(t for t, p in arrivals if round_of(p) == 1)
    first_round2 = min(t for t, p in arrivals if round_of(p) == 2)
    assert first_round2 < last_round1 + 0.05  # sent while round-1 calls were still being answered


def test_a_large_pool_writes_its_first_outcomes_early_and_a_budget_stop_keeps_them(stage_for, fake_openai, tmp_path):
    rows = [{"instruction": f"{verb} {topic}."} for verb, topic in zip(itertools.cycle(VERBS), TOPICS)]
    pool_file = write_pool(tmp_path / "topics.jsonl", rows[:20])
    script(fake_openai, evolutions={}, judgements={}, answers={})
    one_at_a_time = {"teacher.concurrency": 1, "teacher.batch_size": 1}  # 4 slots under way at once
    first, run, _ = stage_for(rounds=2, pool_file=pool_file, **one_at_a_time, **{"budget.max_tokens_total": 700})
    kinds = [kind_of(fake_openai.prompt_of(h["body"])) for h in fake_openai.history]
    # Slots 1-4 go first, most calls left first: their evolutions, judgements, answers (calls 0-11); the
    # first outcome comes after 12 calls, not after all 20 evolutions.
    assert kinds[:12] == ["evolve"] * 4 + ["judge"] * 4 + ["answer"] * 4
    assert first.kept > 0 and len(run.read_stage("evolve")) == first.kept and 0 < first.pending < 20  # some finished
    second, run, _ = stage_for(rounds=2, pool_file=pool_file, **one_at_a_time)
    assert (second.rounds_done, second.pending) == (2, 0) and per_round(run) == {1: 20, 2: 20}


class ScriptedBatches(HFTeacher):
    """The in-process teacher's batching (one batch per sampling setting, a batch run when the
    source waits) over scripted replies: no model is loaded."""

    def __init__(self, reply, batch_size):
        BaseTeacher.__init__(self)
        self.name, self.api, self.batch_size = "hf:scripted", "completions", batch_size
        self.reply, self.batches = reply, []

    def describe(self):
        return {"name": self.name, "kind": "hf"}

    def _generate_batch(self, texts, params, salts=()):
        self.batches.append((params, [kind_of(t) for t in texts]))
        return [Completion(self.reply(t), "stop", prompt_tokens=11, completion_tokens=5) for t in texts]


def test_the_in_process_teacher_batches_each_kind_and_never_waits_for_a_whole_round(tmp_path):
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "hf", "evolve.rounds": 2})
    teacher = ScriptedBatches(scripted(), batch_size=4)
    pool = load_seeds(write_pool(tmp_path / "pool.jsonl", POOL))
    result = run_evolve(teacher, pool, cfg, RunDir(cfg.run_dir), Prompts(), source="pool",
                        seeds=[t.instruction for t in pool])
    assert (result.rounds_done, result.pending, result.errors) == (2, 0, 0)
    run = RunDir(cfg.run_dir)
    assert per_round(run) == {1: 10, 2: 10}
    assert all(len(set(kinds)) == 1 and len(kinds) <= 4 for _, kinds in teacher.batches)
    order = [kinds[0] for _, kinds in teacher.batches]
    assert order.index("judge") < max(i for i, k in enumerate(order) if k == "evolve")
    usage = teacher.usage.to_dict()
    assert usage["evolve"]["calls"] == 20 and usage["evolve_judge"]["calls"] + usage["evolve_answer"]["calls"] > 0


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
    assert "evolve round 1/1, calls: 0/12 (0%), started" in result.output  # captured output: plain progress lines
    assert "evolve round 1/1, calls: 12/12 (100%), done in" in result.output
    evolved = RunDir(tmp_path / "cli").read_stage("evolve")
    assert {t.meta["operation"] for t in evolved} == {"breadth"}
    assert all(fake_openai.prompt_of(h["body"]).endswith(("New instruction:", "Judgement:", "Response:"))
               for h in fake_openai.history)
    shown = runner.invoke(cli, ["show", str(tmp_path / "cli")], catch_exceptions=False)
    assert shown.exit_code == 0 and "Evolved (4 kept, 1 round done" in shown.output and "breadth" in shown.output

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in POOL[:3]))
    result = runner.invoke(cli, ["run", "--run-name", "all", "--seeds", str(seeds), "--set", 'stages=["evolve"]',
                                 "--set", "evolve.source=seeds", "--set", "evolve.rounds=1", *flags],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(RunDir(tmp_path / "all").read_stage("evolve")) == 3


@pytest.mark.parametrize("given_by", ["--input", "evolve.source"])
def test_evolving_a_users_file_never_filters_against_the_bundled_seeds(fake_openai, tmp_path, given_by):
    """`evolve --input` uses no seed file, but the 175 bundled seeds sat in its ROUGE-L novelty index: an evolution
    near one of them, tasks the user never gave, went to rejected.jsonl as `rouge_l: ... vs` that seed. The file
    named by evolve.source alike: the runner's rule (ctx.importing, and the source evolve records as it starts), not
    a test of evolve's own on the source's name."""
    bundled = load_seeds()[1].instruction
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"instruction": "Plan a picnic for six friends in spring.", "output": "Bring fruit."}]))
    script(fake_openai, evolutions={"Plan a picnic for six friends in spring.": bundled}, judgements={}, answers={})
    source = ["--input", str(mine)] if given_by == "--input" else ["--set", f"evolve.source={mine}"]
    result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "run"), *source, "--rounds", "1",
                                      "--weights", "constraints=0,deepen=0,concretize=0,reasoning=0,complicate_input=0",
                                      "--teacher", "openai:fake-model", "--base-url", fake_openai.url,
                                      "--set", "teacher.concurrency=1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "run")
    assert [t.reject_reason for t in run.read_rejected()] == []
    assert [t.instruction for t in run.read_stage("evolve")] == [bundled]
    # nor does its manifest name them: it said seed_file "bundled seeds/seed_tasks.jsonl", num_seeds 175
    assert (run.manifest()["seed_file"], run.manifest()["num_seeds"]) == (None, None)


def test_a_prompts_folder_missing_a_template_evolve_needs_stops_before_any_request(fake_openai, tmp_path):
    """A copied prompts folder without evol_answer.txt passed the check (it reads the files that are there), and the
    stage died at its first answer, 7 evolutions and judgements paid, a failed manifest left behind."""
    import shutil

    mine = shutil.copytree(Prompts().dir, tmp_path / "my_prompts")
    (mine / "evol_answer.txt").unlink()
    (mine / "evol_breadth.txt").unlink()  # weight 0 below: never rendered, so never asked for
    pool = write_pool(tmp_path / "pool.jsonl", POOL[:2])
    script(fake_openai, evolutions={}, judgements={}, answers={})
    result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "run"), "--input", str(pool), "--rounds", "1",
                                      "--weights", "breadth=0", "--teacher", "openai:fake-model",
                                      "--base-url", fake_openai.url, "--set", f"prompts_dir={mine}"])
    assert result.exit_code == 2, result.output
    assert f"{mine / 'evol_answer.txt'}: prompt template is missing" in result.output
    assert fake_openai.history == [] and not (tmp_path / "run").exists()
    (mine / "evol_answer.txt").write_text((Prompts().dir / "evol_answer.txt").read_text())
    again = CliRunner().invoke(cli, ["evolve", str(tmp_path / "run"), "--input", str(pool), "--rounds", "1",
                                     "--weights", "breadth=0", "--teacher", "openai:fake-model",
                                     "--base-url", fake_openai.url, "--set", f"prompts_dir={mine}"])
    assert again.exit_code == 0, again.output


def test_evolve_of_a_stage_the_run_lacks_stops_before_any_request(fake_openai, tmp_path):
    """`seed2lora evolve` on a run with no filter.jsonl (evolve.source's default): the check passed it unread, as a
    stage of the default `stages` that an earlier step would write, though the command runs no such step; the
    teacher was probed, the run's folder and manifest made, and the step died saying "still to run: evolve"."""
    result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "run"), "--teacher", "openai:fake-model",
                                      "--base-url", fake_openai.url])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'run' / 'filter.jsonl'} does not exist" in " ".join(result.output.split()), result.output
    assert fake_openai.history == [] and not (tmp_path / "run").exists()
    assert "still to run" not in result.output


def test_a_resume_with_an_edited_template_says_which_changed(fake_openai, tmp_path):
    """Edit a template between two sessions of a run: the second went on with the new text, said nothing, and the
    manifest's prompt hashes named only the new file, though the first session's records came from the old one."""
    import shutil

    mine = shutil.copytree(Prompts().dir, tmp_path / "my_prompts")
    pool = write_pool(tmp_path / "pool.jsonl", POOL[:2])
    script(fake_openai, evolutions={}, judgements={}, answers={})
    args = ["evolve", str(tmp_path / "run"), "--input", str(pool), "--teacher", "openai:fake-model",
            "--base-url", fake_openai.url, "--set", f"prompts_dir={mine}"]
    first = CliRunner().invoke(cli, [*args, "--rounds", "1"], catch_exceptions=False)
    assert first.exit_code == 0 and "note: " not in first.output, first.output
    same = CliRunner().invoke(cli, [*args, "--rounds", "1"], catch_exceptions=False)
    assert "note: " not in same.output, same.output
    answer = mine / "evol_answer.txt"
    answer.write_text(answer.read_text().replace("Response:", "Answer in full.\nResponse:"))
    second = CliRunner().invoke(cli, [*args, "--rounds", "2"], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert ("note: evol_answer.txt differs from the one this run's manifest recorded: records already written keep "
            "what the old text made") in " ".join(second.output.split())


def test_evolving_a_users_file_in_a_bootstrapped_run_filters_against_the_seeds_its_export_holds(fake_openai, tmp_path):
    """A run that bootstrapped from the seeds, then `evolve --input my.json`: evolve left the seeds out of its novelty
    index by its own test (a user's file), while export adds them as the run's seed rows (store.seeds_used): an
    evolution copying a seed went into the export beside that seed. One rule now: the seeds are in the index."""
    from helpers import teacher_flags

    flags = teacher_flags(fake_openai, tmp_path)
    assert CliRunner().invoke(cli, ["bootstrap", *flags, "--num-instructions", "2"]).exit_code == 0
    bundled = load_seeds()[1].instruction
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"instruction": "Plan a picnic for six friends in spring.", "output": "Bring fruit."},
                                {"instruction": "Name a quiet hobby for a rainy day.", "output": "Reading."}]))
    script(fake_openai, evolutions={"Plan a picnic for six friends in spring.": bundled}, judgements={}, answers={})
    result = CliRunner().invoke(cli, ["evolve", *flags, "--input", str(mine), "--rounds", "1",
                                      "--weights", "constraints=0,deepen=0,concretize=0,reasoning=0,complicate_input=0",
                                      "--set", "teacher.concurrency=1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "r")
    [kept] = run.read_stage("evolve")
    assert kept.instruction.startswith("Name a quiet hobby for a rainy day.")
    [copy] = [t for t in run.read_rejected() if t.stage == "evolve"]
    assert copy.reject_reason.startswith("rouge_l: ") and copy.reject_reason.endswith(f"vs {bundled!r}")
    exported = CliRunner().invoke(cli, ["export", str(run.path), "--include", "evolve", "--formats", "alpaca",
                                        "--out", str(tmp_path / "exp"), "--set", "decontaminate=off"])
    assert exported.exit_code == 0, exported.output
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert [s["what"] for s in info["seed_sources"]] == ["seed file", "evolve input"] and not info["seed_file_unused"]
    assert info["counts"]["seed_tasks"] == 175 + 2 and info["counts"]["tasks_by_origin"] == {"evolved": 1}


# ---------------------------------------------------------------- the embedded teacher, for real

@pytest.mark.slow
def test_embedded_teacher_two_rounds_over_ten_seeds(embedded_teacher, tmp_path):
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "emb", "evolve.source": "seeds",
                             "evolve.rounds": 2, "evolve.max_tokens": 32, "evolve.answer_max_tokens": 32,
                             "evolve.judge_max_tokens": 4})
    seeds = load_seeds()[:10]
    run = RunDir(cfg.run_dir)
    calls_before = embedded_teacher.usage.to_dict().get("evolve", {}).get("calls", 0)  # the teacher is shared
    started = time.monotonic()
    result = run_evolve(embedded_teacher, seeds, cfg, run, Prompts(), source="seeds",
                        seeds=[t.instruction for t in seeds])
    elapsed = time.monotonic() - started
    print(f"\n{result}\n{elapsed:.0f} s")
    assert (result.rounds_done, result.pending, result.errors) == (2, 0, 0)
    assert per_round(run) == {1: 10, 2: 10}
    kept, rejected = run.read_stage("evolve"), [t for t in run.read_rejected() if t.stage == "evolve"]
    # One evolution call per slot, more where an empty reply was asked for again.
    assert embedded_teacher.usage.to_dict()["evolve"]["calls"] - calls_before >= 20
    seed_ids, by_id = {t.id for t in seeds}, {t.id: t for t in kept}
    for t in [*kept, *rejected]:
        assert t.origin == "evolved" and t.round in (1, 2) and t.meta["operation"] in OPERATIONS
        chain, parent = t.meta["lineage"], by_id.get(t.parent_id)
        assert chain[0]["id"] in seed_ids and chain[-1]["id"] == t.parent_id
        assert chain == ([*parent.meta["lineage"], {"id": parent.id, "operation": parent.meta["operation"], "round": 1}]
                         if parent else [{"id": t.parent_id, "operation": None, "round": 0}])


def test_evolve_on_a_run_leaving_its_seed_file_out_names_the_seeds_flag_it_takes(fake_openai, tmp_path):
    """The measured bug: `seed2lora evolve RUN_DIR` on a run made from `--seeds PATH`, the flag left out, said
    "Fix: give --set 'seed_tasks=\"PATH\"'": the command takes --seeds PATH, which the user typed at first."""
    seeds = tmp_path / "my seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in POOL[:3]))
    flags = ["--teacher", "openai:fake-model", "--base-url", fake_openai.url]
    runner = CliRunner()
    result = runner.invoke(cli, ["run", *flags, "--output-dir", str(tmp_path), "--run-name", "r", "--seeds",
                                 str(seeds), "--num-instructions", "3", "--set",
                                 'stages=["bootstrap","classify","instances","filter"]'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["evolve", str(tmp_path / "r"), *flags, "--rounds", "1"], catch_exceptions=False)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"Fix: give --seeds '{seeds}' to go on as the run was made" in said, said
    assert "seed_tasks=" not in said
