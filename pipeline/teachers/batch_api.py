"""The Batch API's files and batches as BatchTeacher (batch.py) calls them: each call tried again with backoff
while the server does not answer (`Calls`), a progress line with an ETA for a running batch, and the same calls
over a folder (`FolderClient`, teacher.batch_dir) for a model that no server here offers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai

from ..errors import Incomplete, InputError, TeacherError, TeacherUnavailable
from .base import Completion, apply_stop
from .failover import Failover
from .origin import RUN_TEACHER, Origin
from .wire import FATAL, Malformed, describe_error, read_reply

ENDED = ("completed", "expired", "cancelled", "failed")  # a batch in any other status is still running
FATAL_LINES = ("HTTP 401 ", "HTTP 403 ", "HTTP 404 ")  # a line refused so stops the run, as wire.FATAL does directly
BACKOFF_MAX_S = 30.0  # longest wait between two tries of a files or batches call while the server does not answer


class WaveWritten(Incomplete):
    """A wave of a folder batch (teacher.batch_dir) waits for its output file: the run stops until it is there."""


class BatchCancelled(Incomplete):
    """A batch was cancelled (on the server, by its owner) before every request was answered: the run stops."""


class _FolderFiles:
    def __init__(self, folder: Path):
        self.folder = folder

    def create(self, *, file: tuple[str, bytes], purpose: str) -> Any:
        """The wave's id is its content's hash, so a wave written again after a kill is the same file. The same
        lines sent again after their wave was run (they failed) make a new wave: -2, -3, ... after the hash."""
        data = file[1]
        file_id = base = f"wave-{hashlib.sha256(data).hexdigest()[:12]}"
        for n in itertools.count(2):
            if not (self.folder / f"{file_id}.out.jsonl").exists():
                break
            file_id = f"{base}-{n}"
        path = self.folder / f"{file_id}.jsonl"
        path.with_suffix(".tmp").write_bytes(data)
        path.with_suffix(".tmp").replace(path)  # whole or absent: a kill never leaves half a wave to run
        return SimpleNamespace(id=file_id)

    def content(self, file_id: str) -> Any:
        return SimpleNamespace(text=(self.folder / f"{file_id}.jsonl").read_text(encoding="utf-8"))


# The manifest's entry that describes a teacher of each table (its folder batch's batch_dir among it); eval's judge has
# none: the manifest's config holds its [eval.judge].
MANIFEST_ENTRY = {"teacher": "teacher entry", "score.teacher": "judge entry"}


class _FolderBatches:
    def __init__(self, folder: Path, model: str, origin: Origin):
        self.folder, self.model, self.origin = folder, model, origin

    def _batch(self, file_id: str, status: str, **more: Any) -> Any:
        batch = {"id": file_id, "input_file_id": file_id, "status": status, "output_file_id": None,
                 "error_file_id": None, "errors": None, **more}
        return SimpleNamespace(request_counts=SimpleNamespace(total=0, completed=0, failed=0), **batch)

    def create(self, *, input_file_id: str, **_: Any) -> Any:
        return self._batch(input_file_id, "validating")

    def list(self, **_: Any) -> Any:
        return SimpleNamespace(data=[])  # a wave's batch is its file: created again, it is the same

    def retrieve(self, batch_id: str) -> Any:
        if (self.folder / f"{batch_id}.out.jsonl").is_file():
            return self._batch(batch_id, "completed", output_file_id=f"{batch_id}.out")
        wave = self.folder / f"{batch_id}.jsonl"
        if not wave.is_file():
            key = self.origin.key("batch_dir")
            raise InputError(self.folder, None, f"this run wrote the wave {batch_id} to a folder batch, and neither "
                             f"{wave.name} nor {batch_id}.out.jsonl is in this folder ({key})",
                             f"give --set {key}= the folder the run wrote its waves to (its manifest.json's "
                             f"{MANIFEST_ENTRY.get(self.origin.table, 'config')} names it), or put the wave's files "
                             "back in this one")
        raise WaveWritten(
            f"a wave of requests waits in {wave}. Run it where the model is, e.g. on a GPU box with vLLM: "
            f"python -m vllm.entrypoints.openai.run_batch -i {wave.name} -o {batch_id}.out.jsonl --model {self.model} "
            f"; put {batch_id}.out.jsonl beside it in {self.folder} and run the same command again (docs/batch.md)")


class FolderClient:
    """The files and batches calls of an openai client over a folder (teacher.batch_dir), for a model that no
    server here offers: each wave is written as <id>.jsonl and the run stops; its results are read from
    <id>.out.jsonl (the output of vLLM's run_batch, or of any tool that writes the Batch API's output lines)."""

    def __init__(self, folder: str | Path, model: str, origin: Origin = RUN_TEACHER):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files, self.batches = _FolderFiles(self.folder), _FolderBatches(self.folder, model, origin)


class Calls:
    """One files or batches call at a time; a server that does not answer (refused, timeout, 5xx, 429) is tried
    again with backoff for teacher.outage_wait_s (a batch keeps running on a restarted server)."""

    def __init__(self, url: str, outage_wait_s: float, event: Callable[[str], None], failover: Failover,
                 secret: str = ""):
        """failover: the teacher's; its stop (each stream's own) ends a wait, its origin names the settings."""
        self.url, self.outage_wait_s, self.event, self.secret = url, outage_wait_s, event, secret
        self.failover, self.origin = failover, failover.origin

    def __call__(self, fn: Callable[[], Any], what: str) -> Any:
        deadline, wait, said = time.monotonic() + self.outage_wait_s, 1.0, False
        while True:
            try:
                return fn()
            except FATAL as e:
                raise TeacherError(f"{self.url}: {self.describe(e)}") from None
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                if time.monotonic() + wait > deadline:
                    raise TeacherUnavailable(f"{self.url} did not answer for {self.outage_wait_s:.0f} s "
                                             f"({self.origin.key('outage_wait_s')}) trying to {what}: "
                                             f"{self.describe(e)}. Fix: start the server; a re-run "
                                             "polls the same batches and sends nothing twice",
                                             role=self.origin.role) from None
                if not said:
                    said = True
                    self.event(f"batch outage: cannot {what} ({self.describe(e)}); trying for "
                               f"{self.outage_wait_s:.0f} s ({self.origin.key('outage_wait_s')})")
                self.failover.stop.wait(wait)
                wait = min(wait * 2, BACKOFF_MAX_S)
            except openai.APIStatusError as e:
                raise TeacherError(f"{self.url}: cannot {what}: {self.describe(e)}") from None

    def describe(self, e: BaseException) -> str:
        return describe_error(e, self.secret, origin=self.origin)


def submitted_line(kind: str, n: int, batch_id: str, file_id: str, folder: str, poll_s: float, origin: Origin) -> str:
    """A wave's line once it is submitted: its size and batch, and where its results will come from."""
    where = f"written to {folder}" if folder else f"polled every {poll_s:g} s ({origin.key('batch_poll_s')})"
    return f"{kind} batch submitted: {n} {kind} requests as batch {batch_id} (file {file_id}); {where}"


