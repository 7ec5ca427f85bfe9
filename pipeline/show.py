"""`seed2lora show`: what a run directory holds, at a glance."""

from __future__ import annotations

import json
import random
import statistics
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Column, Table

from .cache import usage_log
from .errors import Seed2LoraError, counted
from .records import Task
from .store import (
    PENDING_KNOWN,
    STAGES,
    RunDir,
    evolve_input,
    pending_line,
    reason_kind,
    reason_label,
    recorded_teacher,
)

WIDE = 10_000  # columns off a terminal: a table is as wide as its content (rich tables do not expand to the width)


def stdout_console() -> Console:
    """Where `show`, `cost` and the dry run print their tables: a terminal's own width, else (a pipe, a file, a test)
    wide enough that no table is cut at rich's 80-column default (`classify_c…`)."""
    console = Console(emoji=False)  # an instruction's ":100:" or ":smile:" is its text, not an emoji
    return console if console.is_terminal else Console(width=WIDE, emoji=False)


def label(header: str) -> Column:
    """A table's row-label column: folded onto a second line on a narrow terminal, never cut to an ellipsis, so two
    labels with a common start (evolve_judge, evolve_answer) stay apart."""
    return Column(header, overflow="fold")


def last_stage(run: RunDir) -> str | None:
    written = [s for s in STAGES if run.stage_file(s).exists()]
    return written[-1] if written else None


def _status(run: RunDir, manifest: dict) -> dict:
    """The manifest's status, unless it says running and no process holds the run: then the run was killed."""
    status, reason = manifest.get("status"), manifest.get("reason")
    if status == "running" and not run.writer_alive():
        status = "stopped"
        writing = ", ".join(manifest.get("running") or [manifest.get("stage") or "it"])  # a flow's every stage
        reason = (f"the process writing {writing} ended without a word (killed, or the machine "
                  "went down); run the same command to resume")
    return {"status": status, "reason": reason}


def summary(run: RunDir, stage: str | None = None) -> dict:
    """The figures `show` prints, as data (also used by tests and --compare later)."""
    stage = stage or last_stage(run)
    tasks = run.read_stage(stage) if stage else []
    rejected = run.read_rejected()
    lengths = {
        "instruction_words": [len(t.instruction.split()) for t in tasks],
        "input_words": [len(i.input.split()) for t in tasks for i in t.instances],
        "output_words": [len(i.output.split()) for t in tasks for i in t.instances],
    }
    manifest = run.manifest()
    status = _status(run, manifest)
    stages = stage_entries(run, manifest, status["status"])
    short = stopped_short(stages, status)
    if short and status["status"] == "done":  # the last command finished, on what a stage stopped short of
        status = {"status": "stopped short", "reason": None}
    return {
        "stage": stage,
        "counts": {s: len(run.read_stage(s)) for s in STAGES if run.stage_file(s).exists()},
        "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(reason_label(r) for r in rejected).most_common()),
        "types": dict(Counter({True: "classification", False: "non-classification", None: "unlabelled"}[t.is_classification]
                              for t in tasks)),
        "instances": sum(len(t.instances) for t in tasks),
        "lengths": {k: _stats(v) for k, v in lengths.items()},
        "teacher": recorded_teacher(manifest, "teacher").get("name"),
        "teacher_note": teacher_note(manifest),
        "teacher_choice": teacher_choice(manifest.get("teacher") or {}),
        "seeds": seeds_line(manifest),
        "endpoints": endpoints_line(manifest.get("teacher") or {}),
        **status,
        "short": [short_line(group, manifest) for group in short],
        "attempt": manifest.get("attempt") if isinstance(manifest.get("attempt"), dict) else None,
        "stages": stages,
        "usage": logged_usage(run, manifest),
        "spend": manifest.get("spend", {}),
        "evolve": evolve_summary(run, rejected),
    }


def logged_usage(run: RunDir, manifest: dict) -> dict:
    """Usage per call kind over every session: from the usage log (cache.usage_log), else the manifest's copy."""
    if usage := usage_log(run.path):
        return usage
    return manifest.get("usage", {})


