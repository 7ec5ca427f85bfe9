"""Export: the kept records of a run as a fine-tuning dataset, with a seeded train/eval split.

Input (pipeline.rows, by export.include): the run's filter.jsonl (Self-Instruct tasks,
origin "machine") and evolve.jsonl (Evol-Instruct evolutions, origin "evolved", one
instance each with input ""). Output folder:

    README.md                    dataset card: counts per split and origin, teacher, config and filters applied
    export.json                  the same facts as data
    alpaca/{train,eval}.json     [{instruction, input, output}] (Stanford Alpaca's format)
    messages/{train,eval}.jsonl  {id, messages: [{role, content}]} (chat fine-tuning format)
    hf/                          datasets.DatasetDict.save_to_disk (train, eval)
    parquet/{train,eval}.parquet

A row is {id, task_id, instruction, input, output, origin, family} (pipeline.records). The
split is by lineage family: the instances of one task, and a task with every evolution of
it, never sit on both sides. The run's human seed tasks are added to the train split
(origin "seed"), as the Self-Instruct authors' release script does with
--include_seed_tasks; the eval split holds generated tasks only.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import ExportConfig
from ..context import Records, RunContext, StepResult
from ..decontam import clean_run_rows
from ..errors import Seed2LoraError, counted
from ..records import row_messages, split_by_task
from ..rows import evolve_input, include_list, seed_sources, sources_sha256
from ..store import EXPORT_INFO, SELF_INSTRUCT_INPUTS, RunDir, seeds_used, write_jsonl_atomic, write_text_atomic

FORMATS = ("alpaca", "messages", "hf", "parquet")
SPLITS = ("train", "eval")
STAGE = "export"



def export_run(run_dir: str | Path, out_dir: str | Path, cfg: ExportConfig) -> dict[str, Any]:
    """Write the kept records of `run_dir` in every requested format; return what export.json records."""
    run = RunDir(run_dir)
    formats = [f.strip() for f in cfg.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise Seed2LoraError(f"unknown export format(s) {unknown}. Fix: choose from {', '.join(FORMATS)}")
    data, rows, contaminated, note = clean_run_rows(run, cfg)
    run.replace_rejected(STAGE, contaminated)
    splits = dict(zip(SPLITS, split_by_task(rows, cfg.eval_fraction, random.Random(cfg.seed)), strict=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        _WRITERS[fmt](out, splits)
    _remove_stale_formats(out, formats)
    manifest = run.manifest()
    info = {
        "run_dir": str(run.path), "export_dir": str(out), "sources": [str(f) for f in data.sources],
        "sources_sha256": sources_sha256(data.sources),  # a later filter or evolve makes it stale (train says so)
        "formats": formats, "export": {**dataclasses.asdict(cfg), "include": include_list(cfg.include)},
        "counts": {"tasks": len(data.tasks), "seed_tasks": len({r["task_id"] for r in rows if r["origin"] == "seed"}),
                   "rows": len(rows),
                   **{f"{s}_rows": len(v) for s, v in splits.items()},
                   **{f"{s}_tasks": len({r["task_id"] for r in v}) for s, v in splits.items()},
                   "contaminated": len(contaminated),
                   "tasks_by_origin": _count(t.origin for t in data.tasks),
                   "by_origin": _count(r["origin"] for r in rows),
                   **{f"{s}_by_origin": _count(r["origin"] for r in v) for s, v in splits.items()}},
        "decontaminate": {**dataclasses.asdict(cfg.decontaminate), "note": note, "dropped": len(contaminated),
                          "examples": [{"id": t.id, "reason": t.reject_reason} for t in contaminated[:5]]},
        "run_counts": manifest.get("counts", {}),
        "teacher": manifest.get("teacher"),
        "config": manifest.get("config", {}),
        "imported": {name: st["input_file"] for name, st in (manifest.get("stages") or {}).items()
                     if isinstance(st, dict) and st.get("input_file")},  # rows a stage read from a user's --input
        "bootstrapped": "bootstrap" in (manifest.get("stages") or {}),
        "seed_sources": [{"what": what, "path": path} for what, path in seed_sources(run, cfg.include_seeds)],
        "seeds_used": seeds_used(manifest),  # the run's records came from its seed file (store.seeds_used)
        "seed_file_unused": cfg.include_seeds == "auto" and not seeds_used(manifest),  # rows of a user's file
        "evolved_from": evolve_input(manifest),  # a user's file evolve read, or None (a stage of the run, the seeds)
    }
    write_text_atomic(out / EXPORT_INFO, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "README.md", dataset_card(info))
    return info


def _remove_stale_formats(out: Path, formats: list[str]) -> None:
    """An earlier export's folders of the formats not written now: `train EXPORT` read the old messages/train.jsonl
    left beside a new `--formats alpaca` export, the rows of the run as it was. Only in a folder that holds an
    export already (its export.json), so that a user's own folder of that name elsewhere is never touched."""
    import shutil

    if not (out / EXPORT_INFO).is_file():
        return
    for fmt in FORMATS:
        if fmt not in formats and (out / fmt).is_dir():
            shutil.rmtree(out / fmt)


