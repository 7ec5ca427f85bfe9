"""Read any instruction data into records, and any instruction pool into Task records.

`read_records` is the one reader of a user's data, for seeds, evolve inputs, train and
eval alike: JSONL, JSON (a list, {"data": [...]}, or one object per line), CSV, parquet,
and a folder saved by Hugging Face `datasets` (save_to_disk; a DatasetDict gives its
"train" split). `load_pool` turns those records, or a stage file of ours (.jsonl with
stage/origin fields, read as written), into Tasks to evolve. Field names are configurable
(evolve.instruction_field, input_field, output_field); a record in the Self-Instruct shape
(with an "instances" list) keeps its instances; a chat row ({"messages": [...]}, the shape
`train` reads) gives its first user turn as the instruction and the assistant turn that
answers it as the output. A record without an "id" gets one from its content, so the
same data gets the same ids on every load; exact repeats (same id) are loaded once.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .records import ORIGINS, Instance, RowError, Task, input_id
from .store import read_jsonl, read_tasks


@dataclass(frozen=True)
class Fields:
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"


TABLE_SUFFIXES = (".csv", ".tsv")  # a header row, then one row per record; .tsv is tab separated (spreadsheet exports)
Records = list[tuple[int, dict[str, Any]]]  # (line, item or row number as `unit` says, record)


def read_records(path: str | Path) -> tuple[Records, str]:
    """The records of one data file or dataset folder, numbered for error messages, and the unit of that number.

    .jsonl (and any other suffix): one JSON object per line ("line"); .json: a list, or
    {"data"|"tasks": [...]}, or one object per line ("item", or "line"); .csv with a header
    ("line", multi-line cells counted; ";" or tab separated when the header has no comma) or .tsv (tab separated,
    the same rules); .parquet ("row"); a folder saved by `datasets`
    ("row"). Text must be UTF-8 (a BOM is fine).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "does not exist",
                         "give an existing data file (.jsonl, .json, .csv, .tsv, .parquet) or a saved dataset folder")
    if path.is_dir():
        return _read_hf_folder(path), "row"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path), "row"
    if suffix in TABLE_SUFFIXES:
        text = _read_text(path)
        header = text.split("\n", 1)[0]
        # Excel in a comma-decimal locale separates with ";": read as ",", that was one column, named by all three.
        sep = "\t" if suffix == ".tsv" else next((d for d in (";", "\t") if d in header and "," not in header), ",")
        reader = csv.DictReader(io.StringIO(text), delimiter=sep)
        rows = []
        for row in reader:
            if None in row:  # cells past the header's: dropped, they shifted the row's text into the wrong columns
                names = {",": "comma", ";": "semicolon", "\t": "tab"}
                raise InputError(path, reader.line_num, f"has {len(row) - 1 + len(row[None])} cells where the header "
                                 f"has {len(row) - 1} ({', '.join(map(str, reader.fieldnames or []))}), so its cells "
                                 "would go into the wrong columns",
                                 f"put a cell that holds a {names[sep]} (the separator) in double quotes, e.g. "
                                 '"Summarize this, briefly"')
            rows.append((reader.line_num, {k: v for k, v in row.items() if k}))
        return rows, "line"
    if suffix == ".json":
        return _read_json(path)
    return list(read_jsonl(path, strict=True)), "line"


