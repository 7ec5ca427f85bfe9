"""Structured replies (`teacher.structured`): the JSON schemas sent with each prompt, and their reader.

A server that honours a JSON schema (OpenAI's `response_format` json_schema, vLLM, llama.cpp's
server, Ollama) can only answer with an object of this shape, so there is no preamble, sign-off
or markdown to strip. The prompts stay the paper's; the schema only fixes the form of the reply.

Pure: no I/O. `json_items` also reads a reply that the length limit cut: the complete items
before the cut are kept and the cut one is dropped, which is Self-Instruct's rule for a
truncated list. A server that ignored the schema but still wrote JSON may send the bare list
(`["Name three rivers.", ...]`, `[{"input": ..., "output": ...}]`); it is read when every item
has the schema's item type, so that text opening with "[" ("[Coding] Write ...") stays text.
"""

from __future__ import annotations

import json
import re
from typing import Any

_STRING = {"type": "string"}


def _object(key: str, items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: {"type": "array", "items": items}},
            "required": [key], "additionalProperties": False}


def _pairs(*fields: str) -> dict[str, Any]:
    return {"type": "object", "properties": {f: _STRING for f in fields}, "required": list(fields),
            "additionalProperties": False}


# name -> (schema, the key of its list). Field order is generation order: output-first puts the label first.
SCHEMAS: dict[str, tuple[dict[str, Any], str]] = {
    "tasks": (_object("tasks", _STRING), "tasks"),
    "examples": (_object("examples", _pairs("input", "output")), "examples"),
    "labelled_examples": (_object("examples", _pairs("label", "input")), "examples"),
    "yes_no": ({"type": "object", "properties": {"answer": {"type": "string", "enum": ["Yes", "No"]}},
                "required": ["answer"], "additionalProperties": False}, "answer"),
}

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*(?:```\s*)?$", re.DOTALL)
# strict=False: a raw newline or tab inside a string is read. llama-cpp-python's server, binding a small model to the
# schema, let them through in 8 of 79 JSON replies; read strictly, each such reply ended at the item before it,
# as if cut, and its other items were lost.
_DECODER = json.JSONDecoder(strict=False)


def _unfenced(text: str) -> str:
    m = _FENCE.match(text)
    return (m.group(1) if m else text).strip()


def schema_params(name: str) -> dict[str, str]:
    """The GenParams fields that send a schema (dataclasses.replace(params, **schema_params("tasks")))."""
    # Not sorted: servers generate the properties in the schema's order, and output-first needs the label first.
    return {"schema_name": name, "schema": json.dumps(SCHEMAS[name][0])}


def json_items(text: str, name: str) -> list[Any] | None:
    """The list a structured reply holds under its schema's key; None when the reply is not that JSON.

    A whole object is read with json; a cut one (finish_reason length) item by item, up to the cut.
    """
    schema, key = SCHEMAS[name]
    body = _unfenced(text)
    if body.startswith("["):
        return _bare_list(body, schema["properties"][key])
    if not body.startswith("{"):
        return None
    try:
        obj = _DECODER.decode(body)
    except json.JSONDecodeError:
        m = re.match(r'\{\s*"' + re.escape(key) + r'"\s*:\s*\[', body)
        return None if m is None else _items_before_cut(body, m.end())[0]
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else None


_JSON_TYPES = {"string": str, "object": dict}


def _bare_list(body: str, field: dict[str, Any]) -> list[Any] | None:
    """A bare JSON list where the schema wants an object holding it, whole or cut; None unless the
    schema's value is a list and every item read has its item type (at least one, or a whole "[]")."""
    kind = _JSON_TYPES.get(field.get("items", {}).get("type", "")) if field.get("type") == "array" else None
    if kind is None:
        return None
    try:
        items = _DECODER.decode(body)
    except json.JSONDecodeError:  # cut: "[ ... ] and more text" is not, it is text that opens with "["
        items, closed = _items_before_cut(body, 1)
        if closed or not items:
            return None
    if not isinstance(items, list) or not all(isinstance(x, kind) for x in items):
        return None
    return items


def _items_before_cut(body: str, start: int) -> tuple[list[Any], bool]:
    """The whole items of a JSON list cut by the length limit, from `start` (just past its "["), and
    whether the reading met the list's "]" instead of a cut (the end, or an item that is not JSON)."""
    items, i = [], start
    while True:
        while i < len(body) and body[i] in " \t\r\n,":
            i += 1
        if i >= len(body) or body[i] == "]":
            return items, i < len(body)
        try:
            item, i = _DECODER.raw_decode(body, i)
        except json.JSONDecodeError:  # the item the limit cut: dropped
            return items, False
        items.append(item)
