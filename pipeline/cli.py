"""The seed2lora command line: thin commands that load config, call one stage, write files."""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from . import __version__
from .config import (
    ExportConfig,
    RunConfig,
    default_of,
    flag_overrides,
    load_config,
    load_section,
    parse_overrides,
    recorded_config,
)
from .errors import InputError, Seed2LoraError, mask_secrets, on_stop_signal, take_stop_signal
from .hub import push_options
from .progress import progress
from .show import label, show_run, stdout_console
from .teachers.origin import SCORE_JUDGE
from .train.commands import OUTPUT_DIR_MOVED, Renamed, add_commands, checked, moved

console = Console(stderr=True, soft_wrap=True, emoji=False)  # log lines stay whole in log files and CI output; no
# emoji codes: "seeds.jsonl:100: ..." printed as "seeds.jsonl💯 ..." and a teacher openai:m as "openaiⓂ"


def log_line(message: str) -> None:
    """A run's log line as written: paths and teachers' text are data, not rich markup ("runs/[a]" lost "[a]",
    and a stray "[/b]" raised a MarkupError in the middle of a run)."""
    console.print(message, highlight=False, markup=False)
# A bar with an ETA on a terminal, plain lines at least every 30 s off one (pipeline/progress.py).
rich_progress = functools.partial(progress, console=console)


# The flags that set one config key each, as (flag, key, metavar, help); "{default}" is filled in from the config's
# dataclass defaults, so the help cannot drift from them.
RUN_FLAGS = {
    "run_name": ("--run-name", "run_name", "NAME",
                 "Run directory name under --output-dir, instead of RUN_DIR; the same name resumes (default {default})."),
    "output_dir": ("--output-dir", "output_dir", "DIR",
                   "The folder run directories go under, instead of RUN_DIR (default {default})."),
    "teacher": ("--teacher", "teacher.spec", "SPEC", "embedded | openai:MODEL | hf:PATH_OR_ID (default {default})."),
    "base_url": ("--base-url", "teacher.base_url", "URL",
                 "OpenAI-compatible server URL: vLLM, Ollama, llama.cpp, TGI; several, comma-separated or the flag "
                 "repeated, share the load and fail over (default: $OPENAI_BASE_URL, else OpenAI)."),
    "api": ("--api", "teacher.api", None,
            "How prompts are sent; auto = completions where the server has them (default {default})."),
    "seed_tasks": ("--seeds", "seed_tasks", "PATH",
                   "Seed tasks: .jsonl, .json, .csv, .tsv, .parquet or a saved datasets folder (default: the bundled "
                   "seeds/seed_tasks.jsonl; docs/seeds-and-prompts.md)."),
    "seed": ("--seed", "seed", None, "Random seed of every choice and of the teacher's sampling (default {default})."),
    "num_instructions": ("--num-instructions", "bootstrap.num_instructions", None,
                         "Target number of new instructions (default {default})."),
    "max_tokens_total": ("--max-tokens-total", "budget.max_tokens_total", None,
                         "Stop cleanly after this many tokens, whole run (default {default}: no limit)."),
    "max_cost": ("--max-cost", "budget.max_cost", None,
                 "Stop cleanly after this many dollars, priced models only (default {default}: no limit)."),
    "batch": ("--batch", "teacher.batch", None, "Send the requests in waves through the server's Batch API, at the "
              "batch price (docs/batch.md)."),
}
# Commands on a run that exists take it as RUN_DIR; --run-name and --output-dir name runs for the generation commands.
RUN_NAME_MOVED = "is for the generation commands (run, bootstrap, ...); here give the run as RUN_DIR, e.g. outputs/{value}"
RUN_DIR_MOVED = "is for the generation commands (run, bootstrap, ...); here give the run as RUN_DIR, e.g. {value}/NAME"


def run_dir_only(f):
    return moved("--run-name", RUN_NAME_MOVED)(moved("--output-dir", RUN_DIR_MOVED)(f))


