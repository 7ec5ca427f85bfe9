"""The report's data-selection figures, as data: judge scores, IFD, and what `seed2lora select` kept and dropped.

Read from score.jsonl, ifd.jsonl, select.json and select.jsonl of the run; None when the
run has none of them (a run that never scored or selected shows no section).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ..store import RunDir
from .stats import histogram, stats

IFD_BINS = 20  # 0.1-wide bins over 0..2: IFD clusters below 1, and >= 1 is the band Cherry LLM drops
EXAMPLES = 3  # kept and dropped rows shown by name in the page


def quality(run: RunDir) -> dict[str, Any] | None:
    """Rating counts, IFD distribution, and the selection's kept/dropped split; None when nothing was scored."""
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
