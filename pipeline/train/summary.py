"""The paths an adapter's training_summary.json names (its data, source files and base model), found from anywhere.

Summaries name them whole now. Adapters trained before kept them as `train` was given them, relative to the
directory it ran in: read from another directory, eval's held-out split and export-adapter's dataset hash went to
whatever file that relative path named there (another run's export), or to none. A relative path is read from the
directory train ran in, which the summary's own relative output_dir gives (outputs/r/adapter, found now at
/home/u/proj/outputs/r/adapter: train ran in /home/u/proj); where it cannot, from the current directory, and the
note says so. A path found nowhere comes back as None with a note naming what was tried.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

SUMMARY = "training_summary.json"


class Found(NamedTuple):
    """A path the summary names: `path` where it is (None: not found), `note` how it was read or why it was not
    ("" for a whole path that is there), `guessed` when it was read from the current directory for want of better."""

    path: Path | None
    note: str = ""
    guessed: bool = False


def read_summary(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's training summary; {} when it has none."""
    f = Path(adapter_dir) / SUMMARY
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def trained_from(adapter_dir: str | Path, summary: dict[str, Any]) -> Path | None:
    """The directory `train` ran in: the adapter folder as found now, less the relative output_dir the summary names.
    None when that is whole, or not the end of the folder's path (a copied or renamed adapter)."""
    out = os.path.normpath(str(summary.get("output_dir") or ""))
    if out in ("", ".") or Path(out).is_absolute() or out.split(os.sep)[0] == "..":
        return None
    parts, here = Path(out).parts, Path(os.path.abspath(adapter_dir)).parts
    return Path(*here[:-len(parts)]) if len(here) > len(parts) and here[-len(parts):] == parts else None


def summary_path(adapter_dir: str | Path, summary: dict[str, Any], value: str, key: str) -> Found:
    """`value`, a path the summary names under `key`, found: a whole one as it is, a relative one from the directory
    train ran in (trained_from), else from the current directory (guessed)."""
    p, where = Path(value), f"{Path(adapter_dir) / SUMMARY}"
    if p.is_absolute():
        return Found(p) if p.exists() else Found(None, f"{where} names its {key} {value}, which is not there "
                                                       "(moved or deleted)")
    base = trained_from(adapter_dir, summary)
    tried = base if base is not None else Path.cwd()
    how = (f"from {tried}, where train ran (the summary's output_dir, {summary.get('output_dir')}, is the adapter's "
           "path from there)" if base is not None else
           f"from the current directory, {tried}, as the summary does not say where train ran")
    if (tried / p).exists():
        return Found(tried / p, f"{where} names its {key} relative to where train ran ({value}; an adapter trained "
                                f"before paths were recorded whole): read {how}", guessed=base is None)
    return Found(None, f"{where} names its {key} relative to where train ran ({value}; an adapter trained before "
                       f"paths were recorded whole), and it is not there {how}: {tried / p}")


def summary_paths(adapter_dir: str | Path, summary: dict[str, Any], key: str) -> list[Found]:
    """Each path under `key` found (source names several, ", "-separated); [] when the summary names none."""
    return [summary_path(adapter_dir, summary, v, key) for v in str(summary.get(key) or "").split(", ") if v]
