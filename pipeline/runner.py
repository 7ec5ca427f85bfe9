"""Run stages in a run directory and keep its manifest: the glue between CLI and stages.

Each stage reads the previous stage's file (or an --input file) and writes its own.
The manifest records the resolved config, package versions, the teacher, prompt
hashes, counts per stage and token usage. Secrets never enter it: the config holds
only the *name* of the API key's variable.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .budget import Budget, BudgetReached
from .cache import CACHE_FILE, ResponseCache
from .config import RunConfig
from .datasets_io import Fields, load_pool
from .errors import Seed2LoraError
from .prompts import Prompts
from .records import Task
from .seeds import load_seeds
from .stages.bootstrap import run_bootstrap
from .stages.classify import run_classify
from .stages.evolve import run_evolve
from .stages.filter import filter_tasks
from .stages.instances import run_instances
from .store import STAGES, RunDir, read_tasks, write_jsonl_atomic
from .teachers import Teacher, make_teacher

STAGE_INPUT = {"classify": "bootstrap", "instances": "classify", "filter": "instances"}
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "openai", "httpx", "rouge-score", "datasets",
            "numba", "rapidfuzz")

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
        self._usage_base: dict[str, dict[str, int]] | None = None
        self._cache: ResponseCache | None = None
        self._attached = False

    @property
    def teacher(self) -> Teacher:
        """The teacher, with this run's response cache and budget attached."""
        if self._teacher is None:
            self._teacher = make_teacher(self.cfg.teacher, seed=self.cfg.seed)
        if not self._attached:  # a teacher passed in may have served another run before
            self._attached = True
            self._teacher.cache = self.cache
            model = self._teacher.describe().get("model", self._teacher.name)
            self._teacher.budget = Budget(self.cfg.budget, str(model), self.run.manifest().get("usage", {}))
        return self._teacher

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            self.run.ensure()
            self._cache = ResponseCache(self.run.path / CACHE_FILE)
        return self._cache

    def check_budget(self) -> None:
        budget = getattr(self._teacher, "budget", None)
        if budget is not None and budget.reached:
            spend = budget.spend(self._teacher.usage)
            self.record(status="stopped: budget reached")
            raise BudgetReached(f"budget reached ({spend['total_tokens']} tokens"
                                + (f", ${spend['cost_usd']:.4f}" if spend["cost_usd"] is not None else "")
                                + f"); {self.run.path} is consistent. Raise --max-tokens-total / --max-cost "
                                "and run the same command to go on")

    def record(self, **fields: Any) -> dict[str, Any]:
        """Update the manifest: config, versions, teacher, prompts, usage (earlier runs' usage included)."""
        self.run.ensure()
        if self._usage_base is None:
            self._usage_base = self.run.manifest().get("usage", {})
        usage = {k: dict(v) for k, v in self._usage_base.items()}
        if self._teacher is not None:
            for kind, u in self._teacher.usage.to_dict().items():
                base = usage.setdefault(kind, {})
                for key, value in u.items():
                    base[key] = base.get(key, 0) + value
            fields.setdefault("teacher", self._teacher.describe())
            if getattr(self._teacher, "budget", None) is not None:
                fields.setdefault("spend", self._teacher.budget.spend(self._teacher.usage))
        return self.run.update_manifest(
            seed2lora_version=__version__, command=" ".join(["seed2lora", *sys.argv[1:]]),
            config=self.cfg.to_dict(), packages=package_versions(), prompts=self.prompts.hashes(),
            seed_file=str(self.cfg.seed_tasks or "bundled seeds/seed_tasks.jsonl"), num_seeds=len(self.seeds),
            usage=usage, **fields)

    def _every(self, n: int) -> Callable[[int], None]:
        """A progress callback that refreshes the manifest (usage, spend) every n replies."""
        return lambda done: self.record() if done % n == 0 else None

    def input_tasks(self, stage: str, input_path: str | Path | None) -> list[Task]:
        if input_path:
            return read_tasks(input_path) if _is_run_file(input_path) else load_seeds(input_path)
        source = self.run.stage_file(STAGE_INPUT[stage])
        if not source.exists():
            raise Seed2LoraError(f"{source} does not exist. Fix: run `seed2lora {STAGE_INPUT[stage]}` for this run "
                                 f"first, or pass --input FILE")
        return read_tasks(source)

    def bootstrap(self) -> str:
        self.run.ensure()
        self.record(status="running: bootstrap")
        with self.progress("bootstrap: instructions kept", self.cfg.bootstrap.num_instructions) as advance:
            advance(len(self.run.read_stage("bootstrap")))
            result = run_bootstrap(self.teacher, self.seeds, self.cfg, self.run, self.prompts, self.cache,
                                   on_kept=advance, on_progress=self._every(16))
        self.check_budget()
        self.record(status="done: bootstrap")
        return (f"bootstrap: {result.new} new instructions kept ({result.kept} in the pool), "
                f"{result.rejected} rejected, {result.requests} prompts sent so far")

    def classify(self, input_path: str | Path | None = None) -> str:
        tasks = self.input_tasks("classify", input_path)
        self.record(status="running: classify")
        with self.progress("classify", len(tasks)) as advance:
            n = run_classify(self.teacher, tasks, self.cfg, self.run, self.prompts, progress=advance)
        self.check_budget()
        self.record(status="done: classify")
        return f"classify: {n} tasks labelled"

    def instances(self, input_path: str | Path | None = None) -> str:
        tasks = self.input_tasks("instances", input_path)
        self.record(status="running: instances")
        with self.progress("instances", len(tasks)) as advance:
            n = run_instances(self.teacher, tasks, self.cfg, self.run, self.prompts, progress=advance)
        self.check_budget()
        self.record(status="done: instances")
        return f"instances: {n} tasks with generated instances"

    def filter(self, input_path: str | Path | None = None) -> str:
        tasks = self.input_tasks("filter", input_path)
        kept, rejected = filter_tasks(tasks, self.seeds, self.cfg.filter)
        # The filter is re-run whole, so its file and its rejections are replaced, never appended.
        write_jsonl_atomic(self.run.stage_file("filter"), kept)
        self.run.replace_rejected("filter", rejected)
        self.record(status="done: filter")
        if tasks and not kept:
            raise Seed2LoraError(f"the filter rejected all {len(tasks)} tasks; see {self.run.rejected_file} "
                                 "for the reasons (or loosen [filter] settings)")
        return f"filter: {len(kept)} kept, {len(rejected)} rejected"

    def evolve_pool(self, input_path: str | Path | None = None) -> tuple[list[Task], str]:
        """The pool to evolve and a name for it: --input, else evolve.source (a stage of this run, seeds, a path)."""
        e = self.cfg.evolve
        source = str(input_path) if input_path else e.source
        if source == "seeds":
            return self.seeds, f"seeds:{self.cfg.seed_tasks or 'bundled'}"
        if source in STAGES and source != "evolve":
            f = self.run.stage_file(source)
            if not f.exists():
                raise Seed2LoraError(f"{f} does not exist. Fix: run `seed2lora {source}` for this run first, "
                                     "pass --input FILE, or set evolve.source = \"seeds\"")
            return read_tasks(f), source
        fields = Fields(e.instruction_field, e.input_field, e.output_field)
        return load_pool(source, fields), str(Path(source).resolve())

    def evolve(self, input_path: str | Path | None = None) -> str:
        pool, source = self.evolve_pool(input_path)
        self.run.ensure()
        self.record(status="running: evolve")
        result = run_evolve(self.teacher, pool, self.cfg, self.run, self.prompts, source=source,
                            seeds=[s.instruction for s in self.seeds], progress=self.progress,
                            on_round=lambda r: self.record())
        self.record(status="done: evolve")
        rejected = ", ".join(f"{k} {n}" for k, n in result.rejected.most_common()) or "none"
        return (f"evolve: {result.rounds_done} of {self.cfg.evolve.rounds} rounds done over {len(pool)} instructions; "
                f"{result.kept} evolutions kept ({result.total} in evolve.jsonl), {sum(result.rejected.values())} "
                f"rejected ({rejected}), {result.errors} teacher errors")

    # ------------------------------------------------------------ the fine-tuning half

    @property
    def export_dir(self) -> Path:
        return self.run.path / "export"

    @property
    def adapter_dir(self) -> Path:
        return Path(self.cfg.train.output_dir) if self.cfg.train.output_dir else self.run.path / "adapter"

    def export(self) -> str:
        from .stages.export import export_run

        self.record(status="running: export")
        info = export_run(self.run.path, self.export_dir, self.cfg.export)
        self.record(status="done: export")
        c = info["counts"]
        return (f"export: {c['train_rows']} train / {c['eval_rows']} eval rows from {c['tasks']} machine + "
                f"{c['seed_tasks']} seed tasks -> {self.export_dir}")

    def train(self) -> str:
        """Train on the export (or the run's rows); a finished adapter with the same settings is kept."""
        import dataclasses
        import json

        from .train.model import SUMMARY
        from .train.trainer import train as run_training

        cfg = dataclasses.replace(self.cfg.train, output_dir=str(self.adapter_dir))
        summary_file = self.adapter_dir / SUMMARY
        if summary_file.is_file():
            done = json.loads(summary_file.read_text(encoding="utf-8"))
            if done.get("config") == dataclasses.asdict(cfg):
                return (f"train: {self.adapter_dir} is already trained with these settings (delete it to train "
                        "again)")
        data = self.export_dir if (self.export_dir / "export.json").is_file() else self.run.path
        self.record(status="running: train")
        summary = run_training(data, cfg, log=self.log)
        self.record(status="done: train", adapter=str(self.adapter_dir))
        return (f"train: {summary['steps']} steps, eval loss {summary['eval_losses']['first']} -> "
                f"{summary['eval_losses']['last']} -> {self.adapter_dir}")

    def eval(self) -> str:
        """Base versus adapter; a report newer than the adapter, with the same settings, is kept."""
        import json

        from .train.eval import evaluate, summary_line

        report_file = self.adapter_dir / "eval" / "eval_report.json"
        weights = self.adapter_dir / "adapter_model.safetensors"
        if report_file.is_file() and weights.is_file() and report_file.stat().st_mtime > weights.stat().st_mtime:
            old = json.loads(report_file.read_text(encoding="utf-8"))
            settings = {k: v for k, v in vars(self.cfg.eval).items() if k != "data"}
            if old.get("settings") == settings and (not self.cfg.eval.data or old.get("data") == self.cfg.eval.data):
                return f"eval: {report_file} is up to date (delete it to evaluate again)"
        self.record(status="running: eval")
        report = evaluate(self.adapter_dir, self.cfg.eval, log=self.log)
        self.record(status="done: eval")
        return f"eval: {summary_line(report)} -> {report['report_dir']}"

    def run_all(self) -> list[str]:
        """Every stage named in cfg.stages, in pipeline order; each message is also logged as it comes."""
        steps = {"bootstrap": self.bootstrap, "classify": self.classify, "instances": self.instances,
                 "filter": self.filter, "evolve": self.evolve, "export": self.export, "train": self.train,
                 "eval": self.eval}
        unknown = [s for s in self.cfg.stages if s not in steps]
        if unknown:
            raise Seed2LoraError(f"unknown stage(s) {unknown} in 'stages'. Fix: use {list(steps)}")
        messages = []
        for name, step in steps.items():
            if name in self.cfg.stages:
                messages.append(step())
                self.log(messages[-1])
        self.record(status="done")
        return messages


def _is_run_file(path: str | Path) -> bool:
    """A stage file of ours (has 'stage' fields) rather than a user's seed-like file."""
    from .store import read_jsonl

    if Path(path).suffix.lower() != ".jsonl":
        return False
    for _, obj in read_jsonl(path, strict=False):
        return "stage" in obj and "origin" in obj
    return False