def export(run: RunDir, cfg: ExportConfig, out_dir: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """The one door of export, for `run` and the `export` command: write the run's export (default RUN/export)
    and return what export.json records with the line that says what was written."""
    out = Path(out_dir) if out_dir else run.export_dir
    info = export_run(run.path, out, cfg)
    return info, export_line(info)


def export_line(info: dict[str, Any]) -> str:
    """What an export wrote, in one line: its folder, rows per split and by origin, the tasks they came from."""
    c, out = info["counts"], Path(info["export_dir"])
    rows = ", ".join(f"{n} {o}" for o, n in c["by_origin"].items()) or "none"
    tasks = ", ".join(f"{n} {o}" for o, n in c["tasks_by_origin"].items()) or "none"
    d = info.get("decontaminate") or {}
    return (f"{out}  ({c['train_rows']} train / {c['eval_rows']} eval rows: {rows}; from {c['tasks']} generated + "
            f"{counted(c['seed_tasks'], 'seed task')}; generated tasks by origin: {tasks}; "
            + (f"contaminated rows dropped: {c.get('contaminated', 0)}, {d['note']}; " if d else "")
            + f"card: {out / 'README.md'})" + seeds_left_out(info))


def seeds_left_out(info: dict[str, Any]) -> str:
    """Why the seed file's tasks are not in the export of a run whose rows a user's file brought, and the flag."""
    if not info.get("seed_file_unused"):
        return ""
    files = ", ".join(Path(i["path"]).name for i in (info.get("imported") or {}).values()) or "a user's file"
    seeds = (info.get("config") or {}).get("seed_tasks") or "the bundled 175"
    stages = " and ".join(f"{name} --input" for name in info.get("imported") or {} if name != "evolve")
    replaced = f", which {stages} put in place of the tasks its bootstrap made" if info.get("bootstrapped") else ""
    return (f"; the seed file's tasks ({seeds}) are left out: the run's rows came from {files}{replaced}, not from "
            "them (--seed-tasks adds them)")


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Write the run's kept records as a fine-tuning dataset, by [export], into RUN/export."""
    info, line = export(ctx.run, ctx.cfg.export)
    c = info["counts"]
    return StepResult(f"export: {line}", 0, {"train_rows": c["train_rows"], "eval_rows": c["eval_rows"],
                                             "contaminated": c["contaminated"]})


ORIGIN_ORDER = ("machine", "evolved", "seed")  # the order a run makes them in: Self-Instruct, Evol-Instruct, human
ORIGIN_NAMES = {"machine": "Self-Instruct", "evolved": "Evol-Instruct", "seed": "human seed tasks"}


def _count(values: Iterable[str]) -> dict[str, int]:
    """Counts per origin, in ORIGIN_ORDER."""
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    rank = {o: i for i, o in enumerate(ORIGIN_ORDER)}
    return dict(sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


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

    cols = ["id", "task_id", "instruction", "input", "output", "origin", "family"]
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
    """README.md of an export: a Hugging Face dataset card (YAML header + prose), one function per section."""
    return "\n".join([*card_header(info), *card_counts(info), *card_making(info), *card_filters(info),
                      *card_files(info)])


def card_header(info: dict[str, Any]) -> list[str]:
    """The YAML header (configs, task category, tags), the title and what made the data."""
    origins, imported = info["counts"]["by_origin"], imported_only(info)
    files = ", ".join(f"`{Path(i['path']).name}`" for i in imported.values())  # the name: the card may be pushed
    commands = ", ".join(f"`{name} --input`" for name in imported)
    machine = (f"imported from {files} ({commands}), filtered for novelty and quality" if imported
               else "the Self-Instruct method (Wang et al. 2023), filtered for novelty and quality")
    methods = [m for o, m in (("machine", machine),
                               ("evolved", "Evol-Instruct (WizardLM, Xu et al. 2023): instructions rewritten round "
                                           "after round into harder ones, each answered by the teacher"))
               if origins.get(o)]
    tags = ["self-instruct"] * bool(origins.get("machine")) + ["evol-instruct"] * bool(origins.get("evolved"))
    return [
        "---", "configs:", "- config_name: default", "  data_files:",
        *[line for split in SPLITS for line in (f"  - split: {split}", f"    path: {card_data_path(info, split)}")],
        "task_categories:", "- text-generation", "tags:", *[f"- {t}" for t in tags], "- seed2lora", "---", "",
        f"# {Path(info['run_dir']).name}: instruction-tuning data made by seed2lora", "",
        f"{'Instructions' if imported else 'Machine-generated instructions'} with input/output instances, "
        f"{'' if imported else 'made with '}{' and with '.join(methods)}.", "",
    ]


def imported_only(info: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The --input files the run's rows came from, when no bootstrap of this run made them (else {}): a bootstrap's
    tasks that a `filter --input` (or classify, instances) replaced made none of them (store.seeds_used)."""
    imported = info.get("imported") or {}
    replaced = any(name in SELF_INSTRUCT_INPUTS for name in imported)
    return imported if replaced or not info.get("bootstrapped") else {}


# The files a Hub dataset card's `configs` point at, by the formats' order of preference: parquet is what the Hub
# converts everything else to, JSON lines and Alpaca JSON its json builder reads, the saved dataset's arrow files last.
_DATA_FILES = {"parquet": "parquet/{split}.parquet", "messages": "messages/{split}.jsonl",
               "alpaca": "alpaca/{split}.json", "hf": "hf/{split}/*.arrow"}


def card_data_path(info: dict[str, Any], split: str) -> str:
    """The path of `split` in the first written format the Hub can load (an export of alpaca alone has no parquet)."""
    fmt = next(f for f in _DATA_FILES if f in info["formats"])
    return _DATA_FILES[fmt].format(split=split)


def card_counts(info: dict[str, Any]) -> list[str]:
    """Tasks and rows per split, rows by origin, where the seed rows went, the sources and the split rule."""
    c, exp = info["counts"], info["export"]
    origins = c["by_origin"]
    return [
        "## Counts", "",
        "| | tasks | rows |", "|---|---:|---:|",
        f"| train | {c['train_tasks']} | {c['train_rows']} |",
        f"| eval | {c['eval_tasks']} | {c['eval_rows']} |",
        f"| total | {c['train_tasks'] + c['eval_tasks']} | {c['rows']} |", "",
        "Rows by origin:", "",
        "| origin | train | eval | total |", "|---|---:|---:|---:|",
        *[f"| {o} ({ORIGIN_NAMES.get(o, o)}) | {c['train_by_origin'].get(o, 0)} | {c['eval_by_origin'].get(o, 0)} | {n} |"
          for o, n in origins.items()],
        "",
        (f"{c['seed_tasks']} of the train tasks are the run's human seed tasks (origin `seed`), added as the "
         "Self-Instruct authors' release script does; the eval split holds generated tasks only."
         if c.get("seed_tasks") else "" if info.get("seed_file_unused")
         else "The run's human seed tasks are not included (`include_seeds = false`).")
        + (f" The seed file's tasks are left out: {seeds_left_out(info).partition(': ')[2]}." if info.get("seed_file_unused")
           else ""),
        f"Sources: {', '.join(Path(s).name for s in info.get('sources') or [])} "
        f"(`include = {json.dumps(list(exp.get('include') or []))}`).",
        "",
        f"Rows: one per {'instance' if exp['rows'] == 'instance' else 'task (its first instance)'}"
        + ("; an evolved task has one instance, with no input." if origins.get("evolved") else ".") + " "
        f"Split: {exp['eval_fraction']:.0%} of task families held out for eval, drawn with seed {exp['seed']}; "
        "a task's instances, and a task with every evolution of it (one lineage family), never cross the split.",
        "",
    ]


def seed_names(info: dict[str, Any], cfg: dict[str, Any]) -> str:
    """Where the seed rows came from: the seed file, and the file evolve read when the run evolved a user's data."""
    sources = info.get("seed_sources")
    if not sources and info.get("seed_file_unused"):
        return "none (the rows came from a user's file)"
    if not sources:  # left out, or an export.json written before seed_sources
        return cfg.get("seed_tasks") or "bundled seeds/seed_tasks.jsonl"
    return " and ".join(f"the rows of evolve's input `{Path(s['path']).name}`" if s["what"] == "evolve input"
                        else s["path"] or "bundled seeds/seed_tasks.jsonl" for s in sources)


def card_making(info: dict[str, Any]) -> list[str]:
    """How it was made: the teacher, the seeds, and the settings of bootstrap and evolve where they ran."""
    cfg, origins = info.get("config") or {}, info["counts"]["by_origin"]
    boot, evo, teacher = cfg.get("bootstrap") or {}, cfg.get("evolve") or {}, info.get("teacher") or {}
    imported = imported_only(info)
    lines = [
        "## How it was made", "",
        *[f"- Input of `seed2lora {name} --input`: `{Path(i['path']).name}`"
          + (f" (sha256 {i['sha256']})" if i.get("sha256") else "")
          + ", rows this run did not generate; their licence and the model that wrote them are that file's"
          for name, i in imported.items()],
        *([] if imported and not teacher else [f"- Teacher: `{teacher.get('name', 'unknown')}`"
                                               + (f" ({teacher.get('model')})" if teacher.get("model") else "")]),
        f"- Seed tasks: {seed_names(info, cfg)}; random seed {cfg.get('seed', '?')}",
    ]
    if origins.get("machine") and not imported:
        lines.append(f"- Bootstrap: mode {boot.get('mode', '?')}, target {boot.get('num_instructions', '?')} "
                     f"instructions, {boot.get('num_prompt_instructions', '?')} in-context tasks per prompt, "
                     f"temperature {boot.get('temperature', '?')}, top_p {boot.get('top_p', '?')}")
    if origins.get("evolved"):
        source = f"`{Path(info['evolved_from']).name}`" if info.get("evolved_from") else evo.get("source", "?")
        lines.append(f"- Evolve: {counted(evo.get('rounds', '?'), 'round')} over {source}; evolutions that "
                     "gained nothing, refused, or copied the prompt eliminated (WizardLM's rules)")
    return [*lines, ""]


def instruction_lengths(f: dict[str, Any], evo: dict[str, Any], origins: dict[str, int]) -> str:
    """The length rule each kind of row passed: evolutions grow, and evolve filters them at its own max_words."""
    least, most, evolved_most = f.get("min_words", "?"), f.get("max_words", "?"), evo.get("max_words", "?")
    if not origins.get("evolved"):
        return f"- Instruction length: {least} to {most} words"
    if not origins.get("machine"):
        return f"- Instruction length: {least} to {evolved_most} words (evolve.max_words)"
    return f"- Instruction length: {least} to {most} words; evolved ones {least} to {evolved_most} (evolve.max_words)"


def card_rouge(f: dict[str, Any], info: dict[str, Any]) -> str:
    """The ROUGE-L novelty rule as it ran: against the seeds alone (rouge_against_seeds_only), which a run of a
    user's file has none of, or every earlier instruction."""
    if f.get("rouge_against_seeds_only") and not info.get("seeds_used", True):
        return ("- ROUGE-L: no novelty check (`filter.rouge_against_seeds_only` compares with the seed tasks alone, "
                "and the rows came from a user's file, not from them)")
    return (f"- ROUGE-L against {'the seeds' if f.get('rouge_against_seeds_only') else 'every earlier instruction'}: "
            f"rejected above {f.get('rouge_threshold', '?')}")


def card_filters(info: dict[str, Any]) -> list[str]:
    """The filter's rules, decontamination against the eval set, and the run's rejections by rule."""
    f = (info.get("config") or {}).get("filter") or {}
    rejected = (info.get("run_counts") or {}).get("rejected_by_reason") or {}
    lines = [
        "## Filters applied", "",
        card_rouge(f, info),
        instruction_lengths(f, (info.get("config") or {}).get("evolve") or {}, info["counts"]["by_origin"]),
        f"- Blacklisted words: {', '.join(f.get('blacklist') or []) or 'none'}",
        f"- Banned prefixes: {', '.join(f.get('banned_prefixes') or []) or 'none'}",
        f"- Instances: at most {f.get('max_instances', '?')} per task, cleaned; tasks left without one rejected",
        *card_decontamination(info),
        "",
    ]
    if rejected:
        lines += ["Rejections in the run, by stage and rule:", "", "| rule | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in rejected.items()] + [""]
    return lines


def card_decontamination(info: dict[str, Any]) -> list[str]:
    """One bullet: what the rows were checked against and how many were dropped (rejected.jsonl, stage export)."""
    d = info.get("decontaminate")
    if not d:
        return []
    if d.get("method") == "off":
        return ["- Decontamination: off (rows were not checked against an evaluation set)"]
    how = (f"a shared {d['ngram']}-gram" if d["method"] == "ngram" else
           f"ROUGE-L above {d['rouge_threshold']}" if d["method"] == "rouge" else
           f"a shared {d['ngram']}-gram or ROUGE-L above {d['rouge_threshold']}")
    return [f"- Decontamination: {d['note']}; a row whose instruction + input overlaps an eval item by {how} is "
            f"dropped (rows dropped: {d['dropped']}, each in the run's rejected.jsonl with the eval item it matched)"]


def card_files(info: dict[str, Any]) -> list[str]:
    """The files of each format written, and how to train on them."""
    return [
        "## Files", "",
        "| format | files |", "|---|---|",
        *[f"| {fmt} | {_FILES[fmt]} |" for fmt in info["formats"]],
        "",
        f"Train a LoRA adapter on it: `seed2lora train {info['export_dir']}`.", "",
        "Full settings of the run are in export.json (`config`) and the run's manifest.json.", "",
    ]


_FILES = {"alpaca": "alpaca/train.json, alpaca/eval.json (instruction, input, output)",
          "messages": "messages/train.jsonl, messages/eval.jsonl (id, messages)",
          "hf": "hf/ (`datasets.load_from_disk`)",
          "parquet": "parquet/train.parquet, parquet/eval.parquet"}
