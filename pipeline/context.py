"""The run context: what every step of a run needs, built once.

A `RunContext` holds the config, the run directory, prompts, seeds, a seeded RNG, progress
and the log, and (built on first use) the teacher, the judge and the run's response cache,
with usage recording and the budget. `run`, `score` and `eval` build their teachers here,
the same way: from the config dataclass (`teachers.make_teacher`), with the run's cache, a
usage-log session of their own and the run's budget attached (`budget.attach_run`).

A step is one function, `step(ctx, records) -> StepResult`, in its stage's file; `Step`
names it for the runner's list. A step reads and writes through the context and never opens
a progress bar (the loop opens it and hands the step `ctx.advance`), never checks the budget
and never records itself done: the loop in pipeline/runner.py does all three.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import platform
import random
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import __version__
from .budget import Budget, BudgetReached, attach_run, judge_config, session_budget
from .cache import CACHE_FILE, ResponseCache
from .config import BudgetConfig, RunConfig, TeacherConfig, recorded_settings, toml_value
from .errors import Seed2LoraError, mask_secrets, masked_argv
from .progress import no_progress
from .prompts import Prompts
from .records import Task
from .seeds import load_seeds
from .store import RunDir, read_jsonl, read_tasks, recorded_teacher, seeds_used
from .teachers import RUN_TEACHER, SCORE_JUDGE, Origin, Teacher, make_teacher, origin_of

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "openai", "httpx", "rouge-score", "datasets",
            "numba", "rapidfuzz", "datasketch")
EVENT_EVERY_S = 10.0  # at most one line per kind of teacher event in this many seconds: seen, not a flood
URL = re.compile(r"https?://[^\s;,()]+")
# A Batch API wave's own lines (submitted, ended, its unreadable results, the budget's cut): a few a wave, each with
# its batch id, never a flood, so never limited; with a short teacher.batch_poll_s a second wave's fell in the first's
# window and went unsaid. Its progress lines ("batch progress:", one a poll) stay limited.
WAVE_LINE = re.compile(r"^(\S+ )?batch (?!progress:)\S+:")
BATCH_ENDED = re.compile(r"^(\S+ )?batch ended: (\S+) ")  # its batch's progress lines held back are stale from here
USAGE_EVERY = 16  # replies between two refreshes of the manifest's usage and spend while a step runs
# ...and at most one refresh in this many seconds: a refresh reads the usage log and rewrites the manifest (ms
# each), which at a fast local server's 1,000 replies a second cost more than the replies (benchmarks/client_cpu.py)
USAGE_EVERY_S = 2.0
# The config tables that name a model the run calls. A command records its own settings, but a table whose model it
# never built (filter, select, export use no teacher) stays as the manifest recorded it: `filter RUN` wrote the
# default teacher over the run's, so a later `score RUN`, reading that config, stopped on the wrong teacher.
MODEL_TABLES = ("teacher", "score.teacher", "eval.judge")
# The settings a resume or a later step must not change by leaving them out (check_left_out): those of the tables its
# steps make records with, and the seeds and prompts. A run made with --num-instructions 500 and resumed without it
# went on to the default target of 100. Not the teacher's model (keep_recorded), nor settings that change no record:
# when bootstrap warns or gives up, and the dry run's guess of its yield.
RECORD_TABLES = ("bootstrap", "classify", "instances", "filter", "evolve", "score")
RECORD_SETTINGS = ("seed", "seed_tasks", "prompts_dir")
TEACHER_SETTINGS = ("teacher.base_url", "teacher.api", "teacher.structured", "teacher.system_prompt")
NO_RECORD_CHANGE = frozenset({"bootstrap.max_requests", "bootstrap.expected_yield", "bootstrap.yield_window",
                              "bootstrap.yield_warn", "bootstrap.yield_stop"})

# A progress reporter: (description, total or None, *, done=0: units done before this session) -> context manager
# yielding advance(n) (pipeline.progress.progress).
Progress = Callable[..., Any]
Log = Callable[[str], None]


def package_versions() -> dict[str, str]:
    """Versions of the packages a run records (a copy of what was read once a process)."""
    return dict(_package_versions())


@functools.cache  # the manifest is refreshed every USAGE_EVERY replies: asking importlib each time cost 50 ms
def _package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "seed2lora": __version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class Records(list):
    """A step's input: tasks, and the name of where they came from (a stage of the run, seeds, a path)."""

    def __init__(self, tasks: Iterable[Task] = (), source: str = "", note: str = ""):
        super().__init__(tasks)
        self.source = source
        self.note = note  # what reading them left out, for the step's line


