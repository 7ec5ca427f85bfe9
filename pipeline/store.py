"""JSONL files and the run directory.

One reader and one writer for every JSONL file. Stage outputs are appended one line at a
time with a flush, so a crash loses at most the line being written; a torn last line is
cut off when the file is opened again for appending.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError, Seed2LoraError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
from .records import Task, family_id

_UMASK = os.umask(0)
os.umask(_UMASK)

STAGES = ("bootstrap", "classify", "instances", "filter", "evolve")
# The per-task stages whose work left is known from the files, and the stage file each takes its tasks from
TASK_INPUT = {"classify": "bootstrap", "instances": "classify"}
PENDING_KNOWN = ("bootstrap", *TASK_INPUT)  # the stages RunDir.pending can tell the work left of
# What a pending count counts, where it is not tasks (one, many): the steps that count their own (runner.Step.left)
PENDING_UNITS = {"evolve": ("slot with rounds to go", "slots with rounds to go"),
                 "score": ("row to rate", "rows to rate"), "ifd": ("row to score", "rows to score")}
REJECTED = "rejected.jsonl"
MANIFEST = "manifest.json"
LOCK = ".lock"
# Each session describes its teacher whole: merged into the last one's, an embedded teacher's record kept the
# server teacher's base_url, api and concurrency under its own name
MANIFEST_WHOLE = ("teacher",)
FILTER_WROTE_SPEC = "embedded"  # the default teacher an older `filter` recorded over a run's own (mend_teacher_table)
# The run's folders: RunDir names them, nothing else spells them.
EXPORT_DIR, ADAPTER_DIR, EVAL_DIR, REPORT_DIR = "export", "adapter", "eval", "report"
EXPORT_INFO = "export.json"  # an export folder's facts (its run, counts, config)
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file: what makes a folder an adapter


def read_jsonl(path: str | Path, *, strict: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line.

    strict=True (user input): a bad line raises InputError naming file and line.
    strict=False (our own outputs): a torn last line, left by a crash, is skipped.
    """
    path = Path(path)
    try:  # -sig: a BOM, which Windows tools write, is not JSON; it stopped a user's file at line 1
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise InputError(path, line, f"is not UTF-8 ({e.reason})", "save the file as UTF-8") from None
    lines = text.split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            torn_tail = lineno == len(lines) and not text.endswith("\n")
            if not strict and torn_tail:
                return
            # json's "Unterminated string starting at" ends in "at" itself: "starting at at column 28" before
            raise InputError(path, lineno, f"is not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})",
                             "write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise InputError(path, lineno, f"holds a JSON {type(obj).__name__}, not an object",
                             "write one JSON object per line")
        yield lineno, obj


def read_tasks(path: str | Path) -> list[Task]:
    """Read a stage file written by seed2lora (missing file = empty)."""
    path = Path(path)
    if not path.exists():
        return []
    return [Task.from_dict(obj) for _, obj in read_jsonl(path, strict=False)]


# A held JsonlWriter (a per-task stage's records, evolve's) writes its lines at most this often. At 64 replies in
# flight a write of its own per record cost evolve's stream thread about 0.4 ms of wall time a record (the write
# gives up the GIL to the teacher's threads); a kill -9 loses at most this long's records, which a resume makes
# again from the replies in the run's cache, paying for nothing.
RECORD_HOLD_S = 0.1