def stage_entries(run: RunDir, manifest: dict, status: str | None) -> dict:
    """The manifest's entry of each stage (its last session's counts). In a run that did not finish, a stage whose
    entry has no pending yet (the process was killed, or is still running) gets it from the files (RunDir.pending):
    bootstrap's instructions short of its target, a per-task stage's input tasks with no outcome."""
    stages = {k: dict(v) for k, v in (manifest.get("stages") or {}).items() if isinstance(v, dict)}
    if status == "done":
        return stages
    lacking = [s for s in PENDING_KNOWN if run.stage_file(s).exists() and "pending" not in stages.get(s, {})]
    target = ((manifest.get("config") or {}).get("bootstrap") or {}).get("num_instructions")
    for stage, n in (run.pending(lacking, target) if lacking else {}).items():
        stages.setdefault(stage, {})["pending"] = n
    return stages


def stopped_short(stages: dict, status: dict) -> list[list[tuple[str, dict]]]:
    """The stages whose last session stopped with work left (the `stopped` of their entry, pipeline/stops.py) and
    that have not run again since, one group per stop: the run's state where later commands went on with what they
    kept, which the manifest's status (the last command's) does not say: "done" after a low-yield bootstrap, then
    filter and export. A stop the manifest's own status and reason say is left out."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in stages.items():
        stop = entry.get("stopped")
        if not isinstance(stop, dict) or not entry.get("pending"):
            continue
        if status["status"] != "done" and str(status.get("reason") or "").startswith(str(stop.get("reason"))):
            continue
        groups.setdefault(f"{stop.get('at')} {stop.get('command')}", []).append((name, entry))
    return list(groups.values())


def short_line(group: list[tuple[str, dict]], manifest: dict) -> str:
    """One stop of stopped_short, in words: where it stopped short, by how much, why, and what ran since."""
    stages = list(manifest.get("stages") or {})
    names = [name for name, _ in group]
    stop = group[0][1]["stopped"]
    target = ((manifest.get("config") or {}).get("bootstrap") or {}).get("num_instructions")
    kept = (manifest.get("counts") or {}).get("bootstrap", 0)
    others = {name: entry["pending"] for name, entry in group if name != "bootstrap" or not target}
    short = [*([f"{kept} of {target} instructions kept"] if target and "bootstrap" in names else []),
             *([pending_line(others, target or 0, list(others), set())] if others else [])]
    since = [n for n in stages[max(stages.index(n) for n in names) + 1:] if n not in names]
    ran = f", and {', '.join(since)} ran since on what {'it' if len(names) == 1 else 'they'} kept" if since else ""
    return (f"{', '.join(names)} stopped short ({'; '.join(short)}){ran}. The stop, {stop.get('at')}, "
            f"{stop.get('command')}: {stop.get('reason')}")


def evolve_summary(run: RunDir, rejected: list[Task]) -> dict | None:
    """Evolutions kept per operation and round, eliminations per rule; None before the evolve stage."""
    if not run.stage_file("evolve").exists():
        return None
    evolved = run.read_stage("evolve")
    eliminated = [r for r in rejected if r.stage == "evolve"]
    by_op_round: dict[str, Counter] = {}
    for t in evolved:
        by_op_round.setdefault(str(t.meta.get("operation")), Counter())[t.round] += 1
    return {
        "kept": len(evolved),
        "eliminated": len(eliminated),
        # Rounds every slot has finished, as of the last evolve step that ended (an interrupted one records nothing);
        # slots run ahead of each other, so outcomes may reach later rounds.
        "rounds_done": int(((run.manifest().get("stages") or {}).get("evolve") or {}).get("rounds_done", 0)),
        "last_round": max((t.round for t in [*evolved, *eliminated]), default=0),
        "by_operation": dict(Counter(str(t.meta.get("operation")) for t in evolved).most_common()),
        "by_round": dict(sorted(Counter(t.round for t in evolved).items())),
        "by_operation_round": {op: dict(sorted(c.items())) for op, c in sorted(by_op_round.items())},
        "eliminated_by_rule": dict(Counter(reason_kind(r.reject_reason) for r in eliminated).most_common()),
    }


def teacher_note(manifest: dict) -> str:
    """Why show's teacher is not the one the manifest recorded: a run killed before its teacher's first record has
    only its config's (`teacher: ?` said nothing of it), and a run no teacher-calling step has touched has none."""
    if (manifest.get("teacher") or {}).get("name"):
        return ""
    if recorded_teacher(manifest, "teacher"):
        return "as configured: the run stopped before it recorded its teacher"
    return "none recorded: no step that calls a teacher has run here"


