"""Select: near-duplicates out, then the best rows by judge score, by IFD, or at random.

Input: the run's kept records (export.include: filter.jsonl, evolve.jsonl), as rows (one
per instance, ids "<task id>-<k>"), with the judge's ratings from score.jsonl and the
student's IFD from ifd.jsonl (`seed2lora score`, `seed2lora ifd`).

1. Order the rows best first: by rating (ties in a seeded random order), by IFD (Cherry LLM
   selects HIGH IFD: rows whose answer the instruction helps the student predict least;
   rows with IFD >= select.ifd_max are dropped first, since there the instruction does not
   help at all), at random (seeded), or in file order (by = "all").
2. Near-duplicates: walking that order, a row whose instruction + input shares at least
   select.near_dup_threshold of its content words (pipeline.neardup) with a kept row of
   another task or a seed task goes to rejected.jsonl (stage "select", reason "near_duplicate: jaccard J vs
   <kept row id> ...") with meta["near_duplicate_of"]. The better row of a pair survives.
3. Keep the first select.top rows (or select.frac of those left); by = "all" keeps them all.

Output: select.jsonl, the kept tasks with only their kept instances (export --include
selected; train takes the export), each with meta["select"] = {by, value}; select.json,
what was kept and dropped and why, for the report. Re-run whole: both files and the
stage's rejections are replaced.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import SelectConfig
from ..context import Records, RunContext, StepResult
from ..decontam import Contamination, contamination, drop_contaminated
from ..errors import Seed2LoraError
from ..neardup import NearDupIndex
from ..records import Task, task_rows
from ..rows import generated_include, kept_files, seed_sources
from ..store import RunDir, write_jsonl_atomic, write_text_atomic

STAGE = "select"
SUMMARY_FILE = "select.json"
BY = ("judge", "ifd", "random", "all")


@dataclass
class Selection:
    kept: list[Task]  # tasks with their kept instances
    rejected: list[Task]  # near-duplicates, one record per row
    summary: dict[str, Any] = field(default_factory=dict)


def row_values(run: RunDir, stage: str, key: str, field_name: str) -> dict[str, float]:
    """{row id: value} from a per-row stage file (score.jsonl: meta.score.rating, ifd.jsonl: meta.ifd.ifd)."""
    out = {}
    for t in run.read_stage(stage):
        value = (t.meta.get(key) or {}).get(field_name)
        if isinstance(value, (int, float)):
            out[t.id] = float(value)
    return out


def check_settings(cfg: SelectConfig) -> None:
    """Settings that cannot select, refused before anything is written."""
    if cfg.by not in BY:
        raise Seed2LoraError(f"select.by must be one of {', '.join(BY)}, not {cfg.by!r}")
    if cfg.by == "all" and (cfg.top > 0 or cfg.frac != SelectConfig.frac):  # a cut needs an order: not ignored
        cut = f"select.top = {cfg.top}" if cfg.top > 0 else f"select.frac = {cfg.frac}"
        raise Seed2LoraError(f"{cut} (--top/--frac) cuts a ranking, and select.by = all keeps every row. Fix: set "
                             "select.by (--by) to random, judge or ifd, or leave the cut out")


def check(ctx: RunContext) -> None:
    """Before the manifest records this command's settings: a refused select leaves the run as it was, so its
    flags are not the next select's defaults."""
    check_settings(ctx.cfg.select)
    for by, stage in (("judge", "score"), ("ifd", "ifd")):
        # (a run whose stages make that file first is checked by the step itself)
        if ctx.cfg.select.by == by and stage not in ctx.cfg.stages and not ctx.run.stage_file(stage).is_file():
            raise Seed2LoraError(f"select --by {by} ranks by {ctx.run.stage_file(stage)}, which does not exist. "
                                 f"Fix: run `seed2lora {stage} {ctx.run.path}` first")


