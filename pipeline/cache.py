"""The run's SQLite file: every teacher reply (the response cache), bootstrap's request log
and the usage log.

Replies are keyed by a hash of teacher, model, endpoint style, the full prompt, the
sampling parameters and the caller's RNG state (`Request.salt`), and written the moment
they arrive, before any record is built from them. So a re-run or a resumed run pays for
no call twice, and a kill -9 loses at most the calls in flight. Failed calls are not
cached: a resumed run tries them again.

The usage log holds one row per answered call (tokens, errors, retries, and the model that
answered it), written as the reply arrives, so spend survives kill -9 and Ctrl-C: a resumed
run's budget and the manifest add up every paid call of every session from here, not from a
manifest that an interrupted session never got to update. Each call is priced at its own
model, its prompt tokens that the server's prefix cache served (cached_tokens) at the model's cached-input price.
Databases from before the model or cached_tokens was logged gain the column on opening: old rows have
cached_tokens 0 and model NULL, which `usage_by_model` returns as None for the caller to attribute
(pipeline.budget.attribute_unlogged: to the run's recorded teacher, score rows to its judge).

Batch API waves (pipeline.teachers.batch) are recorded here too: each wave's input file and batch id the
moment the server gives them, and each of its lines (custom_id = the request's cache key) until its reply is
in the responses table, in the same commit as the reply. A re-run awaits a line still open instead of
sending it again.

SQLite in WAL mode with one commit per write survives kill -9 without a torn database;
a lock makes it safe to share between the teacher's event loop (fastpath.py) and its request threads.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .teachers.base import Completion

CACHE_FILE = "cache.sqlite"
# "cached" counts replies the response cache served (free); "cached_tokens" the prompt tokens of paid calls that the
# server's prefix cache served (billed at the cached-input price)
USAGE_COLUMNS = ("calls", "errors", "cached", "prompt_tokens", "completion_tokens", "retries", "timeouts",
                 "cached_tokens")


_KEYS_PER_QUERY = 500  # keys in one lookup query: under SQLite's smallest limit of bound variables (999)
_INSERT_USAGE = (f"INSERT INTO usage (session, kind, model, {', '.join(USAGE_COLUMNS)}) "
                 f"VALUES (?, ?, ?, {', '.join('?' * len(USAGE_COLUMNS))})")


_GET_RESPONSES = ("SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM responses "
                  "WHERE key IN ({keys})")
# The batch whose line a reply answered, and the waves in which that request's line failed before it
_GET_BATCH_ORIGINS = ("SELECT l.custom_id, w.batch_id, (SELECT COUNT(*) FROM batch_lines f WHERE f.custom_id = "
                      "l.custom_id AND f.state = 'failed') FROM batch_lines l JOIN batch_waves w ON "
                      "w.file_id = l.file_id WHERE l.state = 'done' AND l.custom_id IN ({keys})")


def rows_for(db: sqlite3.Connection, sql: str, keys: list[str]) -> Iterator[tuple]:
    """The rows of `sql` for `keys` (its "{keys}": their placeholders), asked in parts under SQLite's limit."""
    for i in range(0, len(keys), _KEYS_PER_QUERY):
        part = keys[i:i + _KEYS_PER_QUERY]
        yield from db.execute(sql.format(keys=", ".join("?" * len(part))), part)