def seeds_line(manifest: dict) -> str:
    """What the run's records came from: the seed file (manifest seed_file), or the user's files its stages read."""
    if manifest.get("seed_file"):
        return f"seeds: {manifest['seed_file']} ({counted(manifest.get('num_seeds', '?'), 'task')})"
    stages = manifest.get("stages") or {}
    files = [f"{Path(st['input_file']['path']).name} ({name} --input)" for name, st in stages.items()
             if isinstance(st, dict) and (st.get("input_file") or {}).get("path")]
    evolved = evolve_input(manifest)
    if evolved and not ((stages.get("evolve") or {}).get("input_file") or {}).get("path"):
        files.append(f"{Path(evolved).name} (evolve.source)")
    return f"seeds: none; rows from {', '.join(files)}, not made from seed tasks" if files else ""


def teacher_choice(teacher: dict) -> str:
    """How a server teacher was driven and why: the endpoint (api auto's choice) and structured replies."""
    parts = [f"api {teacher['api_choice']}" if teacher.get("api_choice") else "",
             f"structured replies {teacher['structured_choice']}" if teacher.get("structured_choice") else ""]
    return "; ".join(p for p in parts if p)


def endpoints_line(teacher: dict) -> str:
    """With several --base-urls, what each served in the last session and how often it left the rotation: a
    failover is on record after the run, not only in its log."""
    def one(e: dict) -> str:
        fell = f", left the rotation {counted(e['falls'], 'time')}" if e.get("falls") else ""
        return f"{e['url']} {counted(e['replies'], 'reply', 'replies')}{fell}"

    endpoints = teacher.get("endpoints") or []
    return "endpoints, last session: " + "; ".join(one(e) for e in endpoints) if endpoints else ""