@dataclass
class StepResult:
    """What a step did: its line for the console, the work it could not finish, and its counts."""

    message: str
    pending: int = 0  # tasks, prompts or slots left undone (teacher failures): a re-run retries them
    counts: dict[str, int] = field(default_factory=dict)  # generated, kept, rejected, ...: for the manifest

    @property
    def kept(self) -> int:
        return self.counts.get("kept", 0)

    @property
    def rejected(self) -> int:
        return self.counts.get("rejected", 0)


@dataclass(frozen=True)
class Step:
    """One entry of the runner's list: a name, the step function and what the loop does around it.

    reads: the step's records (None: it reads the run itself); the runner's default reads the
    stage named by `after`, or --input. progress: (description, total, already done) of the
    step's bar, or None for no bar. check: validation before anything is written.
    """

    name: str
    run: Callable[[RunContext, Records | None], StepResult]
    after: str | None = None  # the stage whose file it reads by default; set: --input replaces it
    reads: Callable[[RunContext], Records] | None = None
    progress: Callable[[RunContext, Records | None], tuple[str, int | None, int] | None] | None = None
    check: Callable[[RunContext], None] | None = None
    teacher: str | None = None  # "teacher" or "judge": preflighted before the first step runs
    tables: tuple[str, ...] = ()  # the config tables it reads: recorded from the command that runs it (recorded_config)
    # Its work left, counted from the run's files when a run stops, for a step RunDir.pending cannot count (evolve's
    # slots with rounds to go, score's rows without an outcome, ifd's rows unscored); None: its work left is no count
    left: Callable[[RunContext], int] | None = None

    @property
    def takes_input(self) -> bool:
        return self.after is not None or self.reads is not None


class RateLimitedLog:
    """Teacher events to the console, at most one per kind every EVENT_EVERY_S, with a count of the rest; a batch
    wave's own lines (WAVE_LINE) every one."""

    def __init__(self, log: Log, prefix: str = "teacher: "):
        self.log, self.prefix, self.last, self.skipped = log, prefix, {}, {}

    def __call__(self, message: str) -> None:
        if WAVE_LINE.match(message):
            if ended := BATCH_ENDED.match(message):  # "about 9 s left" said after the batch ended misled
                self.drop_held(f"{ended.group(1) or ''}batch progress", f": {ended.group(2)} ")
            self.log(f"{self.prefix}{message}")
            return
        kind = event_kind(message)
        now = time.monotonic()
        if now - self.last.get(kind, -EVENT_EVERY_S) < EVENT_EVERY_S:
            self.skipped[kind] = (self.skipped.get(kind, (0, ""))[0] + 1, message)
            return
        for state, opposite in (("endpoint down ", "endpoint back "), ("endpoint back ", "endpoint down ")):
            if kind.startswith(state):  # its opposite held back is said first: never "down" below a later "back"
                self.say_held(opposite + kind[len(state):])
        more = self.skipped.pop(kind, (0, ""))[0]
        self.last[kind] = now
        self.log(f"{self.prefix}{message}" + (f" (and {more} more like it)" if more else ""))

    def say_held(self, kind: str) -> None:
        """The last event of `kind` held back, said now with the count of the rest."""
        if kind in self.skipped:
            n, last = self.skipped.pop(kind)
            self.last[kind] = time.monotonic()
            self.log(f"{self.prefix}{last}" + (f" (and {n - 1} more like it)" if n > 1 else ""))

    def drop_held(self, kind: str, naming: str) -> None:
        """The event of `kind` held back, forgotten if it holds `naming`: news a later line has made stale."""
        if naming in self.skipped.get(kind, (0, ""))[1]:
            self.skipped.pop(kind)

    def flush(self) -> None:
        """The events held back and not yet counted on a later line of their kind, said now (a step's end): the last
        of each kind, with the count of the rest. Before, a burst's tail that no later event followed vanished."""
        for kind in list(self.skipped):
            self.say_held(kind)