class Group:
    """Calls that several threads make at once, done by one of them in one go: `work(rows)` gets the rows waiting
    and gives a result for each, in order (a group commit, a lookup of several keys). The first thread to hand a
    row in while none is at work does every row waiting, its own among them; the others wait. When it is done and
    rows came in meanwhile, the first of their threads does them all next. Each `call` returns its own row's
    result once its work is done, or raises the error that work raised."""

    def __init__(self, work: Callable[[list[Any]], list[Any]]):
        self.work = work
        self.lock = threading.Lock()  # guards waiting and busy
        self.waiting: list[_Handed] = []
        self.busy = False  # a thread is at work

    def call(self, row: Any) -> Any:
        handed = _Handed(row)
        with self.lock:
            self.waiting.append(handed)
            leads = not self.busy
            self.busy = True
        if not leads:
            handed.done.acquire()  # released when its row is done, or when its thread is to do the rows next
            if not handed.leads:
                if handed.error is not None:
                    raise handed.error
                return handed.result
        with self.lock:
            batch, self.waiting = self.waiting, []
        error: BaseException | None = None
        results: list[Any] = []
        try:
            results = self.work([h.row for h in batch])
        except BaseException as e:
            error = e
        finally:
            with self.lock:
                if self.waiting:  # rows handed in meanwhile: their first thread does them next
                    self.waiting[0].leads = True
                    self.waiting[0].done.release()
                else:
                    self.busy = False
            for i, h in enumerate(batch):
                if h is not handed:
                    h.error = error
                    h.result = results[i] if error is None else None
                    h.done.release()
        if error is not None:
            raise error
        return results[batch.index(handed)]


class _Handed:
    """A row waiting in a Group; `done` is held until its work is done (or its thread is to do the work)."""

    __slots__ = ("row", "done", "leads", "result", "error")

    def __init__(self, row: Any):
        self.row, self.leads, self.result, self.error = row, False, None, None
        self.done = threading.Lock()
        self.done.acquire()


def _row(key: str | None, c: Completion, session: str, kind: str, counts: dict[str, int], model: str | None,
         batch_line: tuple[str, str] | None = None) -> tuple[tuple | None, tuple, tuple[str, str] | None]:
    """A reply's rows for _commit: its response (when `key` is given), its usage row, and its wave line."""
    response = (key, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) if key is not None else None
    usage = (session, kind, model, *(int(counts.get(col, 0)) for col in USAGE_COLUMNS))
    return response, usage, batch_line