def _stats(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": round(statistics.fmean(values), 1), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def show_run(path: Path, *, stage: str | None, n_samples: int, as_jsonl: bool, seed: int,
             out: Console, err: Console) -> None:
    run = RunDir(path)
    if stage is not None and stage not in (*STAGES, "rejected"):
        raise Seed2LoraError(f"unknown stage {stage!r}. Fix: use one of {', '.join((*STAGES, 'rejected'))}")
    if stage is None and last_stage(run) is None and not run.rejected_file.exists():
        raise Seed2LoraError(f"{path} holds no stage files. Fix: give a run directory made by seed2lora run")
    records = run.read_rejected() if stage == "rejected" else run.read_stage(stage or last_stage(run) or "")
    if as_jsonl:
        picked = _pick(records, n_samples, seed) if n_samples else records
        for t in picked:
            sys.stdout.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
        return
    s = summary(run, None if stage == "rejected" else stage)
    # Text from files and teachers is printed as written: rich read "[filter]" in a reason as a tag and dropped it
    then = "; then a command stopped at the teacher's connection check" if s["attempt"] else ""
    teacher, note = s["teacher"], s["teacher_note"]
    teacher = f"{teacher} ({note})" if teacher and note else teacher or note
    out.print(f"[bold]{escape(str(path))}[/]  teacher: {escape(teacher)}  status: {s['status'] or '?'}{then}")
    if s["reason"] and s["status"] != "done":
        out.print(f"  {s['reason']}", highlight=False, markup=False)
    for line in s["short"]:
        out.print(f"  {line}", highlight=False, markup=False)
    if attempt := s["attempt"]:  # a resume stopped at the teacher's connection check: no session, no record
        out.print(f"  then, {attempt.get('at')}, {attempt.get('command')} stopped before any request (teacher "
                  f"unavailable): {attempt.get('cause')}" + (f" ({attempt['pending']})" if attempt.get("pending") else ""),
                  highlight=False, markup=False)
    if s["seeds"]:
        out.print(f"  {s['seeds']}", highlight=False, markup=False)
    if s["teacher_choice"]:
        out.print(f"  {s['teacher_choice']}", highlight=False, markup=False)
    if s["endpoints"]:
        out.print(f"  {s['endpoints']}", highlight=False, markup=False)
    from .cost import open_batches, open_batches_line

    if waiting := open_batches(run):  # paid and still to come: first, not only in the cost lines below
        out.print(f"  {open_batches_line(waiting)}", highlight=False, markup=False)
    if over := sum(n for k, n in s["rejected_by_reason"].items() if k == "bootstrap: over_target"):
        out.print(f"  {over} bootstrap lines passed the filter after the pool was full (over_target in "
                  f"rejected.jsonl: `seed2lora show {path} --stage rejected`)", highlight=False)
    table = Table(label("stage"), "records", "last session: generated", "kept", "rejected", "pending", title="Counts")
    for name, n in s["counts"].items():
        c = s["stages"].get(name) or {}
        table.add_row(name, str(n), *(str(c[k]) if k in c else "-" for k in ("generated", "kept", "rejected",
                                                                                "pending")))
    table.add_row("rejected", str(s["rejected"]))
    out.print(table)
    if s["rejected_by_reason"]:
        table = Table(label("stage: rule"), "rejected", title="Rejections")
        for reason, n in s["rejected_by_reason"].items():
            table.add_row(reason, str(n))
        out.print(table)
    out.print(f"[bold]{s['stage']}[/]: {counted(s['instances'], 'instance')}; types: "
              + ", ".join(f"{k} {v}" for k, v in s["types"].items()))
    table = Table(label("words"), "n", "mean", "median", "min", "max", title="Lengths")
    for name, st in s["lengths"].items():
        table.add_row(name, *(str(st.get(k, "-")) for k in ("n", "mean", "median", "min", "max")))
    out.print(table)
    if s["evolve"]:
        ev = s["evolve"]
        rounds = sorted({r for c in ev["by_operation_round"].values() for r in c})
        ahead = f"; outcomes reach round {ev['last_round']}" if ev.get("last_round", 0) > ev["rounds_done"] else ""
        table = Table(label("operation"), *(f"round {r}" for r in rounds), "total",
                      title=f"Evolved ({ev['kept']} kept, {counted(ev['rounds_done'], 'round')} done by every slot{ahead})")
        for op, c in ev["by_operation_round"].items():
            table.add_row(op, *(str(c.get(r, 0)) for r in rounds), str(sum(c.values())))
        out.print(table)
        if ev["eliminated_by_rule"]:
            table = Table(label("rule"), "evolutions rejected", title=f"Evolve eliminations ({ev['eliminated']})")
            for rule, n in ev["eliminated_by_rule"].items():
                table.add_row(rule, str(n))
            out.print(table)
    if s["usage"]:
        table = Table(label("calls of"), "calls", "errors", "retries", "timeouts", "cached", "prompt tokens",
                      "of them prefix-cached", "completion tokens", title="Teacher usage (every session, from the usage log)")
        for kind, u in s["usage"].items():
            table.add_row(kind, *(f"{u.get(k, 0):,}" for k in ("calls", "errors", "retries", "timeouts", "cached",
                                                             "prompt_tokens", "cached_tokens", "completion_tokens")))
        out.print(table)
    if s["usage"]:  # dollars per stage, per 1,000 kept and rows, break-even: the figures of `seed2lora cost`
        from .cost import money, print_cost, run_cost

        c = {**run_cost(path), "open_batches": None}  # said above
        # Spend from the usage log, each model at its own price (a manifest's copy may predate the last kill -9).
        tokens = sum(t["prompt_tokens"] + t["completion_tokens"] for t in c["models"].values())
        cost = money(c["dataset_usd"]) if c["dataset_usd"] is not None else f"no price for {', '.join(c['unpriced'])}"
        per_model = ", ".join(f"{m} {money(t['usd'])}" for m, t in c["models"].items())
        spend = s["spend"] or {}
        limits = ", ".join(f"{k} {spend[k]}" for k in ("max_tokens_total", "max_cost") if spend.get(k))
        out.print(f"[bold]Spend:[/] {tokens:,} tokens, {cost} ({per_model})" + (f" (limits: {limits})" if limits else ""),
                  highlight=False)
        print_cost(out, c)
    for t in _pick(records, n_samples, seed):
        _print_task(out, t)


def _pick(records: list[Task], n: int, seed: int) -> list[Task]:
    return random.Random(seed).sample(records, min(n, len(records)))


def _print_task(out: Console, t: Task) -> None:
    kind = {True: "classification", False: "generation", None: "unlabelled"}[t.is_classification]
    out.print(Rule(escape(f"{t.id} ({t.origin}, {kind})")), width=out.width if out.is_terminal else 100)
    # a teacher's text is data: "arr[i]" is not italic, and a stray "[/b]" stopped show with a MarkupError
    out.print(f"[bold]Instruction:[/] {escape(t.instruction)}", highlight=False)
    if t.reject_reason:
        out.print(f"[red]Rejected:[/] {escape(t.reject_reason)}", highlight=False)
    for inst in t.instances[:3]:
        if inst.input:
            out.print(f"  [cyan]Input:[/] {escape(inst.input[:300])}", highlight=False)
        out.print(f"  [green]Output:[/] {escape(inst.output[:300])}", highlight=False)
