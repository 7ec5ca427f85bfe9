"""Export: the kept tasks of a run as a fine-tuning dataset, with a seeded train/eval split.

Input: the run's filter.jsonl (one Task per line). Output folder:

    README.md                    dataset card: counts, teacher, config and filters applied
    export.json                  the same facts as data
    alpaca/{train,eval}.json     [{instruction, input, output}] (Stanford Alpaca's format)
    messages/{train,eval}.jsonl  {id, messages: [{role, content}]} (chat fine-tuning format)
    hf/                          datasets.DatasetDict.save_to_disk (train, eval)
    parquet/{train,eval}.parquet

A row is {id, task_id, instruction, input, output, origin}. The split is by task, so
the instances of one task never sit on both sides. The run's human seed tasks are added
to the train split (origin "seed"), as the Self-Instruct authors' release script does
with --include_seed_tasks; the eval split holds machine tasks only.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import ExportConfig
from ..errors import Seed2LoraError
from ..records import Task
from ..store import RunDir, write_jsonl_atomic, write_text_atomic

FORMATS = ("alpaca", "messages", "hf", "parquet")
SPLITS = ("train", "eval")


def task_rows(tasks: Iterable[Task], rows: str = "instance") -> list[dict[str, Any]]:
    """One row per instance (or per task: its first instance); tasks without instances give none."""
    if rows not in ("instance", "task"):
        raise Seed2LoraError(f"rows must be 'instance' or 'task', not {rows!r}")
    out = []
    for t in tasks:
        instances = t.instances if rows == "instance" else t.instances[:1]
        for i, inst in enumerate(instances):
            out.append({"id": f"{t.id}-{i}", "task_id": t.id, "instruction": t.instruction.strip(),
                        "input": inst.input.strip(), "output": inst.output.strip(), "origin": t.origin})
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
        raise Seed2LoraError(f"a row has neither 'messages' nor 'instruction'/'output' (keys: {sorted(row)}). "
                             "Fix: give Alpaca rows or chat rows with a messages list")
    if not msgs or msgs[-1]["role"] != "assistant":
        raise Seed2LoraError("a chat row must end with an assistant message (the response to learn). "
                             "Fix: end each messages list with {'role': 'assistant', ...}")
    return msgs


def split_by_task(rows: list[dict[str, Any]], eval_fraction: float,
                  rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded train/eval split over task ids; at least one eval task when there are two or more.

    Seed rows (origin "seed") always train: the eval split measures the generated tasks.
    """
    def task_of(i: int, r: dict[str, Any]) -> Any:
        return r.get("task_id", r.get("id", i))

    task_ids = sorted({task_of(i, r) for i, r in enumerate(rows) if r.get("origin") != "seed"}, key=str)
    n_eval = math.ceil(len(task_ids) * eval_fraction) if eval_fraction > 0 else 0
    n_eval = min(n_eval, len(task_ids) - 1) if len(task_ids) > 1 else 0
    eval_ids = set(rng.sample(task_ids, n_eval))
    train, held = [], []
    for i, r in enumerate(rows):
        (held if r.get("origin") != "seed" and task_of(i, r) in eval_ids else train).append(r)
    return train, held


def seed_rows(run: RunDir, rows: str = "instance") -> list[dict[str, Any]]:
    """The run's human seed tasks as rows (origin "seed"): the seed file its manifest names."""
    from ..seeds import load_seeds

    manifest = run.manifest()
    path = (manifest.get("config") or {}).get("seed_tasks") or None
    if path and not Path(path).is_file():
        raise Seed2LoraError(f"the seed file of {run.path}, {path}, is not there (paths are relative to where the run "
                             "was started). Fix: run this command from that folder, or leave the seeds out with "
                             "--no-seeds (export) / --set include_seeds=false")
    return [{**r, "task_id": f"seed:{r['task_id']}", "id": f"seed:{r['id']}"} for r in task_rows(load_seeds(path), rows)]


