"""The evaluation set: the Self-Instruct paper's 252 user-oriented tasks, found here or fetched once.

The set (Wang et al. 2022, https://github.com/yizhongw/self-instruct, human_eval/user_oriented_instructions.jsonl,
Apache License 2.0) is expert-written: 252 instructions motivated by user-facing apps, one instance each.
seed2lora does not ship it. `eval` scores adapters on it, and `select` and `export` keep its tasks out of
training data (its README asks that it never be used for training).

Where it is looked for, in order: ../shared/data/ beside the working directory or beside this checkout, then
the user cache (USER_CACHE below). `eval --data user-oriented` (eval.data = "user-oriented") also downloads it
there on first use from GitHub, or from $SEED2LORA_EVAL_BASE_URL (a mirror, or a local server in tests).
Nothing else here touches the network.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from .config import USER_ORIENTED_NAME
from .errors import Seed2LoraError
from .usercache import user_cache_dir

USER_ORIENTED = "user_oriented_instructions.jsonl"
BASE_URL = "https://raw.githubusercontent.com/yizhongw/self-instruct/main/human_eval/"
BASE_URL_ENV = "SEED2LORA_EVAL_BASE_URL"  # overrides BASE_URL: a mirror, or a local HTTP server in tests
LICENSE = "Apache-2.0 (yizhongw/self-instruct; the authors ask that it never be used for training)"
DOWNLOAD_TIMEOUT_S = 30.0  # the file is about 150 KB; a server that sends nothing for 30 s is not going to


def cache_dir() -> Path:
    """Where downloaded evaluation sets are kept: the user cache (usercache.py: $SEED2LORA_CACHE_DIR, else
    $XDG_CACHE_HOME/seed2lora, else ~/.cache/seed2lora), as the embedded model's copy."""
    return user_cache_dir()


def cached_path() -> Path:
    return cache_dir() / "evalsets" / USER_ORIENTED


def shared_copy() -> Path | None:
    """../shared/data/user_oriented_instructions.jsonl beside the working directory or this checkout, if there."""
    here = Path(__file__).resolve().parents[1]
    for base in (Path.cwd(), here):
        candidate = base.parent / "shared" / "data" / USER_ORIENTED
        if candidate.is_file():
            return candidate
    return None


def find_user_oriented() -> Path | None:
    """The set if it is on this machine (../shared/data, then the cache); None if not. Never downloads."""
    shared = shared_copy()
    if shared is not None:
        return shared
    cached = cached_path()
    return cached if cached.is_file() else None


def where_to_get() -> str:
    """One sentence for messages: how to get the set when it is absent."""
    return (f"get it with `seed2lora eval ADAPTER --data {USER_ORIENTED_NAME}` (downloads {USER_ORIENTED} once into "
            f"{cached_path().parent}, {LICENSE.split(' (')[0]}), or put the file there yourself")


def check_tasks(text: str, source: str) -> int:
    """The number of tasks in a downloaded file; an error naming `source` if it is not JSONL tasks with instances."""
    n = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise Seed2LoraError(f"{source}: line {lineno} is not JSON ({e.msg}): not the user-oriented set. Fix: "
                                 f"check ${BASE_URL_ENV} or the network, then retry") from None
        if not isinstance(obj, dict) or "instruction" not in obj or "instances" not in obj:
            raise Seed2LoraError(f"{source}: line {lineno} has no instruction and instances: not the user-oriented "
                                 f"set. Fix: check ${BASE_URL_ENV} or the network, then retry")
        n += 1
    if not n:
        raise Seed2LoraError(f"{source} is empty. Fix: check ${BASE_URL_ENV} or the network, then retry")
    return n


def fetch_user_oriented(timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download the set into the cache (written whole, then renamed: never a torn file); its path."""
    url = os.environ.get(BASE_URL_ENV, BASE_URL).rstrip("/") + "/" + USER_ORIENTED
    target = cached_path()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - an https URL or the user's own
            text = reply.read().decode("utf-8")
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "reason", None) or e
        raise Seed2LoraError(f"could not download the evaluation set from {url}: {reason}. Fix: connect to the "
                             f"internet and retry, download it by hand into {target}, or pass --data FILE.jsonl "
                             f"(any tasks or Alpaca rows)") from None
    check_tasks(text, url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target


def user_oriented(download: bool = True) -> Path:
    """The set's path: on this machine, else (download) fetched into the cache; an error naming the fix if neither."""
    found = find_user_oriented()
    if found is not None:
        return found
    if not download:
        raise Seed2LoraError(f"the user-oriented evaluation set is not on this machine. Fix: {where_to_get()}")
    return fetch_user_oriented()