TEACHER_FLAGS = ("teacher", "base_url", "api", "seed", "max_tokens_total", "max_cost", "batch")
# Each command lists only the flags it reads: filter sends no prompt, only bootstrap has a target count.
COMMAND_FLAGS = {
    "run": (*TEACHER_FLAGS, "seed_tasks", "num_instructions"),
    "bootstrap": (*TEACHER_FLAGS, "seed_tasks", "num_instructions"),
    "classify": TEACHER_FLAGS,
    "instances": TEACHER_FLAGS,
    "filter": ("seed_tasks",),
    "evolve": (*TEACHER_FLAGS, "seed_tasks"),
}


def run_options(command: str):
    """The options of a generation command; each overrides the config file, and --set overrides both."""
    def flag(name: str):
        opt, key, metavar, text = RUN_FLAGS[name]
        default = default_of(key)
        kind = click.Choice(["auto", "chat", "completions"]) if name == "api" else type(default)
        if kind is bool:  # a switch: given, it sets the key; absent (None), the config decides
            return click.option(opt, name, is_flag=True, default=None, help=text.format(default=default))
        if name == "base_url":
            return endpoints_option(opt, name, help=text.format(default=default))
        return click.option(opt, name, type=kind, metavar=metavar, help=text.format(default=default),
                            callback=None if name == "api" else checked(key))

    options = [
        # The run: RUN_DIR, as every command that works on a run takes it, or --output-dir/--run-name (and the
        # config's output_dir and run_name), which name runs not made yet.
        click.argument("run_dir", required=False, type=click.Path(file_okay=False)),
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="TOML run config (default: none, every setting at its default; `seed2lora config` "
                          "prints them)."),
        flag("run_name"),
        flag("output_dir"),
        *(flag(name) for name in RUN_FLAGS if name in COMMAND_FLAGS[command]),
        _set_option("bootstrap.mode=alpaca"),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def endpoints_option(*decls: str, help: str):
    """A server URL flag: repeated, every URL given is an endpoint, as the comma form gives them (--base-url A
    --base-url B is --base-url A,B; click kept only B and dropped A without a word)."""
    def join(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> str | None:
        return ",".join(values) if values else None

    return click.option(*decls, metavar="URL", multiple=True, callback=join, help=help)


def _set_option(example: str):
    return click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                        help=f"Any config value, e.g. --set {example}; a bare KEY works where one section has it; "
                             "checked like the TOML file (repeatable).")


def build_config(config_path: str | None, sets: tuple[str, ...] = (), run_dir: str | None = None,
                 **flags: Any) -> RunConfig:
    """The config file, then the flags (RUN_DIR is output_dir and run_name), then --set; each checked like the file's."""
    if run_dir is not None:
        if flags.get("run_name") is not None or flags.get("output_dir") is not None:
            raise click.UsageError(f"give the run as RUN_DIR ({run_dir}) or as --output-dir/--run-name, not both")
        if Path(run_dir).suffix in (".toml", ".jsonl", ".json", ".csv", ".tsv", ".parquet"):
            raise click.UsageError(f"RUN_DIR {run_dir} looks like a file, not a run's folder: a config is --config "
                                   "FILE, seed tasks --seeds FILE, a stage's input --input FILE")
        path = Path(run_dir) if Path(run_dir).name not in ("", ".", "..") else Path(run_dir).resolve()
        flags = {**flags, "run_name": path.name, "output_dir": str(path.parent)}
    overrides = {RUN_FLAGS[k][1]: v for k, v in flags.items() if v is not None and k in RUN_FLAGS}
    overrides.update(parse_overrides(sets))
    return load_config(config_path, overrides)


RUN_EXAMPLES = """\b
Examples:
  seed2lora run --config configs/quickstart.toml
  seed2lora run outputs/gpt4o-mini --teacher openai:gpt-4o-mini --num-instructions 500
  seed2lora run --teacher openai:Qwen/Qwen2.5-7B-Instruct --base-url http://localhost:8000/v1 \\
      --set filter.rouge_threshold=0.6 --max-tokens-total 2000000
"""