def messages_fields(messages: Any) -> tuple[str, str]:
    """(instruction, output) of a chat row: its first user turn, and the assistant turn that answers it ("" if none).

    A system turn is left out: a task is its request and its answer. Raises RowError
    (problem, fix) for a `messages` value that is not a conversation.
    """
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RowError("'messages' is not a list of {role, content} objects",
                       'write "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
    roles = [m.get("role") for m in messages]
    if "user" not in roles:
        raise RowError(f"'messages' has no user turn (roles: {roles})",
                       'give each conversation a {"role": "user", "content": "..."} turn holding the instruction')
    first = roles.index("user")
    answer = next((m for m in messages[first + 1:] if m.get("role") == "assistant"), {"content": ""})
    instruction, output = messages[first].get("content"), answer.get("content")
    for role, text in (("user", instruction), ("assistant", output)):
        if not isinstance(text, str):
            raise RowError(f"the first {role} turn's content is {type(text).__name__}, not text",
                           "make every turn's content a string")
    return instruction, output


def answered(instances: list[Instance]) -> tuple[list[Instance], bool]:
    """The instances that have an output, and whether one with an input had none. A task's instance is an input and
    its output (Self-Instruct's seed tasks: every instance has an output), so every file a user gives (seeds, a
    stage's --input, evolve's pool) loads a row's input without an output as no instance, and says where
    (Pool.note). Kept, it became a training row with an empty output (evolve's roots in the export), or, through
    `filter --input`, a rejection far from the line it came from."""
    kept = [i for i in instances if i.output.strip()]
    return kept, any(i.input.strip() and not i.output.strip() for i in instances)


class Pool(list):
    """load_pool's tasks, and where the rows that repeated an earlier one whole were ("line 6"), each loaded once,
    and where a row's input was left out for want of an output (`no_output`, answered)."""

    def __init__(self, tasks: Iterable[Task] = (), repeated: Iterable[str] = (), no_output: Iterable[str] = ()):
        super().__init__(tasks)
        self.repeated = list(repeated)
        self.no_output = list(no_output)

    def note(self, name: str) -> str:
        """"line 6 of my.jsonl repeats an earlier row whole: loaded once", what was left out of a row with an input
        and no output, or "" when neither happened."""
        notes = []
        for rows, one, many, what in ((self.repeated, "repeats an earlier row", "repeat earlier rows",
                                       "whole: loaded once"),
                                      (self.no_output, "has an input but no output:", "have an input but no output:",
                                       "loaded without that input (an instance needs an output)")):
            if rows:
                where = ", ".join(rows[:5]) + (", ..." if len(rows) > 5 else "")
                notes.append(f"{where} of {name} {one if len(rows) == 1 else f'({len(rows)}) {many}'} {what}")
        return "; ".join(notes)


def load_pool(path: str | Path, fields: Fields = Fields()) -> Pool:
    """Every record of a file or dataset folder as a Task (see the module docstring for formats)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".jsonl" and _is_stage_file(path):
        return _unique([(n, t) for n, t in enumerate(read_tasks(path), 1)], path, "line")
    rows, unit = read_records(path)
    if not rows:
        raise InputError(path, None, "holds no records", "give a file with at least one instruction")
    numbered, no_output = [], []
    for n, row in rows:
        task, lost_input = _to_task(row, path, n, unit, fields)
        numbered.append((n, task))
        if lost_input:
            no_output.append(f"{unit} {n}")
    pool = _unique(numbered, path, unit)
    pool.no_output = no_output
    return pool


def _numbered(records: list[dict[str, Any]]) -> Records:
    return [(i + 1, r) for i, r in enumerate(records)]


def _is_stage_file(path: Path) -> bool:
    for _, obj in read_jsonl(path, strict=False):
        return "stage" in obj and "origin" in obj
    return False


# The files `save_to_disk` writes: a Dataset's state.json and dataset_info.json, a DatasetDict's dataset_dict.json.
HF_FOLDER_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")
NOT_A_DATASET_FIX = "give a data file (.jsonl, .json, .csv, .tsv, .parquet) or a folder written by Dataset.save_to_disk"


def _read_hf_folder(path: Path) -> Records:
    if not any((path / name).is_file() for name in HF_FOLDER_FILES):
        names = sorted(p.name for p in path.iterdir())
        held = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
        raise InputError(path, None, f"is a folder but not a saved Hugging Face dataset (it holds {held})",
                         NOT_A_DATASET_FIX)
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise InputError(path, None, f"is not a readable saved Hugging Face dataset ({e})", NOT_A_DATASET_FIX) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" not in ds and len(splits) != 1:
            raise InputError(path, None, f"holds several splits {splits} and none is 'train'",
                             "save the split to use on its own, or name it train")
        ds = ds["train"] if "train" in ds else ds[splits[0]]
    return _numbered(ds.to_list())


def _read_parquet(path: Path) -> Records:
    """Rows as plain Python (lists stay lists, empty cells are None), without pandas' index columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(path, None, f"is not a readable parquet file ({e})", "write it with pandas' to_parquet") from None
    index = [c for c in table.column_names if c.startswith("__index_level_")]
    return _numbered(table.drop_columns(index).to_pylist() if index else table.to_pylist())


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, data[: e.start].count(b"\n") + 1, "is not UTF-8", "save the file as UTF-8") from None


