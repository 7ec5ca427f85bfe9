"""The Python API: one run of seed2lora from a notebook or a script (docs/python.md).

`Run` is the same run the CLI makes: the same config, run directory, one loop, resume and
records. Faults raise the CLI's exceptions instead of exiting: `BudgetReached` (the CLI's
exit 3), `TeacherUnavailable` (4), `Incomplete` (5), `LowYield` (6), `InputError` (2); all are
`Seed2LoraError`s whose message names the cause and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .config import RunConfig, load_config
from .errors import InputError, Seed2LoraError, is_secret_name
from .records import Task
from .runner import FOLDER_STEPS, STEPS, Session

# The stages that keep records in a file of their own (export, train and eval write folders)
RECORD_STAGES = [s.name for s in STEPS if s.name not in FOLDER_STEPS]


class Run:
    """One run directory and its stages.

    config: a TOML file (as `--config`), a RunConfig, or None for the defaults.
    settings: `{"section.key": value}` on top of it, as `--set` (checked the same way).
    name, output_dir, teacher, base_url: the run's folder is output_dir/name; the teacher spec
    ("embedded", "openai:MODEL", "hf:PATH") and its server, as the CLI flags of the same names.
    progress: a bar with an ETA in a notebook or terminal, plain lines elsewhere; False for none.
    log: where the run's lines go, as the CLI prints them: the teacher's errors and retries, yield warnings, each
    stage's summary as it ends, training's loss lines. Default: stderr; any callable taking a str (a logger's
    `.info`, `list.append`).
    """

    def __init__(self, config: str | Path | RunConfig | None = None, settings: dict[str, Any] | None = None, *,
                 name: str | None = None, output_dir: str | Path | None = None, teacher: str | None = None,
                 base_url: str | None = None, progress: bool = True, log: Callable[[str], None] | None = None):
        _check_arguments(config, settings)
        flags = {"run_name": name, "output_dir": str(output_dir) if output_dir else None,
                 "teacher.spec": teacher, "teacher.base_url": base_url}
        overrides = {**{k: v for k, v in flags.items() if v is not None}, **(settings or {})}
        if isinstance(config, RunConfig):
            import copy

            from .config import set_value

            # A copy: one RunConfig given to two Runs was one object, so the second's name= renamed the first's
            # folder under it (and its next call refused "run.config.run_name was changed"), and the caller's too
            cfg = copy.deepcopy(config)
            for key, value in overrides.items():
                set_value(cfg, key, value)
            cfg.give(overrides)  # teacher="embedded" named on purpose, not the default by omission
        else:
            cfg = load_config(config, overrides)
        if teacher is not None:  # a mistyped spec named now, not at the first run() ("opnai:gpt-4o-mini")
            from .teachers import check_spec

            with _said_in_python():
                check_spec(cfg.teacher)
        # Without a log, the teacher's errors behind an Incomplete ("see the errors above") were said nowhere
        self._session = Session(cfg, progress=_progress(progress), log=log or _stderr_line)
        self._session.ctx.python = True
        self._built = _built_from(cfg)
        self._settings = _settings_of(cfg)  # a setting changed on run.config from these is named on purpose

    @classmethod
    def open(cls, run_dir: str | Path, settings: dict[str, Any] | None = None, *, progress: bool = True,
             log: Callable[[str], None] | None = None) -> Run:
        """An existing run with the config its manifest recorded (then `settings` on top), to go on or read it. A
        setting that differs goes on, as the CLI's --set; the manifest records it once a step makes records with it."""
        from .config import recorded_config
        from .store import RunDir

        path = Path(run_dir)
        if not (path / "manifest.json").is_file():
            raise Seed2LoraError(f"{path} is not a seed2lora run (no manifest.json). Fix: give a run folder, "
                             "e.g. outputs/NAME")
        return cls(recorded_config(RunDir(path).manifest().get("config") or {}, path, overrides=settings),
                   progress=progress, log=log)

    @property
    def path(self) -> Path:
        """The run directory."""
        return self._session.run.path

    @property
    def config(self) -> RunConfig:
        """The run's resolved config."""
        return self._session.cfg

    def run(self, stages: list[str] | str | None = None) -> list[str]:
        """Run `stages` (a list of names, or one name; default: the config's `stages`) in pipeline order,
        resuming what is done; one summary line per stage."""
        names = [stages] if isinstance(stages, str) else list(stages or self.config.stages)
        self._calling(f"run({names!r})")
        with _said_in_python():
            return self._session.run_steps(names)  # "bootstrap" read as a list was 9 unknown one-letter stages

    def records(self, stage: str = "filter") -> list[Task]:
        """The records a stage kept (bootstrap, classify, instances, filter, evolve, score, ifd, select)."""
        _check_stage(stage, RECORD_STAGES)  # a misspelt name read as a stage with no records: an empty list
        return self._session.run.read_stage(stage)

    def rejected(self, stage: str | None = None) -> list[Task]:
        """Dropped records with their `reject_reason`, of one stage or all."""
        if stage is not None:
            _check_stage(stage, [s.name for s in STEPS])
        return [t for t in self._session.run.read_rejected() if stage is None or t.stage == stage]

    def manifest(self) -> dict[str, Any]:
        """Status, counts per stage and rule, usage and spend, the resolved config (as manifest.json)."""
        return self._session.run.manifest()

    def export(self) -> Path:
        """Export the kept data (Alpaca JSON, chat JSONL, HF dataset, parquet, a split); its folder."""
        self._calling("export()")
        with _said_in_python():
            self._session.export()
        return self._session.export_dir

    def train(self) -> Path:
        """Train the adapter on the export ([train] settings); its folder."""
        self._calling("train()")
        with _said_in_python():
            self._session.train()
        return self._session.adapter_dir

    def eval(self) -> dict[str, Any]:
        """Evaluate the adapter against its base ([eval] settings); the report as a dict."""
        import json

        from .store import eval_dir_of

        self._calling("eval()")
        with _said_in_python():
            self._session.eval()
        return json.loads((eval_dir_of(self._session.adapter_dir) / "eval_report.json").read_text(encoding="utf-8"))

    def _calling(self, call: str) -> None:
        """What the manifest records as the command: this call and the script or kernel that made it. First,
        `run.config` as a notebook may have changed it: checked as settings= is (a -1 or a "x" went into the run and
        its manifest, which Run.open then refused), and never a setting the Run has built its folder or teacher from
        (changed there, it was ignored)."""
        from .config import config_from_dict

        config_from_dict(RunConfig, dataclasses.asdict(self.config))
        now = _built_from(self.config)
        changed = [k for k in self._built if now.get(k) != self._built[k]]
        if changed:
            key = changed[0]
            was, new = ("'***'", "'***'") if is_secret_name(key) else (repr(self._built[key]), repr(now.get(key)))
            raise InputError(f"run.config.{key}", None, f"was changed to {new} after this Run was made from {was}, "
                             "and a Run builds its folder and teacher once",
                             f"make a new Run for it, e.g. Run.open(run.path, {{{key!r}: {new}}}); stage settings "
                             "(bootstrap.num_instructions) may change between calls")
        # Named on purpose, as settings= names them: on a Run.open, run.config.bootstrap.num_instructions = 15 was
        # refused as left out ("it would go on with 15, the default"), against the promise that it goes on
        now = _settings_of(self.config)
        self.config.give(k for k in now.keys() | self._settings.keys() if now.get(k) != self._settings.get(k))
        self._settings = now
        script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        self._session.ctx.command = f"pipeline.Run.{call} in {script}"

    def close(self) -> None:
        """Close the teacher's connections and the run's cache."""
        self._session.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, teacher={self.config.teacher.spec!r})"