def _session(config_path, sets, **flags):
    from .runner import Session

    # The command's flags by the setting each sets (click passes each it takes): a fix names --seeds PATH, the flag
    # the user typed, not --set 'seed_tasks="PATH"'
    names = {RUN_FLAGS[k][1]: RUN_FLAGS[k][0] for k in flags if k in RUN_FLAGS}
    return Session(build_config(config_path, sets, **flags), progress=rich_progress,
                   log=log_line, flags=names)


def said_pending(e: BaseException) -> None:
    """The last line of a run's stop: what it left to do (the runner's `pending`), when it says."""
    if pending := getattr(e, "pending", ""):
        console.print(escape(pending), highlight=False, soft_wrap=True)


# A file system's refusal of a path the user chose (--out, RUN_DIR, a full disk): bad input, not a bug. `export --out
# FILE/x` or a read-only folder died with a PermissionError or NotADirectoryError traceback (exit 1).
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def friendly_errors(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except OSError as e:
            if e.errno not in PATH_ERRNOS or not e.filename:
                raise
            console.print(f"[bold red]error:[/] {escape(str(e.filename))}: {escape(e.strerror or str(e))}. Fix: give a "
                          "path this user can read and write (--out DIR, RUN_DIR, --seeds FILE), on a disk with free space",
                          highlight=False, soft_wrap=True)
            sys.exit(2)
        except Seed2LoraError as e:
            code = getattr(e, "exit_code", 2)
            # A judge's outage is the judge's: score's and eval's servers are not the run's teacher
            unavailable = f"[bold red]{escape(getattr(e, 'role', 'teacher'))} unavailable:[/]"
            label = {2: "[bold red]error:[/]", 4: unavailable,
                     5: "[bold yellow]incomplete:[/]"}.get(code, "[bold yellow]stopped:[/]")
            console.print(f"{label} {escape(mask_secrets(str(e)))}", highlight=False, soft_wrap=True)
            said_pending(e)
            sys.exit(code)
        except KeyboardInterrupt as e:
            code = getattr(e, "exit_code", 130)
            console.print("[yellow]interrupted: everything written so far is kept; run the same command to resume[/]")
            said_pending(e)
            sys.exit(code)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seed2lora")
def cli() -> None:
    """Turn a handful of seed tasks into an instruction dataset (Self-Instruct)."""


@cli.command(epilog=RUN_EXAMPLES)
@run_options("run")
@friendly_errors
@click.option("--dry-run", is_flag=True, help="Estimate calls, tokens and cost; send nothing.")
def run(config_path, sets, dry_run, **flags):
    """Run every enabled stage until the target count; run again to resume.

    RUN_DIR is the run's folder (default OUTPUT_DIR/RUN_NAME, outputs/run); it is made if it does not exist.
    """
    s = _session(config_path, sets, **flags)
    if dry_run:
        from .runner import check_stage_names

        check_stage_names(s.cfg.stages)  # as the run would: a misspelt stage exits 2, not left out of the estimate
        _check_teacher_specs(s)
        _print_estimate(s)
        return
    s.run_all()  # prints each stage's line as it finishes
    console.print(f"[green]done:[/] {escape(str(s.run.path))}  (inspect with: seed2lora show {escape(str(s.run.path))})")


def _check_teacher_specs(s) -> None:
    """The teacher's and the judge's specs, checked as the run's own teachers.make_teacher checks them (same message,
    exit 2), before anything is estimated: `--teacher hf:` priced a model called "hf:"."""
    from .budget import judge_config
    from .runner import STEPS
    from .teachers import check_spec

    steps = [step for step in STEPS if step.name in s.cfg.stages]
    if any(step.teacher == "teacher" for step in steps):
        check_spec(s.cfg.teacher, s.ctx.origin("teacher"))
    if any(step.teacher == "judge" for step in steps) and s.cfg.score.teacher.spec.strip():
        check_spec(judge_config(s.cfg), s.ctx.origin("score.teacher"))


def _print_estimate(s) -> None:
    from rich.table import Table

    from .budget import check_prices
    from .context import check_left_out
    from .cost import money, open_batches, open_batches_line
    from .estimate import estimate_run
    from .runner import STEPS, use_tables

    est = estimate_run(s.cfg, s.prompts, s.seeds, s.run, s.cache if s.run.path.exists() else None)
    keys = ("calls", "prompt_tokens", "prefix_cached_tokens", "max_completion_tokens")
    table = Table(label("stage"), label("model"), "calls", "prompt tokens", "prefix-cacheable",
                  "completion tokens (at most)", "$ (at most)", title=f"Dry run: what {s.run.path} would still send")
    for name, row in est["stages"].items():
        table.add_row(name, row["model"], *(f"{row[k]:,}" for k in keys), money(row["max_cost_usd"]))
    t = est["total"]
    table.add_row("total", "", *(f"{t[k]:,}" for k in keys), money(est["max_cost_usd"]))
    stdout_console().print(table)
    if "bootstrap" in est["stages"]:
        click.echo(f"{est['bootstrap_yield']}.")
    click.echo("Tokens are estimated from the prompts' length (4 characters a token).")
    if est["max_cost_usd"] is not None:
        click.echo(f"cost at most ${est['max_cost_usd']:.4f}, each stage at the configured price of its model")
        if t["prefix_cached_tokens"]:
            click.echo(f"with the prefix cache serving every prefix-cacheable token (a constant start of 1,024+ tokens) "
                       f"at the cached-input rate: ${est['cost_with_prefix_cache_usd']:.4f}")
    if est.get("batch_price_factor") is not None:
        click.echo(f"@batch: sent through the Batch API, at {est['batch_price_factor']:g} x the model's price")
    if waiting := open_batches(s.run):  # paid already: the run reads them before it sends anything more
        click.echo(open_batches_line(waiting))
    if est["unpriced"] and not s.cfg.budget.max_cost:
        click.echo(f"no price for model {', '.join(est['unpriced'])}: add [budget.prices] "
                   f"\"{est['unpriced'][0]}\" = [input, output] $ per 1M tokens")
    try:  # the run's own checks, so the dry run exits 2 where the run would (as for any other config error)
        check_prices(s.cfg, s.cfg.stages)
        calls_teacher = use_tables(s.ctx, [step for step in STEPS if step.name in s.cfg.stages])
        check_left_out(s.ctx, s.ctx.step_tables, calls_teacher)  # as the run's own validate: a left-out setting
    except Seed2LoraError as e:
        raise Seed2LoraError(f"the run would stop before its first call (exit 2): {e}") from None


@cli.command()
@run_options("bootstrap")
@friendly_errors
def bootstrap(config_path, sets, **flags):
    """Stage 1: generate new instructions from the seed tasks."""
    s = _session(config_path, sets, **flags)
    s.bootstrap()  # its line is logged as the step ends (the session's log)


def _stage_command(name: str, doc: str):
    @cli.command(name=name, help=doc)
    @run_options(name)
    @click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=True),
                  help="Read tasks from this file instead of the previous stage's output.")
    @friendly_errors
    def command(config_path, sets, input_path, **flags):
        s = _session(config_path, sets, **flags)
        getattr(s, name)(input_path)  # its line is logged as the step ends, once (as bootstrap's and evolve's)

    return command