def select_rows(tasks: Sequence[Task], cfg: SelectConfig, *, scores: dict[str, float], ifd: dict[str, float],
                seeds: Sequence[Task] = (), unrated: set[str] | frozenset[str] = frozenset(),
                no_ifd: set[str] | frozenset[str] = frozenset(), contam: Contamination | None = None,
                run_path: str = "RUN_DIR") -> Selection:
    """The pure selection over tasks' rows.

    unrated: row ids the judge could not rate (ranked last); no_ifd: row ids IFD could not
    score (their response was cut away by ifd.max_len; dropped by an IFD selection);
    contam: the eval set whose overlapping rows go first (decontam.contamination); run_path: the run, as the
    commands that a refusal names take it.
    """
    check_settings(cfg)
    rows, contaminated = drop_contaminated(task_rows(tasks), contam, STAGE)
    rng = random.Random(cfg.seed)
    dropped: list[dict[str, Any]] = []
    if cfg.by == "judge":
        missing = [r["id"] for r in rows if r["id"] not in scores and r["id"] not in unrated]
        if missing:
            raise Seed2LoraError(f"{len(missing)} of {len(rows)} rows have no judge score (first: {missing[0]}). "
                                 f"Fix: `seed2lora score {run_path}` rates the rows not yet rated, then select again")
        if rows and not any(r["id"] in scores for r in rows):
            raise Seed2LoraError(f"the judge rated none of the {len(rows)} rows (every reply unparseable, see "
                                 "rejected.jsonl), so a judge selection would be a random one. Fix: score with a "
                                 f"stronger judge: `seed2lora score {run_path} --rescore --judge SPEC` ([score.teacher])")
        tie = {r["id"]: rng.random() for r in rows}
        rows.sort(key=lambda r: (-scores.get(r["id"], 0.0), tie[r["id"]]))
        value = {r["id"]: scores.get(r["id"]) for r in rows}
    elif cfg.by == "ifd":
        missing = [r["id"] for r in rows if r["id"] not in ifd and r["id"] not in no_ifd]
        if missing:
            raise Seed2LoraError(f"{len(missing)} of {len(rows)} rows have no IFD (first: {missing[0]}). "
                                 f"Fix: `seed2lora ifd {run_path}` scores the rows not yet scored, then select again")
        dropped += [{"id": r["id"], "value": None, "why": "no ifd"} for r in rows if r["id"] not in ifd]
        rows = [r for r in rows if r["id"] in ifd]
        over = [r for r in rows if ifd[r["id"]] >= cfg.ifd_max]
        dropped += [{"id": r["id"], "value": round(ifd[r["id"]], 4), "why": f"ifd >= {cfg.ifd_max}"} for r in over]
        rows = sorted((r for r in rows if ifd[r["id"]] < cfg.ifd_max), key=lambda r: -ifd[r["id"]])
        value = {r["id"]: ifd[r["id"]] for r in rows}
    elif cfg.by == "random":
        rng.shuffle(rows)
        value = {r["id"]: None for r in rows}
    else:
        value = {r["id"]: None for r in rows}

    by_row = {f"{t.id}-{k}": (t, k) for t in tasks for k in range(len(t.instances))}
    rejected: list[Task] = []
    candidates = rows
    if cfg.near_dup_threshold > 0:
        index = NearDupIndex(cfg.near_dup_threshold, num_perm=cfg.num_perm, seed=cfg.seed,
                             synonyms=cfg.near_dup_synonyms)
        owners = [f"seed:{s.id}" for s in seeds]
        owner_task: list[str | None] = [None] * len(seeds)
        for s in seeds:
            index.add(_text(s.instruction, s.instances[0].input if s.instances else ""))
        candidates = []
        for r in rows:
            # Instances of one task share its instruction, which outweighs short inputs ("A house!" / "A car!"):
            # they are not compared with each other (the filter already dropped exact repeats within a task).
            hit = index.check(_text(r["instruction"], r["input"]), skip=lambda key, t=r["task_id"]: owner_task[key] == t)
            if hit is None:
                index.add(_text(r["instruction"], r["input"]))
                owners.append(r["id"])
                owner_task.append(r["task_id"])
                candidates.append(r)
                continue
            other, score = owners[hit[0]], hit[1]
            t, k = by_row[r["id"]]
            record = dataclasses.replace(t, id=r["id"], instances=[t.instances[k]],
                                         meta={**t.meta, "row_of": t.id, "near_duplicate_of": other})
            rejected.append(record.rejected(f"near_duplicate: jaccard {score:.2f} >= {cfg.near_dup_threshold} vs "
                                            f"{other}", STAGE))
    n = len(candidates) if cfg.by == "all" else (cfg.top if cfg.top > 0 else round(cfg.frac * len(candidates)))
    chosen, rest = candidates[:n], candidates[n:]
    dropped += [{"id": r["id"], "value": _round(value.get(r["id"])), "why": "below the cut"} for r in rest]
    dropped += [{"id": t.id, "value": _round(value.get(t.id)), "why": t.reject_reason} for t in rejected]
    dropped += [{"id": t.id, "value": None, "why": t.reject_reason} for t in contaminated]

    keep: dict[str, list[int]] = {}
    for r in chosen:
        t, k = by_row[r["id"]]
        keep.setdefault(t.id, []).append(k)
    kept = []
    for t in tasks:  # input order, instances in their order: the selection reads like the run
        if t.id in keep:
            ks = sorted(keep[t.id])
            kept.append(dataclasses.replace(t, stage=STAGE, instances=[t.instances[k] for k in ks],
                                            meta={**t.meta, "select": {"by": cfg.by, "rows": [f"{t.id}-{k}" for k in ks],
                                                                       "values": [_round(value.get(f"{t.id}-{k}"))
                                                                                  for k in ks]}}))
    summary = {"by": cfg.by, "top": cfg.top, "frac": cfg.frac, "ifd_max": cfg.ifd_max,
               "near_dup_threshold": cfg.near_dup_threshold, "seed": cfg.seed, "rows": len(task_rows(tasks)),
               "near_duplicates": len(rejected), "contaminated": len(contaminated),
               "kept_rows": len(chosen), "kept_tasks": len(kept),
               "kept": [{"id": r["id"], "value": _round(value.get(r["id"]))} for r in chosen], "dropped": dropped}
    return Selection(kept, contaminated + rejected, summary)