def flush_events(ctx: RunContext) -> None:
    """The run's teacher's and judge's events still held back by their rate limit, said now (RateLimitedLog.flush)."""
    for teacher in (ctx._teacher, ctx._judge):
        if isinstance(getattr(teacher, "on_event", None), RateLimitedLog):
            teacher.on_event.flush()


def event_kind(message: str) -> str:
    """What the rate limit counts as one kind: the words before the first colon, and the endpoint the event names.
    Without the URL, "endpoint down: B" within 10 s of "endpoint down: A" was never printed, nor a second dead
    endpoint's line at the start (their kind was the "http" of "http://...")."""
    urls = [url.rstrip(":.") for url in URL.findall(message)]
    for url in urls:
        message = message.replace(url, "URL")
    head = message.split(" after ", 1)[0].split(":", 1)[0]
    return f"{head} {urls[0]}" if urls else head


def command_line() -> str:
    """This process's command, as the manifest records it (secrets masked)."""
    return " ".join(masked_argv(["seed2lora", *sys.argv[1:]]))


def build_teacher(cfg: TeacherConfig, seed: int, log: Log, origin: Origin | None = None) -> Teacher:
    """A teacher from its config, its events (retries, timeouts) to `log` at a readable rate, each line prefixed
    with its role. `origin`: the table cfg is and the flags of the command for it (teachers/origin.py), which its
    messages name; None: the run's teacher as `run` builds it."""
    origin = origin or origin_of("teacher")
    teacher = make_teacher(cfg, seed=seed, origin=origin)
    if getattr(teacher, "on_event", False) is None:
        teacher.on_event = RateLimitedLog(log, f"{origin.role}: ")
    return teacher


def preflight(teacher: Teacher, log: Log | None = None) -> None:
    """Ask a server teacher for one token (once): a wrong port or a dead server fails here, naming the URL.
    Then say how it will be driven (api auto's choice, structured replies), which the manifest records too."""
    check = getattr(teacher, "preflight", None)
    if check is not None and not getattr(teacher, "preflighted", False):
        check()
        teacher.preflighted = True
        d = teacher.describe()
        if log is not None and d.get("api_choice"):
            log(f"{teacher.name}: api {d['api_choice']}; structured replies {d.get('structured_choice', 'off')}")