_stage_command("classify", "Stage 2: label each instruction as classification or not.")
_stage_command("instances", "Stage 3: generate input/output instances for each task.")
_stage_command("filter", "Stage 4: filter instructions and clean instances; write filter.jsonl and rejections.")


@cli.command()
@run_options("evolve")
@click.option("--input", "input_path", type=click.Path(exists=True),
              help="Pool to evolve: JSONL, Alpaca JSON, CSV, parquet or a datasets folder (default: evolve.source, "
                   "this run's filter.jsonl).")
@click.option("--rounds", type=int, callback=checked("evolve.rounds"),
              help=f"Rounds of evolution (default {default_of('evolve.rounds')}); more rounds continue a finished run.")
@click.option("--weights", metavar="OP=W,...",
              help="Relative chance of each operation, e.g. breadth=2,reasoning=0 (default " +
                   ",".join(f"{op}={w:g}" for op, w in vars(RunConfig().evolve.weights).items()) + ").")
@friendly_errors
def evolve(config_path, sets, input_path, rounds, weights, **flags):
    """Evol-Instruct: make instructions harder (in depth) and rarer (in breadth) over rounds; write evolve.jsonl."""
    extra = [f"evolve.rounds={rounds}"] if rounds is not None else []
    for item in (weights or "").split(","):
        if item.strip():
            op, eq, w = item.partition("=")
            if not eq:
                raise InputError(None, None, f"--weights item {item!r} is not OP=WEIGHT", "write e.g. --weights breadth=2")
            extra.append(f"evolve.weights.{op.strip()}={w.strip()}")
    s = _session(config_path, (*sets, *extra), **flags)
    s.evolve(input_path)  # logged as the step ends


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--stage", help="Which stage file to sample or print (default: the last one written).")
@click.option("--sample", "n_samples", type=int, default=3, show_default=True, help="How many records to show.")
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print records as JSONL on stdout, for piping.")
@click.option("--seed", type=int, default=0, help="Seed for picking samples.")
@click.option("--compare", nargs=2, metavar="RUN_A RUN_B", type=click.Path(exists=True, file_okay=False),
              help="Instead of one run, print the report's figures of two runs side by side.")
