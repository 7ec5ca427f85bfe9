"""One self-contained HTML page: every PNG inlined as a base64 data URI, no script, no server."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..errors import counted
from .plots import PLOTS

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
th { background: #f5f5f5; }
.muted { color: #666; }
"""


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _stat(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "none"
    return f"mean {s['mean']:g}, median {s['median']:g}, p25-p75 {s['p25']:g}-{s['p75']:g}, max {s['max']:g} (n={s['n']})"


def _quality_rows(f: dict[str, Any]) -> list[tuple[str, Any]]:
    """The data-selection section's table: ratings, IFD, and what each selection kept and dropped, with examples."""
    q, rows = f["quality"], []
    if q.get("score"):
        rows.append(("judge ratings", ", ".join(f"{k}: {v}" for k, v in q["score"]["counts"].items())
                     + f" ({q['score']['unrated']} unparseable; judge {q['score']['teacher']})"))
    if q.get("ifd"):
        i = q["ifd"]
        rows.append(("IFD", f"mean {i['mean']:g}, median {i['median']:g}, p25-p75 {i['p25']:g}-{i['p75']:g} (n={i['n']})"))
    s = q.get("select")
    if s:
        rows.append(("selection", f"by {s['by']}: kept {s['kept_rows']} of {s['rows']} rows ({counted(s['kept_tasks'], 'task')}); "
                                  f"{counted(s['near_duplicates'], 'near-duplicate')} rejected"))
        rows += [(f"dropped: {why}", n) for why, n in s["dropped_by_why"].items()]
        for side in ("kept", "dropped"):
            v = s[f"{side}_values"]
            if v.get("n"):
                rows.append((f"{side} {s['by']} values", f"mean {v['mean']:g}, min {v['min']:g}, max {v['max']:g}"))
            rows += [(f"{side} e.g.", f"{e['id']} ({e['value']}): {e['instruction'][:120]}") for e in s[f"{side}_examples"]]
    return rows


def _details(name: str, f: dict[str, Any]) -> str:
    if name == "funnel.png":
        return _table([(s["name"], s["count"]) for s in f["funnel"]["steps"]]
                      + [(f"rejected: {k}", v) for k, v in f["funnel"]["rejected_by_reason"].items()])
    if name == "rouge.png":
        return _table([("to nearest seed", _stat(f["rouge"]["seed"])), ("to nearest pool entry", _stat(f["rouge"]["pool"])),
                       ("seed file", f["seed_file"])])
    if name == "lengths.png":
        return _table([(f"{k} words", _stat(f["lengths"][k])) for k in ("instruction", "input", "output")]
                      + [("instances without input", f"{f['lengths']['empty_inputs']} of {f['lengths']['instances']}")])
    if name == "types.png":
        return _table(list(f["types"].items()))
    if name == "verbs.png":
        v = f["verbs"]
        return _table([("parser", v["parser"]), ("with a root verb", f"{v['with_verb']} of {v['n']}"),
                       ("with a verb-object pair", v["with_verb_object"]), ("distinct verbs", v["unique_verbs"]),
                       ("distinct verb-object pairs", v["unique_pairs"])]
                      + [(t["verb"], ", ".join(f"{o['noun']} {o['count']}" for o in t["objects"])) for t in v["top"]])
    if name == "evolve.png":
        e = f["evolve"]
        return _table([("kept", e["kept"]), ("eliminated", e["eliminated"])]
                      + [(f"operation: {k}", v) for k, v in e["by_operation"].items()]
                      + [(f"round {k}", v) for k, v in e["by_round"].items()]
                      + [(f"eliminated: {k}", v) for k, v in e["eliminated_by_rule"].items()])
    if name == "quality.png":
        return _table(_quality_rows(f))
    if name == "usage.png":
        return _table([(k, f"{counted(u['calls'], 'call')}, {counted(u['errors'], 'error')}, {u['prompt_tokens']:,} prompt + "
                           f"{u['completion_tokens']:,} completion tokens")
                       for k, u in {**f["usage"]["by_kind"], "total": f["usage"]["total"]}.items()])
    return ""


def render(f: dict[str, Any], pngs: dict[str, Path]) -> str:
    sections = []
    for name, (title, _) in PLOTS.items():
        if name not in pngs:
            continue
        data = base64.b64encode(pngs[name].read_bytes()).decode("ascii")
        sections.append(f'<section id="{name[:-4]}"><h2>{html.escape(title)}</h2>'
                        f'<img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
                        f"{_details(name, f)}</section>")
    if "evolve.png" not in pngs:
        sections.append('<p class="muted">No Evol-Instruct data in this run (no evolve.jsonl).</p>')
    if f.get("cost"):  # the figures of `seed2lora cost`: dollars per stage, per 1,000 kept and rows, break-even
        from ..cost import money, summary_lines

        rows = [(f"{s['stage']} ({s['model']})", f"{s['calls']:,} calls, {s['cached']:,} cached, {s['prompt_tokens']:,} + "
                 f"{s['completion_tokens']:,} tokens, {money(s['usd'])}") for s in f["cost"]["stages"]]
        sections.append('<section id="cost"><h2>Cost</h2>' + _table(rows)
                        + "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(f["cost"])) + "</section>")
    title = f"seed2lora report: {Path(f['run']).name}"
    head = _table([("run", f["run"]), ("teacher", f["teacher"] or "?"), ("dataset", f"{f['dataset']}: {f['kept']} kept")])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'  # no favicon request, so no 404 in the console
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>{head}\n" + "\n".join(sections) + "\n</body></html>\n")