def resumed_line(cache: Any, wave: dict[str, Any], folder: str, poll_s: float, origin: Origin) -> str:
    """The line of a batch an earlier session submitted and this one awaits: a re-run said nothing of it until
    its first poll's progress line, so it was not seen that the requests were not sent again."""
    kinds = Counter(kind for _, kind, _, state in cache.wave_lines(wave["file_id"]) if state == "sent")
    kind = kinds.most_common(1)[0][0] if kinds else "teacher"
    what = ", ".join(f"{n:,} {k}" for k, n in kinds.most_common())
    where = f"its results read from {folder}" if folder else f"polled every {poll_s:g} s ({origin.key('batch_poll_s')})"
    return (f"{kind} batch resumed: {wave['batch_id']} holds the {what} requests an earlier session submitted: "
            f"awaited here, none sent again; {where}")


def progress_line(kind: str, wave: dict[str, Any], b: Any, seen: dict[str, tuple[float, int]]) -> str:
    """A running batch's line: done of total from its request_counts, and an ETA from the rate since `seen`
    (file_id -> (when, completed) first seen running)."""
    counts = b.request_counts
    done, failed, total = (counts.completed, counts.failed, counts.total) if counts else (0, 0, 0)
    now = time.monotonic()
    since, done0 = seen.setdefault(wave["file_id"], (now, done))
    rate = (done + failed - done0) / (now - since) if now > since else 0.0
    eta = f", about {duration((total - done - failed) / rate)} left" if rate > 0 and total else ", ETA not known yet"
    return (f"{kind} batch progress: {b.id} {b.status}, {done:,}/{total:,} done" + (f", {failed:,} failed" if failed else "")
            + eta)


