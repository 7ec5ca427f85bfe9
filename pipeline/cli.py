"""The seed2lora command line: thin commands that load config, call one stage, write files."""

from __future__ import annotations

import functools
import json
import sys
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .config import RunConfig, load_config
from .errors import InputError, Seed2LoraError
from .show import show_run

console = Console(stderr=True)


@contextmanager
def rich_progress(desc: str, total: int | None) -> Iterator[Any]:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(desc, total=total)
        yield lambda n: bar.advance(task, n)


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise InputError(None, None, f"--set {item!r} is not KEY=VALUE", "write e.g. --set filter.rouge_threshold=0.6")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare word is a string
    return out


def run_options(f):
    """Options every generation command shares; each overrides the config file."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML run config."),
        click.option("--run-name", help="Run directory name under the output dir."),
        click.option("--output-dir", help="Where run directories go (default outputs/)."),
        click.option("--teacher", help="embedded | openai:MODEL | hf:PATH_OR_ID"),
        click.option("--base-url", help="OpenAI-compatible server URL (vLLM, Ollama, llama.cpp, TGI)."),
        click.option("--api", type=click.Choice(["auto", "chat", "completions"]), help="How prompts are sent."),
        click.option("--seeds", "seed_tasks", help="Seed file (.jsonl, .json, .csv)."),
        click.option("--seed", type=int, help="Random seed."),
        click.option("--num-instructions", type=int, help="Target number of new instructions."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Any config value, e.g. --set bootstrap.mode=alpaca (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_config(config_path: str | None, sets: tuple[str, ...] = (), **flags: Any) -> RunConfig:
    names = {"run_name": "run_name", "output_dir": "output_dir", "teacher": "teacher.spec",
             "base_url": "teacher.base_url", "api": "teacher.api", "seed_tasks": "seed_tasks", "seed": "seed",
             "num_instructions": "bootstrap.num_instructions"}
    overrides = {names[k]: v for k, v in flags.items() if v is not None and k in names}
    overrides.update(_parse_set(sets))
    return load_config(config_path, overrides)


def _session(config_path, sets, **flags):
    from .runner import Session

    return Session(build_config(config_path, sets, **flags), progress=rich_progress)


def friendly_errors(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except Seed2LoraError as e:
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: everything written so far is kept; run the same command to resume[/]")
            sys.exit(130)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seed2lora")
def cli() -> None:
    """Turn a handful of seed tasks into an instruction dataset (Self-Instruct)."""


@cli.command()
@run_options
@friendly_errors
def run(config_path, sets, **flags):
    """Run every enabled stage until the target count; run again to resume."""
    s = _session(config_path, sets, **flags)
    for message in s.run_all():
        console.print(message)
    console.print(f"[green]done:[/] {s.run.path}  (inspect with: seed2lora show {s.run.path})")


@cli.command()
@run_options
@friendly_errors
def bootstrap(config_path, sets, **flags):
    """Stage 1: generate new instructions from the seed tasks."""
    s = _session(config_path, sets, **flags)
    console.print(s.bootstrap())


def _stage_command(name: str, doc: str):
    @cli.command(name=name, help=doc)
    @run_options
    @click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
                  help="Read tasks from this file instead of the previous stage's output.")
    @friendly_errors
    def command(config_path, sets, input_path, **flags):
        s = _session(config_path, sets, **flags)
        console.print(getattr(s, name)(input_path))

    return command


_stage_command("classify", "Stage 2: label each instruction as classification or not.")
_stage_command("instances", "Stage 3: generate input/output instances for each task.")
_stage_command("filter", "Stage 4: filter instructions and clean instances; write filter.jsonl and rejections.")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--stage", help="Which stage file to sample or print (default: the last one written).")
@click.option("--sample", "n_samples", type=int, default=3, show_default=True, help="How many records to show.")
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print records as JSONL on stdout, for piping.")
@click.option("--seed", type=int, default=0, help="Seed for picking samples.")
@friendly_errors
def show(run_dir, stage, n_samples, as_jsonl, seed):
    """Summarise a run: counts per stage, rejections, task types, lengths, samples."""
    show_run(Path(run_dir), stage=stage, n_samples=n_samples, as_jsonl=as_jsonl, seed=seed,
             out=Console(), err=console)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="seed2lora")


if __name__ == "__main__":
    main()
