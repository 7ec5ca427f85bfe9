"""Load any instruction pool into Task records: our stage files, or a user's own data.

Accepted: a stage file of ours (.jsonl with stage/origin fields, read as written); JSONL,
Alpaca-style JSON (a list, or {"data": [...]}), CSV, parquet, and a folder saved by
Hugging Face `datasets` (save_to_disk; a DatasetDict gives its "train" split). Field names
are configurable (evolve.instruction_field, input_field, output_field); a record in the
Self-Instruct shape (with an "instances" list) keeps its instances. A record without an
"id" gets one from its content, so the same data gets the same ids on every load; exact
repeats (same id) are loaded once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .records import ORIGINS, Instance, Task, task_id
from .store import read_jsonl, read_tasks


@dataclass(frozen=True)
class Fields:
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"


def load_pool(path: str | Path, fields: Fields = Fields()) -> list[Task]:
    """Every record of a file or dataset folder as a Task (see the module docstring for formats)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "does not exist", "give an existing file or dataset folder")
    if path.is_dir():
        rows, unit = _read_hf_folder(path), "row"
    else:
        suffix = path.suffix.lower()
        if suffix == ".jsonl" and _is_stage_file(path):
            return _unique(read_tasks(path))
        if suffix == ".parquet":
            import pandas as pd

            rows, unit = _numbered(pd.read_parquet(path).to_dict("records")), "row"
        elif suffix == ".csv":
            import pandas as pd

            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            rows, unit = [(i + 2, r) for i, r in enumerate(frame.to_dict("records"))], "line"  # line 1 is the header
        elif suffix == ".json":
            rows, unit = _read_json(path), "item"
        else:
            rows, unit = list(read_jsonl(path, strict=True)), "line"
    if not rows:
        raise InputError(path, None, "holds no records", "give a file with at least one instruction")
    return _unique([_to_task(row, path, n, unit, fields) for n, row in rows])


def _numbered(records: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(i + 1, r) for i, r in enumerate(records)]


def _is_stage_file(path: Path) -> bool:
    for _, obj in read_jsonl(path, strict=False):
        return "stage" in obj and "origin" in obj
    return False


def _read_hf_folder(path: Path) -> list[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise InputError(path, None, f"is not a saved Hugging Face dataset ({e})",
                         "give a folder written by Dataset.save_to_disk, or a data file") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" not in ds and len(splits) != 1:
            raise InputError(path, None, f"holds several splits {splits} and none is 'train'",
                             "save the split to evolve on its own, or name it train")
        ds = ds["train"] if "train" in ds else ds[splits[0]]
    return _numbered(ds.to_list())


def _read_json(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise InputError(path, None, "is not UTF-8", "save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line in a .json file
            return list(read_jsonl(path, strict=True))
        raise InputError(path, e.lineno, f"is not valid JSON ({e.msg})", "fix the JSON syntax") from None
    if isinstance(data, dict):
        data = data.get("data") or data.get("tasks") or [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise InputError(path, None, "is not a JSON list of objects", 'write [{"instruction": ...}, ...]')
    return _numbered(data)


def _error(path: Path, n: int, unit: str, problem: str, fix: str) -> InputError:
    """Lines are numbered like the file's; rows and list items are named in the message."""
    if unit == "line":
        return InputError(path, n, problem, fix)
    return InputError(path, None, f"{unit} {n}: {problem}", fix)


def _text(value: Any, name: str, where: tuple[Path, int, str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # pandas' empty cell
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _error(*where, f"field '{name}' is a {type(value).__name__}, not text",
                 f"set evolve.{name}_field to a text field")


def _to_task(row: dict[str, Any], path: Path, n: int, unit: str, fields: Fields) -> Task:
    where = (path, n, unit)
    instruction = _text(row.get(fields.instruction), "instruction", where).strip()
    if not instruction:
        raise _error(*where, f"has no '{fields.instruction}' text (fields: {', '.join(sorted(row))})",
                     "give every record an instruction, or set evolve.instruction_field to the field that holds it")
    if isinstance(row.get("instances"), list):
        instances = [Instance.from_dict(i) for i in row["instances"] if isinstance(i, dict)]
    else:
        inp = _text(row.get(fields.input), "input", where).strip()
        out = _text(row.get(fields.output), "output", where).strip()
        instances = [Instance(inp, out)] if inp or out else []
    tid = row.get("id")
    tid = str(tid).strip() if isinstance(tid, (str, int)) and not isinstance(tid, bool) else ""
    if not tid:
        tid = task_id("input", f"{instruction}\n{instances[0].input if instances else ''}")
    origin = row.get("origin") if row.get("origin") in ORIGINS else "seed"
    clf = row.get("is_classification")
    return Task(id=tid, instruction=instruction, instances=instances, origin=origin, stage="input",
                is_classification=clf if isinstance(clf, bool) else None)


def _unique(tasks: list[Task]) -> list[Task]:
    seen: set[str] = set()
    out = []
    for t in tasks:
        if t.id not in seen:
            seen.add(t.id)
            out.append(t)
    return out