def run_rows(run: RunDir, cfg: ExportConfig) -> tuple[list[Task], list[dict[str, Any]]]:
    """(kept tasks, rows): the rows of the run's filter.jsonl, then its seed rows if cfg.include_seeds."""
    src = run.stage_file("filter")
    if not src.exists():
        raise Seed2LoraError(f"{src} does not exist. Fix: run `seed2lora filter` (or `seed2lora run`) for this run first")
    tasks = run.read_stage("filter")
    rows = task_rows(tasks, cfg.rows)
    if not rows:
        raise Seed2LoraError(f"{src} holds no task with instances; nothing to export")
    return tasks, rows + (seed_rows(run, cfg.rows) if cfg.include_seeds else [])


def export_run(run_dir: str | Path, out_dir: str | Path, cfg: ExportConfig) -> dict[str, Any]:
    """Write the kept tasks of `run_dir` in every requested format; return what export.json records."""
    run = RunDir(run_dir)
    formats = [f.strip() for f in cfg.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise Seed2LoraError(f"unknown export format(s) {unknown}. Fix: choose from {', '.join(FORMATS)}")
    tasks, rows = run_rows(run, cfg)
    src = run.stage_file("filter")
    splits = dict(zip(SPLITS, split_by_task(rows, cfg.eval_fraction, random.Random(cfg.seed)), strict=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        _WRITERS[fmt](out, splits)
    manifest = run.manifest()
    info = {
        "run_dir": str(run.path), "export_dir": str(out), "source": str(src), "formats": formats, "export": vars(cfg).copy(),
        "counts": {"tasks": len(tasks), "seed_tasks": len({r["task_id"] for r in rows if r["origin"] == "seed"}),
                   "rows": len(rows),
                   **{f"{s}_rows": len(v) for s, v in splits.items()},
                   **{f"{s}_tasks": len({r["task_id"] for r in v}) for s, v in splits.items()},
                   "by_origin": _count(r["origin"] for r in rows)},
        "run_counts": manifest.get("counts", {}),
        "teacher": manifest.get("teacher"),
        "config": manifest.get("config", {}),
    }
    write_text_atomic(out / "export.json", json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "README.md", dataset_card(info))
    return info


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def _write_alpaca(out: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    for split, rows in splits.items():
        items = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in rows]
        write_text_atomic(out / "alpaca" / f"{split}.json", json.dumps(items, indent=1, ensure_ascii=False) + "\n")


def _write_messages(out: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    for split, rows in splits.items():
        write_jsonl_atomic(out / "messages" / f"{split}.jsonl",
                           ({"id": r["id"], "messages": row_messages(r)} for r in rows))


def _frames(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    import pandas as pd

    cols = ["id", "task_id", "instruction", "input", "output", "origin"]
    return {s: pd.DataFrame([{**{c: r[c] for c in cols}, "messages": row_messages(r)} for r in rows],
                            columns=[*cols, "messages"]) for s, rows in splits.items()}


def _write_hf(out: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    import shutil

    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # a bar per split for a few hundred rows is noise
    target = out / "hf"
    if target.exists():  # save_to_disk refuses to overwrite a folder it may be reading from
        shutil.rmtree(target)
    DatasetDict({s: Dataset.from_pandas(df, preserve_index=False) for s, df in _frames(splits).items()}
                ).save_to_disk(str(target))


def _write_parquet(out: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    (out / "parquet").mkdir(parents=True, exist_ok=True)
    for split, df in _frames(splits).items():
        df.to_parquet(out / "parquet" / f"{split}.parquet", index=False)


_WRITERS = {"alpaca": _write_alpaca, "messages": _write_messages, "hf": _write_hf, "parquet": _write_parquet}


def dataset_card(info: dict[str, Any]) -> str:
    """README.md of an export: a Hugging Face dataset card (YAML header + prose)."""
    c, cfg = info["counts"], info.get("config") or {}
    f, boot = cfg.get("filter") or {}, cfg.get("bootstrap") or {}
    teacher = info.get("teacher") or {}
    rejected = (info.get("run_counts") or {}).get("rejected_by_reason") or {}
    exp = info["export"]
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: parquet/train.parquet",
        "  - split: eval",
        "    path: parquet/eval.parquet",
        "task_categories:",
        "- text-generation",
        "tags:",
        "- self-instruct",
        "- seed2lora",
        "---",
        "",
        f"# {Path(info['run_dir']).name}: instruction-tuning data made by seed2lora",
        "",
        "Machine-generated instructions with input/output instances, made from human seed tasks with the",
        "Self-Instruct method (Wang et al. 2023) and filtered for novelty and quality.",
        "",
        "## Counts",
        "",
        "| | tasks | rows |",
        "|---|---:|---:|",
        f"| train | {c['train_tasks']} | {c['train_rows']} |",
        f"| eval | {c['eval_tasks']} | {c['eval_rows']} |",
        f"| total | {c['train_tasks'] + c['eval_tasks']} | {c['rows']} |",
        "",
        (f"{c['seed_tasks']} of the train tasks are the run's human seed tasks (origin `seed`), added as the "
         "Self-Instruct authors' release script does; the eval split holds machine tasks only."
         if c.get("seed_tasks") else "The run's human seed tasks are not included (`include_seeds = false`)."),
        "",
        f"Rows: one per {'instance' if exp['rows'] == 'instance' else 'task (its first instance)'}. "
        f"Split: {exp['eval_fraction']:.0%} of tasks held out for eval, drawn with seed {exp['seed']}; "
        "a task's instances never cross the split.",
        f"Origin of rows: {', '.join(f'{k} {v}' for k, v in sorted(c['by_origin'].items()))}.",
        "",
        "## How it was made",
        "",
        f"- Teacher: `{teacher.get('name', 'unknown')}`"
        + (f" ({teacher.get('model')})" if teacher.get("model") else ""),
        f"- Seed tasks: {cfg.get('seed_tasks') or 'bundled seeds/seed_tasks.jsonl'}; random seed {cfg.get('seed', '?')}",
        f"- Bootstrap: mode {boot.get('mode', '?')}, target {boot.get('num_instructions', '?')} instructions, "
        f"{boot.get('num_prompt_instructions', '?')} in-context tasks per prompt, "
        f"temperature {boot.get('temperature', '?')}, top_p {boot.get('top_p', '?')}",
        "",
        "## Filters applied",
        "",
        f"- ROUGE-L against {'the seeds' if f.get('rouge_against_seeds_only') else 'every earlier instruction'}: "
        f"rejected above {f.get('rouge_threshold', '?')}",
        f"- Instruction length: {f.get('min_words', '?')} to {f.get('max_words', '?')} words",
        f"- Blacklisted words: {', '.join(f.get('blacklist') or []) or 'none'}",
        f"- Banned prefixes: {', '.join(f.get('banned_prefixes') or []) or 'none'}",
        f"- Instances: at most {f.get('max_instances', '?')} per task, cleaned; tasks left without one rejected",
        "",
    ]
    if rejected:
        lines += ["Rejections in the run, by stage and rule:", "", "| rule | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in rejected.items()] + [""]
    lines += [
        "## Files",
        "",
        "| format | files |",
        "|---|---|",
        *[f"| {fmt} | {_FILES[fmt]} |" for fmt in info["formats"]],
        "",
        f"Train a LoRA adapter on it: `seed2lora train {info['export_dir']}`.",
        "",
        "Full settings of the run are in export.json (`config`) and the run's manifest.json.",
        "",
    ]
    return "\n".join(lines)


_FILES = {"alpaca": "alpaca/train.json, alpaca/eval.json (instruction, input, output)",
          "messages": "messages/train.jsonl, messages/eval.jsonl (id, messages)",
          "hf": "hf/ (`datasets.load_from_disk`)",
          "parquet": "parquet/train.parquet, parquet/eval.parquet"}
