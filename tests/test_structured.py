"""Structured replies (`teacher.structured`): the schemas' reader, whole and cut replies (issue #18)."""

import json

import pytest

from pipeline.records import Instance
from pipeline.stages.parse import parse_structured_instances, parse_yes_no
from pipeline.stages.schemas import SCHEMAS, json_items


def test_a_whole_reply_gives_its_list():
    assert json_items('{"tasks": ["Name three rivers.", "Sort the list."]}', "tasks") == \
        ["Name three rivers.", "Sort the list."]
    assert json_items('```json\n{"examples": [{"input": "2", "output": "4"}]}\n```', "examples") == \
        [{"input": "2", "output": "4"}]


def test_a_reply_cut_by_the_length_limit_keeps_the_items_before_the_cut():
    cut = '{"tasks": ["Name three rivers.", "Sort the list of numbers.", "Write a haiku ab'
    assert json_items(cut, "tasks") == ["Name three rivers.", "Sort the list of numbers."]
    cut = '{"examples": [{"input": "a", "output": "b"}, {"input": "c", "outp'
    assert json_items(cut, "examples") == [{"input": "a", "output": "b"}]


def test_a_raw_newline_inside_a_string_does_not_end_the_list():
    """llama-cpp-python's server bound SmolLM2-135M's reply to the schema yet let a raw newline into a string (8 of 79
    JSON replies): read strictly, the list ended there as if the reply were cut, and the items after it were lost."""
    reply = '{ "examples" : [ { "label": "Negative", "input":"The lid cracked.\nIt smelt burnt."}, {"label": "Positive", ' \
            '"input":"Quiet and easy to clean."} ] }'
    assert json_items(reply, "labelled_examples") == [
        {"label": "Negative", "input": "The lid cracked.\nIt smelt burnt."},
        {"label": "Positive", "input": "Quiet and easy to clean."}]
    assert json_items('["Name three\trivers.", "Sort the list."]', "tasks") == ["Name three\trivers.", "Sort the list."]
    assert json_items('{"tasks": ["Name three rivers.", "Sort the\nlist", "Write a ha', "tasks") == \
        ["Name three rivers.", "Sort the\nlist"]  # cut: the whole items, a raw newline in one of them


@pytest.mark.parametrize("text", ["Sure! 1. Name three rivers.", '{"answer": "Yes"}', "[1, 2]", '{"tasks": "x"}', ""])
def test_a_reply_that_is_not_the_schemas_json_gives_none(text):
    assert json_items(text, "tasks") is None


def test_json_syntax_a_small_model_wrote_into_its_labels_is_not_a_label():
    """Replies of SmolLM2-135M on llama-cpp-python's server, bound to the labelled schema: its grammar lets any
    character into a string, and the model wrote the JSON's syntax there. "}{" was kept as a class label."""
    reply = ('{ "examples" : [ { "label": "}\n{","input":"318"}, {"label": "Even", "input": "47" }, '
             '{"label": "Negative},{" ,"input":"Your answer is an even number."}, {"label": "Command," ,"input":"Go."}, '
             '{"label": "} }\nOutput: { " ,"input":"I just received a job offer."}]}')
    assert parse_structured_instances(reply, labelled=True) == [
        Instance("47", "Even"), Instance("Your answer is an even number.", "Negative"), Instance("Go.", "Command"),
        Instance("I just received a job offer.", "Output:")]  # cleaning drops this one (ends_with_colon)
    # an output is free text: braces there may be code
    assert parse_structured_instances('{"examples": [{"input": "", "output": "{}"}]}', labelled=False) == \
        [Instance("", "{}")]


def test_yes_no_answers_in_json_read_as_text_answers():
    assert parse_yes_no('{"answer": "Yes"}') is True and parse_yes_no('{"answer": "No"}') is False


def test_every_schema_is_strict_json_schema():
    """OpenAI's strict mode needs every property required and no extra properties, at every level."""
    def check(node):
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert set(node["required"]) == set(node["properties"])
            for child in node["properties"].values():
                check(child)
        if node.get("type") == "array":
            check(node["items"])

    for schema, key in SCHEMAS.values():
        check(schema)
        assert key in schema["properties"]
        json.dumps(schema)