def _check_arguments(config: Any, settings: Any) -> None:
    """A dict as `config`, or a list as `settings`, raised a bare TypeError from deep inside ("expected str, bytes
    or os.PathLike object, not dict"; "'list' object is not a mapping"): say which argument takes what."""
    if config is not None and not isinstance(config, (str, Path, RunConfig)):
        raise InputError("config", None, f"expected a TOML file's path or a RunConfig, not {type(config).__name__}",
                         'put settings in settings={"section.key": value}, e.g. settings={"bootstrap.num_instructions":'
                         ' 20}, or give config="run.toml"')
    if settings is not None and not isinstance(settings, Mapping):
        raise InputError("settings", None, f"expected a dict, not {type(settings).__name__}",
                         'give settings={"section.key": value}, e.g. settings={"bootstrap.num_instructions": 20}')


def _check_stage(stage: str, known: list[str]) -> None:
    if stage in {s.name for s in STEPS} - set(known):  # "unknown stage 'export'" of a stage the run has just run
        made = "its report" if stage == "eval" else "its folder"
        raise Seed2LoraError(f"stage {stage!r} writes a folder, not records (run.{stage}() returns {made}). Fix: "
                             f"use one of {', '.join(known)}")
    if stage not in known:
        raise Seed2LoraError(f"unknown stage {stage!r}. Fix: use one of {', '.join(known)}")


# The CLI's words in a fault's message, said as a Run takes them: a note under its traceback (Python 3.11+)
PYTHON_NOTE = ('From Python: `seed2lora STAGE` is run.run("STAGE") (export, train, eval: run.export(), run.train(), '
               'run.eval()); --set KEY=VALUE and a flag are settings={"KEY": VALUE}, on Run(...) or '
               'Run.open(run.path, settings); "the same command" is the same call')


@contextlib.contextmanager
def _said_in_python() -> Iterator[None]:
    """A Seed2LoraError whose fix names a command or a flag gets PYTHON_NOTE: a notebook's user read "run
    `seed2lora filter` first" or "--set teacher.spec=..." with no CLI in sight."""
    try:
        yield
    except Seed2LoraError as e:
        if ("seed2lora " in str(e) or "--" in str(e)) and hasattr(e, "add_note"):
            e.add_note(PYTHON_NOTE)
        raise


def _built_from(cfg: RunConfig) -> dict[str, Any]:
    """The settings a Run builds once, at its start or its first call: its folder, seeds and prompts, and teacher."""
    from .config import recorded_settings

    return {k: v for k, v in recorded_settings(dataclasses.asdict(cfg)).items()
            if k in ("output_dir", "run_name", "seed_tasks", "prompts_dir") or k.startswith("teacher.")}


def _settings_of(cfg: RunConfig) -> dict[str, Any]:
    """Every setting of a config by its dotted key, as a manifest records them."""
    from .config import recorded_settings

    return recorded_settings(dataclasses.asdict(cfg))


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(on: bool) -> Any:
    from .progress import no_progress, progress

    return progress if on else no_progress
