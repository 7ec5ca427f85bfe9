"""The figures of a run's report, as plain data (written to report/report.json).

Everything here is computed from the run directory alone: stage files, rejected.jsonl,
evolve.jsonl and manifest.json, plus the seed file the manifest names. Plots and the
`show --compare` table are drawn from this dict, never from the files directly.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..cost import run_cost
from ..errors import InputError
from ..records import Task
from ..rows import evolved_pool, seed_sources
from ..seeds import load_seeds
from ..show import evolve_summary
from ..similarity import RougeLIndex
from ..store import STAGES, RunDir, reason_label
from .quality import quality
from .stats import histogram, stats
from .verbs import VerbParser, load_parser, top_verb_objects

EVOLVE = "evolve"
SELF_INSTRUCT = tuple(s for s in STAGES if s != EVOLVE)
ROUGE_BINS = 20  # 0.05-wide bins over [0, 1]: fine enough to see the mass below the filter's threshold
LENGTH_BINS = 30  # histogram bins stored in report.json for each length distribution
TOP_VERBS, TOP_OBJECTS = 20, 4  # as in the Self-Instruct paper's Figure 2


def kept_tasks(run: RunDir) -> tuple[str | None, list[Task]]:
    """The dataset a run has kept: its last Self-Instruct stage file plus the kept evolutions (evolve.jsonl).

    A record both files hold (same id) counts once.
    """
    stage = next((s for s in reversed(SELF_INSTRUCT) if run.stage_file(s).exists()), None)
    tasks = run.read_stage(stage) if stage else []
    seen = {t.id for t in tasks}
    return stage, tasks + [t for t in run.read_stage(EVOLVE) if t.id not in seen]


def seed_tasks(run: RunDir, seeds_path: str | Path | None = None) -> tuple[str, list[Task]]:
    """The seeds a run started from: an explicit path, else the file an evolve-only run evolved, else manifest
    config.seed_tasks, else the bundled ones."""
    sources = [] if seeds_path else seed_sources(run)
    if [what for what, _ in sources] == ["evolve input"]:  # the run used no seed file: its roots are that file's rows
        evolved_from = str(sources[0][1])
        if not Path(evolved_from).exists():
            raise InputError(Path(evolved_from), None, "(the file the run evolved) does not exist here",
                             "pass the seeds to compare with as --seeds PATH")
        return evolved_from, evolved_pool(run.manifest().get("config") or {}, evolved_from)
    path = seeds_path or (run.manifest().get("config") or {}).get("seed_tasks") or None
    if path and not Path(path).exists() and (run.path / path).exists():
        path = run.path / path  # a path written relative to the run directory
    if path and not Path(path).exists():
        raise InputError(Path(path), None, "(the run's seed file) does not exist here",
                         "pass the seed file with --seeds PATH")
    return str(path or "bundled seeds/seed_tasks.jsonl"), load_seeds(path or None)


def teacher_name(manifest: dict[str, Any], tasks: list[Task]) -> str | None:
    """The teacher that wrote the data: the one the run called, else the one its records name (rows brought in and
    only filtered, such as Alpaca's davinci rows), else the configured spec."""
    named = (manifest.get("teacher") or {}).get("name")
    if named:
        return named
    own = Counter(t.teacher for t in tasks if t.teacher).most_common(1)
    return own[0][0] if own else ((manifest.get("config") or {}).get("teacher") or {}).get("spec")


def funnel(run: RunDir, rejected: list[Task]) -> dict[str, Any]:
    """How many instructions each stage held, from generated to kept, and why the rest went."""
    by_stage = Counter(t.stage for t in rejected)
    steps: list[dict[str, Any]] = []
    if run.stage_file("bootstrap").exists():
        n = len(run.read_stage("bootstrap"))
        steps.append({"name": "generated", "count": n + by_stage.get("bootstrap", 0)})
    steps += [{"name": s, "count": len(run.read_stage(s))} for s in SELF_INSTRUCT if run.stage_file(s).exists()]
    if run.stage_file(EVOLVE).exists():
        steps.append({"name": "evolved (kept)", "count": len(run.read_stage(EVOLVE))})
    reasons = Counter(reason_label(t) for t in rejected)
    pending = {stage: int(c.get("pending", 0)) for stage, c in (run.manifest().get("stages") or {}).items()
               if isinstance(c, dict) and c.get("pending")}
    return {"steps": steps, "rejected": len(rejected), "rejected_by_reason": dict(reasons.most_common()),
            # dropped instances are records of their own in rejected.jsonl, but not instructions
            "instances_dropped": sum(1 for t in rejected if t.meta.get("instance_of")), "pending": pending}


def rouge(tasks: list[Task], seeds: list[Task]) -> dict[str, Any]:
    """Each kept instruction's ROUGE-L to its most similar seed and to its most similar pool entry.

    The pool is the seeds plus every other kept instruction. It is scored in two
    batched passes over the index (each instruction against seeds + earlier ones, then
    against seeds + later ones), and the nearest entry is the larger of the two.
    """
    texts = [t.instruction for t in tasks]
    seed_index = RougeLIndex()
    for s in seeds:
        seed_index.add(s.instruction)
    to_seed = np.array([seed_index.max_score(t) for t in texts]) if seeds else np.zeros(len(texts))
    to_pool = to_seed.copy()
    for order in (texts, texts[::-1]):
        index = RougeLIndex()
        for s in seeds:
            index.add(s.instruction)
        best = np.array([score for _, score in index.filter_batch(order, threshold=float("inf"))])
        if order is not texts:
            best = best[::-1]
        if len(best):
            to_pool = np.maximum(to_pool, best)
    return {
        "n_seeds": len(seeds),
        "seed": {**stats(to_seed), "hist": histogram(to_seed, ROUGE_BINS, (0.0, 1.0)),
                 "values": [round(float(v), 4) for v in to_seed]},
        "pool": {**stats(to_pool), "hist": histogram(to_pool, ROUGE_BINS, (0.0, 1.0)),
                 "values": [round(float(v), 4) for v in to_pool]},
    }


def lengths(tasks: list[Task]) -> dict[str, Any]:
    """Word counts of instructions, non-empty inputs and outputs (as the Self-Instruct paper's Figure 3)."""
    instances = [i for t in tasks for i in t.instances]
    values = {
        "instruction": [len(t.instruction.split()) for t in tasks],
        "input": [len(i.input.split()) for i in instances if i.input.strip()],
        "output": [len(i.output.split()) for i in instances],
    }
    out: dict[str, Any] = {k: {**stats(v), "hist": histogram(v, LENGTH_BINS), "values": v} for k, v in values.items()}
    out["instances"] = len(instances)
    out["empty_inputs"] = sum(1 for i in instances if not i.input.strip())
    return out


def types(tasks: list[Task]) -> dict[str, int]:
    names = {True: "classification", False: "non-classification", None: "unlabelled"}
    return dict(Counter(names[t.is_classification] for t in tasks).most_common())


def evolve(run: RunDir, rejected: list[Task]) -> dict[str, Any] | None:
    """`show`'s evolve figures (per operation and round, eliminations per rule), rounds as JSON keys; None without."""
    ev = evolve_summary(run, rejected)
    if ev is None:
        return None
    return {**ev, "by_round": {str(r): n for r, n in ev["by_round"].items()},
            "by_operation_round": {op: {str(r): n for r, n in c.items()} for op, c in ev["by_operation_round"].items()}}


def usage(manifest: dict[str, Any]) -> dict[str, Any]:
    kinds = {k: {f: int(v.get(f, 0)) for f in ("calls", "errors", "prompt_tokens", "completion_tokens")}
             for k, v in (manifest.get("usage") or {}).items() if isinstance(v, dict)}
    total = {f: sum(u[f] for u in kinds.values()) for f in ("calls", "errors", "prompt_tokens", "completion_tokens")}
    return {"by_kind": kinds, "total": total}


def verbs(tasks: list[Task], parser: VerbParser) -> dict[str, Any]:
    pairs = parser.parse([t.instruction for t in tasks])
    with_verb = [p for p in pairs if p[0]]
    with_pair = [p for p in pairs if p[0] and p[1]]
    return {
        "parser": parser.name,
        "n": len(pairs),
        "with_verb": len(with_verb),
        "with_verb_object": len(with_pair),
        "unique_verbs": len({v for v, _ in with_verb}),
        "unique_pairs": len(set(with_pair)),
        "top": top_verb_objects(pairs, TOP_VERBS, TOP_OBJECTS),
    }


def compute(run_path: str | Path, *, seeds_path: str | Path | None = None, parser: VerbParser | None = None) -> dict:
    """Every figure of the report for one run directory."""
    run = RunDir(run_path)
    manifest = run.manifest()
    stage, tasks = kept_tasks(run)
    if stage is None and not run.stage_file(EVOLVE).exists():
        raise InputError(run.path, None, "holds no stage files", "give a run directory made by seed2lora run")
    rejected = run.read_rejected()
    seed_file, seeds = seed_tasks(run, seeds_path)
    config = manifest.get("config") or {}
    evolved = evolve(run, rejected)
    return {
        "run": str(run.path),
        "teacher": teacher_name(manifest, tasks),
        "stage": stage,
        "dataset": " + ".join(filter(None, [stage, EVOLVE if evolved else None])),  # the files the kept records are from
        "kept": len(tasks),
        "seed_file": seed_file,
        "rouge_threshold": (config.get("filter") or {}).get("rouge_threshold"),
        "funnel": funnel(run, rejected),
        "rouge": rouge(tasks, seeds),
        "lengths": lengths(tasks),
        "types": types(tasks),
        "evolve": evolved,
        "usage": usage(manifest),
        "quality": quality(run),  # judge scores, IFD, what select kept and dropped (None when none ran)
        "cost": run_cost(run.path) if run.manifest_file.is_file() else None,  # the figures of `seed2lora cost`
        "verbs": verbs(tasks, parser or load_parser()),
    }
