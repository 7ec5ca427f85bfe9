"""`seed2lora report`: plots and one HTML page judging a run's quality and diversity.

report/ in the run directory gets one PNG per figure, report.html (the PNGs inlined,
opens from disk in any browser) and report.json (the figures as data). The figures
follow the Self-Instruct paper's look at its data: the verb-noun structure of
instructions, ROUGE-L overlap with the nearest seed, and length distributions; plus the
stage funnel, task-type mix, Evol-Instruct operations and the teacher's token spend.

Each module reads only those above it: stats.py and verbs.py (numbers, the verb parser);
quality.py and figures.py (the figures as data, report.json); plots.py (matplotlib, one PNG
per figure); html.py (the page) and compare.py (`show --compare`); this file writes them out.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..store import write_text_atomic
from .figures import compute
from .html import render
from .plots import draw_all
from .verbs import VerbParser

REPORT_DIR = "report"


def write_report(run_path: str | Path, *, out_dir: str | Path | None = None, seeds_path: str | Path | None = None,
                 parser: VerbParser | None = None) -> Path:
    """Compute the figures of a run, draw them and write report/{*.png, report.html, report.json}.

    Returns the path of report.html.
    """
    figures = compute(run_path, seeds_path=seeds_path, parser=parser)
    out = Path(out_dir) if out_dir else Path(run_path) / REPORT_DIR
    pngs = draw_all(figures, out)
    write_text_atomic(out / "report.json", json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
    page = out / "report.html"
    write_text_atomic(page, render(figures, pngs))
    return page


__all__ = ["REPORT_DIR", "compute", "write_report"]
