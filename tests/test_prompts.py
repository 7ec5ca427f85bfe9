"""Every prompt template rendered with exactly the variables its stage supplies, compared as full text.

If a template changes on purpose, update the expected text here in the same commit."""

import random

import pytest

from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.prompts import PROMPT_VARS, Prompts
from pipeline.records import Instance, Task
from pipeline.stages.bootstrap import build_prompt
from pipeline.stages.instances import instance_prompt

EXPECTED_BOOTSTRAP = (
    'Below is a numbered list of varied tasks that people ask a capable assistant to do. Every task is one self-contained instruction in plain text, different in topic and form from the others. The list goes on up to task 16.\n'
    '\n'
    '1. Seed task number 5\n'
    '2. Machine task two.\n'
    '3. Seed task number 2\n'
    '4. Seed task number 3\n'
    '5. Machine task one.\n'
    '6. Seed task number 4\n'
    '7. Seed task number 0\n'
    '8. Seed task number 1\n'
    '9.'
)

EXPECTED_BOOTSTRAP_CLF = (
    'Below is a numbered list of classification tasks that people ask a capable assistant to do. In each one the answer is a label from a small, fixed set, and the task names the possible labels where it can. The list goes on up to task 16.\n'
    '\n'
    '1. Seed task number 5\n'
    '2. Machine task two.\n'
    '3. Seed task number 2\n'
    '4. Seed task number 3\n'
    '5. Machine task one.\n'
    '6. Seed task number 4\n'
    '7. Seed task number 0\n'
    '8. Seed task number 1\n'
    '9.'
)

EXPECTED_ALPACA = (
    'You are asked to write a set of 20 varied task instructions, each with an input and the output a good assistant would give. They will be used to teach a language model to follow instructions.\n'
    '\n'
    'Requirements:\n'
    '1. Do not repeat verbs across instructions, so that the set is diverse.\n'
    '2. Vary the wording: mix questions with imperative instructions.\n'
    '3. Vary the kind of task: open questions, classification, editing, brainstorming, writing, coding, math, extraction, advice and so on.\n'
    '4. Each task must be possible for a text-only language model: nothing that needs seeing, hearing, browsing or acting in the world.\n'
    '5. Write every instruction in English, in one or two sentences.\n'
    '6. Give an input when the task needs one: a concrete, realistic example of up to about 100 words, with no placeholders. When the task needs no input, write <noinput>.\n'
    '7. The output is a correct, complete answer to the instruction and input, under 100 words where the task allows.\n'
    '\n'
    'List of 20 tasks:\n'
    '###\n'
    '1. Instruction: Seed task number 6:\n'
    '1. Input:\n'
    'in 6\n'
    '1. Output:\n'
    'out 6\n'
    '###\n'
    '2. Instruction: Seed task number 7:\n'
    '2. Input:\n'
    'in 7\n'
    '2. Output:\n'
    'out 7\n'
    '###\n'
    '3. Instruction: Seed task number 3:\n'
    '3. Input:\n'
    'in 3\n'
    '3. Output:\n'
    'out 3\n'
    '###\n'
    '4. Instruction:'
)

EXPECTED_CLASSIFY = (
    'For each task below, decide whether it is a classification task: one whose answer is a single label picked from a small, finite set of options (such as yes/no, true/false, positive/negative, or one of a few named categories). Tasks that ask for free text, lists, explanations, numbers to compute or code are not classification tasks.\n'
    '\n'
    'Task: Decide whether the given review of a restaurant is positive, negative or mixed.\n'
    'Is it classification? Yes\n'
    '\n'
    'Task: Suggest three names for a bakery that sells gluten-free bread.\n'
    'Is it classification? No\n'
    '\n'
    'Task: Is the following statement a fact or an opinion?\n'
    'Is it classification? Yes\n'
    '\n'
    'Task: Explain how a refrigerator keeps food cold.\n'
    'Is it classification? No\n'
    '\n'
    'Task: Which of the listed animals is a mammal: shark, dolphin, trout?\n'
    'Is it classification? Yes\n'
    '\n'
    'Task: Rewrite the paragraph in the passive voice.\n'
    'Is it classification? No\n'
    '\n'
    'Task: Tell whether the email below is spam.\n'
    'Is it classification? Yes\n'
    '\n'
    'Task: Compute the area of a circle with the given radius.\n'
    'Is it classification? No\n'
    '\n'
    'Task: Label the tone of the message as formal or informal.\n'
    'Is it classification? Yes\n'
    '\n'
    'Task: Write a SQL query that returns the ten most recent orders.\n'
    'Is it classification? No\n'
    '\n'
    'Task: Give me a packing list for a weekend of camping.\n'
    'Is it classification? No\n'
    '\n'
    'Task: Describe the main causes of the French Revolution.\n'
    'Is it classification? No\n'
    '\n'
    'Task: What is the best way to learn a new language as an adult?\n'
    'Is it classification? No\n'
    '\n'
    'Task: Turn the notes below into a polite email to a customer.\n'
    'Is it classification? No\n'
    '\n'
    'Task: Tell whether the word is a noun.\n'
    'Is it classification?'
)

