"""Matplotlib plots of the report figures, one PNG each.

Uses matplotlib's object API (Figure + the Agg canvas) rather than pyplot: no global
figure state and no display backend, so it runs headless and in threads.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import counted
from .figures import ROUGE_BINS

DPI = 110  # ~1000 px wide figures: sharp in the HTML page, small as base64
MIN_LABEL_DEG = 4.0  # wedges narrower than this get no label in the verb-noun rings (labels would overlap)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="#666", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _hbars(ax, labels: list[str], values: list[int], color: str) -> None:
    y = np.arange(len(labels))
    ax.barh(y, values, color=color)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    top = max(values, default=0)
    for yi, v in zip(y, values, strict=True):
        ax.text(v + top * 0.01, yi, str(v), va="center", fontsize=9)
    ax.set_xlim(0, top * 1.15 + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _rejection_bars(ax, counts: dict[str, int], empty_text: str) -> None:
    """Rejected records per reason (funnel and evolve share this panel)."""
    if counts:
        _hbars(ax, list(counts), list(counts.values()), "#C44E52")
        ax.set_xlabel("records")
    else:
        _empty(ax, empty_text)


def plot_funnel(f: dict[str, Any], path: Path) -> Path:
    funnel = f["funnel"]
    reasons = funnel["rejected_by_reason"]
    fig = _figure(11, max(3.5, 0.35 * max(len(funnel["steps"]), len(reasons)) + 1.5))
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.2])
    _hbars(left, [s["name"] for s in funnel["steps"]], [s["count"] for s in funnel["steps"]], "#4C72B0")
    left.set_title("Instructions through the stages")
    left.set_xlabel("records")
    _rejection_bars(right, reasons, "no rejections")
    right.set_title(f"Rejected ({funnel['rejected']}) by stage: rule")
    fig.suptitle(f"Funnel: {f['kept']} kept", fontweight="bold")
    return _save(fig, path)


def plot_rouge(f: dict[str, Any], path: Path) -> Path:
    fig = _figure(11, 4)
    axes = fig.subplots(1, 2, sharey=True)
    bins = np.linspace(0, 1, ROUGE_BINS + 1)
    titles = {"seed": f"to the most similar seed ({counted(f['rouge']['n_seeds'], 'seed')})",
              "pool": "to the most similar pool entry (seeds + other kept)"}
    for ax, key, color in zip(axes, ("seed", "pool"), ("#4C72B0", "#55A868"), strict=True):
        r = f["rouge"][key]
        ax.hist(r["values"], bins=bins, color=color, edgecolor="white")
        if r["n"]:
            ax.axvline(r["median"], color="black", linestyle="--", linewidth=1, label=f"median {r['median']:.2f}")
        if f.get("rouge_threshold") is not None:
            ax.axvline(f["rouge_threshold"], color="#C44E52", linewidth=1.5,
                       label=f"filter threshold {f['rouge_threshold']}")
        ax.set_title(titles[key])
        ax.set_xlabel("ROUGE-L F-measure")
        ax.set_xlim(0, 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    axes[0].set_ylabel("kept instructions")
    fig.suptitle("ROUGE-L overlap of kept instructions (lower = more novel)", fontweight="bold")
    return _save(fig, path)


def plot_lengths(f: dict[str, Any], path: Path) -> Path:
    fig = _figure(13, 3.8)
    axes = fig.subplots(1, 3)
    lengths = f["lengths"]
    names = {"instruction": "Instruction", "input": "Input (non-empty)", "output": "Output"}
    for ax, (key, name), color in zip(axes, names.items(), ("#4C72B0", "#DD8452", "#55A868"), strict=True):
        st = lengths[key]
        if not st["n"]:
            _empty(ax, "none")
        else:
            ax.hist(st["values"], bins=_word_bins(st["values"]), color=color, edgecolor="white")
            ax.axvline(st["median"], color="black", linestyle="--", linewidth=1, label=f"median {st['median']:g}")
            ax.legend(fontsize=9)
            ax.set_xlabel("words")
            ax.set_ylabel("count")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{name} length (n={st['n']})")
    extra = f" ({lengths['empty_inputs']} of {lengths['instances']} instances have no input)" if lengths["instances"] else ""
    fig.suptitle("Length distributions" + extra, fontweight="bold")
    return _save(fig, path)


def _word_bins(values: list[int]):
    """One bar per word count when the range is small, else 30 bars."""
    lo, hi = min(values), max(values)
    return np.arange(lo, hi + 2) - 0.5 if hi - lo < 30 else 30


def plot_types(f: dict[str, Any], path: Path) -> Path:
    fig = _figure(6, 4.2)
    ax = fig.subplots()
    types = f["types"]
    if not types:
        _empty(ax, "no kept instructions")
    else:
        colors = {"classification": "#8172B3", "non-classification": "#64B5CD", "unlabelled": "#BBBBBB"}
        total = sum(types.values())
        ax.pie(list(types.values()), labels=[f"{k}\n{v} ({v / total:.0%})" for k, v in types.items()],
               colors=[colors.get(k, "#999") for k in types], startangle=90, counterclock=False,
               wedgeprops={"width": 0.45, "edgecolor": "white"}, textprops={"fontsize": 10})
        ax.set_aspect("equal")
    ax.set_title("Classification / non-classification mix", fontweight="bold")
    return _save(fig, path)


def plot_evolve(f: dict[str, Any], path: Path) -> Path:
    ev = f["evolve"]
    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    by_op_round = ev["by_operation_round"]
    rounds = sorted({r for c in by_op_round.values() for r in c}, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0))
    if by_op_round:
        bottom = np.zeros(len(rounds))
        cmap = colormaps["tab10"]
        for i, (op, counts) in enumerate(sorted(by_op_round.items())):
            heights = np.array([counts.get(r, 0) for r in rounds])
            left.bar(rounds, heights, bottom=bottom, label=op, color=cmap(i % 10))
            bottom += heights
        left.legend(fontsize=8, title="operation", title_fontsize=9)
        left.set_xlabel("round")
        left.set_ylabel("evolved instructions kept")
        left.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _empty(left, "no evolved instruction kept")
    left.set_title(f"Evolved per operation and round ({ev['kept']} kept)")
    rules = ev["eliminated_by_rule"]
    _rejection_bars(right, rules, "no eliminations")
    right.set_title(f"Eliminations per rule ({ev['eliminated']})")
    fig.suptitle("Evol-Instruct", fontweight="bold")
    return _save(fig, path)


def plot_usage(f: dict[str, Any], path: Path) -> Path:
    by_kind = f["usage"]["by_kind"]
    fig = _figure(9, max(3.0, 0.6 * len(by_kind) + 2.0))
    ax = fig.subplots()
    if not by_kind:
        _empty(ax, "no usage recorded in manifest.json")
    else:
        kinds = list(by_kind)
        y = np.arange(len(kinds))
        prompt = np.array([by_kind[k]["prompt_tokens"] for k in kinds])
        completion = np.array([by_kind[k]["completion_tokens"] for k in kinds])
        ax.barh(y, prompt, height=0.5, color="#4C72B0", label="prompt tokens")
        ax.barh(y, completion, height=0.5, left=prompt, color="#DD8452", label="completion tokens")
        ax.set_yticks(y, [f"{k}\n{counted(by_kind[k]['calls'], 'call')}, {counted(by_kind[k]['errors'], 'error')}" for k in kinds])
        ax.invert_yaxis()
        top = float((prompt + completion).max())
        for yi, p, c in zip(y, prompt, completion, strict=True):
            ax.text(p + c + top * 0.01, yi, f"{p + c:,}", va="center", fontsize=9)
        ax.set_xlim(0, top * 1.18 + 1)
        ax.set_xlabel("tokens")
        fig.legend(fontsize=9, loc="outside lower center", ncols=2)
    t = f["usage"]["total"]
    ax.set_title(f"Teacher token spend: {t['prompt_tokens'] + t['completion_tokens']:,} tokens in {counted(t['calls'], 'call')}",
                 fontweight="bold")
    return _save(fig, path)


def _shade(color, k: int, n: int):
    """A lighter variant of `color` for the k-th of n objects of one verb."""
    hue, light, sat = colorsys.rgb_to_hls(*to_rgb(color))
    return colorsys.hls_to_rgb(hue, min(0.92, light + (1 - light) * (0.25 + 0.5 * k / max(1, n))), sat)


def plot_verbs(f: dict[str, Any], path: Path) -> Path:
    """Two-ring pie as in the Self-Instruct paper: top verbs inside, their top objects outside."""
    v = f["verbs"]
    fig = _figure(9, 9)
    ax = fig.subplots()
    top = v["top"]
    title = (f"Root verbs (inner) and their direct objects (outer): top {len(top)} verbs\n"
             f"{v['with_verb_object']} of {v['n']} instructions have a verb-object pair; "
             f"{v['unique_verbs']} distinct verbs; parser: {v['parser']}")
    if not top:
        _empty(ax, "no instruction has a verb-object pair")
        ax.set_title(title)
        return _save(fig, path)
    cmap = colormaps["tab20"]
    verb_colors = [cmap(i % 20) for i in range(len(top))]
    inner = [t["count"] for t in top]
    outer, outer_colors, outer_labels = [], [], []
    for t, color in zip(top, verb_colors, strict=True):
        for k, o in enumerate(t["objects"]):
            outer.append(o["count"])
            outer_colors.append(_shade(color, k, len(t["objects"])))
            outer_labels.append(o["noun"])
        rest = t["count"] - sum(o["count"] for o in t["objects"])
        if rest:
            outer.append(rest)
            outer_colors.append((1, 1, 1, 0))  # other objects of this verb: left blank, as in the paper
            outer_labels.append("")
    kw = {"startangle": 90, "counterclock": False, "wedgeprops": {"edgecolor": "white", "linewidth": 0.8}}
    inner_wedges, _ = ax.pie(inner, radius=0.62, colors=verb_colors, **kw)
    outer_wedges, _ = ax.pie(outer, radius=1.0, colors=outer_colors, **{**kw, "wedgeprops": {
        **kw["wedgeprops"], "width": 0.38}})
    _ring_labels(ax, inner_wedges, [t["verb"] for t in top], 0.40, 10, bold=True)
    _ring_labels(ax, outer_wedges, outer_labels, 0.81, 8)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


def _ring_labels(ax, wedges, labels, radius: float, size: int, bold: bool = False) -> None:
    """Radial labels in the middle of each wide-enough wedge, kept upright."""
    for w, label in zip(wedges, labels, strict=True):
        span = (w.theta2 - w.theta1) % 360
        if not label or span < MIN_LABEL_DEG:
            continue
        angle = (w.theta1 + w.theta2) / 2
        x, y = radius * np.cos(np.radians(angle)), radius * np.sin(np.radians(angle))
        rotation = angle if -90 <= ((angle + 180) % 360 - 180) <= 90 else angle + 180
        ax.text(x, y, label, ha="center", va="center", rotation=rotation % 360, rotation_mode="anchor",
                fontsize=size, fontweight="bold" if bold else "normal")


def plot_quality(f: dict[str, Any], path: Path) -> Path:
    """Three panels: judge ratings, the IFD histogram, and what the selection kept and dropped (and why)."""
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


PLOTS = {  # file name -> (section title, plotter); evolve is skipped when a run has no evolve data
    "funnel.png": ("Counts through the stages", plot_funnel),
    "rouge.png": ("Novelty: ROUGE-L to the nearest seed and pool entry", plot_rouge),
    "lengths.png": ("Lengths of instructions, inputs and outputs", plot_lengths),
    "types.png": ("Classification mix", plot_types),
    "verbs.png": ("Verb-noun structure of instructions", plot_verbs),
    "evolve.png": ("Evol-Instruct: operations, rounds, eliminations", plot_evolve),
    "usage.png": ("Token spend", plot_usage),
    "quality.png": ("Data selection: judge scores, IFD, what select kept", plot_quality),
}


def draw_all(f: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (_, plot) in PLOTS.items():
        if (name == "evolve.png" and not f.get("evolve")) or (name == "quality.png" and not f.get("quality")):
            (out_dir / name).unlink(missing_ok=True)  # a stale plot from an earlier report would mislead
            continue
        written[name] = plot(f, out_dir / name)
    return written
