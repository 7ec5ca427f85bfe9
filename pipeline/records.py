"""The one schema of every JSONL line seed2lora writes.

A `Task` is an instruction with its instances and its provenance. The same type is a
seed, a machine-generated instruction at any stage, an evolved instruction, or a
rejected record (then `reject_reason` is set). Field names for the Self-Instruct part
(`instruction`, `instances`, `is_classification`, `most_similar_instructions`,
`avg_similarity_score`) match the files the Self-Instruct code wrote, so its tools can
read ours.

The fine-tuning view of a task is a row, {id, task_id, instruction, input, output, origin,
family}: one per instance. `task_rows` makes them, `row_messages` turns a row of any
supported shape into chat messages, and `split_by_task` holds whole lineage families out
for eval. `export` writes rows and `train` reads them, so they live here, below both.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _encode_string
from typing import Any

ORIGINS = ("seed", "machine", "evolved")
ROW_UNITS = ("instance", "task")  # one row per instance (Self-Instruct's fine-tuning data) or per task (Alpaca)


@dataclass
class Instance:
    input: str = ""
    output: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(input=str(d.get("input") or ""), output=str(d.get("output") or ""))


@dataclass
class Task:
    id: str
    instruction: str
    instances: list[Instance] = field(default_factory=list)
    is_classification: bool | None = None  # None until the classify stage has run
    origin: str = "machine"  # seed | machine | evolved
    parent_id: str | None = None  # the task it was evolved from (Evol-Instruct)
    round: int = 0  # bootstrap request number or evolution round that produced it
    stage: str = ""  # the last stage that wrote this record
    teacher: str | None = None  # teacher spec that produced the instruction, e.g. "openai:gpt-4o-mini"
    prompt: str | None = None  # prompt template file that produced it, e.g. "bootstrap.txt"
    most_similar_instructions: dict[str, float] = field(default_factory=dict)  # top-10, as Self-Instruct stored it
    avg_similarity_score: float | None = None  # mean ROUGE-L against the whole pool
    reject_reason: str | None = None  # set only on records in rejected.jsonl
    meta: dict[str, Any] = field(default_factory=dict)  # free-form provenance (operation, name, raw reply, ...)

    def to_dict(self) -> dict[str, Any]:
        """dataclasses.asdict (the fields in order, every value a copy), less reject_reason when None. Written
        out by hand: asdict's generic walk cost a bootstrap reply about a tenth of its client CPU (issue 20)."""
        d = {name: _plain(getattr(self, name)) for name in _TASK_FIELDS}
        if d["reject_reason"] is None:
            del d["reject_reason"]
        return d

    def to_json(self) -> str:
        """json.dumps(self.to_dict(), ensure_ascii=False), the same text, without copying every value first: json
        reads lists and dicts as they are, and only the dataclasses in them (the instances) become dicts, as asdict
        makes them. A bootstrap reply writes about seven records (issue 20)."""
        d = {name: getattr(self, name) for name in _TASK_FIELDS}
        if d["reject_reason"] is None:
            del d["reject_reason"]
        similar = _similar_json(self.most_similar_instructions) if _plain_instances(self.instances) else None
        if similar is None:
            return _JSON.encode(d)
        # The record with {} in its place, then its text put in: the first '"most_similar_instructions": {}' is the
        # field's own, as the fields before it are strings, numbers, None and instances of two strings, and a
        # string's text in JSON holds no quote without a backslash before it.
        d["most_similar_instructions"] = {}
        return _JSON.encode(d).replace(_NO_SIMILAR, f'"most_similar_instructions": {similar}', 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        known = _TASK_FIELD_SET
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        kwargs["instances"] = [Instance.from_dict(i) for i in d.get("instances") or []]
        kwargs.setdefault("meta", {})
        kwargs["meta"] = {**extra, **(kwargs["meta"] or {})}
        return cls(**kwargs)

    def rejected(self, reason: str, stage: str) -> Task:
        """A copy of this record marked as rejected by `stage` for `reason`."""
        return dataclasses.replace(self, reject_reason=reason, stage=stage)


_TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
_TASK_FIELD_SET = frozenset(_TASK_FIELDS)
_NO_SIMILAR = '"most_similar_instructions": {}'
_ATOMS = (str, int, float, bool, type(None))


def _plain(value: Any) -> Any:
    """A value as dataclasses.asdict gives it: dataclasses as dicts, dicts, lists and tuples copied through,
    anything else deep-copied (a string or number is itself)."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is list:
        return [_plain(v) for v in value]
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple, dict)):  # subclasses and named tuples: asdict's own walk
        return dataclasses.asdict(_Box(value))["value"]
    return copy.deepcopy(value)


@dataclass
class _Box:
    value: Any


def _json_default(value: Any) -> Any:
    """What json cannot write by itself: a dataclass, as asdict gives it (the instances of a task)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_JSON = json.JSONEncoder(ensure_ascii=False, default=_json_default)  # json.dumps(..., ensure_ascii=False)'s encoder

# most_similar_instructions as json writes them, a pool text and a score at a time: a kept bootstrap record names
# 10 pool texts, and the same texts and scores come again and again (a score is F of a few small counts), so their
# text is kept. json took 7.5 us of a kept record's 10.8 to write the 10 (float repr mostly); the kept texts 1.5.
_SIMILAR_KEYS: dict[str, str] = {}  # pool text -> its JSON string and ": "
_SIMILAR_SCORES: dict[float, str] = {}  # score -> repr (json's text of a finite float); never 0.0, equal to -0.0
_SIMILAR_MEMO = 1 << 16  # entries each memo keeps at most (a 20,000-instruction pool's texts fit)


def _plain_instances(instances: Any) -> bool:
    """Whether `instances` is a list of Instance of two strings each (then its JSON holds only strings)."""
    return type(instances) is list and all(type(i) is Instance and type(i.input) is str and type(i.output) is str
                                           for i in instances)


def _similar_json(similar: Any) -> str | None:
    """The JSON of a non-empty {text: float} dict, as json.dumps(..., ensure_ascii=False) writes it; None for any
    other value (empty, another type, a key not a str, a score not a finite float): json writes those itself."""
    if type(similar) is not dict or not similar:
        return None
    keys, scores = _SIMILAR_KEYS, _SIMILAR_SCORES
    if len(keys) > _SIMILAR_MEMO or len(scores) > _SIMILAR_MEMO:
        keys.clear()
        scores.clear()
    parts = []
    for text, score in similar.items():
        key = keys.get(text) if type(text) is str else None
        if key is None:
            if type(text) is not str:
                return None
            key = keys[text] = f"{_encode_string(text)}: "
        number = scores.get(score) if type(score) is float else None  # an int or bool equal to a float: its own text
        if number is None:
            if type(score) is not float or not math.isfinite(score):  # json writes NaN and Infinity, not repr's
                return None
            number = float.__repr__(score)
            if score:
                scores[score] = number
        parts.append(key + number)
    return "{" + ", ".join(parts) + "}"


def task_id(prefix: str, text: str) -> str:
    """A stable id from content, so a resumed run names the same task the same way."""
    return f"{prefix}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def input_id(instruction: str, instances: list[Instance]) -> str:
    """The id of a user's row that names none (a stage's --input, evolve's pool): from its instruction and first
    input, so a row keeps its id, and its scores in ifd.jsonl and score.jsonl, when the file around it is edited."""
    return task_id("input", f"{instruction.strip()}\n{instances[0].input.strip() if instances else ''}")


# ---------------------------------------------------------------- rows: the fine-tuning view of a task


class RowError(ValueError):
    """A row that cannot become a conversation; `problem` and `fix` let a reader name the file it came from."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}. Fix: {fix}")


def family_id(task: Task, by_id: Mapping[str, Task] | None = None) -> str:
    """The first ancestor of `task`, itself when it has none: the id its Evol-Instruct lineage starts from.

    meta["lineage"] lists the ancestors root first (the evolve stage writes it); a record
    without one is followed up its parent_id through `by_id`, as far as the ids reach.
    """
    by_id = by_id or {}
    seen: set[str] = set()
    while task.id not in seen:
        seen.add(task.id)
        lineage = task.meta.get("lineage") or []
        if lineage and isinstance(lineage[0], dict) and lineage[0].get("id") is not None:
            return str(lineage[0]["id"])
        if not task.parent_id:
            return task.id
        if task.parent_id not in by_id:
            return task.parent_id
        task = by_id[task.parent_id]
    return task.id  # a parent cycle: any member names the family


def task_rows(tasks: Iterable[Task], rows: str = "instance") -> list[dict[str, Any]]:
    """One row per instance (or per task: its first instance); tasks without instances give none."""
    if rows not in ROW_UNITS:
        raise ValueError(f"rows must be one of {ROW_UNITS}, not {rows!r}")
    tasks = list(tasks)
    by_id = {t.id: t for t in tasks}
    out = []
    for t in tasks:
        family = family_id(t, by_id)
        instances = t.instances if rows == "instance" else t.instances[:1]
        for i, inst in enumerate(instances):
            out.append({"id": f"{t.id}-{i}", "task_id": t.id, "instruction": t.instruction.strip(),
                        "input": inst.input.strip(), "output": inst.output.strip(), "origin": t.origin,
                        "family": family})
    return out


def user_text(instruction: str, input: str = "") -> str:
    """The user turn of an Alpaca row: the instruction, then its input after a blank line."""
    return f"{instruction}\n\n{input}" if input else instruction


def row_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """A row of any supported shape as chat messages: `messages`, or Alpaca instruction/input/output."""
    if row.get("messages") is not None:
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
    elif "instruction" in row and "output" in row:
        msgs = [{"role": "user", "content": user_text(str(row["instruction"]), str(row.get("input") or ""))},
                {"role": "assistant", "content": str(row["output"])}]
    else:
        raise RowError(f"a row has neither 'messages' nor 'instruction'/'output' (keys: {sorted(row)})",
                       "give Alpaca rows or chat rows with a messages list")
    if not msgs or msgs[-1]["role"] != "assistant":
        raise RowError("a chat row must end with an assistant message (the response to learn)",
                       "end each messages list with {'role': 'assistant', ...}")
    return msgs


def split_by_task(rows: list[dict[str, Any]], eval_fraction: float,
                  rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded train/eval split over task families; at least one eval family when there are two or more.

    The unit is a row's family (see family_id), else its task: an evolution rewrites its
    parent, so a child held out while its parent or sibling trains would be scored on text
    the adapter learned, and the eval split would leak. A task that was never evolved is a
    family of one, so a run without evolutions splits by task exactly as before.
    Seed rows (origin "seed") always train, the eval split measures the generated tasks,
    and so does any family that holds a seed (evolutions of the seed tasks), for the same leak.
    """
    def family_of(i: int, r: dict[str, Any]) -> Any:
        return r.get("family") or r.get("task_id", r.get("id", i))

    seeded = {family_of(i, r) for i, r in enumerate(rows) if r.get("origin") == "seed"}
    families = sorted({family_of(i, r) for i, r in enumerate(rows)} - seeded, key=str)
    n_eval = math.ceil(len(families) * eval_fraction) if eval_fraction > 0 else 0
    n_eval = min(n_eval, len(families) - 1) if len(families) > 1 else 0
    eval_ids = set(rng.sample(families, n_eval))
    train, held = [], []
    for i, r in enumerate(rows):
        (held if family_of(i, r) in eval_ids else train).append(r)
    return train, held