EXPECTED_INSTANCES_GEN = (
    'Write examples for each task: an input the task could be applied to, then the correct output for that input. Vary the examples. When the task needs no input, write <noinput> as the input.\n'
    '\n'
    'Task: Convert the temperature from Celsius to Fahrenheit.\n'
    'Example 1\n'
    'Input: 25 degrees Celsius\n'
    'Output: 25 degrees Celsius is 77 degrees Fahrenheit.\n'
    '\n'
    'Example 2\n'
    'Input: -10 degrees Celsius\n'
    'Output: -10 degrees Celsius is 14 degrees Fahrenheit.\n'
    '\n'
    'Task: Give two tips for sleeping better.\n'
    'Example 1\n'
    'Input: <noinput>\n'
    'Output: 1. Go to bed and wake up at the same time every day, weekends included. 2. Keep screens out of the bedroom for the last hour before sleep.\n'
    '\n'
    'Task: Summarize the sentence in five words or fewer.\n'
    'Example 1\n'
    'Input: The city council voted on Tuesday to extend the opening hours of all public libraries until nine in the evening.\n'
    'Output: Libraries will open until nine.\n'
    '\n'
    'Example 2\n'
    'Input: After three weeks of heavy rain, the farmers in the valley finally saw the sun and began harvesting their wheat.\n'
    'Output: Farmers harvest after long rain.\n'
    '\n'
    'Task: Suggest a name for a cat.\n'
    'Example 1\n'
    'Input:'
)

EXPECTED_INSTANCES_CLF = (
    "Write examples for each classification task. For each example, first pick one of the task's possible labels, then write an input whose correct answer is that label. Cover different labels.\n"
    '\n'
    'Task: Decide whether the product review is positive or negative.\n'
    'Class label: Positive\n'
    'Input: The blender is quiet, easy to clean and crushes ice in seconds.\n'
    'Class label: Negative\n'
    'Input: The lid cracked on the second day and the motor smells burnt.\n'
    '\n'
    'Task: Is the number given in the input even or odd?\n'
    'Class label: Even\n'
    'Input: 318\n'
    'Class label: Odd\n'
    'Input: 47\n'
    '\n'
    'Task: Classify the sentence as a question, a command or a statement.\n'
    'Class label: Question\n'
    'Input: Have you fed the cat yet?\n'
    'Class label: Command\n'
    'Input: Close the window before you leave.\n'
    'Class label: Statement\n'
    'Input: The museum opens at ten on Sundays.\n'
    '\n'
    'Task: Is the number odd?\n'
    'Class label:'
)

P = Prompts()
SEEDS = [Task(id=f"s{i}", instruction=f"Seed task number {i}:", instances=[Instance(f"in {i}", f"out {i}")],
              origin="seed") for i in range(8)]
MACHINE = ["Machine task one.", "Machine task two."]


def _bootstrap(**changes):
    cfg = RunConfig()
    for key, value in changes.items():
        setattr(cfg.bootstrap, key, value)
    return build_prompt(P, cfg, random.Random(0), SEEDS, MACHINE)


def test_bootstrap_prompt():
    name, text, next_number = _bootstrap()
    assert (name, next_number) == ("bootstrap.txt", 9)
    assert text == EXPECTED_BOOTSTRAP
    assert sum(line[:2] in {"1.", "2.", "3.", "4.", "5.", "6.", "7.", "8."} for line in text.splitlines()) == 8
    assert text.count("Machine task") == 2  # 6 human + 2 machine in context


def test_bootstrap_clf_prompt():
    name, text, _ = _bootstrap(use_clf_seed_tasks_only=True)
    assert name == "bootstrap_clf.txt" and text == EXPECTED_BOOTSTRAP_CLF


def test_alpaca_prompt():
    name, text, next_number = _bootstrap(mode="alpaca")
    assert (name, next_number) == ("alpaca.txt", 4)
    assert text == EXPECTED_ALPACA


def test_classify_prompt():
    assert P.render("classify.txt", instruction="Tell whether the word is a noun.") == EXPECTED_CLASSIFY


def test_instance_prompts():
    assert instance_prompt(Task(id="g", instruction="Suggest a name for a cat.", is_classification=False), P) == \
        ("instances_gen.txt", EXPECTED_INSTANCES_GEN)
    assert instance_prompt(Task(id="c", instruction="Is the number odd?", is_classification=True), P) == \
        ("instances_clf.txt", EXPECTED_INSTANCES_CLF)


def test_every_bundled_template_is_declared_and_checked():
    assert {p.name for p in P.dir.glob("*.txt")} == set(PROMPT_VARS)


def test_a_template_with_wrong_variables_is_refused(tmp_path):
    (tmp_path / "classify.txt").write_text("Task: $instruction $extra\n")
    with pytest.raises(InputError, match=r"classify.txt: template variables do not match \(missing \[\], unknown \['extra'\]\)"):
        Prompts(tmp_path).render("classify.txt", instruction="x")
    with pytest.raises(InputError, match="prompt template is missing"):
        Prompts(tmp_path).render("bootstrap.txt", tasks="", next_number=1, max_number=16)