def _text(instruction: str, input: str) -> str:
    return f"{instruction}\n{input}" if input else instruction


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def select_run(run: RunDir, cfg: SelectConfig, include: list[str] | str, seeds: Sequence[Task] = ()) -> Selection:
    """Select over a run's kept records; write select.jsonl, select.json and the stage's rejections."""
    sources = kept_files(run, generated_include(include))
    tasks = [t for f in sources for t in run.read_stage(f.stem)]
    unrated = {t.id for t in run.read_rejected() if t.stage == "score"}
    ifd = row_values(run, "ifd", "ifd", "ifd")
    no_ifd = {t.id for t in run.read_stage("ifd")} - set(ifd)
    contam, note = contamination(cfg.decontaminate)
    selection = select_rows(tasks, cfg, scores=row_values(run, "score", "score", "rating"), ifd=ifd, seeds=seeds,
                            unrated=unrated, no_ifd=no_ifd, contam=contam, run_path=str(run.path))
    selection.summary["sources"] = [f.name for f in sources]
    selection.summary["decontaminate"] = {**dataclasses.asdict(cfg.decontaminate), "note": note}
    write_jsonl_atomic(run.stage_file(STAGE), selection.kept)
    run.replace_rejected(STAGE, selection.rejected)
    write_text_atomic(run.path / SUMMARY_FILE, json.dumps(selection.summary, indent=1, ensure_ascii=False) + "\n")
    return selection


def step(ctx: RunContext, records: Records | None) -> StepResult:
    """Drop near-duplicates and keep the best rows by [select]; write select.jsonl."""
    # Rows near a seed task are dropped as copies of export's seed rows: only when export adds them. A run of a
    # user's file lost rows as `near_duplicate: ... vs seed:seed_task_1`, a bundled seed it never used or exported.
    exported = any(what == "seed file" for what, _ in seed_sources(ctx.run, ctx.cfg.export.include_seeds))
    s = select_run(ctx.run, ctx.cfg.select, ctx.cfg.export.include, seeds=ctx.seeds if exported else []).summary
    unused = [f"{stage}.jsonl (--by {by})" for stage, by in (("score", "judge"), ("ifd", "ifd"))
              if s["by"] != by and ctx.run.stage_file(stage).is_file()]
    note = f"; not ranked by {' or '.join(unused)}" if unused else ""
    return StepResult(f"select: {s['kept_rows']} of {s['rows']} rows kept by {s['by']} ({s['kept_tasks']} tasks), "
                      f"{s['near_duplicates']} near-duplicates and {s['contaminated']} contaminated rows rejected "
                      f"({s['decontaminate']['note']}){note} -> {ctx.run.stage_file('select')} "
                      "(export --include selected)", 0,
                      {"generated": s["rows"], "kept": s["kept_rows"], "rejected": s["near_duplicates"] + s["contaminated"],
                       "contaminated": s["contaminated"]})
