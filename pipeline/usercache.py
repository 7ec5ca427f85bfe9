"""The user cache: seed2lora's folder for what outlives a run (the embedded model's converted copy, the downloaded
evaluation set). One folder, one name to move it: $SEED2LORA_CACHE_DIR, else $XDG_CACHE_HOME/seed2lora, else
~/.cache/seed2lora.

The embedded model once read $SEED2LORA_CACHE and the evaluation sets $SEED2LORA_CACHE_DIR for this same folder,
so setting either moved half of it. The old name is still read, with a note to rename it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import Seed2LoraError

CACHE_ENV = "SEED2LORA_CACHE_DIR"
OLD_CACHE_ENV = "SEED2LORA_CACHE"  # the embedded model's name for it: still read, with a note
_noted: list[str] = []  # the note is said once a process


def user_cache_dir() -> Path:
    """seed2lora's user cache folder (see the module's docstring)."""
    new, old = os.environ.get(CACHE_ENV), os.environ.get(OLD_CACHE_ENV)
    if old and new and Path(old).expanduser() != Path(new).expanduser():
        raise Seed2LoraError(f"${OLD_CACHE_ENV}={old} and ${CACHE_ENV}={new} both name seed2lora's cache folder. Fix: "
                         f"keep ${CACHE_ENV} alone (unset {OLD_CACHE_ENV}, its old name)")
    if old and not new and not _noted:
        _noted.append(old)
        print(f"note: ${OLD_CACHE_ENV} is the old name of ${CACHE_ENV}; it is read as that for now. Fix: rename it "
              f"(export {CACHE_ENV}={old})", file=sys.stderr)
    if new or old:
        return Path(new or old or "").expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seed2lora"
