"""Structured replies (`teacher.structured`): the schemas' reader, whole and cut replies (issue #18)."""

import json

import pytest

from pipeline.stages.parse import parse_yes_no
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


@pytest.mark.parametrize("text", ["Sure! 1. Name three rivers.", '{"answer": "Yes"}', "[1, 2]", '{"tasks": "x"}', ""])
def test_a_reply_that_is_not_the_schemas_json_gives_none(text):
    assert json_items(text, "tasks") is None


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
