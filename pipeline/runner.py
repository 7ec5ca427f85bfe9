"""The runner: a run is a list of steps, and one loop runs them.

Each step is a stage (bootstrap, classify, instances, filter, evolve, export, train,
eval) that reads the previous stage's file (or an --input file) and writes its own. The
loop owns everything around the steps:
- validation before any write: config, seeds, inputs, the teacher and its endpoints, so a
  command that fails leaves a finished run byte-identical and makes no folder;
- the manifest: status (running, done, interrupted, failed, budget, incomplete), the stage,
  the reason, pending work, usage and spend, the resolved config, versions, prompt hashes;
- usage and spend from the run's durable usage log, so they survive kill -9 and Ctrl-C;
- the budget check after each step (exit 3), and pending work (exit 5): a step is done
  only when all its output is written; a re-run retries exactly what is pending;
- live lines: teacher retries and timeouts, rate-limited, and the accept rate.

A new stage is one file in stages/ plus one Step in `Session.steps`; the loop is unchanged.
Secrets never enter the manifest: the config holds only the *name* of the API key's variable.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .budget import Budget, BudgetReached, attach_run, session_budget
from .cache import CACHE_FILE, ResponseCache
from .config import RunConfig, TeacherConfig
from .datasets_io import Fields, load_pool
from .errors import Incomplete, Seed2LoraError, mask_secrets, masked_argv
from .prompts import Prompts
from .records import Task
from .seeds import load_seeds
from .stages.bootstrap import run_bootstrap
from .stages.classify import run_classify
from .stages.evolve import check_source, run_evolve
from .stages.filter import filter_tasks, instance_demonstrations
from .stages.instances import run_instances
from .stages.score import judge_config, run_score
from .store import STAGES, RunDir, read_tasks, write_jsonl_atomic
from .teachers import Teacher, make_teacher

STAGE_INPUT = {"classify": "bootstrap", "instances": "classify", "filter": "instances"}
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "openai", "httpx", "rouge-score", "datasets",
            "numba", "rapidfuzz", "datasketch")
EVENT_EVERY_S = 10.0  # at most one line per kind of teacher event in this many seconds: seen, not a flood

# A progress reporter: (description, total or None) -> context manager yielding advance(n).
Progress = Callable[[str, int | None], Any]


@contextmanager
def _no_progress(desc: str, total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "seed2lora": __version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class StepResult:
    """What a step did: its line for the console, and the work it could not finish."""

    message: str
    pending: int = 0  # tasks, prompts or slots left undone (teacher failures): a re-run retries them
    counts: dict[str, int] = field(default_factory=dict)  # generated, kept, rejected, pending: for the manifest


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[str | Path | None], StepResult]
    uses_teacher: bool = False
    takes_input: bool = False


class RateLimitedLog:
    """Teacher events to the console, at most one per kind every EVENT_EVERY_S, with a count of the rest."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.last, self.skipped = log, {}, {}

    def __call__(self, message: str) -> None:
        kind = message.split(" after ", 1)[0].split(":", 1)[0]
        now = time.monotonic()
        if now - self.last.get(kind, -EVENT_EVERY_S) < EVENT_EVERY_S:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return
        more = self.skipped.pop(kind, 0)
        self.last[kind] = now
        self.log(f"teacher: {message}" + (f" (and {more} more like it)" if more else ""))