def _read_json(path: Path) -> tuple[Records, str]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line in a .json file
            return list(read_jsonl(path, strict=True)), "line"
        raise InputError(path, e.lineno, f"is not valid JSON ({e.msg})", "fix the JSON syntax") from None
    if isinstance(data, dict):
        data = data.get("data") or data.get("tasks") or [data]
    if not isinstance(data, list):
        raise InputError(path, None, "is not a JSON list of objects", 'write [{"instruction": ...}, ...]')
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise InputError(path, None, f"item {i + 1} is a {type(obj).__name__}, not an object",
                             'make every list item an object: [{"instruction": ...}, ...]')
    return _numbered(data), "item"


def where_error(path: Path, n: int, unit: str, problem: str, fix: str) -> InputError:
    """Lines are numbered like the file's; rows and list items are named in the message."""
    if unit == "line":
        return InputError(path, n, problem, fix)
    return InputError(path, None, f"{unit} {n}: {problem}", fix)


def _text(value: Any, name: str, where: tuple[Path, int, str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # pandas' empty cell
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise where_error(*where, f"field '{name}' is a {type(value).__name__}, not text",
                      f"set evolve.{name}_field to a text field")


def _to_task(row: dict[str, Any], path: Path, n: int, unit: str, fields: Fields) -> tuple[Task, bool]:
    """The row's task, and whether an input of it was left out for want of an output (answered)."""
    where = (path, n, unit)
    if row.get(fields.instruction) is None and row.get("messages") is not None:
        try:
            instruction, output = messages_fields(row["messages"])
        except RowError as e:
            raise where_error(*where, e.problem, e.fix) from None
        instruction, output = instruction.strip(), output.strip()
        instances = [Instance("", output)] if output else []
    else:
        instruction = _text(row.get(fields.instruction), "instruction", where).strip()
        if isinstance(row.get("instances"), list):
            instances = [Instance.from_dict(i) for i in row["instances"] if isinstance(i, dict)]
        else:
            inp = _text(row.get(fields.input), "input", where).strip()
            out = _text(row.get(fields.output), "output", where).strip()
            instances = [Instance(inp, out)] if inp or out else []
    instances, lost_input = answered(instances)
    if not instruction:
        raise where_error(*where, f"has no '{fields.instruction}' text (fields: {', '.join(sorted(row))})",
                          "give every record an instruction (or chat messages), or set evolve.instruction_field to "
                          "the field that holds it")
    tid = row.get("id")
    tid = str(tid).strip() if isinstance(tid, (str, int)) and not isinstance(tid, bool) else ""
    if not tid:
        tid = input_id(instruction, instances)
    origin = row.get("origin") if row.get("origin") in ORIGINS else "seed"
    clf = row.get("is_classification")
    return Task(id=tid, instruction=instruction, instances=instances, origin=origin, stage="input",
                is_classification=clf if isinstance(clf, bool) else None), lost_input


def _unique(numbered: list[tuple[int, Task]], path: Path, unit: str) -> Pool:
    """A task per id: a row that repeats an earlier one whole is loaded once and named; one that reuses an earlier
    row's id for other content is an error (it was dropped, silently)."""
    first: dict[str, tuple[int, Task]] = {}
    out, repeated = [], []
    for n, t in numbered:
        if t.id in first:
            m, earlier = first[t.id]
            if (earlier.instruction, earlier.instances) != (t.instruction, t.instances):
                raise where_error(path, n, unit, f"repeats id {t.id!r} of {unit} {m} with other content",
                                  "give every row its own id, or delete one of the two")
            repeated.append(f"{unit} {n}")
            continue
        first[t.id] = (n, t)
        out.append(t)
    return Pool(out, repeated)