class RunContext:
    """One run directory with its config, seeds, prompts and (lazily built) teacher, judge, cache and budget."""

    def __init__(self, cfg: RunConfig, teacher: Teacher | None = None, progress: Progress | None = None,
                 log: Log | None = None, *, input_path: str | Path | None = None, session_tag: str = "",
                 flags: dict[str, str] | None = None):
        self.cfg = cfg
        # The command's flags by the setting each sets ({"score.teacher.base_url": "--judge-base-url"}): the teachers
        # it builds name them in their messages (origin_of). None: a command that did not say (the run's teacher
        # then names run's flags, a judge only --set)
        self.flags = flags
        self.log: Log = log or (lambda message: None)  # live lines of the long steps (train, eval)
        self.run = RunDir(cfg.run_dir)
        self.prompts = Prompts(cfg.prompts_dir or None)
        self.progress: Progress = progress or no_progress
        self.advance: Callable[[int], None] = lambda n: None  # the open bar's advance (the loop sets it)
        self.advances: dict[str, Callable[[int], None]] = {}  # each open bar's, by step: the steps of a flow
        self.rng = random.Random(cfg.seed)  # for steps that draw without a salt of their own
        self.input_path = input_path  # --input of a stage command
        self.importing: list[str] = []  # the steps reading --input: a user's file (store.seeds_used)
        self.rescore = False  # `seed2lora score --rescore`: the score step starts from nothing
        # The Python API (pipeline.Run) drives this context: a note's fix names what a Run sets, not a CLI flag
        self.python = False
        self.session_id = f"{os.getpid()}-{session_tag}{uuid.uuid4().hex[:8]}"  # this process's usage-log rows
        self._teacher = teacher
        # What the manifest records as the command that wrote it; "": the CLI's own command line. The Python API
        # names its call here: argv then was a notebook kernel's or a script's ("seed2lora -f kernel-1.json")
        self.command = ""
        # The MODEL_TABLES this command's teachers come from (asked for by a step): only these are recorded from its
        # config; a teacher passed in that no step asks for leaves [teacher] as recorded too
        self.uses: set[str] = set()
        # The tables of the steps this command does not run (the runner sets them): the manifest keeps them, so it
        # says how those steps' records were made (`evolve R` wrote the default 100 over --num-instructions 500)
        self.kept_tables: set[str] = set()
        self.steps: list[str] = []  # the steps it runs, in order: what a step's check finds written when its turn comes
        self.step_tables: set[str] = set()  # those of the steps it runs: the teacher's stop names their left-out too
        self.folder_tables: set[str] = set()  # those of its steps that write a folder (runner.FOLDER_STEPS)
        self._judge: Teacher | None = None  # score's judge when [score.teacher] names its own
        self._cache: ResponseCache | None = None
        self._budget: Budget | None = None  # the session's one budget, shared by the teacher and the judge
        self._attached: dict[int, Teacher] = {}  # the teachers attached to this run's cache, by id
        self.records_at_start = self.run.records_version()  # what tells whether this session has made a record

    @classmethod
    def of_run(cls, run_dir: str | Path, log: Log | None = None, session_tag: str = "") -> RunContext:
        """The context of an existing run, with the config its manifest recorded (prompts_dir and budget included)."""
        from .config import recorded_config

        run = Path(run_dir)
        cfg = recorded_config(RunDir(run).manifest().get("config") or {}, run)
        return cls(cfg, log=log, session_tag=session_tag)

    @cached_property
    def seeds(self) -> list[Task]:
        return _noted_seeds(self.cfg.seed_tasks or None, self.log)

    # ------------------------------------------------------------ teacher, judge, cache, budget

    @property
    def bare_teacher(self) -> Teacher:
        """The run's teacher before it is attached to the run's cache (validation preflights this one)."""
        if self._teacher is None:
            self.keep_recorded("teacher", self.cfg.teacher.spec.strip(), self.cfg.was_given("teacher.spec"))
            self._teacher = build_teacher(self.cfg.teacher, self.cfg.seed, self.log, self.origin("teacher"))
        self.uses.add("teacher")
        return self._teacher

    @property
    def teacher(self) -> Teacher:
        """The teacher, with this run's response cache, usage log and budget attached."""
        return self.attach(self.bare_teacher)

    @property
    def bare_judge(self) -> Teacher:
        """The score step's judge: the run's teacher unless [score.teacher] names another."""
        if self._judge is None:
            spec = self.cfg.score.teacher.spec.strip()
            recorded = self.run.manifest()
            # A run whose judge was its teacher keeps that by leaving [score.teacher] out (the teacher is checked)
            followed = (recorded.get("judge") or {}).get("name") in (None, (recorded.get("teacher") or {}).get("name"))
            given = self.cfg.was_given("score.teacher.spec") or (not spec and followed)
            self.keep_recorded("judge", spec or self.bare_teacher.name, given)
            if not spec and self.cfg.score.teacher.base_url.strip() and self.cfg.was_given("score.teacher.base_url"):
                origin = self.origin("score.teacher")  # without a judge of its own, the URL would go unused
                raise Seed2LoraError(f"{origin.where('base_url')} names the judge's server, but no judge model is "
                                     "named: the run's teacher judges, at its own URL. Fix: name the judge too ("
                                     f"{origin.give('spec', 'openai:MODEL')}), or leave the URL out")
            self._judge = build_teacher(judge_config(self.cfg), self.cfg.seed, self.log,
                                        self.origin("score.teacher")) if spec else self.bare_teacher
            self.uses.add("score.teacher")
        return self._judge

    def origin(self, table: str) -> Origin:
        """The Origin of a teacher from `table` that this command builds: its messages name that table's settings
        and this command's flags (a judge's said "check --base-url", which `score` refuses)."""
        return origin_of(table, self.flags)

    def keep_recorded(self, role: str, name: str, given: bool) -> None:
        """A command on a run made with another teacher (or scored by another judge), as its manifest names: stop
        before any request (exit 2, nothing written) when this one comes by omission, the default of a flag left out
        on a resume or a later stage; say so when it was named on purpose, since the records will mix."""
        before = recorded_teacher(self.run.manifest(), role)
        name_before = before.get("name")
        if not name_before or name_before == name:
            return
        # --set first: every command that builds a teacher or judge takes it, the flags only some (run has no
        # --judge, score no --teacher: a fix naming them failed with "No such option")
        # Its table and flags as the commands that name it by flag (run, score) build it
        home, made, where = ((RUN_TEACHER, "made with teacher", ("run and evolve", "take")) if role == "teacher"
                             else (SCORE_JUDGE, "scored by judge", ("score", "takes")))
        url = mask_secrets(str(before.get("base_url") or ""))
        same = home.give("spec", name_before) + (f" {home.give('base_url', url)}" if url else "")
        by_set = f"--set {home.key('spec')}={name_before}" + (f" --set {home.key('base_url')}={url}" if url else "")
        if not given:
            # With the settings it leaves out too (check_left_out): pasted, the fix stopped again, naming them
            more = left_out_sets(self, self.step_tables) if role == "teacher" else ""
            raise Seed2LoraError(
                f"{self.run.path} was {made} {name_before} (manifest.json), and this command names no {role}: it "
                f"would go on with the default, {name}, and mix the two in the run's records. Fix: give {by_set}"
                + (f" ({where[0]} {where[1]} {same} too) to go on with it" if not more else
                   f"{more} to go on as the run was made (this command leaves its settings out too; {where[0]} "
                   f"{where[1]} {same} in place of the {role}'s --set)")
                + f", or name another {role} explicitly (--set {home.key('spec')}, or {home.flags['spec']} in "
                f"{where[0]}) to mix them on purpose")
        self.log(f"note: {self.run.path} was {made} {name_before} (manifest.json) and this command uses {name}: "
                 f"the run's records will mix the two. To keep its {role}, give {by_set} ({where[0]} {where[1]} "
                 f"{same} too) again")

    @property
    def judge(self) -> Teacher:
        """The judge with this run's cache, usage log and budget attached (replies are keyed by its model)."""
        return self.attach(self.bare_judge)

    def attach(self, teacher: Teacher) -> Teacher:
        """Give a teacher this run's cache, usage log and budget (once; one passed in may have served another run)."""
        if id(teacher) not in self._attached:
            self._attached[id(teacher)] = teacher
            attach_run(teacher, self.cache, self.session_id, self.budget)
        return teacher

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            self.run.ensure()
            self._cache = ResponseCache(self.run.path / CACHE_FILE)
        return self._cache

    @property
    def budget(self) -> Budget:
        """The limits over the whole run, every call at its own model: earlier sessions' spend from the usage log
        (rows from before it named models go to the teacher the manifest recorded), then this session's."""
        if self._budget is None:
            self._budget = session_budget(self.cfg.budget, self.cache, self.session_id, self.run.manifest())
        return self._budget

    def command_line(self) -> str:
        """The command the manifest records: the Python API's call where it named one, else this process's."""
        return self.command or command_line()

    def check_budget(self, stage: str) -> None:
        """Stop (exit 3) when the run's token or dollar limit is reached; everything written stays consistent."""
        budget = self._budget
        if budget is not None and budget.reached:
            spend = budget.spend()
            raise BudgetReached(f"budget reached in {stage} ({spend['total_tokens']} tokens"
                                + (f", ${spend['cost_usd']:.4f}" if spend["cost_usd"] is not None else "")
                                + f"); {self.run.path} is consistent. Fix: raise {budget_limits(self.cfg.budget)} "
                                "(--max-tokens-total / --max-cost, --set, or settings= in Python) and run the same "
                                "command to go on")

    def close(self) -> None:
        """Close the run's database (its WAL is folded in now, not whenever this object is collected)."""
        if self._cache is not None:
            self._cache.close()
            self._cache, self._budget = None, None
            for teacher in self._attached.values():
                teacher.cache = None
            self._attached.clear()

    # ------------------------------------------------------------ the manifest

    def record(self, **fields: Any) -> dict[str, Any]:
        """Update the manifest: config, versions, teacher, prompts, and usage from the durable usage log."""
        self.run.ensure()
        if self._budget is not None:  # a teacher or judge is attached: usage and spend of every model
            fields["usage"] = self.cache.usage()
            fields.setdefault("spend", self._budget.spend())
        # What the records were made with (config, prompts, teacher, seeds) is this session's once it has written
        # one; before, it stays as recorded: a finished run opened with other seeds to read it, or resumed with
        # nothing left to do, made nothing with them (the manifest said the run was made from them).
        made = self.run.records_version() != self.records_at_start or not self.run.manifest().get("config")
        if made and self._teacher is not None and id(self._teacher) in self._attached:
            fields.setdefault("teacher", self._teacher.describe())
        if made:
            fields.setdefault("prompts", self.prompts.hashes())
        m = self.run.update_manifest(seed2lora_version=__version__, command=self.command_line(),
                                     config=self.recorded_config(made), packages=package_versions(), **fields)
        if not made:
            return m
        seeds = seeds_record(seeds_used(m, importing=self.importing), self.cfg.seed_tasks, lambda: len(self.seeds))
        return m if all(m.get(k, 0) == v for k, v in seeds.items()) else self.run.update_manifest(**seeds)

    def recorded_config(self, made: bool = True) -> dict[str, Any]:
        """This command's config for the manifest (config_to_record)."""
        return config_to_record(self, made)

    def every(self, n: int = USAGE_EVERY) -> Callable[[int], None]:
        """A callback for replies handled so far: refreshes the manifest (usage, spend) every n of them, at most
        once in USAGE_EVERY_S seconds."""
        last = [time.monotonic()]

        def refresh(done: int) -> None:
            if done % n == 0 and time.monotonic() - last[0] >= USAGE_EVERY_S:
                last[0] = time.monotonic()
                self.record()

        return refresh

    # ------------------------------------------------------------ reading a step's records

    def input_provenance(self) -> dict[str, str] | None:
        """--input's file for the manifest entry of the stage that read it (a folder has no sha256): rows a user
        brought were not made by this run, and export's card names where they came from."""
        if not self.input_path:
            return None
        path = Path(self.input_path).resolve()
        return {"path": str(path), **({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()} if path.is_file()
                                      else {})}

    def input_tasks(self, stage: str) -> Records:
        """--input (a stage file of ours or a seed-like file), else the run's file of `stage`."""
        if self.input_path:
            path = self.input_path
            if is_run_file(path):
                return Records(read_tasks(path), str(path))
            # A user's rows given to a stage are records to process, not the run's human seeds: as origin "seed",
            # the 4,000 Alpaca rows through `filter --input` were counted as seed tasks and all kept out of
            # export's eval split.
            # Ids from content, not position: an edited file's rows keep theirs, and with them their ifd and score.
            rows = load_seeds(path, content_ids=True)
            return Records([dataclasses.replace(t, origin="machine") for t in rows], str(path), rows.note(Path(path).name))
        source = self.run.stage_file(stage)
        if not source.exists():
            raise Seed2LoraError(f"{source} does not exist. Fix: run `seed2lora {stage}` for this run first, or "
                                 "pass --input FILE")
        return Records(read_tasks(source), stage)