# -- end to end, against fake servers that bind replies to a schema in the forms real servers take -------------
from click.testing import CliRunner  # noqa: E402
from helpers import invoke, read, teacher_flags  # noqa: E402

from pipeline.cli import cli  # noqa: E402


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


def schema_requests(server):
    return [h["body"] for h in server.history if h["body"].get("response_format")]


def test_a_server_that_binds_json_schema_gets_structured_requests_and_its_replies_become_records(fake_openai, tmp_path):
    fake_openai.schema_forms = {"json_schema"}  # as OpenAI, vLLM, Ollama
    # One at a time: the fifth task (a "Compare ..." one, classification to the fake) is always kept.
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 5, "--set", "teacher.concurrency=1")
    run = tmp_path / "r"
    teacher = manifest(run)["teacher"]
    assert teacher["structured"] is True and "json_schema" in teacher["structured_choice"]
    bodies = schema_requests(fake_openai)
    classify = [h for h in fake_openai.history if "Is it classification?" in fake_openai.prompt_of(h["body"])]
    assert len(bodies) == len(fake_openai.history) - len(classify)  # bootstrap's and instances' requests
    assert not any(h["body"].get("response_format") for h in classify)  # classify stays text unless structured=on
    names = {b["response_format"]["json_schema"]["name"] for b in bodies}
    assert names == {"tasks", "examples", "labelled_examples"}
    assert not any(b.get("stop") for b in bodies)  # no stop may cut JSON
    for b in bodies:  # servers generate properties in the order sent: output-first means the label first
        items = b["response_format"]["json_schema"]["schema"]["properties"].get("examples", {}).get("items", {})
        if "label" in items.get("properties", {}):
            assert list(items["properties"]) == ["label", "input"]
        elif items:
            assert list(items["properties"]) == ["input", "output"]
    assert len(read(run / "bootstrap.jsonl")) == 5
    rows = read(run / "instances.jsonl")
    assert all(t["instances"] for t in rows) and any(t["is_classification"] for t in rows)
    assert not any(i["input"].startswith("{") or i["output"].startswith("{") for t in rows for i in t["instances"])
    assert len(read(run / "filter.jsonl")) > 0
    shown = invoke("show", run).output.replace("\n", " ")
    assert "structured replies auto: on" in shown and "api auto: chat" in shown


def test_llama_cpp_pythons_form_is_found_after_the_openai_form_is_refused(fake_openai, tmp_path):
    fake_openai.schema_forms, fake_openai.refuse_other_forms = {"json_object"}, True  # llama-cpp-python 0.3's server
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 3)
    teacher = manifest(tmp_path / "r")["teacher"]
    assert teacher["structured"] is True and "json_object" in teacher["structured_choice"]
    assert all(b["response_format"]["type"] == "json_object" for b in schema_requests(fake_openai))
    assert len(read(tmp_path / "r" / "bootstrap.jsonl")) == 3


def test_auto_falls_back_to_text_when_the_server_ignores_the_schema(fake_openai, tmp_path):
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 3)
    teacher = manifest(tmp_path / "r")["teacher"]
    assert teacher["structured"] is False and teacher["structured_choice"].startswith("auto: off")
    # what the server did, not a JSON parser's error ("JSONDecodeError: Expecting value: line 1 column 1")
    assert "reply not the schema's JSON ('Yes, water is wet.')" in teacher["structured_choice"]
    assert "JSONDecodeError" not in teacher["structured_choice"]
    assert not schema_requests(fake_openai) and len(read(tmp_path / "r" / "bootstrap.jsonl")) == 3