@run_dir_only
@friendly_errors
def show(run_dir, stage, n_samples, as_jsonl, seed, compare):
    """Summarise a run: counts per stage, rejections, task types, lengths, samples.

    With --compare RUN_A RUN_B (and no RUN_DIR): the figures of `seed2lora report` for two runs, side by side.
    """
    if compare:
        if run_dir:
            raise click.UsageError("give either RUN_DIR or --compare RUN_A RUN_B, not both")
        from .report.compare import show_compare

        show_compare(compare[0], compare[1], out=stdout_console())
        return
    if not run_dir:
        raise click.UsageError("give a RUN_DIR (or --compare RUN_A RUN_B)")
    show_run(Path(run_dir), stage=stage, n_samples=n_samples, as_jsonl=as_jsonl, seed=seed,
             out=stdout_console(), err=console)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--seeds", "seeds_path", type=click.Path(exists=True, dir_okay=True),
              help="The run's seed file, if manifest.json's seed_tasks path does not resolve from here.")
@click.option("--out", "--output", "out_dir", cls=Renamed, type=click.Path(file_okay=False), metavar="DIR",
              help="Where to write it (default RUN_DIR/report).")
@moved("--output-dir", OUTPUT_DIR_MOVED)
@moved("--run-name", RUN_NAME_MOVED)
@friendly_errors
def report(run_dir, seeds_path, out_dir):
    """Plots and one HTML page judging a run's quality and diversity.

    Writes report/ in RUN_DIR: a PNG per figure (stage funnel, ROUGE-L to the nearest seed and pool entry,
    lengths, classification mix, verb-noun structure, Evol-Instruct operations, token spend), report.html
    (self-contained, opens from disk) and report.json (the figures as data).
    """
    from .report import write_report  # matplotlib and spaCy load only for this command

    page = write_report(run_dir, out_dir=out_dir, seeds_path=seeds_path)
    console.print(f"[green]report:[/] {escape(str(page))}  (open it in a browser; the figures as data: "
                  f"{escape(str(page.parent / 'report.json'))})")


def _run_config(run_dir: str, config_path: str | None, sets: tuple[str, ...], flags: dict[str, Any]) -> RunConfig:
    """The config of an existing run: --config, else the one its manifest recorded; then flags, then --set."""
    from .store import RunDir

    recorded = {} if config_path else (RunDir(run_dir).manifest().get("config") or {})
    overrides = {**{k: v for k, v in flags.items() if v is not None}, **parse_overrides(sets)}
    return recorded_config(recorded, run_dir, config_path, overrides)


