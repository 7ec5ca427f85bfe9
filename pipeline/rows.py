"""A run's kept records as fine-tuning rows: what `seed2lora export` writes and `train RUN_DIR` reads.

Sources, chosen by ExportConfig.include:
  self-instruct  filter.jsonl: the kept Self-Instruct tasks (origin "machine"), a row per instance
  evolve         evolve.jsonl: the kept Evol-Instruct evolutions (origin "evolved"), one instance each:
                 input "" and the teacher's answer as output
  selected       select.jsonl: the rows `seed2lora select` kept of the two above (by judge score, IFD or at
                 random); named alone, since it already holds rows of both
then the run's human seed tasks (origin "seed") by include_seeds: "auto", those its records came from
(store.seeds_used: none for rows a user's --input file brought), true, the seed file's too, or false. Naming both sources
takes whichever the run has (an evolve-only run has no filter.jsonl, a Self-Instruct run
no evolve.jsonl); naming one requires its file.

Here, not in stages/export.py, because train/ reads run directories too and never imports stages/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ExportConfig
from .errors import Refused, Seed2LoraError
from .records import ROW_UNITS, Task, task_rows
from .store import RunDir, evolve_input, evolve_mixed, seeds_used

SOURCES = {"self-instruct": "filter", "evolve": "evolve", "selected": "select"}  # include name -> the stage file of kept records
GENERATED = ("self-instruct", "evolve")  # the sources a run generates; "selected" is a subset of their rows


@dataclass
class RunRows:
    tasks: list[Task]  # the kept generated tasks: Self-Instruct ones, then evolutions
    rows: list[dict[str, Any]]  # their rows, then the seed rows
    sources: list[Path]  # the stage files read


def include_list(include: list[str] | str) -> list[str]:
    """ExportConfig.include as a list; a string is a comma list (`--include evolve`, `--set include=evolve`)."""
    names = [s.strip() for s in include.split(",")] if isinstance(include, str) else [str(s).strip() for s in include]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise Seed2LoraError(f"export include {include!r} names {'unknown source(s) ' + str(unknown) if unknown else 'nothing'}. "
                             f"Fix: give a comma list of {', '.join(SOURCES)} (e.g. --include self-instruct,evolve)")
    if "selected" in names and len(set(names)) > 1:
        raise Seed2LoraError(f"export include {include!r} names 'selected' with other sources, but the selection "
                             "already holds rows of them. Fix: --include selected alone")
    return list(dict.fromkeys(names))


def generated_include(include: list[str] | str) -> list[str]:
    """The generated sources behind an include: itself, or both when it is the selection (what score and IFD rate)."""
    names = include_list(include)
    return list(GENERATED) if names == ["selected"] else names


def generated_rows(run: RunDir, include: list[str] | str) -> list[dict[str, Any]]:
    """The rows of the run's kept generated records, seeds left out: what IFD scores."""
    return run_rows(run, ExportConfig(include=generated_include(include), include_seeds=False)).rows


def kept_files(run: RunDir, include: list[str] | str) -> list[Path]:
    """The stage files of the sources asked for that exist; a missing file asked for alone is an error, and so is
    an evolve.jsonl of tasks a later --input replaced (what export, score, select, ifd and train RUN_DIR read)."""
    names = include_list(include)
    files = {n: run.stage_file(SOURCES[n]) for n in names}
    found = [f for f in files.values() if f.exists()]
    if len(names) == 1 and not found:
        (name,), (f,) = names, files.values()
        other = next(n for n in SOURCES if n != name)
        raise Seed2LoraError(f"{f} does not exist, and export include = [{name!r}] asks for it. Fix: run "
                             f"`seed2lora {SOURCES[name]}` for this run first, or export --include {other}")
    if run.stage_file("evolve") in found and (mixed := evolve_mixed(run)):  # a later --input replaced its roots
        raise Refused(evolve_mixed_error(run, mixed))
    if not found:
        raise Seed2LoraError(f"{run.path} has neither {' nor '.join(f.name for f in files.values())}: no kept "
                             "records to export. Fix: run `seed2lora filter` (Self-Instruct) or `seed2lora evolve` "
                             "(Evol-Instruct) for this run first, or `seed2lora run` with those stages")
    return found


def sources_sha256(files: list[Path]) -> dict[str, str]:
    """sha256 of each stage file an export read, by its name: what export.json records, to tell a stale export."""
    import hashlib

    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def export_out_of_date(run: RunDir) -> str | None:
    """Why the run's export no longer holds the rows its kept records make (filter.jsonl changed since, or an
    evolve.jsonl appeared), or None. An export from before export.json recorded its sources' sha256 is taken as it
    is. A re-run's filter writes the same bytes, so only new or changed records count."""
    from .store import read_export_info

    info = read_export_info(run.export_dir)
    recorded = info.get("sources_sha256")
    if recorded is None:
        return None
    try:
        now = sources_sha256(kept_files(run, (info.get("export") or {}).get("include") or list(GENERATED)))
    except Seed2LoraError:
        return None  # what train reads then says it
    changed = [name for name, sha in now.items() if recorded.get(name) != sha]
    if not changed:
        return None
    return " and ".join(f"{n} {'changed' if n in recorded else 'was made'}" for n in changed)