@pytest.mark.parametrize("flags, says", [
    ([], "does not bind replies to a JSON schema"),
    (["--api", "completions"], "needs chat requests"),
])
def test_structured_on_refuses_what_cannot_be_structured(fake_openai, tmp_path, flags, says):
    fake_openai.completions_endpoint = True
    result = CliRunner().invoke(cli, ["bootstrap", *map(str, teacher_flags(fake_openai, tmp_path)),
                                      "--num-instructions", "3", "--set", "teacher.structured=on", *flags])
    assert result.exit_code == 2 and says in result.output.replace("\n", " "), result.output
    assert not fake_openai.history  # nothing paid


def test_a_structured_reply_cut_by_the_length_limit_keeps_its_whole_items(fake_openai, tmp_path):
    fake_openai.schema_forms = {"json_schema"}
    fake_openai.enqueue('{"tasks": ["Name three rivers that cross Europe.", "Sort the numbers in the list from '
                        'smallest to largest.", "Write a haiku about the', finish_reason="length")
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", "teacher.concurrency=1")
    kept = [t["instruction"] for t in read(tmp_path / "r" / "bootstrap.jsonl")]
    assert kept == ["Name three rivers that cross Europe.", "Sort the numbers in the list from smallest to largest."]


def test_an_empty_structured_task_list_is_rejected_as_what_it_is(fake_openai, tmp_path):
    """llama-cpp-python's server with SmolLM2-135M bound to the schema answered '{ "tasks": [ ]}' to 8 of 22 prompts:
    its rejection says so, not "no numbered task" (which sends a reader to the text parser)."""
    fake_openai.schema_forms = {"json_schema"}
    fake_openai.enqueue('{ "tasks": [ ]}')
    fake_openai.enqueue("")
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", "teacher.concurrency=1")
    reasons = [r["reject_reason"] for r in read(tmp_path / "r" / "rejected.jsonl")]
    assert reasons[:2] == ["unparseable_reply: the reply's JSON list of tasks holds no task",
                           "unparseable_reply: the reply is empty"]


def test_auto_leaves_a_run_on_the_completions_endpoint(fake_openai, tmp_path):
    """A local server with a completions endpoint keeps the paper's list continuations (what small models follow)."""
    fake_openai.completions_endpoint, fake_openai.schema_forms = True, {"json_schema"}
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 3)
    teacher = manifest(tmp_path / "r")["teacher"]
    assert teacher["api"] == "completions" and teacher["structured"] is False
    assert "completions endpoint" in teacher["structured_choice"] and not schema_requests(fake_openai)
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path, "on"), "--num-instructions", 3,
           "--set", "teacher.structured=on")
    teacher = manifest(tmp_path / "on")["teacher"]
    assert teacher["api"] == "chat" and teacher["structured"] is True


def test_structured_on_binds_the_classify_answer_too(fake_openai, tmp_path):
    fake_openai.schema_forms = {"json_schema"}
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", "teacher.concurrency=1",
           "--set", "teacher.structured=on")
    names = {b["response_format"]["json_schema"]["name"] for b in schema_requests(fake_openai)}
    assert "yes_no" in names


def test_a_bare_list_of_the_schemas_items_is_read_whole_or_cut():
    assert json_items('["Name three rivers.", "Sort the list."]', "tasks") == ["Name three rivers.", "Sort the list."]
    assert json_items('```json\n["Name three rivers.", "Sort the li', "tasks") == ["Name three rivers."]
    pairs = '```json\n[{"input": "a", "output": "b"}, {"input": "c", "outp'
    assert json_items(pairs, "examples") == [{"input": "a", "output": "b"}]
    assert json_items('[{"label": "Yes", "input": "x"}]', "labelled_examples") == [{"label": "Yes", "input": "x"}]


@pytest.mark.parametrize("text", ['[{"input": "a"}]', '["a", 2]', '["Note"] Write a poem.', "[Coding] Write a poem.",
                                  '["Write a po'])
def test_text_that_opens_with_a_bracket_is_not_a_bare_list_of_tasks(text):
    """Items of another type, a closed list with text after it, no JSON, a cut before any whole item."""
    assert json_items(text, "tasks") is None
    assert json_items(text, "yes_no") is None