def _run_command_session(run_dir, config_path, sets, flags, names=None):
    """names: the command's flags by the setting each sets, when its teachers' messages should name them (score's
    judge: --judge-base-url, not run's --base-url); None: run's."""
    from .runner import Session

    return Session(_run_config(run_dir, config_path, sets, flags), progress=rich_progress,
                   log=log_line, flags=names)


_config_of_run = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                              help="TOML run config (default: the config RUN_DIR's manifest recorded).")
_set_any = _set_option("select.near_dup_threshold=0.6")


# The settings score's flags set, by flag: its judge's messages name these, never run's --teacher or --base-url
SCORE_FLAGS = {**{SCORE_JUDGE.key(k): flag for k, flag in SCORE_JUDGE.flags.items()},
               "budget.max_tokens_total": "--max-tokens-total"}


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--judge", metavar="SPEC", help="The judge: embedded | openai:MODEL | hf:PATH (default: [score.teacher], "
                                              "else the run's teacher).")
@endpoints_option("--judge-base-url", help="The judge's OpenAI-compatible server; several, comma-separated or the "
                                           "flag repeated, share the load and fail over (default: [score.teacher] "
                                           "base_url).")
@click.option("--max-tokens-total", type=int, callback=checked("budget.max_tokens_total"), help="Stop cleanly after this many tokens, whole run (default: the "
                                                   "run's budget).")
@click.option("--rescore", is_flag=True, help="Remove the earlier ratings and score rejections and rate every row "
                                              "again (another judge, another score.method).")
@_config_of_run
@_set_any
@run_dir_only
@friendly_errors
def score(run_dir, judge, judge_base_url, max_tokens_total, rescore, config_path, sets):
    """Rate each kept instance 1-5 with a judge (follows the instruction, correct, helpful); write score.jsonl.

    Cached and resumable: run it again to finish what is pending. See docs/quality.md.
    """
    flags = {"score.teacher.spec": judge, "score.teacher.base_url": judge_base_url,
             "budget.max_tokens_total": max_tokens_total}
    _run_command_session(run_dir, config_path, sets, flags, SCORE_FLAGS).score(rescore=rescore)  # logged as it ends


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--model", metavar="DIR", help="The student: a local HF model folder (default: [train] model, the "
                                             "embedded SmolLM2-135M-Instruct).")
@click.option("--batch-size", type=int, callback=checked("ifd.batch_size"), help=f"Rows per forward pass (default {default_of('ifd.batch_size')}).")
@_config_of_run
@_set_any
@run_dir_only
@friendly_errors
def ifd(run_dir, model, batch_size, config_path, sets):
    """Instruction-following difficulty of each kept row with the student (Cherry LLM); write ifd.jsonl."""
    flags = {"train.model": model, "ifd.batch_size": batch_size}
    _run_command_session(run_dir, config_path, sets, flags).ifd()  # logged as the step ends


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--by", type=click.Choice(["judge", "ifd", "random", "all"]),
              help=f"Rank rows by judge score, IFD (high first), at random, or keep all (default "
                   f"{default_of('select.by')}).")
@click.option("--top", type=int, callback=checked("select.top"), help="Keep this many rows.")
@click.option("--frac", type=float, callback=checked("select.frac"), help=f"Keep this share of the rows (default {default_of('select.frac')}).")
@_config_of_run
@_set_any
@run_dir_only
@friendly_errors
def select(run_dir, by, top, frac, config_path, sets):
    """Drop near-duplicates, keep the best rows; write select.jsonl (export --include selected).

    --by judge needs `seed2lora score RUN_DIR` first, --by ifd needs `seed2lora ifd RUN_DIR`.
    """
    if top is not None and frac is not None:
        raise click.UsageError("give --top N or --frac F, not both")
    flags = {"select.by": by, "select.top": top, "select.frac": frac}
    if frac is not None:
        flags["select.top"] = 0
    _run_command_session(run_dir, config_path, sets, flags).select()  # logged as the step ends


EXPORT_EXAMPLES = """\b
Examples:
  seed2lora export outputs/quickstart
  seed2lora export outputs/quickstart --formats alpaca,messages --rows task --no-seed-tasks
"""