def seeds_record(used: bool, seed_tasks: str, count: Callable[[], int]) -> dict[str, Any]:
    """The manifest's seed_file and num_seeds: the seed file the run's records came from (store.seeds_used), or
    None for a run of a user's file (it said `bundled seeds/seed_tasks.jsonl`, 175, of an evolve-only or
    `filter --input` run that never used them)."""
    if not used:
        return {"seed_file": None, "num_seeds": None}
    return {"seed_file": str(seed_tasks or "bundled seeds/seed_tasks.jsonl"), "num_seeds": count()}


def _noted_seeds(path: str | None, log: Log) -> list[Task]:
    """The seed tasks; a row repeated whole is loaded once, a row's input with no output left out, and a note says
    so."""
    seeds = load_seeds(path)
    if note := seeds.note(Path(path or "seed_tasks.jsonl").name):
        log(f"note: {note}")
    return seeds


def is_run_file(path: str | Path) -> bool:
    """A stage file of ours (has 'stage' fields) rather than a user's seed-like file."""
    if Path(path).suffix.lower() != ".jsonl":
        return False
    for _, obj in read_jsonl(path, strict=False):
        return "stage" in obj and "origin" in obj
    return False


def config_to_record(ctx: RunContext, made: bool = True) -> dict[str, Any]:
    """This command's config for the manifest, but for the MODEL_TABLES it built no model from: those stay as
    the manifest had them, so the run's config keeps naming the teacher (and judges) that made its records.
    Not `made` (no record written yet): all as the manifest had it, but for the tables of the steps that write
    a folder (export, train, eval) that it runs."""
    config = ctx.cfg.to_dict()
    before = ctx.run.manifest().get("config") or {}
    if not made:
        return {**config, **{k: v for k, v in before.items() if k not in ctx.folder_tables}}
    for table in ctx.kept_tables:
        if isinstance(before.get(table), dict):
            config[table] = before[table]
    for dotted in MODEL_TABLES:
        if dotted in ctx.uses:
            continue
        *parents, key = dotted.split(".")
        old, new = before, config
        for part in parents:
            old, new = old.get(part) if isinstance(old, dict) else None, new[part]
        if isinstance(old, dict) and key in old:
            new[key] = old[key]
    return config