def evolve_mixed_error(run: RunDir, mixed: str) -> str:
    """The message of each command that reads a run whose evolve.jsonl is mixed (store.evolve_mixed): export,
    score, select, ifd and train RUN_DIR. Its first fix works for every one; leaving evolve.jsonl out is said per
    command, as export takes --include, score, select and ifd export.include, and train RUN_DIR neither."""
    return (f"{mixed}: read together, the evolutions would stand beside rows they were not made from, with the seeds "
            f"of their own roots left out. Fix: delete evolve.jsonl and run `seed2lora evolve {run.path}` to evolve "
            "the rows the run holds now; or leave the evolutions out: `seed2lora export --include self-instruct` "
            "(and train the folder it writes, not the run directory), `--set 'export.include=[\"self-instruct\"]'` for "
            "score, select and ifd")


def seed_rows(run: RunDir, rows: str = "instance", include_seeds: bool | str = "auto") -> list[dict[str, Any]]:
    """The run's human seed tasks as rows (origin "seed"): the seed file its manifest names, and the rows of a
    user's file that evolve read (--input, or evolve.source a path), which are its evolutions' roots.

    An evolve-only run over a user's file used no seed file: the bundled 175 Self-Instruct seeds went into such a
    run's export as its "seed" rows, and the user's own rows did not. ids get a "seed:" prefix so they never meet a
    generated task's; the family keeps the raw id, which is the one evolutions of a seed name as their root.
    """
    from .seeds import load_seeds

    cfg = run.manifest().get("config") or {}
    tasks: list[Task] = []
    for what, path in seed_sources(run, include_seeds):
        if path and not Path(path).exists():  # a file, or a saved dataset folder
            raise Seed2LoraError(f"the {what} of {run.path}, {path}, is not there (paths are relative to where the "
                                 "run was started). Fix: run this command from that folder, or leave the seeds out "
                                 "with --no-seed-tasks (export) / --set include_seeds=false")
        # the evolve input's rows: origin "seed", or the origin a stage file of ours gave its records
        tasks += load_seeds(path) if what == "seed file" else evolved_pool(cfg, path)
    return [{**r, "task_id": f"seed:{r['task_id']}", "id": f"seed:{r['id']}"} for r in task_rows(tasks, rows)]


def evolved_pool(config: dict[str, Any], path: str) -> list[Task]:
    """The rows of the user's file a run evolved, read with the field names of its recorded config."""
    from .datasets_io import Fields, load_pool

    e = config.get("evolve") or {}
    return load_pool(path, Fields(*(e.get(f"{k}_field") or k for k in ("instruction", "input", "output"))))


def seed_sources(run: RunDir, include_seeds: bool | str = "auto") -> list[tuple[str, str | None]]:
    """(what, path) of the human data seed_rows reads: the seed file (None = the bundled one) when the run's records
    came from it (store.seeds_used) or include_seeds is True, and the user's file evolve read, its evolutions' roots.

    A run of a user's --input file never used the seed file: `filter --input my_data.jsonl` then export added the
    bundled 175 Self-Instruct seeds by default (223 of 280 train rows), tasks the user never gave."""
    if include_seeds is False:
        return []
    manifest = run.manifest()
    evolved_from = evolve_input(manifest)
    seeds = (manifest.get("config") or {}).get("seed_tasks") or None
    return ([("seed file", seeds)] if include_seeds is True or seeds_used(manifest) else []) + (
        [("evolve input", evolved_from)] if evolved_from else [])


def run_rows(run: RunDir, cfg: ExportConfig) -> RunRows:
    """The rows of the run's kept records (cfg.include), then its seed rows by cfg.include_seeds (seed_sources)."""
    if cfg.rows not in ROW_UNITS:
        raise Seed2LoraError(f"export rows must be one of {', '.join(ROW_UNITS)}, not {cfg.rows!r}. "
                             "Fix: --rows instance (a row per instance) or --rows task")
    sources = kept_files(run, cfg.include)
    tasks = [t for f in sources for t in run.read_stage(f.stem)]
    if sources == [run.stage_file("select")]:
        check_selection(run, tasks)
    rows = task_rows(tasks, cfg.rows)  # one call, so an evolution finds its parent's family across both files
    if not rows:
        held = f"{sources[0]} holds" if len(sources) == 1 else \
            f"{' and '.join(map(str, sources))} hold" if sources else "the run holds"
        raise Seed2LoraError(f"{held} no task with instances; nothing to export")
    return RunRows(tasks, rows + seed_rows(run, cfg.rows, cfg.include_seeds), sources)


def check_selection(run: RunDir, selected: list[Task]) -> None:
    """select.jsonl's rows must be rows the run keeps now: a selection made before a `filter --input` replaced
    filter.jsonl's tasks (or before evolve.jsonl was made again) went on into `export --include selected` as the
    run's rows, the bootstrapped tasks the user's file had replaced, and its card said they came from that file.
    Evolutions count as kept only while evolve.jsonl is not mixed (store.evolve_mixed)."""
    mixed = evolve_mixed(run)
    stages = ["filter"] + ([] if mixed else ["evolve"])
    kept = {t.id: t for stage in stages for t in run.read_stage(stage)}
    stale = [t for t in selected if t.id not in kept or t.instruction != kept[t.id].instruction
             or any(i not in kept[t.id].instances for i in t.instances)]
    if stale:
        raise Refused(f"{run.stage_file('select')}: {len(stale)} of its {len(selected)} tasks are no longer "
                      f"among the run's kept records{f' ({mixed})' if mixed else ''}, e.g. "
                      f"{stale[0].instruction[:80]!r}: the selection was made before filter.jsonl or "
                      "evolve.jsonl changed (a later `filter --input` replaces filter.jsonl's tasks), and "
                      "exported, it would bring back rows the run no longer has. Fix: run `seed2lora select "
                      f"{run.path}` again to select from the rows there now, or export without it (--include "
                      "self-instruct,evolve)")