@pytest.mark.parametrize("text, bad", [("It costs about $5.", "$5."), ("Use ${instruction now.", "${instruction now.")])
def test_a_stray_dollar_in_an_edited_template_is_refused_at_check_with_its_line(tmp_path, text, bad):
    """A '$' that starts no variable ("$5", an unclosed "${") passed the variables check, so the run started,
    wrote its manifest and paid its preflight, then died in the stage with a bare ValueError traceback."""
    (tmp_path / "evol_breadth.txt").write_text(f"Write a rarer task.\n{text}\nTask: $instruction\n")
    with pytest.raises(InputError) as e:
        Prompts(tmp_path).check()
    message = str(e.value)
    assert "evol_breadth.txt:2: " in message and repr(bad[:2])[1:-1] in message and "$$" in message


@pytest.mark.parametrize("missing", ["classify.txt", "instances_clf.txt", "bootstrap.txt"])
def test_a_prompts_folder_missing_a_template_a_stage_needs_stops_before_any_request(fake_openai, tmp_path, missing):
    """A copied folder without classify.txt passed the check (it reads the files that are there): `run` paid for
    bootstrap and died at the first classify prompt."""
    import shutil

    from click.testing import CliRunner

    from pipeline.cli import cli

    mine = shutil.copytree(P.dir, tmp_path / "my_prompts")
    (mine / missing).unlink()
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "run"), "--num-instructions", "2", "--teacher",
                                      "openai:fake-model", "--base-url", fake_openai.url, "--set", f"prompts_dir={mine}"])
    assert result.exit_code == 2, result.output
    assert f"{mine / missing}: prompt template is missing" in " ".join(result.output.split())
    assert fake_openai.history == [] and not (tmp_path / "run").exists()


def test_score_and_the_eval_judge_need_their_templates_before_anything_is_asked(fake_openai, tmp_path):
    """A copied prompts folder without score.txt passed score's checks: the judge was preflighted and the manifest
    written before the first row died on the missing file; without judge_pairwise.txt, eval generated every base and
    adapter answer first. Both now stop at the start, naming the file, before any request."""
    import json
    import shutil

    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.config import TeacherConfig, load_config
    from pipeline.context import RunContext
    from pipeline.runner import STEPS, validate
    from pipeline.train.eval import judge_teacher

    mine = shutil.copytree(Prompts().dir, tmp_path / "my_prompts")
    (mine / "score.txt").unlink()
    (mine / "judge_pairwise.txt").unlink()
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Name {n} rivers of Europe in a list.", "output": "Rhine."})
                            + "\n" for n in ("three", "four")))
    made = CliRunner().invoke(cli, ["filter", "--input", str(rows), "--output-dir", str(tmp_path), "--run-name", "r",
                                    "--set", f"prompts_dir={mine}"])
    assert made.exit_code == 0, made.output
    before = (tmp_path / "r" / "manifest.json").read_text()
    result = CliRunner().invoke(cli, ["score", str(tmp_path / "r"), "--judge", "openai:fake-model",
                                      "--judge-base-url", fake_openai.url])
    assert result.exit_code == 2, result.output
    assert f"{mine / 'score.txt'}:prompttemplateismissing" in "".join(result.output.split())
    assert fake_openai.history == [] and fake_openai.probes == []
    assert (tmp_path / "r" / "manifest.json").read_text() == before
    judge = TeacherConfig(spec="openai:fake-model", base_url=fake_openai.url)
    with pytest.raises(InputError, match="judge_pairwise.txt.*prompt template is missing"):
        with judge_teacher(judge, tmp_path / "r"):
            pass
    assert fake_openai.probes == []
    ctx = RunContext(load_config(None, {"output_dir": str(tmp_path), "run_name": "new", "prompts_dir": str(mine),
                                        "eval.judge.spec": "openai:fake-model"}))
    with pytest.raises(InputError, match="judge_pairwise.txt"):  # `run` through eval: before bootstrap is paid
        validate(ctx, [s for s in STEPS if s.name == "eval"])


def test_a_prompts_dir_that_does_not_exist_is_named_as_such_not_as_its_first_missing_template(fake_openai, tmp_path):
    """`--set prompts_dir=my_promts` (a typo) said "my_promts/bootstrap.txt: prompt template is missing. Fix: copy
    .../bootstrap.txt there", as if the folder existed and lacked one file."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    typo = tmp_path / "my_promts"
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "run"), "--num-instructions", "2", "--teacher",
                                      "openai:fake-model", "--base-url", fake_openai.url, "--set", f"prompts_dir={typo}"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{typo}: prompts_dir does not exist. Fix: give prompts_dir a folder of " \
        f"templates (copy {P.dir} and edit it), or leave it empty to use the bundled prompts." in text, text
    assert fake_openai.history == [] and not (tmp_path / "run").exists()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(InputError, match="prompts_dir is not a folder"):
        Prompts(tmp_path / "a_file").path("classify.txt")