def left_out_settings(ctx: RunContext, tables: set[str], teacher: bool,
                      as_made: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The settings of `tables` the run was made with that this command leaves out (check_left_out), and the
    recorded values. as_made: as if the command named the run's own teacher (its TEACHER_SETTINGS count too)."""
    recorded = ctx.run.manifest().get("config")
    making = tables & set(RECORD_TABLES)
    if not recorded or not making:
        return [], {}
    then, now = recorded_settings(recorded), recorded_settings(ctx.cfg.to_dict())
    same_teacher = teacher and (as_made or now.get("teacher.spec") == then.get("teacher.spec"))
    checked = [k for k in then if k in now and k not in NO_RECORD_CHANGE and not k.startswith("score.teacher.") and (
        k in RECORD_SETTINGS or k.split(".")[0] in making or (same_teacher and k in TEACHER_SETTINGS))]
    return [k for k in checked if now[k] != then[k] and not ctx.cfg.was_given(k)], then


def budget_limits(cfg: BudgetConfig) -> str:
    """The limits a budget stop can raise, by setting and value: "budget.max_tokens_total (now 100)". Named by
    setting, not only by run's flags: Python's settings={...} and `--set` take these names, not --max-cost."""
    limits = [f"budget.{k} (now {v})" for k, v in (("max_tokens_total", cfg.max_tokens_total),
                                                   ("max_cost", cfg.max_cost)) if v]
    return " or ".join(limits) or "budget.max_tokens_total or budget.max_cost"


def set_flags(keys: Iterable[str], values: dict[str, Any], flags: dict[str, str] | None = None) -> str:
    """' --set KEY=VALUE' for each key, its value as --set takes it, quoted for a shell; ' --seeds PATH' where
    `flags` (setting -> the command's flag) has a flag that takes the value (a switch such as --batch takes none)."""
    def given(k: str) -> str:
        flag, value = (flags or {}).get(k), values[k]
        if flag and isinstance(value, str | int | float) and not isinstance(value, bool):
            return f" {flag} {shlex.quote(str(value))}"
        return f" --set {shlex.quote(f'{k}={toml_value(value)}')}"

    return "".join(given(k) for k in keys)


def left_out_sets(ctx: RunContext, tables: set[str]) -> str:
    """set_flags of each setting of `tables` left out, with its recorded value; "" when none."""
    keys, then = left_out_settings(ctx, tables, teacher=True, as_made=True)  # the fix names the run's teacher
    return set_flags((k for k in keys if k != "teacher.base_url"), then)


def check_left_out(ctx: RunContext, tables: set[str], teacher: bool) -> None:
    """A command on a run made with other settings, that leaves one out (its default comes by omission): stop before
    anything is written (exit 2), naming the --set that goes on as the run was made. `tables`: those the command's
    steps read; `teacher`: whether a step calls the run's teacher. A setting named on purpose is a change."""
    left_out, then = left_out_settings(ctx, tables, teacher)
    if not left_out:
        return
    manifest = ctx.run.manifest()
    now = recorded_settings(ctx.cfg.to_dict())
    was = ", ".join(f"{k} = {toml_value(then[k])}" for k in left_out)
    would = ", ".join(f"{k} = {toml_value(now[k])}" for k in left_out)
    fix = set_flags(left_out, then, ctx.flags).strip()
    it, s = ("it", "") if len(left_out) == 1 else ("them", "s")
    raise Seed2LoraError(
        f"{ctx.run.path} was made with {was} (manifest.json), and this command leaves {it} out: it would go on with "
        f"{would}, the default{s}, and the run's records "
        f"would mix the two. Fix: give {fix} to go on as the run was made, or name the new value with --set to "
        "change it on purpose" + (f" (its last command: {manifest['command']})" if manifest.get("command") else ""))
