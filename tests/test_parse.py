"""Parsers on real messy replies. Most fixtures are verbatim SmolLM2-135M-Instruct output
(collected with the bundled prompts); a few chat-model shapes (markdown, preamble,
sign-off) and truncations are written to match what hosted chat models return."""

import json

import pytest
from conftest import FIXTURES

from pipeline.stages.parse import (
    clean_instruction,
    parse_alpaca,
    parse_input_first,
    parse_numbered_list,
    parse_output_first,
    parse_yes_no,
)

FX = json.loads((FIXTURES / "replies.json").read_text())


@pytest.mark.parametrize("case", FX["bootstrap_completion"] + FX["bootstrap_chat"])
def test_numbered_lists(case):
    got = parse_numbered_list(case["reply"], case["prefix"], truncated=case["finish_reason"] == "length")
    assert got == case["expected"]


@pytest.mark.parametrize("case", FX["instances_gen"])
def test_input_first_instances(case):
    got = parse_input_first(case["reply"], case["prefix"], truncated=case["finish_reason"] == "length")
    assert [[i.input, i.output] for i in got] == case["expected"]


def test_truncated_instance_list_drops_the_last_example():
    reply = " a\nOutput: b\n\nExample 2\nInput: c\nOutput: d is cut he"
    assert [i.output for i in parse_input_first(reply, "Input:", truncated=True)] == ["b"]


@pytest.mark.parametrize("case", FX["instances_clf"])
def test_output_first_instances(case):
    got = parse_output_first(case["reply"], case["prefix"])
    assert [[i.input, i.output] for i in got] == case["expected"]


@pytest.mark.parametrize("reply, expected", [
    (" Yes", True), ("No", False), (" yes, it is", True), ("**No.**", False), ("B) How", None), ("", None),
    ("I think the answer is no", False),
])
def test_yes_no(reply, expected):
    assert parse_yes_no(reply) is expected


def test_alpaca_blocks_completion_and_truncation():
    reply = (" Name a fruit that is yellow.\n4. Input:\n<noinput>\n4. Output:\nA banana.\n###\n"
             "5. Instruction: Sort the numbers in ascending order.\n5. Input:\n3, 1, 2\n5. Output:\n1, 2, 3\n###\n"
             "6. Instruction: Explain gravity to a child.\n6. Input:\n<noinput>\n6. Output:\nThings fall because")
    full = parse_alpaca(reply, "4. Instruction:")
    assert [(i, x.input, x.output) for i, x in full] == [
        ("Name a fruit that is yellow.", "", "A banana."),
        ("Sort the numbers in ascending order.", "3, 1, 2", "1, 2, 3"),
        ("Explain gravity to a child.", "", "Things fall because")]
    assert len(parse_alpaca(reply, "4. Instruction:", truncated=True)) == 2


def test_clean_instruction():
    assert clean_instruction('  **Task 3:** "write a  haiku\nabout rain."  ') == "Write a haiku about rain."


# Chat-model reply forms (tests/fixtures/chat_replies.json): written to match what hosted chat
# models (gpt-4o-mini-like, vLLM and Ollama chat endpoints) reply to our prompts, each with its exact parse.
CHAT = json.loads((FIXTURES / "chat_replies.json").read_text())


@pytest.mark.parametrize("case", CHAT["bootstrap"], ids=lambda c: c["name"])
def test_chat_task_lists(case):
    assert parse_numbered_list(case["reply"], truncated=case["finish_reason"] == "length") == case["expected"]


@pytest.mark.parametrize("case", CHAT["input_first"], ids=lambda c: c["name"])
def test_chat_input_first(case):
    got = parse_input_first(case["reply"], truncated=case["finish_reason"] == "length")
    assert [[i.input, i.output] for i in got] == case["expected"]


@pytest.mark.parametrize("case", CHAT["output_first"], ids=lambda c: c["name"])
def test_chat_output_first(case):
    got = parse_output_first(case["reply"], truncated=case["finish_reason"] == "length")
    assert [[i.input, i.output] for i in got] == case["expected"]


@pytest.mark.parametrize("case", CHAT["yes_no"], ids=lambda c: c["reply"][:30])
def test_chat_yes_no(case):
    assert parse_yes_no(case["reply"]) is case["expected"]
