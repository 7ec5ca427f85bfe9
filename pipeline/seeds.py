"""Load human seed tasks from JSONL, JSON or CSV into Task records.

Accepted shapes, per record:
- Self-Instruct: {id, name, instruction, instances: [{input, output}], is_classification}
  (the original seed file loads as-is);
- Alpaca: {instruction, input, output};
- CSV with columns instruction, input, output and optionally is_classification, id.
Every problem is reported with file, line and the fix.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .errors import InputError
from .records import Instance, Task
from .store import read_jsonl


def bundled_seeds() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_seeds" / "seed_tasks.jsonl", here.parent / "seeds" / "seed_tasks.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("bundled seeds/seed_tasks.jsonl not found; reinstall seed2lora")


def load_seeds(path: str | Path | None = None) -> list[Task]:
    path = Path(path) if path else bundled_seeds()
    if not path.is_file():
        raise InputError(path, None, "does not exist", "give the path of a seed file (.jsonl, .json or .csv)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix == ".json":
        rows = _read_json(path)
    else:
        rows = list(read_jsonl(path, strict=True))
    if not rows:
        raise InputError(path, None, "holds no seed tasks", "add at least one task, one JSON object per line")
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for line, obj in rows:
        task = _to_task(obj, path, line, len(tasks))
        if task.id in seen:
            raise InputError(path, line, f"repeats id {task.id!r} (first on line {seen[task.id]})",
                             "give every seed task a unique id")
        seen[task.id] = line
        tasks.append(task)
    return tasks


def _to_task(obj: dict[str, Any], path: Path, line: int, index: int) -> Task:
    instruction = obj.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError(path, line, "has no 'instruction' string", 'add "instruction": "..." to this record')
    if "instances" in obj:
        raw = obj["instances"]
        if not isinstance(raw, list) or not all(isinstance(i, dict) for i in raw):
            raise InputError(path, line, "'instances' is not a list of objects",
                             'write "instances": [{"input": "...", "output": "..."}]')
        for i in raw:
            for key in ("input", "output"):
                if not isinstance(i.get(key, ""), str):
                    raise InputError(path, line, f"an instance's '{key}' is {type(i[key]).__name__}, not a string",
                                     f"make every instance's {key} a string")
        instances = [Instance.from_dict(i) for i in raw]
    else:
        out = obj.get("output", "")
        inp = obj.get("input", "")
        if not isinstance(out, str) or not isinstance(inp, str):
            raise InputError(path, line, "'input' and 'output' must be strings", "quote them as strings")
        instances = [Instance(input=inp, output=out)] if out else []
    is_clf = obj.get("is_classification")
    if isinstance(is_clf, str):
        is_clf = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False, "": None}.get(
            is_clf.strip().lower(), is_clf)
    if is_clf is not None and not isinstance(is_clf, bool):
        raise InputError(path, line, f"'is_classification' is {is_clf!r}, not true/false",
                         "write true or false (or leave it out)")
    tid = obj.get("id")
    meta = {k: obj[k] for k in ("name", "motivation_app") if k in obj}
    return Task(id=str(tid) if tid not in (None, "") else f"seed_task_{index}", instruction=instruction.strip(),
                instances=instances, is_classification=is_clf, origin="seed", stage="seed", meta=meta)


def _read_json(path: Path) -> list[tuple[int, dict[str, Any]]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"is not valid JSON ({e.msg})", "fix the JSON syntax") from None
    if isinstance(data, dict):
        data = data.get("data") or data.get("tasks") or [data]
    if not isinstance(data, list):
        raise InputError(path, None, "is not a JSON list of tasks", "write a list: [{\"instruction\": ...}, ...]")
    rows = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise InputError(path, None, f"item {i} is a {type(obj).__name__}, not an object",
                             "make every list item an object with an instruction")
        rows.append((i + 1, obj))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(_read_text(path)))
    if not reader.fieldnames or "instruction" not in reader.fieldnames:
        raise InputError(path, 1, f"has no 'instruction' column (columns: {reader.fieldnames})",
                         "name the columns instruction,input,output")
    return [(reader.line_num, {k: v for k, v in row.items() if k}) for row in reader]


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, data[: e.start].count(b"\n") + 1, "is not UTF-8", "save the file as UTF-8") from None
