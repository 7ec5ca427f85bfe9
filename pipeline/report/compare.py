"""`seed2lora show --compare RUN_A RUN_B`: the report's figures for two runs, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .figures import compute


def _stat(s: dict[str, Any], key: str = "mean", digits: int = 2) -> str:
    return f"{s[key]:.{digits}f}" if s.get("n") else "-"


def _share(n: int, total: int) -> str:
    return f"{n} ({n / total:.0%})" if total else str(n)


def rows(f: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(section, figure, value) for one run; both runs yield the same figures in the same order."""
    steps = {s["name"]: s["count"] for s in f["funnel"]["steps"]}
    ev = f["evolve"] or {}
    # Evolutions are generated too, kept or eliminated: over bootstrap's lines alone, a run with evolve.jsonl read 148%
    generated = steps.get("generated", 0) + ev.get("kept", 0) + ev.get("eliminated", 0)
    out = [("run", "teacher", str(f["teacher"] or "?")),
           ("run", "dataset", f["dataset"])]
    out += [("funnel", name, str(n)) for name, n in steps.items()]
    out += [("funnel", "kept", str(f["kept"])),
            ("funnel", "kept / generated (with evolutions)", f"{f['kept'] / generated:.0%}" if generated else "-"),
            ("funnel", "rejected", str(f["funnel"]["rejected"]))]
    out += [("rejected", reason, str(n)) for reason, n in f["funnel"]["rejected_by_reason"].items()]
    for key, name in (("seed", "nearest seed"), ("pool", "nearest pool entry")):
        r = f["rouge"][key]
        out += [("ROUGE-L", f"{name}: mean", _stat(r)), ("ROUGE-L", f"{name}: median", _stat(r, "median"))]
    for key in ("instruction", "input", "output"):
        out.append(("length (words)", f"{key}: mean / median",
                    f"{_stat(f['lengths'][key], 'mean', 1)} / {_stat(f['lengths'][key], 'median', 0)}"))
    out.append(("length (words)", "instances", str(f["lengths"]["instances"])))
    total = sum(f["types"].values())
    out += [("types", name, _share(n, total)) for name, n in f["types"].items()]
    v = f["verbs"]
    out += [("verbs", "with a verb-object pair", _share(v["with_verb_object"], v["n"])),
            ("verbs", "distinct verbs", str(v["unique_verbs"])),
            ("verbs", "distinct verb-object pairs", str(v["unique_pairs"])),
            ("verbs", "top verbs", ", ".join(f"{t['verb']} {t['count']}" for t in v["top"][:5]) or "-")]
    if ev:
        out += [("evolve", "kept", str(ev["kept"])), ("evolve", "eliminated", str(ev["eliminated"]))]
        out += [("evolve", f"operation: {op}", str(n)) for op, n in ev["by_operation"].items()]
        out += [("evolve", f"eliminated: {rule}", str(n)) for rule, n in ev["eliminated_by_rule"].items()]
    t = f["usage"]["total"]
    tokens = t["prompt_tokens"] + t["completion_tokens"]
    out += [("tokens", "calls (errors)", f"{t['calls']} ({t['errors']})"),
            ("tokens", "prompt + completion", f"{t['prompt_tokens']:,} + {t['completion_tokens']:,}"),
            ("tokens", "per kept instruction", f"{tokens / f['kept']:,.0f}" if f["kept"] else "-")]
    return out


def compare_table(fa: dict[str, Any], fb: dict[str, Any]) -> Table:
    """One row per figure; a figure only one run has (a rejection rule, an operation) shows '-' for the other."""
    a = {(s, k): v for s, k, v in rows(fa)}
    b = {(s, k): v for s, k, v in rows(fb)}
    keys = list(a) + [k for k in b if k not in a]
    order = list(dict.fromkeys(s for s, _ in keys))  # keep sections together, in first-seen order
    names = [Path(fa["run"]).name, Path(fb["run"]).name]
    if names[0] == names[1] or not all(names):
        names = [fa["run"], fb["run"]]
    table = Table(title="seed2lora runs compared")
    table.add_column("")
    table.add_column("figure", no_wrap=True)
    for name in names:
        table.add_column(name, overflow="fold")
    for section in order:
        for i, key in enumerate(k for k in keys if k[0] == section):
            table.add_row(section if i == 0 else "", key[1], a.get(key, "-"), b.get(key, "-"),
                          end_section=False)
        table.add_section()
    return table


def show_compare(path_a: str | Path, path_b: str | Path, out: Console) -> None:
    out.print(compare_table(compute(path_a), compute(path_b)))