def _export_default(key: str) -> Any:  # the help shows ExportConfig's defaults, never a copy of them
    return default_of(key, ExportConfig)


@cli.command(epilog=EXPORT_EXAMPLES)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Export folder (default RUN_DIR/export).")
@moved("--output-dir", OUTPUT_DIR_MOVED)
@moved("--run-name", RUN_NAME_MOVED)
@click.option("--formats", help=f"Comma list of alpaca, messages, hf, parquet (default {_export_default('formats')}).")
@click.option("--include", metavar="SOURCES",
              help="Comma list of the kept records to export: self-instruct (filter.jsonl), evolve (evolve.jsonl), "
                   "selected (select.jsonl, from seed2lora select); default self-instruct and evolve, whichever the "
                   "run has.")
@click.option("--rows", type=click.Choice(["instance", "task"]),
              help=f"One row per instance or per task (default {_export_default('rows')}).")
@click.option("--eval-fraction", type=float, callback=checked("eval_fraction", ExportConfig),
              help=f"Share of task families held out for eval (default {_export_default('eval_fraction')}).")
@click.option("--seed", type=int, help=f"Seed of the train/eval split (default {_export_default('seed')}).")
@click.option("--seed-tasks/--no-seed-tasks", "--seeds/--no-seeds", "include_seeds", cls=Renamed, default=None,
              help="Add the seed file's tasks to the train split, as Self-Instruct's release does (default: those "
                   "the run's records came from, none for rows a user's --input file brought).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file; its [export] table is read (default: none, every setting at its default).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Any [export] setting, e.g. --set export.rows=task (rows alone works too); checked like the TOML "
                   "file (repeatable).")
@push_options("the export, with its dataset card, to this Hugging Face dataset repository")
@friendly_errors
def export(run_dir, out_dir, formats, include, rows, eval_fraction, seed, include_seeds, config_path, sets,
           push_to_hub, private):
    """Write a run's kept tasks as Alpaca JSON, chat JSONL, an HF dataset and parquet, with a dataset card."""
    from .hub import push_export, push_target
    from .rows import include_list
    from .stages.export import export as export_door
    from .store import RunDir

    flags = {"formats": formats, "rows": rows, "eval_fraction": eval_fraction, "seed": seed,
             "include_seeds": include_seeds, "include": include_list(include) if include else None}
    cfg = load_section(ExportConfig, config_path, "export", flag_overrides(flags, sets, ExportConfig, "export"))
    target = push_target(push_to_hub, private)  # a bad name or a missing token stops before the export
    info, line = export_door(RunDir(run_dir), cfg, out_dir)
    console.print(f"[green]exported:[/] {escape(line)}")
    if target:
        url = push_export(Path(info["export_dir"]), *target, private)
        console.print(f"[green]pushed:[/] {url}", highlight=False)


# train, merge, generate, eval: the train half lives in pipeline/train/commands.py.
add_commands(cli, friendly_errors, console)

# export-adapter, serve, cost: using what seed2lora makes, in pipeline/adapter_cli.py.
from .adapter_cli import add_commands as add_adapter_commands  # noqa: E402

add_adapter_commands(cli, friendly_errors, console, run_dir_only)


@cli.command(name="config")
def config_command():
    """Print the default config as commented TOML (a starting point for run.toml)."""
    from .config import default_toml

    click.echo(default_toml(), nl=False)


def main(argv: list[str] | None = None) -> None:
    take_stop_signal()  # a stop noted in an earlier command of this process was that command's
    signal.signal(signal.SIGTERM, on_stop_signal)  # stops like Ctrl-C: status "interrupted", nothing half-written
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a script's background job ignores Ctrl-C: so it stays
        signal.signal(signal.SIGINT, on_stop_signal)
    try:
        cli.main(args=argv, prog_name="seed2lora")
    except SystemExit as e:
        if e.code in (130, 143):  # interrupted: the manifest says so and every record is written
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code)  # requests still in flight would otherwise hold the exit until they time out
        raise


if __name__ == "__main__":
    main()
