"""Summaries of a list of numbers as report.json stores them: quartiles and a histogram.

The floor of report/: figures.py and quality.py both read it, and it reads nothing of ours.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np


def stats(values: list[float] | np.ndarray) -> dict[str, Any]:
    values = [float(v) for v in values]
    if not values:
        return {"n": 0}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"n": len(values), "mean": round(statistics.fmean(values), 3), "median": round(float(median), 3),
            "p25": round(float(q1), 3), "p75": round(float(q3), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def histogram(values, bins, range_=None) -> dict[str, list]:
    if len(values) == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(np.asarray(values, float), bins=bins, range=range_)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}