def model_of(spec: str) -> str:
    """The model a teacher spec names, as the usage log records and prices it: openai:gpt-4o-mini -> gpt-4o-mini,
    hf:/models/x -> /models/x, embedded -> embedded."""
    return spec.partition(":")[2] or spec


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._commits = Group(self._commit)  # record(): replies that come at once share a commit
        self._lookups = Group(self._get_many)  # get(): lookups made at once share a query
        self._usage_seen = 0  # usage(): the rows summed so far (rowid up to this)
        self._usage_sums: dict[str, list[int]] = {}  # and their sums by kind, in the order of each kind's first row
        self._db = _connect(self.path)
        # Whether any reply may have come through a batch: a run that never used one asks nothing more per lookup
        self._batched = self._db.execute("SELECT 1 FROM batch_lines LIMIT 1").fetchone() is not None

    def get(self, key: str) -> Completion | None:
        """The reply cached under `key`, else None. Lookups made at once by several threads share one query
        (`Group`)."""
        return self._completion(self._lookups.call(key))

    def get_alone(self, key: str) -> Completion | None:
        """get() for a thread that makes no lookups at the same moment as others (the teacher's event loop): the
        query at once, without the Group's hand-off (its locks and a waiter each lookup)."""
        return self._completion(self._get_many([key])[0])

    @staticmethod
    def _completion(row: tuple | None) -> Completion | None:
        if row is None:
            return None
        batch, wave = row[4] if len(row) > 4 else (None, 1)
        return Completion(text=row[0], finish_reason=row[1], prompt_tokens=row[2], completion_tokens=row[3],
                          cached=True, batch=batch, retries=wave - 1)

    def _get_many(self, keys: list[str]) -> list[tuple | None]:
        with self._lock:
            found = {row[0]: row[1:] for row in rows_for(self._db, _GET_RESPONSES, keys)}
            if self._batched and found:  # where it was paid: a reply of a batch says so on resume too
                for key, batch_id, failed in rows_for(self._db, _GET_BATCH_ORIGINS, list(found)):
                    found[key] = (*found[key], (batch_id, failed + 1))
        return [found.get(key) for key in keys]

    def put(self, key: str, c: Completion) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                             (key, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens))

    def record(self, key: str | None, c: Completion, session: str, kind: str, counts: dict[str, int],
               model: str | None, batch_line: tuple[str, str] | None = None) -> None:
        """One reply as it arrives: the response (when `key` is given) and its usage row, in one commit; with
        batch_line (file_id, custom_id), that wave line is marked done in the same commit. Returns once that
        commit is made. Replies recorded at the same moment by several threads share a commit (`Group`): at 64
        in flight a commit of its own per reply cost the teacher's threads 0.10-0.19 ms a reply
        (benchmarks/RESULTS.md, "Stage reply work")."""
        self._commits.call(_row(key, c, session, kind, counts, model, batch_line))

    def record_many(self, replies: list[tuple]) -> None:
        """Several replies (each record's arguments, without batch_line) in one commit, from the one thread that
        has them all (the teacher's event loop, fastpath.py): no Group hand-off. Returns once they are committed."""
        self._commit([_row(*reply) for reply in replies])

    def _commit(self, rows: list[tuple[tuple | None, tuple, tuple[str, str] | None]]) -> list[None]:
        """Replies' rows (record's), in one transaction, in their order."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                                     [response for response, _, _ in rows if response is not None])
                self._db.executemany(_INSERT_USAGE, [usage for _, usage, _ in rows])
                lines = [line for _, _, line in rows if line is not None]
                if lines:
                    self._db.executemany("UPDATE batch_lines SET state = 'done' WHERE file_id = ? AND custom_id = ?",
                                         lines)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [None] * len(rows)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    # -- a write-ahead log of numbered requests (bootstrap's prompts depend on the pool) --
    def log_request(self, stage: str, n: int, body: dict[str, Any], done: Iterable[int] = ()) -> None:
        """Request n logged before it is sent; `done`: earlier requests of the stage to mark done in the same
        commit (a commit each cost bootstrap about a tenth of a reply's client CPU, issue 20)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("UPDATE requests SET done = 1 WHERE stage = ? AND n = ?",
                                     [(stage, d) for d in done])
                self._db.execute("INSERT OR IGNORE INTO requests VALUES (?, ?, ?, 0)", (stage, n, json.dumps(body)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def mark_done(self, stage: str, *n: int) -> None:
        """Requests n marked done, in one commit."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("UPDATE requests SET done = 1 WHERE stage = ? AND n = ?", [(stage, i) for i in n])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def requests(self, stage: str) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """(number of requests logged, the logged-but-unfinished ones with their bodies)."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM requests WHERE stage = ?", (stage,)).fetchone()[0]
            open_rows = self._db.execute("SELECT n, body FROM requests WHERE stage = ? AND done = 0 ORDER BY n",
                                         (stage,)).fetchall()
        return total, [(n, json.loads(body)) for n, body in open_rows]

    # -- Batch API waves ------------------------------------------------------------------
    def log_wave(self, file_id: str, endpoint: str, lines: list[tuple[str, str, str]], est_usd: float,
                 est_tokens: int) -> None:
        """A wave whose input file the server holds: its lines (custom_id, kind, reading as JSON), in one commit."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("INSERT INTO batch_waves VALUES (?, NULL, ?, ?, ?, 'uploaded', 0)",
                                 (file_id, endpoint, est_usd, est_tokens))
                self._db.executemany("INSERT INTO batch_lines VALUES (?, ?, ?, ?, 'sent')",
                                     [(file_id, *line) for line in lines])
                self._db.execute("COMMIT")
                self._batched = True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def update_wave(self, file_id: str, *, batch_id: str | None = None, status: str | None = None,
                    done: bool = False) -> None:
        with self._lock:
            self._db.execute("UPDATE batch_waves SET batch_id = COALESCE(?, batch_id), status = COALESCE(?, status), "
                             "done = ? WHERE file_id = ?", (batch_id, status, int(done), file_id))

    def open_waves(self) -> list[dict[str, Any]]:
        """Waves whose replies are not all in: {file_id, batch_id (None: not created yet), endpoint, est_usd,
        est_tokens, status}."""
        with self._lock:
            rows = self._db.execute("SELECT file_id, batch_id, endpoint, est_usd, est_tokens, status FROM batch_waves "
                                    "WHERE done = 0 ORDER BY rowid").fetchall()
        return [dict(zip(("file_id", "batch_id", "endpoint", "est_usd", "est_tokens", "status"), r, strict=True))
                for r in rows]

    def wave_lines(self, file_id: str) -> list[tuple[str, str, dict[str, Any], str]]:
        """A wave's lines: (custom_id, kind, reading, state)."""
        with self._lock:
            rows = self._db.execute("SELECT custom_id, kind, reading, state FROM batch_lines WHERE file_id = ?",
                                    (file_id,)).fetchall()
        return [(cid, kind, json.loads(reading), state) for cid, kind, reading, state in rows]

    def open_lines(self) -> dict[str, str]:
        """custom_id -> file_id of every line sent in a wave and not yet answered: paid for, to be awaited."""
        with self._lock:
            rows = self._db.execute("SELECT l.custom_id, l.file_id FROM batch_lines l JOIN batch_waves w "
                                    "ON l.file_id = w.file_id WHERE w.done = 0 AND l.state = 'sent'").fetchall()
        return dict(rows)

    def fail_line(self, file_id: str, custom_id: str) -> int:
        """Mark a wave line failed; returns how many times that request has failed in any wave."""
        with self._lock:
            self._db.execute("UPDATE batch_lines SET state = 'failed' WHERE file_id = ? AND custom_id = ?",
                             (file_id, custom_id))
            return self._db.execute("SELECT COUNT(*) FROM batch_lines WHERE custom_id = ? AND state = 'failed'",
                                    (custom_id,)).fetchone()[0]

    # -- the usage log: one row per answered call ----------------------------------------
    def line_failures(self, keys: list[str]) -> dict[str, int]:
        """key -> the wave lines of that request that failed, in any wave (keys that never failed are left out)."""
        with self._lock:
            return dict(rows_for(self._db, "SELECT custom_id, COUNT(*) FROM batch_lines WHERE state = 'failed' AND "
                                           "custom_id IN ({keys}) GROUP BY custom_id", keys))

    def log_usage(self, session: str, kind: str, counts: dict[str, int], model: str | None = None) -> None:
        """One usage row; model None writes a row as the log held them before it recorded models."""
        with self._lock:
            self._insert_usage(session, kind, counts, model)

    def _insert_usage(self, session: str, kind: str, counts: dict[str, int], model: str | None) -> None:
        self._db.execute(_INSERT_USAGE, (session, kind, model, *(int(counts.get(c, 0)) for c in USAGE_COLUMNS)))

    def usage(self, *, exclude_session: str | None = None) -> dict[str, dict[str, int]]:
        """Totals per call kind over every session of this run (but `exclude_session`). Over every session, the
        rows are summed on from the last call's: the log only grows (rows are appended, their rowids in commit
        order), and the manifest asks every few seconds, so a refresh costs the rows since, not the run's size."""
        sums = ", ".join(f"SUM({c})" for c in USAGE_COLUMNS)
        with self._lock:
            if exclude_session is not None:
                rows = self._db.execute(f"SELECT kind, {sums} FROM usage WHERE session IS NOT ? GROUP BY kind "
                                        "ORDER BY MIN(rowid)", (exclude_session,)).fetchall()
                return {kind: dict(zip(USAGE_COLUMNS, (int(v or 0) for v in values), strict=True))
                        for kind, *values in rows}
            last = self._db.execute("SELECT MAX(rowid) FROM usage").fetchone()[0] or 0
            rows = self._db.execute(f"SELECT kind, {sums} FROM usage WHERE rowid > ? AND rowid <= ? GROUP BY kind "
                                    "ORDER BY MIN(rowid)", (self._usage_seen, last)).fetchall()
            for kind, *values in rows:  # a kind's first row is after every earlier kind's: the order holds
                total = self._usage_sums.setdefault(kind, [0] * len(USAGE_COLUMNS))
                for i, v in enumerate(values):
                    total[i] += int(v or 0)
            self._usage_seen = max(self._usage_seen, last)
            return {kind: dict(zip(USAGE_COLUMNS, total, strict=True)) for kind, total in self._usage_sums.items()}

    def usage_by_model(self, *, exclude_session: str | None = None) -> dict[str | None, dict[str, dict[str, int]]]:
        """Totals per model, then per call kind; rows logged before models were (model NULL) under None."""
        sums = ", ".join(f"SUM({c})" for c in USAGE_COLUMNS)
        with self._lock:
            rows = self._db.execute(f"SELECT model, kind, {sums} FROM usage WHERE session IS NOT ? GROUP BY model, "
                                    "kind ORDER BY MIN(rowid)", (exclude_session,)).fetchall()
        out: dict[str | None, dict[str, dict[str, int]]] = {}
        for model, kind, *values in rows:
            out.setdefault(model, {})[kind] = dict(zip(USAGE_COLUMNS, (int(v or 0) for v in values), strict=True))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def usage_log(run_path: Path, by_model: bool = False) -> dict:
    """A run's usage log (its cache.sqlite), summed per call kind, or per model and call kind; {} where the run has
    none. Each call is written there as it is paid, so a session ended by kill -9 counts too (the manifest's copy
    lags it)."""
    db = Path(run_path) / CACHE_FILE
    if not db.is_file():
        return {}
    cache = ResponseCache(db)
    try:
        return cache.usage_by_model() if by_model else cache.usage()
    finally:
        cache.close()


def _connect(path: Path) -> sqlite3.Connection:
    """The cache's connection, its tables made (or migrated) where missing. In a folder this process cannot write
    (a finished run on a read-only mount) the file is opened read-only and as it is: `show`, `cost` and the dry run
    read such a run (they died with "unable to open database file", WAL mode needing its files beside it)."""
    if path.is_file() and not os.access(path.parent, os.W_OK):
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False,
                               isolation_level=None)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT, finish_reason TEXT,"
               " prompt_tokens INTEGER, completion_tokens INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS requests (stage TEXT, n INTEGER, body TEXT, done INTEGER,"
               " PRIMARY KEY (stage, n))")
    db.execute("CREATE TABLE IF NOT EXISTS usage (session TEXT, kind TEXT, "
               + ", ".join(f"{c} INTEGER" for c in USAGE_COLUMNS) + ", model TEXT)")
    # A wave: its input file (the key: known before the batch is created), its batch once created, and the
    # estimated dollars and tokens at most, which count against the budget until its replies are in.
    db.execute("CREATE TABLE IF NOT EXISTS batch_waves (file_id TEXT PRIMARY KEY, batch_id TEXT, "
               "endpoint TEXT, est_usd REAL, est_tokens INTEGER, status TEXT, done INTEGER)")
    # reading: how its reply is read (JSON: stop sequences, logprobs asked); state: sent | done (its reply
    # recorded) | failed (a failed or expired line; tried again in a later wave)
    db.execute("CREATE TABLE IF NOT EXISTS batch_lines (file_id TEXT, custom_id TEXT, kind TEXT, "
               "reading TEXT, state TEXT, PRIMARY KEY (file_id, custom_id))")
    # A reply's batch is looked up by its key (get, fail_line): without this index every lookup read every line
    db.execute("CREATE INDEX IF NOT EXISTS batch_lines_by_key ON batch_lines (custom_id)")
    for name, sql_type in (("model", "TEXT"), ("cached_tokens", "INTEGER DEFAULT 0")):
        _add_column(db, name, sql_type)
    return db


def _add_column(db: sqlite3.Connection, name: str, sql_type: str) -> None:
    """Migrate a usage log from before a column was logged: from before each call's model (its old rows keep
    model NULL) or its prefix-cached prompt tokens (old rows 0: none were read then)."""
    if name in [row[1] for row in db.execute("PRAGMA table_info(usage)")]:
        return
    try:
        db.execute(f"ALTER TABLE usage ADD COLUMN {name} {sql_type}")
    except sqlite3.OperationalError as e:  # another process opened the same run a moment before
        if "duplicate column" not in str(e):
            raise