def ended_line(kind: str, b: Any, answered: int, retried: int, refused: list[str],
               origin: Origin = RUN_TEACHER) -> str:
    """An ended batch's line: replies read, lines that go into the next wave, and lines given up with the first
    reason (a 4xx, or out of teacher.max_retries), which no next wave will hold."""
    def lines(n: int) -> str:
        return f"{n:,} line{'s' if n != 1 else ''}"
    again = "not sent again: the batch was cancelled" if b.status == "cancelled" else \
        f"tried again in the next wave, up to {origin.key('max_retries')} times"
    return (f"{kind} batch ended: {b.id} {b.status}, {answered:,} replies read"
            + (f", {lines(retried)} failed ({again})" if retried else "")
            + (f", {lines(len(refused))} given up (not tried again; first: {refused[0]})" if refused else ""))


def stop_if_refused(b: Any, refused: list[str], failed: int, origin: Origin = RUN_TEACHER) -> None:
    """Lines refused with a 401, 403 or 404 stop the run, as a direct one does: every other line would be too.
    So does a cancelled batch (OpenAI cancels only at its owner's request): its unanswered lines are not resent."""
    if b.status == "cancelled" and failed:
        raise BatchCancelled(f"batch {b.id} was cancelled with {failed:,} of its requests unanswered (its replies are "
                             "kept); they were not sent again. Run the same command to send them in a new batch")
    fatal = [why for why in refused if why.startswith(FATAL_LINES)]
    if fatal:
        raise TeacherError(f"batch {b.id}: {len(fatal)} lines refused with {fatal[0].rstrip('.')}. Fix: check "
                           f"{origin.give('spec', 'openai:MODEL')} and the key (with {origin.key('batch_dir')}: "
                           "run_batch's --model must be MODEL); a re-run sends these requests again")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def read_results(text: str, out: dict[str, dict[str, Any]], say: Callable[[str], None]) -> None:
    """A results file's lines into `out` by custom_id. A line that is not whole JSON (a file copied while vLLM's
    run_batch still wrote it, or cut by a kill) is skipped and said: its request has no reply, so it goes into
    the next wave."""
    bad = 0
    for line in text.splitlines():
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            out[obj.get("custom_id", "")] = obj
    if bad:
        say(f"{bad} line{'s' if bad != 1 else ''} of its results unreadable (not whole JSON: a file cut short?); "
            + ("its request goes" if bad == 1 else "their requests go") + " into the next wave")


def read_line(api: str, line: dict[str, Any] | None, reading: dict[str, Any],
              status: str) -> tuple[Completion | None, str]:
    """(the reply of one output line, read as a direct reply is, its stop sequences applied; or None and why)."""
    if line is None:
        return None, f"no reply in the batch's results (batch {status})"
    response = line.get("response") or {}
    code = response.get("status_code")
    if line.get("error") or code != 200:
        error = line.get("error") or (response.get("body") or {}).get("error") or {}
        if isinstance(error, dict) and isinstance(error.get("error"), dict):
            error = error["error"]  # vLLM's run_batch: its ErrorResponse, {"error": {"message", "code", ...}}
        message = error.get("message", "") if isinstance(error, dict) else str(error)
        return None, (f"HTTP {code} " if code else "") + (message or "a failed line")[:300]
    try:
        c = read_reply(api, response.get("body"), bool(reading.get("logprobs")))
    except (Malformed, ValueError, AttributeError, TypeError, KeyError) as e:
        return None, f"malformed reply: {e}"
    c.text, hit = apply_stop(c.text, reading.get("stop") or ())
    if hit and c.finish_reason == "length":
        c.finish_reason = "stop"
    return c, ""


def check_batch_api(client: openai.OpenAI, url: str, secret: str = "", origin: Origin = RUN_TEACHER) -> None:
    """Before the first wave: does the server have the batches endpoint?"""
    try:
        client.batches.list(limit=1)
    except (openai.NotFoundError, openai.APIStatusError) as e:
        if getattr(e, "status_code", 0) in (404, 405, 501):
            # Not describe_error's 404 hint (a wrong model or base URL): the server is up, it lacks the endpoint.
            flag, key = origin.flags.get("batch"), origin.key("batch")
            drop = f"drop {flag} ({key})" if flag else f"--set {key}=false"
            raise TeacherError(f"{url} has no Batch API (GET {url.rstrip('/')}/batches answered HTTP "
                               f"{e.status_code}). Fix: {drop}, or use a server with the files "
                               "and batches endpoints") from None
        if isinstance(e, FATAL):
            raise TeacherError(f"{url}: {describe_error(e, secret, origin=origin)}") from None