class Session:
    """One run directory with its config, seeds, prompts and (lazily loaded) teacher."""

    def __init__(self, cfg: RunConfig, teacher: Teacher | None = None, progress: Progress | None = None,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.log = log or (lambda message: None)  # live lines of the long steps (train, eval)
        self.run = RunDir(cfg.run_dir)
        self.prompts = Prompts(cfg.prompts_dir or None)
        self.seeds = load_seeds(cfg.seed_tasks or None)
        self._teacher = teacher
        self.progress = progress or _no_progress
        self._cache: ResponseCache | None = None
        self._judge: Teacher | None = None  # score's teacher when [score.teacher] names its own
        self._budget: Budget | None = None  # the session's one budget, shared by the teacher and the judge
        self._rescore = False  # `seed2lora score --rescore`: the score step starts from nothing
        self._attached = False
        self.session_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # this process's rows in the usage log
        self.steps = [
            Step("bootstrap", self._bootstrap, uses_teacher=True),
            Step("classify", self._classify, uses_teacher=True, takes_input=True),
            Step("instances", self._instances, uses_teacher=True, takes_input=True),
            Step("filter", self._filter, takes_input=True),
            Step("evolve", self._evolve, uses_teacher=True, takes_input=True),
            Step("score", self._score, uses_teacher=True),
            Step("ifd", self._ifd),
            Step("select", self._select),
            Step("export", self._export),
            Step("train", self._train),
            Step("eval", self._eval),
        ]

    # ------------------------------------------------------------ the one loop

    def run_steps(self, names: list[str], input_path: str | Path | None = None) -> list[str]:
        """Run the named steps in pipeline order; each message is also logged as it comes."""
        known = [s.name for s in self.steps]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise Seed2LoraError(f"unknown stage(s) {unknown} in 'stages'. Fix: use {known}")
        steps = [s for s in self.steps if s.name in names]
        self.validate(steps, input_path)  # raises before anything is written
        messages: list[str] = []
        step = steps[0] if steps else None
        try:
            for step in steps:
                self.record(status="running", stage=step.name, reason=None)
                result = step.run(input_path if step.takes_input else None)
                self.check_budget(step.name)
                self.record(stages={step.name: {**result.counts, "pending": result.pending}})
                if result.pending:
                    raise Incomplete(f"{result.message}. {result.pending} pending in {step.name}; run the same "
                                     "command again to retry exactly those")
                messages.append(result.message)
                self.log(result.message)
            self.record(status="done", reason=None)
        except KeyboardInterrupt:
            self.record(status="interrupted", stage=step.name if step else None,
                        reason="interrupted (Ctrl-C or SIGTERM); run the same command to resume")
            raise
        except BudgetReached as e:
            self.record(status="budget", reason=str(e))
            raise
        except Incomplete as e:
            self.record(status="incomplete", reason=str(e))
            raise
        except Exception as e:
            self.record(status="failed", reason=mask_secrets(f"{type(e).__name__}: {e}"))
            raise
        finally:
            self.close()
        return messages

    def close(self) -> None:
        """Close the run's database (its WAL is folded in now, not whenever this object is collected)."""
        if self._cache is not None:
            self._cache.close()
            self._cache, self._attached, self._budget = None, False, None
            if self._teacher is not None:
                self._teacher.cache = None
            if self._judge is not None:
                self._judge.cache = None

    def validate(self, steps: list[Step], input_path: str | Path | None) -> None:
        """Everything that can fail on bad input, before the run folder or manifest is touched."""
        for step in steps:
            if step.takes_input and input_path is None and step.name in STAGE_INPUT and steps[0] is step:
                source = self.run.stage_file(STAGE_INPUT[step.name])
                if not source.exists():
                    raise Seed2LoraError(f"{source} does not exist. Fix: run `seed2lora {STAGE_INPUT[step.name]}` "
                                         "for this run first, or pass --input FILE")
            if step.name == "evolve":
                self.evolve_pool(input_path, check_only=True)
        teachers = [self.bare_teacher] if any(s.uses_teacher and s.name != "score" for s in steps) else []
        if any(s.name == "score" for s in steps):
            teachers.append(self.bare_judge)
        for teacher in dict.fromkeys(teachers):
            preflight = getattr(teacher, "preflight", None)
            if preflight is not None and not getattr(teacher, "preflighted", False):
                preflight()  # a wrong port or a dead server fails here, in seconds, naming the URL
                teacher.preflighted = True

    def _new_teacher(self, cfg: TeacherConfig) -> Teacher:
        teacher = make_teacher(cfg, seed=self.cfg.seed)
        if getattr(teacher, "on_event", False) is None:
            teacher.on_event = RateLimitedLog(self.log)
        return teacher

    @property
    def bare_teacher(self) -> Teacher:
        if self._teacher is None:
            self._teacher = self._new_teacher(self.cfg.teacher)
        return self._teacher

    @property
    def teacher(self) -> Teacher:
        """The teacher, with this run's response cache, usage log and budget attached."""
        teacher = self.bare_teacher
        if not self._attached:  # a teacher passed in may have served another run before
            self._attached = True
            attach_run(teacher, self.cache, self.session_id, self.budget)
        return teacher

    @property
    def bare_judge(self) -> Teacher:
        """The score step's judge: the run's teacher unless [score.teacher] names another."""
        if not self.cfg.score.teacher.spec:
            return self.bare_teacher
        if self._judge is None:
            self._judge = self._new_teacher(judge_config(self.cfg))
        return self._judge

    @property
    def judge(self) -> Teacher:
        """The judge with this run's cache, usage log and budget attached (replies are keyed by its model)."""
        judge = self.bare_judge
        if judge is self._teacher:
            return self.teacher
        if judge.cache is None:
            attach_run(judge, self.cache, self.session_id, self.budget)
        return judge

    @property
    def budget(self) -> Budget:
        """The limits over the whole run, every call at its own model: earlier sessions' spend from the usage log
        (rows from before it named models go to the teacher the manifest recorded), then this session's."""
        if self._budget is None:
            self._budget = session_budget(self.cfg.budget, self.cache, self.session_id, self.run.manifest())
        return self._budget

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            self.run.ensure()
            self._cache = ResponseCache(self.run.path / CACHE_FILE)
        return self._cache

    def check_budget(self, stage: str) -> None:
        budget = self._budget
        if budget is not None and budget.reached:
            spend = budget.spend()
            raise BudgetReached(f"budget reached in {stage} ({spend['total_tokens']} tokens"
                                + (f", ${spend['cost_usd']:.4f}" if spend["cost_usd"] is not None else "")
                                + f"); {self.run.path} is consistent. Raise --max-tokens-total / --max-cost "
                                "and run the same command to go on")

    def record(self, **fields: Any) -> dict[str, Any]:
        """Update the manifest: config, versions, teacher, prompts, and usage from the durable usage log."""
        self.run.ensure()
        if self._budget is not None:  # a teacher or judge is attached: usage and spend of every model
            fields["usage"] = self.cache.usage()
            fields.setdefault("spend", self._budget.spend())
        if self._teacher is not None and self._attached:
            fields.setdefault("teacher", self._teacher.describe())
        return self.run.update_manifest(
            seed2lora_version=__version__, command=" ".join(masked_argv(["seed2lora", *sys.argv[1:]])),
            config=self.cfg.to_dict(), packages=package_versions(), prompts=self.prompts.hashes(),
            seed_file=str(self.cfg.seed_tasks or "bundled seeds/seed_tasks.jsonl"), num_seeds=len(self.seeds),
            **fields)

    def _every(self, n: int) -> Callable[[int], None]:
        """A progress callback that refreshes the manifest (usage, spend) every n replies."""
        return lambda done: self.record() if done % n == 0 else None

    # ------------------------------------------------------------ one method per command

    def run_all(self) -> list[str]:
        """Every stage named in cfg.stages, in pipeline order."""
        return self.run_steps(list(self.cfg.stages))

    def bootstrap(self) -> str:
        return self.run_steps(["bootstrap"])[0]

    def classify(self, input_path: str | Path | None = None) -> str:
        return self.run_steps(["classify"], input_path)[0]

    def instances(self, input_path: str | Path | None = None) -> str:
        return self.run_steps(["instances"], input_path)[0]

    def filter(self, input_path: str | Path | None = None) -> str:
        return self.run_steps(["filter"], input_path)[0]

    def evolve(self, input_path: str | Path | None = None) -> str:
        return self.run_steps(["evolve"], input_path)[0]

    def score(self, rescore: bool = False) -> str:
        """rescore: remove the ratings and score rejections first (after validation), to rate every row again."""
        self._rescore = rescore
        return self.run_steps(["score"])[0]

    def ifd(self) -> str:
        return self.run_steps(["ifd"])[0]

    def select(self) -> str:
        return self.run_steps(["select"])[0]

    def export(self) -> str:
        return self.run_steps(["export"])[0]

    def train(self) -> str:
        return self.run_steps(["train"])[0]

    def eval(self) -> str:
        return self.run_steps(["eval"])[0]

    # ------------------------------------------------------------ the steps

    def input_tasks(self, stage: str, input_path: str | Path | None) -> list[Task]:
        if input_path:
            return read_tasks(input_path) if _is_run_file(input_path) else load_seeds(input_path)
        source = self.run.stage_file(STAGE_INPUT[stage])
        if not source.exists():
            raise Seed2LoraError(f"{source} does not exist. Fix: run `seed2lora {STAGE_INPUT[stage]}` for this run "
                                 f"first, or pass --input FILE")
        return read_tasks(source)

    def _bootstrap(self, _input: None = None) -> StepResult:
        with self.progress("bootstrap: instructions kept", self.cfg.bootstrap.num_instructions) as advance:
            advance(len(self.run.read_stage("bootstrap")))
            r = run_bootstrap(self.teacher, self.seeds, self.cfg, self.run, self.prompts, self.cache,
                              on_kept=advance, on_progress=self._every(16), say=self.log)
        message = (f"bootstrap: {r.new} new instructions kept ({r.kept} in the pool), {r.rejected} rejected, "
                   f"{r.requests} prompts sent so far")
        if r.pending:
            message += f"; stopped at bootstrap.max_requests with {r.pending} instructions short of the target"
        return StepResult(message, r.pending, {"replies": r.replies, "kept": r.new, "rejected": r.rejected})

    def _map_stage(self, stage: str, runner: Callable[..., Any], input_path: str | Path | None) -> StepResult:
        tasks = self.input_tasks(stage, input_path)
        with self.progress(stage, len(tasks)) as advance:
            r = runner(self.teacher, tasks, self.cfg, self.run, self.prompts, progress=advance)
        done = len(self.run.read_stage(stage))
        message = (f"{stage}: {r.written} tasks written ({done} in {stage}.jsonl); "
                   f"{r.replies_note(self.cfg.teacher.max_retries)}")
        if r.pending:
            message += f"; the teacher failed on {r.pending} (see the errors above and the usage in manifest.json)"
        return StepResult(message, r.pending, r.counts(len(tasks)))

    def _classify(self, input_path: str | Path | None = None) -> StepResult:
        return self._map_stage("classify", run_classify, input_path)

    def _instances(self, input_path: str | Path | None = None) -> StepResult:
        return self._map_stage("instances", run_instances, input_path)

    def _filter(self, input_path: str | Path | None = None) -> StepResult:
        tasks = self.input_tasks("filter", input_path)
        kept, rejected = filter_tasks(tasks, self.seeds, self.cfg.filter, instance_demonstrations(self.prompts))
        # The filter is re-run whole, so its file and its rejections are replaced, never appended.
        write_jsonl_atomic(self.run.stage_file("filter"), kept)
        self.run.replace_rejected("filter", rejected)
        if tasks and not kept:
            raise Seed2LoraError(f"the filter rejected all {len(tasks)} tasks; see {self.run.rejected_file} "
                                 "for the reasons (or loosen [filter] settings)")
        dropped = sum(1 for r in rejected if r.meta.get("instance_of"))
        return StepResult(f"filter: {len(kept)} kept, {len(rejected) - dropped} rejected, {dropped} instances dropped",
                          0, {"generated": len(tasks), "kept": len(kept), "rejected": len(rejected) - dropped,
                              "instances_dropped": dropped})

    def evolve_pool(self, input_path: str | Path | None = None, check_only: bool = False) -> tuple[list[Task], str]:
        """The pool to evolve and a name for it: --input, else evolve.source (a stage of this run, seeds, a path).

        check_only: validate the source without reading it (a stage of this run may be written by an earlier step).
        """
        e = self.cfg.evolve
        source = str(input_path) if input_path else e.source
        if source == "seeds":
            return self.seeds, f"seeds:{self.cfg.seed_tasks or 'bundled'}"
        if source in STAGES and source != "evolve":
            f = self.run.stage_file(source)
            if check_only and source in self.cfg.stages:
                return [], source
            if not f.exists():
                raise Seed2LoraError(f"{f} does not exist. Fix: run `seed2lora {source}` for this run first, "
                                     "pass --input FILE, or set evolve.source = \"seeds\"")
            return read_tasks(f), source
        fields = Fields(e.instruction_field, e.input_field, e.output_field)
        return load_pool(source, fields), str(Path(source).resolve())

    def _evolve(self, input_path: str | Path | None = None) -> StepResult:
        pool, source = self.evolve_pool(input_path)
        check_source(self.run, source)  # one input per run: checked before this input is recorded
        self.record(state={"evolve_input": source})
        result = run_evolve(self.teacher, pool, self.cfg, self.run, self.prompts, source=source,
                            seeds=[s.instruction for s in self.seeds], progress=self.progress)
        rejected = ", ".join(f"{k} {n}" for k, n in result.rejected.most_common()) or "none"
        message = (f"evolve: {result.rounds_done} of {self.cfg.evolve.rounds} rounds done over {len(pool)} "
                   f"instructions; {result.kept} evolutions kept ({result.total} in evolve.jsonl), "
                   f"{sum(result.rejected.values())} rejected ({rejected}), {result.errors} teacher errors")
        pending = getattr(result, "pending", 0)
        if pending:
            message += f"; {pending} of {len(pool)} slots have rounds to go"
        return StepResult(message, pending, {"kept": result.kept, "rejected": sum(result.rejected.values()),
                                             "rounds_done": result.rounds_done})

    # ------------------------------------------------------------ data selection (docs/quality.md)

    def _score(self, _input: None = None) -> StepResult:
        from .rows import generated_include, kept_files

        tasks = [t for f in kept_files(self.run, generated_include(self.cfg.export.include))
                 for t in self.run.read_stage(f.stem)]
        judge = self.judge
        self.record(judge=judge.describe())
        if self._rescore:  # the earlier outcomes are set aside, not deleted: a failed rescore loses nothing
            old = [*self.run.read_stage("score"), *(t for t in self.run.read_rejected() if t.stage == "score")]
            aside = self.run.path / "score_replaced.jsonl"
            if old:  # a rescore that failed before rating anything leaves the earlier set-aside file as it is
                write_jsonl_atomic(aside, old)
            self.run.stage_file("score").unlink(missing_ok=True)
            self.run.replace_rejected("score", [])
            self.log(f"score: --rescore: {len(old)} earlier ratings and score rejections moved to {aside}")
        n = sum(len(t.instances) for t in tasks)
        with self.progress("score: instances rated", n) as advance:
            r = run_score(judge, tasks, self.cfg, self.run, self.prompts, progress=advance)
        ratings = [int(round(t.meta["score"]["rating"])) for t in self.run.read_stage("score")]
        spread = ", ".join(f"{k}: {ratings.count(k)}" for k in range(1, 6))
        message = (f"score: {r.written} instances rated by {judge.name} ({len(ratings)} in score.jsonl; {spread}); "
                   f"{r.replies_note(judge_config(self.cfg).max_retries, 'instance')}")
        if not r.written and not r.rejected and not r.pending and n:
            message += (f"; every row already had its outcome (see score.jsonl and rejected.jsonl): "
                        f"`seed2lora score {self.run.path} --rescore` rates them all again")
        if r.pending:
            message += f"; the judge failed on {r.pending} (see the errors above)"
        return StepResult(message, r.pending, r.counts(n))

    def _ifd(self, _input: None = None) -> StepResult:
        from .train.ifd import ifd_run

        info = ifd_run(self.run.path, self.cfg.export.include, self.cfg.train, self.cfg.ifd, log=self.log,
                       progress=self.progress)
        return StepResult(f"ifd: {info['scored']} rows scored with the student ({info['done']} of {info['rows']} "
                          "in ifd.jsonl)", 0, {"generated": info["rows"], "kept": info["done"]})

    def _select(self, _input: None = None) -> StepResult:
        from .stages.select import select_run

        sel = select_run(self.run, self.cfg.select, self.cfg.export.include, seeds=self.seeds)
        s = sel.summary
        return StepResult(f"select: {s['kept_rows']} of {s['rows']} rows kept by {s['by']} ({s['kept_tasks']} tasks), "
                          f"{s['near_duplicates']} near-duplicates rejected -> {self.run.stage_file('select')} "
                          "(export --include selected)", 0,
                          {"generated": s["rows"], "kept": s["kept_rows"], "rejected": s["near_duplicates"]})

    # ------------------------------------------------------------ the fine-tuning half

    @property
    def export_dir(self) -> Path:
        return self.run.path / "export"

    @property
    def adapter_dir(self) -> Path:
        return Path(self.cfg.train.output_dir) if self.cfg.train.output_dir else self.run.path / "adapter"

    def _export(self, _input: None = None) -> StepResult:
        from .stages.export import export_run

        info = export_run(self.run.path, self.export_dir, self.cfg.export)
        c = info["counts"]
        origins = ", ".join(f"{n} {o}" for o, n in (info.get("tasks_by_origin") or {}).items())
        return StepResult(f"export: {c['train_rows']} train / {c['eval_rows']} eval rows from {c['tasks']} generated "
                          f"tasks ({origins}) + {c['seed_tasks']} seed tasks -> {self.export_dir}", 0,
                          {"train_rows": c["train_rows"], "eval_rows": c["eval_rows"]})

    def _train(self, _input: None = None) -> StepResult:
        """Train on the export (or the run's rows); a finished adapter with the same settings is kept."""
        import dataclasses
        import json

        from .train.data import load_rows, rows_fingerprint
        from .train.model import SUMMARY
        from .train.trainer import train as run_training

        cfg = dataclasses.replace(self.cfg.train, output_dir=str(self.adapter_dir))
        data = self.export_dir if (self.export_dir / "export.json").is_file() else self.run.path
        summary_file = self.adapter_dir / SUMMARY
        if summary_file.is_file():
            done = json.loads(summary_file.read_text(encoding="utf-8"))
            # Adapters from before the data was fingerprinted carry no data_sha256: judged by the settings alone.
            same_data = done.get("data_sha256") in (None, rows_fingerprint(load_rows(data)))
            if done.get("config") == dataclasses.asdict(cfg) and same_data:
                return StepResult(f"train: {self.adapter_dir} is already trained with these settings and data "
                                  "(delete it to train again)")
            self.log(f"train: {self.adapter_dir} was trained with other "
                     f"{'settings' if same_data else 'data'}; training again")
            if not same_data:
                # Its checkpoints hold the old data's training: start over. The old summary goes now, so
                # that a re-run after an interruption resumes the new training instead of starting again.
                cfg = dataclasses.replace(cfg, resume=False)
                summary_file.unlink()
        summary = run_training(data, cfg, log=self.log, progress=self.progress)
        self.record(adapter=str(self.adapter_dir))
        return StepResult(f"train: {summary['steps']} steps, eval loss {summary['eval_losses']['first']} -> "
                          f"{summary['eval_losses']['last']} -> {self.adapter_dir}")

    def _eval(self, _input: None = None) -> StepResult:
        """Base versus adapter; a report newer than the adapter, with the same settings, is kept."""
        import json

        from .train.eval import evaluate, report_settings, summary_line

        report_file = self.adapter_dir / "eval" / "eval_report.json"
        weights = self.adapter_dir / "adapter_model.safetensors"
        if report_file.is_file() and weights.is_file() and report_file.stat().st_mtime > weights.stat().st_mtime:
            old = json.loads(report_file.read_text(encoding="utf-8"))
            if old.get("settings") == report_settings(self.cfg.eval) and (not self.cfg.eval.data or old.get("data") == self.cfg.eval.data):
                return StepResult(f"eval: {report_file} is up to date (delete it to evaluate again)")
        report = evaluate(self.adapter_dir, self.cfg.eval, run_dir=self.run.path, log=self.log, progress=self.progress)
        return StepResult(f"eval: {summary_line(report)} -> {report['report_dir']}")


def _is_run_file(path: str | Path) -> bool:
    """A stage file of ours (has 'stage' fields) rather than a user's seed-like file."""
    from .store import read_jsonl

    if Path(path).suffix.lower() != ".jsonl":
        return False
    for _, obj in read_jsonl(path, strict=False):
        return "stage" in obj and "origin" in obj
    return False