class JsonlWriter:
    """Append records to a JSONL file; repairs a torn tail first. Each record goes to the OS as one line the moment
    it is written; or, with hold_s > 0, the lines are held and go together, in one write, with the first record
    written hold_s or more after the last write, and at flush() and close(). Hold only a file whose records are
    their own done-marks, made from replies already in the run's cache (a per-task stage's, evolve's): a kill -9
    loses the lines held, and a resume makes them again from the cache. A file whose records must be on disk before
    a mark elsewhere says their request is done is held only with hold_s=math.inf and flushed before that mark
    (bootstrap's: a reply's records in one write each file, then its request log's mark). `after`: a
    held writer whose lines must reach the disk no later than this one's (evolve: a round kept before a later
    round's rejection); its held lines are written first whenever this one writes."""

    def __init__(self, path: str | Path, hold_s: float = 0.0, after: JsonlWriter | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(self.path)
        self._fh = open(self.path, "ab")  # bytes: each write's offsets are known (note_appended)
        stat = os.fstat(self._fh.fileno())
        self._spans = _APPENDED.setdefault((stat.st_dev, stat.st_ino), {})
        self.hold_s, self.after = hold_s, after
        self._held: list[str] = []
        self._reasons: list[str | None] = []  # the held lines' reason_key
        self._written = time.monotonic()  # the last write to the OS

    def write(self, record: Task | dict[str, Any]) -> None:
        line = (record.to_json() if isinstance(record, Task) else json.dumps(record, ensure_ascii=False)) + "\n"
        self._held.append(line)
        self._reasons.append(reason_key(record))
        if self.hold_s <= 0 or time.monotonic() - self._written >= self.hold_s:
            self.flush()

    def flush(self) -> None:
        """Every line held, to the OS in one write (`after`'s first)."""
        if self.after is not None:
            self.after.flush()
        if self._held:
            data = "".join(self._held).encode("utf-8")
            lines, reasons = len(self._held), self._reasons
            self._held, self._reasons = [], []
            self._fh.write(data)
            self._fh.flush()
            end = self._fh.tell()  # O_APPEND: the end of this write
            self._spans[end - len(data)] = (end, zlib.crc32(data), lines,
                                            None if None in reasons else tuple(reasons))
        self._written = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What this process appended to each JSONL file, by (device, inode): {start: (end, crc32 of the bytes, lines, each
# line's reason_key or None)}. RunDir.counts() counts a span whose bytes are still these without decoding its lines
# again: json.loads of each record the stage had just written was a tenth of a bootstrap reply's CPU (issue 20).
_APPENDED: dict[tuple[int, int], dict[int, tuple[int, int, int, tuple[str, ...] | None]]] = {}


def reason_key(record: Task | dict[str, Any]) -> str | None:
    """A rejected record's key in the manifest's rejected_by_reason ("stage: rule"), as Tally makes it from the line
    read back; None for a record that has no reject reason or is not a Task (Tally then reads its line)."""
    if isinstance(record, Task) and isinstance(record.reject_reason, str) and isinstance(record.stage, str):
        return sys.intern(reason_label(record))
    return None


def _repair_tail(path: Path) -> None:
    """Cut a last line that has no newline: it was torn by a crash mid-write."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(cut)


def write_jsonl_atomic(path: str | Path, records: Iterable[Task | dict[str, Any]]) -> int:
    """Replace a file in one step, so readers never see half of it."""
    n = 0
    lines = []
    for r in records:
        lines.append(json.dumps(r.to_dict() if isinstance(r, Task) else r, ensure_ascii=False))
        n += 1
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return n


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; stage files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLock:
    """An exclusive flock on <run>/.lock, released when the process ends, however it ends (kill -9 too). Where
    the OS has no flock (Windows), no lock is taken."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None
        if fcntl is None:
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # The holder writes its pid just after it takes the lock: a look in between finds the file empty
            deadline, holder = time.monotonic() + 0.5, ""
            while not (holder := os.pread(fd, 200, 0).decode("utf-8", "replace").strip()) and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            holder = holder or "another process"
            os.close(fd)
            if holder.startswith(f"seed2lora pid {os.getpid()},"):  # a second Run on one folder, in two threads
                holder += " (this process: another Run of it, on another thread, is running it)"
            # score, export and train take no --run-name: the folder is the fix every command takes
            raise Seed2LoraError(f"{path.parent} is being written by {holder}. Fix: wait for it to finish (or stop "
                                 "it), or name another run folder (RUN_DIR, or --run-name where the command has "
                                 "it)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"seed2lora pid {os.getpid()}, since {_now()}".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    @staticmethod
    def held(path: Path) -> bool:
        if fcntl is None or not path.is_file():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)


class RunDir:
    """outputs/<run-name>/: one JSONL per stage, rejected.jsonl, manifest.json, and the folders export/,
    adapter/ (its eval/ inside) and report/. Code asks a RunDir for these paths; none spells them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tallies: dict[Path, Tally] = {}  # counts(): what each file held when last read
        # outcomes(): each stage's done ids, with the (stage file, rejected.jsonl) versions they were read from
        self._outcomes: dict[str, tuple[tuple[Any, ...], frozenset[str]]] = {}

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT_DIR

    def adapter_dir(self, output_dir: str | Path = "") -> Path:
        """The run's adapter: train.output_dir when set, else RUN/adapter."""
        return Path(output_dir) if output_dir else self.path / ADAPTER_DIR

    def eval_dir(self, output_dir: str | Path = "") -> Path:
        return eval_dir_of(self.adapter_dir(output_dir))

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    @classmethod
    def of_adapter(cls, adapter_dir: str | Path, data: str | Path | None = None) -> RunDir | None:
        """The run an adapter belongs to: the folder holding it (RUN/adapter), else the run its training data
        came from (`data`: RUN or RUN/export); a run is a folder with a manifest.json. None when there is none."""
        candidates = [Path(adapter_dir).parent]
        if data:
            candidates += [Path(data), Path(data).parent]
        return next((cls(c) for c in candidates if (c / MANIFEST).is_file()), None)

    @classmethod
    def of_export(cls, export_dir: str | Path) -> RunDir:
        """The run an export folder was written from: the folder around it when that is a run (a manifest), else
        the run its export.json names (as the export command was given it), else the folder above."""
        above = Path(export_dir).parent
        if (above / MANIFEST).is_file():
            return cls(above)
        return cls(read_export_info(export_dir).get("run_dir") or above)

    def stage_file(self, stage: str) -> Path:
        return self.path / f"{stage}.jsonl"

    def records_version(self) -> tuple[tuple[str, tuple[int, int, int] | None], ...]:
        """The state of the run's record files (each stage's JSONL and rejected.jsonl): a record written changes it."""
        return tuple(sorted((p.name, file_version(p)) for p in self.path.glob("*.jsonl")))

    @property
    def rejected_file(self) -> Path:
        return self.path / REJECTED

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST

    def ensure(self) -> RunDir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a traceback before; check_writable said nothing, or the disk changed since
            raise self.unwritable(f"cannot be made ({e.strerror or e})") from None
        return self

    def check_writable(self) -> None:
        """The run's folder, or the nearest one above it that exists, takes new files, checked before any request or
        write: under a file or a read-only folder, the run stopped with a traceback after the teacher's preflight."""
        where = self.path
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise self.unwritable(f"cannot be made: {where} is a file, not a folder")
        if not os.access(where, os.W_OK | os.X_OK):
            raise self.unwritable("cannot be written" if where == self.path else
                                  f"cannot be made: {where} cannot be written")

    def unwritable(self, problem: str) -> InputError:
        return InputError(self.path, None, f"the run's folder {problem}",
                          "give RUN_DIR (or --output-dir) a folder you can write to, e.g. outputs/NAME, or make it "
                          "writable")

    def read_stage(self, stage: str) -> list[Task]:
        return read_tasks(self.stage_file(stage))

    def read_rejected(self) -> list[Task]:
        return read_tasks(self.rejected_file)

    def outcomes(self, stage: str, rejected: list[Task] | None = None, records: list[Task] | None = None) -> set[str]:
        """The ids of the tasks a per-task stage is done with: a record in its file, or a rejection by it. `rejected`
        and `records`: rejected.jsonl and the stage's file, when the caller has read them already. Read here, the
        files are read again only once either has changed: a stage's start asks twice (the loop's bar, then the
        stage's TaskMap), and each ask read and parsed both files whole (2 x 18 ms for 1,000 done of 2,000 tasks)."""
        if rejected is not None or records is not None:
            rejected = self.read_rejected() if rejected is None else rejected
            records = self.read_stage(stage) if records is None else records
            return {t.id for t in records} | {t.id for t in rejected if t.stage == stage}
        versions = (file_version(self.stage_file(stage)), file_version(self.rejected_file))
        known = self._outcomes.get(stage)
        if known is None or known[0] != versions:
            done = {t.id for t in self.read_stage(stage)} | {t.id for t in self.read_rejected() if t.stage == stage}
            known = self._outcomes[stage] = (versions, frozenset(done))
        return set(known[1])

    def pending(self, stages: Iterable[str], target: int | None,
                inputs: dict[str, list[Task]] | None = None) -> dict[str, int]:
        """What each of `stages` has still to do, from the files: bootstrap, the instructions short of `target`
        (its num_instructions); classify and instances, their input tasks (`inputs[stage]`, else the file of
        TASK_INPUT; when that stage is among `stages` too, its own input but for its rejections) with no outcome.
        A stage whose work left the files cannot tell is left out. Each file is read once: this runs when a run
        stops, or for `show`, never per reply."""
        read: dict[str, list[Task]] = {}

        def stage_tasks(name: str) -> list[Task]:
            if name not in read:
                read[name] = self.read_stage(name)
            return read[name]

        stages = list(stages)
        rejected = self.read_rejected() if any(s in TASK_INPUT for s in stages) else []
        left: dict[str, int] = {}
        for stage in stages:
            if stage == "bootstrap" and target is not None:
                left[stage] = max(0, target - len(stage_tasks(stage)))
            elif stage in TASK_INPUT:
                tasks = (inputs or {}).get(stage)
                if tasks is None:
                    source = TASK_INPUT[stage]
                    tasks = stage_tasks(source)
                    if source in stages and source in TASK_INPUT and source not in (inputs or {}):
                        # Its source has tasks to go too, which come here next: the source's own input but for
                        # those it rejected (instances' pending counted none of classify's)
                        dropped = {t.id for t in rejected if t.stage == source}
                        tasks = [t for t in stage_tasks(TASK_INPUT[source]) if t.id not in dropped]
                done = self.outcomes(stage, rejected, stage_tasks(stage))
                left[stage] = len({t.id for t in tasks} - done)
        return left

    def replace_rejected(self, stage: str, records: Iterable[Task]) -> None:
        """Rewrite the rejections of one stage (a stage that is re-run whole), keeping the others."""
        kept = [r for r in self.read_rejected() if r.stage != stage]
        write_jsonl_atomic(self.rejected_file, [*kept, *records])

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_file.exists():
            return {}
        try:
            return mend_teacher_table(json.loads(self.manifest_file.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise InputError(self.manifest_file, e.lineno, "is not valid JSON",
                             "delete it; the next run writes a new one") from None

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def lock(self) -> RunLock:
        """Held while a command writes this run: a second process on the same run stops at once instead of
        writing the same records twice (two runs on one folder kept 5 unique of 10 lines and said done)."""
        return RunLock(self.ensure().lock_file)

    def writer_alive(self) -> bool:
        """Whether a process holds this run's lock now (a manifest saying "running" without one was killed)."""
        return RunLock.held(self.lock_file)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into manifest.json (dicts are merged one level deep, but for MANIFEST_WHOLE) and recount stages."""
        m = self.manifest()
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(m.get(key), dict) and key not in MANIFEST_WHOLE:
                m[key] = {**m[key], **value}
            else:
                m[key] = value
        m.setdefault("created", _now())
        m["updated"] = _now()
        m["counts"] = self.counts()
        write_text_atomic(self.manifest_file, json.dumps(m, indent=2, ensure_ascii=False) + "\n")
        return m

    def counts(self) -> dict[str, Any]:
        """Records per stage file, rejections by stage and reason. The manifest is refreshed every few replies
        while a stage runs: each file is read on from where the last count left it (a file rewritten is read
        again whole), so a refresh costs the lines written since, not the run's size."""
        counts: dict[str, Any] = {}
        for stage in STAGES:
            f = self.stage_file(stage)
            if f.exists():
                counts[stage] = self._tally(f).lines
        rejected = self._tally(self.rejected_file, by_reason=True)
        counts["rejected"] = rejected.lines
        counts["rejected_by_reason"] = dict(rejected.reasons.most_common())
        return counts

    def _tally(self, path: Path, by_reason: bool = False) -> Tally:
        tally = self._tallies.get(path)
        try:
            if tally is None or not tally.read_on(path):
                tally = self._tallies[path] = Tally(by_reason)
                tally.read_on(path)
        except ValueError:  # a line that is not JSON, or not UTF-8: read_jsonl says which, with the fix
            self._tallies.pop(path, None)
            list(read_jsonl(path, strict=False))
            raise
        return tally


def pending_line(left: dict[str, int], target: int, stages: list[str], finished: set[str]) -> str:
    """What a stopped run left to do, in the exit message's words: "pending: bootstrap 88 of 100 instructions to
    go, classify 2 tasks, evolve 3 slots with rounds to go; still to run: score, export". left: RunDir.pending of
    `stages` and the counts of the steps that count their own; finished: those done."""
    def one(name: str, n: int) -> str:
        unit = PENDING_UNITS.get(name, ("task", "tasks"))[n != 1]
        return f"bootstrap {n} of {target} instructions to go" if name == "bootstrap" else f"{name} {n} {unit}"

    parts = [one(name, left[name]) for name in stages if left.get(name)]
    rest = [name for name in stages if name not in left and name not in finished]
    return "; ".join(([f"pending: {', '.join(parts)}"] if parts else []) +
                     ([f"still to run: {', '.join(rest)}"] if rest else []))


def rejected_by(counts: dict[str, Any], stage: str) -> int:
    """Rejections by `stage` in a manifest's counts (RunDir.counts)."""
    return sum(n for key, n in counts.get("rejected_by_reason", {}).items() if key.startswith(f"{stage}:"))


def evolve_input(manifest: dict[str, Any]) -> str | None:
    """The user's file (or dataset folder) the run's evolve stage read, from the manifest; None for a stage of
    the run or the seeds. The source evolve records as it starts (state "evolve_input", a resolved path for a file)
    counts before the stage has ended: evolve.source a path is a user's file from its first session on."""
    recorded = ((manifest.get("stages") or {}).get("evolve") or {}).get("input_file") or {}
    if recorded.get("path"):
        return str(recorded["path"])
    state = str((manifest.get("state") or {}).get("evolve_input") or "")
    if state and state not in STAGES and not state.startswith("seeds:"):
        return state
    cfg = manifest.get("config") or {}
    source = (cfg.get("evolve") or {}).get("source")
    ran = "evolve" in (manifest.get("stages") or {})
    return str(source) if ran and source and source != "seeds" and source not in STAGES else None


SELF_INSTRUCT_INPUTS = ("classify", "instances", "filter")  # the stages whose --input replaces bootstrap's tasks


def rows_from(manifest: dict[str, Any], stage: str) -> str:
    """Where the tasks of a stage file of the run came from: the path of the user's file that it or a stage before
    it in the Self-Instruct chain read (--input; a re-run without it clears its record), else "bootstrap"."""
    stages = manifest.get("stages") or {}
    chain = SELF_INSTRUCT_INPUTS[:SELF_INSTRUCT_INPUTS.index(stage) + 1] if stage in SELF_INSTRUCT_INPUTS else ()
    for name in reversed(chain):
        entry = stages.get(name)
        path = ((entry.get("input_file") or {}) if isinstance(entry, dict) else {}).get("path")
        if path:
            return str(path)
    return "bootstrap"


def evolve_replaced(manifest: dict[str, Any], unrecorded: str | None = None) -> tuple[str, str, str] | None:
    """(the stage evolve read, where its tasks came from when evolve read them, where they come from now) when they
    differ: evolve.jsonl holds evolutions of tasks a later `filter --input` (or classify, instances) replaced in that
    file. evolve records where its stage's tasks came from as it starts (state "evolve_rows_from"); a manifest from
    before that record has none, and `unrecorded` says it instead (evolve_rows_before, from the files; "": from no
    file the run has). None: evolve read no stage of the run, or they are the same, or nothing says where from."""
    state = manifest.get("state") or {}
    stage = str(state.get("evolve_input") or "")
    before = state["evolve_rows_from"] if "evolve_rows_from" in state else unrecorded
    if stage not in STAGES or before is None or ("evolve_rows_from" in state and not before):
        return None  # recorded None: evolve read no stage of the run
    now = rows_from(manifest, stage)
    return (stage, str(before), now) if now != before else None


def evolve_rows_before(run: RunDir, stage: str, evolved: list[Task]) -> str:
    """Where the tasks evolve.jsonl's evolutions were made from came from, read from the files, for a manifest from
    before state "evolve_rows_from": their roots (records.family_id) among the tasks of `stage`'s file now, they came
    from where that file's tasks come from (rows_from, of the manifest on disk); among bootstrap.jsonl's,
    "bootstrap"; else "": from a file the run no longer holds (a user's, replaced since)."""
    by_id = {t.id: t for t in evolved}
    roots = {family_id(t, by_id) for t in evolved}
    if roots & {t.id for t in run.read_stage(stage)}:
        return rows_from(run.manifest(), stage)
    return "bootstrap" if roots & {t.id for t in run.read_stage("bootstrap")} else ""


def evolve_mixed(run: RunDir, manifest: dict[str, Any] | None = None) -> str:
    """Why evolve.jsonl's evolutions are of tasks its stage's file no longer holds (evolve_replaced), in words for
    the messages of evolve and export; "" when they are not, or evolve.jsonl holds none. manifest: the run's as a
    step will find it (evolve.check: after the stages this command runs before evolve), else the one on disk."""
    manifest = run.manifest() if manifest is None else manifest
    state = manifest.get("state") or {}
    evolved = run.read_stage("evolve") if str(state.get("evolve_input") or "") in STAGES else []
    if not evolved:
        return ""
    stage = str(state["evolve_input"])
    unrecorded = None if "evolve_rows_from" in state else evolve_rows_before(run, stage, evolved)
    replaced = evolve_replaced(manifest, unrecorded)
    if replaced is None:
        return ""
    stage, before, now = replaced

    def origin(o: str) -> str:
        return "bootstrap" if o == "bootstrap" else f"{Path(o).name} (--input)"

    came = f"came from {origin(before)}" if before else \
        f"came from a file the run no longer holds (none of them is in {stage}.jsonl or bootstrap.jsonl)"
    return (f"{run.stage_file('evolve')} holds evolutions of the tasks {stage}.jsonl held when evolve read it, which "
            f"{came}; {stage}.jsonl now holds tasks from {origin(now)}")


def seeds_used(manifest: dict[str, Any], importing: Collection[str] = ()) -> bool:
    """Whether the run's records came from its seed file: the one rule of export's seed rows, the manifest's
    seed_file, and the ROUGE-L pools of filter and evolve. Self-Instruct's rows (filter.jsonl) came from it when the
    run bootstrapped and no later stage of that chain read a user's --input instead (a `filter --input` replaces the
    bootstrapped tasks whole); evolve's when it evolved the seeds, or a stage of that chain. A run of a user's file
    alone never used the seeds. importing: the stages reading a user's file now (their input_file is recorded when
    they end)."""
    stages = manifest.get("stages") or {}

    def imported(name: str) -> bool:
        entry = stages.get(name)
        return name in importing or (isinstance(entry, dict) and bool(entry.get("input_file")))

    users_rows = any(imported(name) for name in SELF_INSTRUCT_INPUTS)
    evolved = str((manifest.get("state") or {}).get("evolve_input") or "")
    if ("bootstrap" in stages and not users_rows) or evolved.startswith("seeds:"):
        return True
    return not users_rows and not imported("evolve") and evolve_input(manifest) is None


def eval_dir_of(adapter_dir: str | Path) -> Path:
    """Where an adapter's eval report goes by default: ADAPTER/eval."""
    return Path(adapter_dir) / EVAL_DIR


def file_version(path: Path) -> tuple[int, int, int] | None:
    """What tells one state of a file from another: an append changes its size, a replacement its inode (os.replace),
    any write its mtime. None: no file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def mend_teacher_table(m: dict[str, Any]) -> dict[str, Any]:
    """A manifest whose config names the teacher it was made with. An older `filter` (it builds no teacher) recorded
    the default [teacher], spec "embedded", over the run's own, while the manifest's `teacher` entry kept naming the
    teacher that made the records: export.json, Run.open and every later command took "embedded" as the run's
    teacher. Read, such a table is the entry's teacher (its spec and URL; the rest of the stale table, defaults, goes),
    and the next write of the manifest keeps it so."""
    entry, config = m.get("teacher"), m.get("config")
    table = config.get("teacher") if isinstance(config, dict) else None
    # "kind": a teacher's own record (describe()), not a stand-in some code passed in
    if not (isinstance(entry, dict) and isinstance(table, dict) and entry.get("kind") and entry.get("name")):
        return m
    if table.get("spec") != FILTER_WROTE_SPEC or entry["name"] == FILTER_WROTE_SPEC:
        return m
    config["teacher"] = {"spec": entry["name"], **({"base_url": entry["base_url"]} if entry.get("base_url") else {})}
    return m


def recorded_teacher(manifest: dict[str, Any], role: str) -> dict[str, Any]:
    """The teacher (role "teacher") or judge ("judge") a run was made with, as its manifest names it; a run killed
    (kill -9) in its first step that calls it has no such entry yet, only the config it started with: its spec then
    (not for a run that no step calling it has touched, as one `filter --input` made)."""
    if manifest.get(role):
        return manifest[role]
    calling = ("bootstrap", "classify", "instances", "evolve", "score") if role == "teacher" else ("score",)
    if not set(calling) & set(manifest.get("stages") or {}):
        return {}
    config = manifest.get("config") or {}
    table = (config.get("teacher") if role == "teacher" else (config.get("score") or {}).get("teacher")) or {}
    spec = str(table.get("spec") or "").strip()
    return {"name": spec, "base_url": table.get("base_url") or ""} if spec else {}


def read_export_info(export_dir: str | Path) -> dict[str, Any]:
    """An export folder's export.json ({} when the folder has none)."""
    f = Path(export_dir) / EXPORT_INFO
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any] | None:
    """An adapter folder's adapter_config.json (PEFT's: base model, rank, alpha, targets); None when it has none.
    The one reader of that file."""
    f = Path(adapter_dir) / ADAPTER_CONFIG
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def reason_kind(reason: str | None) -> str:
    """The rule part of a reject reason ('rouge_l: 0.81 vs ...' -> 'rouge_l')."""
    return (reason or "unknown").split(":", 1)[0].strip()


def reason_label(task: Task) -> str:
    """A rejected record's key in the counts by reason ("stage: rule"): the manifest's, show's and the report's."""
    return f"{task.stage}: {reason_kind(task.reject_reason)}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Tally:
    """The object lines of an append-only JSONL file (and, by_reason, its rejections by stage and reason), read on
    from the end of the last complete line counted. A torn last line is counted once it is whole, as
    read_jsonl(strict=False) skips it until then."""

    def __init__(self, by_reason: bool = False):
        self.by_reason, self.lines, self.reasons = by_reason, 0, Counter()
        self.inode, self.offset = -1, 0

    def read_on(self, path: Path) -> bool:
        """Count what was appended since; False when the file is not the one counted so far (rewritten, cut)."""
        if not path.exists():
            return self.offset == 0
        stat = path.stat()
        if (self.inode != -1 and stat.st_ino != self.inode) or stat.st_size < self.offset:
            return False
        self.inode = stat.st_ino
        with path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        if not end:
            return True
        spans, view, at = _APPENDED.get((stat.st_dev, stat.st_ino), {}), memoryview(data), 0
        while at < end:
            span = spans.get(self.offset + at)  # written by this process: counted without reading its lines
            stop = span[0] - self.offset if span is not None else 0
            if span is not None and stop <= end and zlib.crc32(view[at:stop]) == span[1] and (
                    span[3] is not None or not self.by_reason):
                self.lines += span[2]
                if self.by_reason:
                    self.reasons.update(span[3])
                at = stop
                continue
            stop = data.index(b"\n", at) + 1
            self.count(path, data[at:stop].decode("utf-8"))
            at = stop
        self.offset += end
        return True

    def count(self, path: Path, line: str) -> None:
        if line.strip():
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: a JSON {type(obj).__name__}, not an object")
            self.lines += 1
            if self.by_reason:
                r = Task.from_dict(obj)
                self.reasons[reason_label(r)] += 1
