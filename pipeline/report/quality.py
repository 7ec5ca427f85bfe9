"""The report's data-selection figures: judge scores, IFD, and what `seed2lora select` kept and dropped.

Read from score.jsonl, ifd.jsonl, select.json and select.jsonl of the run; None when the
run has none of them (a run that never scored or selected shows no section).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..store import RunDir

IFD_BINS = 20  # 0.1-wide bins over 0..2: IFD clusters below 1, and >= 1 is the band Cherry LLM drops
EXAMPLES = 3  # kept and dropped rows shown by name in the page


def quality(run: RunDir) -> dict[str, Any] | None:
    """Rating counts, IFD distribution, and the selection's kept/dropped split; None when nothing was scored."""
    from .figures import histogram, stats

    scored, ifd = run.read_stage("score"), run.read_stage("ifd")
    select_file = run.path / "select.json"
    if not scored and not ifd and not select_file.is_file():
        return None
    unrated = sum(1 for t in run.read_rejected() if t.stage == "score")
    # Log-probability ratings are real numbers: counted at the nearest whole rating.
    ratings = Counter(int(round(t.meta["score"]["rating"])) for t in scored if t.meta.get("score"))
    ifd_values = [t.meta["ifd"]["ifd"] for t in ifd if (t.meta.get("ifd") or {}).get("ifd") is not None]
    out: dict[str, Any] = {
        "score": {"rated": len(scored), "unrated": unrated, "counts": {str(k): ratings.get(k, 0) for k in range(1, 6)},
                  "teacher": next((t.meta.get("score_teacher") for t in scored), None)} if scored or unrated else None,
        "ifd": {**stats(ifd_values), "hist": histogram(ifd_values, IFD_BINS, (0.0, 2.0)),
                "at_least_1": sum(1 for v in ifd_values if v >= 1.0)} if ifd_values else None,
        "select": None,
    }
    if select_file.is_file():
        s = json.loads(select_file.read_text(encoding="utf-8"))
        text = {f"{t.id}-{k}": t.instruction for stage in ("filter", "evolve") for t in run.read_stage(stage)
                for k in range(len(t.instances))}  # row ids, as records.task_rows names them
        kept_values = [k["value"] for k in s["kept"] if k["value"] is not None]
        cut_values = [d["value"] for d in s["dropped"] if d["value"] is not None and d["why"] == "below the cut"]
        out["select"] = {
            "by": s["by"], "rows": s["rows"], "kept_rows": s["kept_rows"], "kept_tasks": s["kept_tasks"],
            "near_duplicates": s["near_duplicates"],
            "dropped_by_why": dict(Counter(str(d["why"]).split(" vs ")[0] for d in s["dropped"]).most_common()),
            "kept_values": stats(kept_values), "dropped_values": stats(cut_values),
            "kept_examples": [{**k, "instruction": text.get(k["id"], "")} for k in s["kept"][:EXAMPLES]],
            "dropped_examples": [{**d, "instruction": text.get(d["id"], "")} for d in s["dropped"][:EXAMPLES]],
        }
    return out


def plot_quality(f: dict[str, Any], path: Path) -> Path:
    from .plots import _empty, _figure, _save

    q = f["quality"]
    fig = _figure(12, 3.6)
    ax_score, ax_ifd, ax_sel = fig.subplots(1, 3)
    if q.get("score"):
        counts = q["score"]["counts"]
        ax_score.bar(list(counts), list(counts.values()), color="#4C72B0")
        ax_score.set_xlabel("judge rating")
        ax_score.set_ylabel("rows")
        ax_score.set_title(f"Judge: {q['score']['rated']} rated, {q['score']['unrated']} unparseable", fontsize=10)
    else:
        _empty(ax_score, "not scored (seed2lora score)")
    if q.get("ifd"):
        edges, counts = q["ifd"]["hist"]["edges"], q["ifd"]["hist"]["counts"]
        ax_ifd.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#55A868")
        ax_ifd.axvline(1.0, color="#C44E52", linestyle="--", linewidth=1)
        ax_ifd.set_xlabel("IFD (loss given prompt / loss alone)")
        ax_ifd.set_title(f"IFD: median {q['ifd']['median']:g}, {q['ifd']['at_least_1']} rows >= 1", fontsize=10)
    else:
        _empty(ax_ifd, "no IFD (seed2lora ifd)")
    s = q.get("select")
    if s:
        labels = ["kept", *s["dropped_by_why"]]
        values = [s["kept_rows"], *s["dropped_by_why"].values()]
        ax_sel.barh(labels, values, color=["#55A868"] + ["#C44E52"] * (len(labels) - 1))
        ax_sel.invert_yaxis()
        ax_sel.set_xlabel("rows")
        ax_sel.set_title(f"select --by {s['by']}: {s['kept_rows']} of {s['rows']} rows kept", fontsize=10)
    else:
        _empty(ax_sel, "no selection (seed2lora select)")
    return _save(fig, path)


def quality_details(f: dict[str, Any]) -> str:
    """The section's table: what each selection kept and dropped, with examples."""
    q, rows = f["quality"], []
    if q.get("score"):
        rows.append(("judge ratings", ", ".join(f"{k}: {v}" for k, v in q["score"]["counts"].items())
                     + f" ({q['score']['unrated']} unparseable; judge {q['score']['teacher']})"))
    if q.get("ifd"):
        i = q["ifd"]
        rows.append(("IFD", f"mean {i['mean']:g}, median {i['median']:g}, p25-p75 {i['p25']:g}-{i['p75']:g} (n={i['n']})"))
    s = q.get("select")
    if s:
        rows.append(("selection", f"by {s['by']}: kept {s['kept_rows']} of {s['rows']} rows ({s['kept_tasks']} tasks); "
                                  f"{s['near_duplicates']} near-duplicates rejected"))
        rows += [(f"dropped: {why}", n) for why, n in s["dropped_by_why"].items()]
        for side in ("kept", "dropped"):
            v = s[f"{side}_values"]
            if v.get("n"):
                rows.append((f"{side} {s['by']} values", f"mean {v['mean']:g}, min {v['min']:g}, max {v['max']:g}"))
            rows += [(f"{side} e.g.", f"{e['id']} ({e['value']}): {e['instruction'][:120]}") for e in s[f"{side}_examples"]]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"
