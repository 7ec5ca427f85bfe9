"""Load human seed tasks into Task records, from any data `train` reads.

Files and folders: JSONL, JSON, CSV, parquet, or a folder saved by Hugging Face `datasets`
(save_to_disk), all read by datasets_io.read_records. Accepted shapes, per record:
- Self-Instruct: {id, name, instruction, instances: [{input, output}], is_classification}
  (the original seed file loads as-is);
- Alpaca: {instruction, input, output};
- chat: {messages: [{role, content}, ...]}: the first user turn is the instruction, the
  assistant turn that answers it the output;
- CSV with columns instruction, input, output and optionally is_classification, id.
Every problem is reported with file, line (or row) and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .datasets_io import TABLE_SUFFIXES, Pool, answered, messages_fields, read_records, where_error
from .errors import InputError
from .records import Instance, RowError, Task, input_id


def bundled_seeds() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_seeds" / "seed_tasks.jsonl", here.parent / "seeds" / "seed_tasks.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("bundled seeds/seed_tasks.jsonl not found; reinstall seed2lora")


def load_seeds(path: str | Path | None = None, *, content_ids: bool = False) -> Pool:
    """The tasks of a seed-like file; a record with no id is `seed_task_<n>` (the Self-Instruct seed file's own
    names), or with content_ids (a user's rows given to a stage) records.input_id of its instruction and input.
    A record that repeats an earlier one whole is loaded once and named in the Pool's `repeated`."""
    path = Path(path) if path else bundled_seeds()
    if not path.exists():
        raise InputError(path, None, "does not exist", "give the path of a seed file (.jsonl, .json, .csv, .tsv, .parquet) "
                         "or a saved Hugging Face dataset folder")
    rows, unit = read_records(path)
    if not rows:
        raise InputError(path, None, "holds no seed tasks", "add at least one task, one JSON object per line")
    if path.suffix.lower() in TABLE_SUFFIXES and "instruction" not in rows[0][1]:
        raise InputError(path, 1, f"has no 'instruction' column (columns: {list(rows[0][1])})",
                         "name the columns instruction,input,output")
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    seen_content: set[tuple] = set()
    repeated: list[str] = []  # loaded once, and named (Pool.note): twice, a row weighed double in prompts and export
    no_output: list[str] = []  # an input with no output is no instance: the task loads without it, said (answered)
    for n, obj in rows:
        task, lost_input = _to_task(obj, (path, n, unit), len(tasks), content_ids)
        if lost_input:
            no_output.append(f"{unit} {n}")
        content = (task.instruction, tuple((i.input.strip(), i.output.strip()) for i in task.instances))
        if content in seen_content:  # before the id check: a content id repeats with its row
            repeated.append(f"{unit} {n}")
            continue
        if task.id in seen:
            raise where_error(path, n, unit, f"repeats id {task.id!r} (first at {unit} {seen[task.id]})",
                              "give every seed task a unique id")
        seen[task.id] = n
        seen_content.add(content)
        tasks.append(task)
    return Pool(tasks, repeated, no_output)


def _to_task(obj: dict[str, Any], where: tuple[Path, int, str], index: int, content_ids: bool) -> tuple[Task, bool]:
    """The record's task, and whether an input of it was left out for want of an output (datasets_io.answered)."""
    obj = {k: v for k, v in obj.items() if v is not None}  # a parquet or dataset column this record leaves empty
    instruction = obj.get("instruction")
    if instruction is None and "messages" in obj:
        try:
            instruction, output = messages_fields(obj["messages"])
        except RowError as e:
            raise where_error(*where, e.problem, e.fix) from None
        obj = {**obj, "instruction": instruction, "output": output}
    if not isinstance(instruction, str) or not instruction.strip():
        raise where_error(*where, "has no 'instruction' string (nor chat 'messages')",
                          'add "instruction": "..." to this record')
    if "instances" in obj:
        raw = obj["instances"]
        if not isinstance(raw, list) or not all(isinstance(i, dict) for i in raw):
            raise where_error(*where, "'instances' is not a list of objects",
                              'write "instances": [{"input": "...", "output": "..."}]')
        for i in raw:
            for key in ("input", "output"):
                if not isinstance(i.get(key) or "", str):
                    raise where_error(*where, f"an instance's '{key}' is {type(i[key]).__name__}, not a string",
                                      f"make every instance's {key} a string")
        instances = [Instance.from_dict(i) for i in raw]
    else:
        out = obj.get("output", "")
        inp = obj.get("input", "")
        if not isinstance(out, str) or not isinstance(inp, str):
            raise where_error(*where, "'input' and 'output' must be strings", "quote them as strings")
        instances = [Instance(input=inp, output=out)] if inp or out else []
    instances, lost_input = answered(instances)
    is_clf = obj.get("is_classification")
    if isinstance(is_clf, str):
        is_clf = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False, "": None}.get(
            is_clf.strip().lower(), is_clf)
    if is_clf is not None and not isinstance(is_clf, bool):
        raise where_error(*where, f"'is_classification' is {is_clf!r}, not true/false",
                          "write true or false (or leave it out)")
    tid = obj.get("id")
    meta = {k: obj[k] for k in ("name", "motivation_app") if k in obj}
    if tid in (None, ""):
        tid = input_id(instruction, instances) if content_ids else f"seed_task_{index}"
    return Task(id=str(tid), instruction=instruction.strip(), instances=instances, is_classification=is_clf,
                origin="seed", stage="seed", meta=meta), lost_input
