"""CLI commands of the train half: train, merge, generate, eval.

Thin: parse flags into a config, call one function, print where the files went. They
are added to the main `seed2lora` group by pipeline/cli.py (add_commands). `export` is a
stage, so it is a command of pipeline/cli.py: nothing under train/ imports stages/.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import EvalConfig, RunConfig, TrainConfig, check_flag, default_of, flag_overrides, load_section
from ..progress import progress


class Renamed(click.Option):
    """An option whose old spelling (its later names) still works but is left out of --help."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        names, self.opts, self.secondary_opts = (self.opts, self.secondary_opts), self.opts[:1], self.secondary_opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts = names


def moved(flag: str, fix: str):
    """A flag this command no longer takes, since it means one thing in every command (STYLE: one CLI dialect).

    Hidden; given, it stops with exit 2 and `fix`, which names the form to use ({value}: the value given).
    """
    def refuse(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            raise click.UsageError(f"{flag} {fix.format(value=value)}", ctx)

    # Its own parameter name: click would otherwise hand it the value of the option it makes way for (--out's output_dir).
    return click.option(flag, "moved_" + flag.strip("-").replace("-", "_"), hidden=True, expose_value=False,
                        callback=refuse)


def checked(key: str, cls: type = RunConfig):
    """A number flag's callback: its value checked against its setting (`key` of `cls`) as click reads it, so the
    error names the flag typed and its fix in the flag's form (`--num-instructions -5` named bootstrap.num_instructions
    and gave "e.g. bootstrap.num_instructions = 100"; `evolve --rounds -1` named --set evolve.rounds=-1)."""
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            from ..errors import InputError

            try:
                check_flag(param.opts[0], key, value, cls)
            except InputError as e:
                raise click.BadParameter(f"{e.problem}. Fix: {e.fix}.", ctx, param) from None
        return value
    return check


# --output-dir is the folder run directories go under (`seed2lora run`); a command's own output is --out.
OUTPUT_DIR_MOVED = "names the folder run directories go under (seed2lora run); this command writes to --out {value}"


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def sampling_kwargs(sampling: dict[str, Any], max_new_tokens: int | None = None) -> dict[str, Any]:
    """eval.generate's keywords from an adapter's sampling settings (model.adapter_info's "sampling");
    a --max-new-tokens given wins."""
    return {"max_new_tokens": max_new_tokens or sampling["max_new_tokens"], "temperature": sampling["temperature"],
            "top_p": sampling["top_p"], "repetition_penalty": sampling["repeat_penalty"], "stop": sampling["stop"]}


TRAIN_EXAMPLES = """\b
Examples:
  seed2lora train outputs/quickstart/export --packing --max-seq-len 512 --epochs 2 --grad-accum 2
  seed2lora train outputs/quickstart/export --quant 4bit --max-steps 50 --set train.lora_r=16
  seed2lora train my_data.jsonl --model /models/Qwen2.5-0.5B-Instruct --out adapters/qwen
"""


def done_line(summary: dict[str, Any]) -> str:
    """train's last line. Its rates are this session's (Trainer's steps/s counts the steps run since the checkpoint
    resumed from), so a resumed training says so and gives the whole training's time beside them."""
    steps, session = summary["steps"], summary.get("session_steps", summary["steps"])
    rates = f"{summary['steps_per_s']:.3f} steps/s, {summary['tokens_per_s']:.0f} tokens/s"
    if session == steps:
        said = f"{steps} steps, {rates}"
    else:
        said = (f"{steps} steps, {session} of them this session at {rates}; the whole training "
                f"{summary['runtime_s']:.0f} s, {steps / max(summary['runtime_s'], 1e-9):.3f} steps/s")
    return f"{summary['output_dir']}  ({said}; {summary['training_path']})"


def config_opt(f: Callable) -> Callable:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="TOML file; its [train] / [eval] table is read (default: none, "
                             "every setting at its default).")(f)


def set_opt(example: str) -> Callable:
    section, _, key = example.partition(".")
    return click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                        help=f"Any [{section}] setting, e.g. --set {example} ({key} alone works too); checked "
                             "like the TOML file (repeatable).")


def t(key: str) -> Any:  # the help shows TrainConfig's defaults, never a copy of them
    return default_of(key, TrainConfig)


def e(key: str) -> Any:
    return default_of(key, EvalConfig)


# The [eval.judge] settings eval's flags set, by flag: the judge's messages name --judge, and --set for the rest
EVAL_FLAGS = {"eval.judge.spec": "--judge"}


def add_commands(cli: click.Group, friendly_errors: Callable, console: Any) -> None:
    """The train half's commands: making an adapter (train, merge), then asking it (generate, eval)."""
    add_training_commands(cli, friendly_errors, console)
    add_answering_commands(cli, friendly_errors, console)


def add_training_commands(cli: click.Group, friendly_errors: Callable, console: Any) -> None:
    @cli.command(epilog=TRAIN_EXAMPLES)
    @click.argument("data", type=click.Path(exists=True))
    @click.option("--model", metavar="DIR", help="Local HF model folder (default: the embedded SmolLM2-135M-Instruct).")
    @click.option("--out", "output_dir", type=click.Path(file_okay=False), metavar="DIR",
                  help="Adapter folder (default: <run>/adapter for a run or its export, else ./adapter).")
    @moved("--output-dir", OUTPUT_DIR_MOVED)
    @click.option("--quant", type=click.Choice(["auto", "4bit", "none"]), is_flag=False, flag_value="4bit",
                  help=f"The base in 4-bit (QLoRA) or unquantized (LoRA); auto: 4-bit on a GPU, unquantized on CPU "
                       f"when it fits in memory (default {t('quant')}; --quant alone: 4bit).")
    @click.option("--no-quant", is_flag=True, hidden=True, help="Old spelling of --quant none.")
    @click.option("--packing/--no-packing", default=None,
                  help=f"Pack examples into full rows (default {_on_off(t('packing'))}).")
    @click.option("--epochs", type=float, callback=checked("epochs", TrainConfig), help=f"Epochs (default {t('epochs'):g}).")
    @click.option("--max-steps", type=int, callback=checked("max_steps", TrainConfig),
                  help=f"Stop after this many updates, overriding epochs (default {t('max_steps')}: the epochs).")
    @click.option("--batch-size", type=int, callback=checked("batch_size", TrainConfig), help=f"Rows per device per micro-step (default {t('batch_size')}).")
    @click.option("--grad-accum", type=int, callback=checked("grad_accum", TrainConfig), help=f"Micro-steps per update (default {t('grad_accum')}).")
    @click.option("--lr", "learning_rate", type=float, callback=checked("learning_rate", TrainConfig), help=f"Learning rate (default {t('learning_rate'):g}).")
    @click.option("--max-seq-len", type=int, callback=checked("max_seq_len", TrainConfig), help=f"Tokens per example or packed row (default {t('max_seq_len')}).")
    @click.option("--optim", help=f"Optimizer: auto (paged_adamw_32bit on a GPU, adamw_torch on CPU), paged_adamw_8bit, "
                                  f"adamw_torch, ... (default {t('optim')}).")
    @click.option("--resume/--no-resume", default=None,
                  help=f"Continue from the newest checkpoint (default {_on_off(t('resume'))}).")
    @config_opt
    @set_opt("train.lora_r=16")
    @friendly_errors
    def train(data, config_path, sets, **flags):
        """Fine-tune a (Q)LoRA adapter on an export, a run directory, or an Alpaca/chat/parquet/HF dataset."""
        from .trainer import train as run_training

        if flags.pop("no_quant"):  # the flag of the days when quant was on or off
            if flags["quant"] not in (None, "none"):
                raise click.UsageError(f"--no-quant and --quant {flags['quant']} contradict each other; give one")
            flags["quant"] = "none"
        cfg = load_section(TrainConfig, config_path, "train", flag_overrides(flags, sets, TrainConfig, "train"))
        main_process = os.environ.get("RANK", "0") == "0"  # under torchrun / accelerate launch, rank 0 speaks
        summary = run_training(data, cfg, log=lambda m: console.print(m, highlight=False) if main_process else None,
                               progress=functools.partial(progress, console=console) if main_process else None)
        if not main_process:
            return
        console.print(f"[green]done:[/] {done_line(summary)}", highlight=False)

    @cli.command()
    @click.argument("adapter", type=click.Path(exists=True, file_okay=False))
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
                  help="Merged model folder (default ADAPTER/merged).")
    @moved("--output-dir", OUTPUT_DIR_MOVED)
    @click.option("--model", default="", help="Base model folder (default: the one the adapter was trained on).")
    @click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
                  help="Precision of the merged weights; auto = the base's own.")
    @friendly_errors
    def merge(adapter, out_dir, model, dtype):
        """Merge an adapter into its base, re-loaded unquantized, and save a plain model."""
        from .model import merge_adapter

        out = merge_adapter(adapter, out_dir or Path(adapter) / "merged", model=model, dtype=dtype)
        console.print(f"[green]merged:[/] {out}")


def add_answering_commands(cli: click.Group, friendly_errors: Callable, console: Any) -> None:
    @cli.command()
    @click.argument("adapter", type=click.Path(exists=True, file_okay=False))
    @click.argument("prompts", nargs=-1)
    @click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
                  help="JSONL of {instruction, input} or {messages} rows to answer.")
    @click.option("--model", default="", help="Base model folder (default: the adapter's).")
    @click.option("--max-new-tokens", type=int, callback=checked("max_new_tokens", EvalConfig),
                  help=f"Answer length cap (default: the adapter's sampling.json, as eval used it; else "
                       f"{e('max_new_tokens')}).")
    @click.option("--quant", type=click.Choice(["auto", "4bit", "none"]), default="auto", show_default=True,
                  help="Load the base as trained (auto), in 4-bit, or unquantized.")
    @click.option("--base", "base_only", is_flag=True, help="Answer with the base model alone (adapter disabled).")
    @friendly_errors
    def generate(adapter, prompts, input_path, model, max_new_tokens, quant, base_only):
        """Answer prompts with base + adapter; prints one JSON line per answer.

        Decoding is the adapter's sampling.json, the settings `eval` scored it with (greedy, no repetition
        penalty, unless set there).
        """
        from contextlib import nullcontext

        from ..datasets_io import messages_fields
        from ..errors import InputError, Seed2LoraError
        from ..records import RowError
        from ..store import read_jsonl
        from .eval import generate as gen
        from .eval import user_prompt
        from .model import adapter_info, load_with_adapter

        messages = [user_prompt(p) for p in prompts]
        for line, row in read_jsonl(input_path) if input_path else ():
            if "messages" in row:  # answer the conversation; a final assistant turn is the one to redo
                try:
                    messages_fields(row["messages"])
                except RowError as e:
                    raise InputError(input_path, line, e.problem, e.fix) from None
                msgs = row["messages"]
                messages.append(msgs[:-1] if msgs[-1].get("role") == "assistant" else msgs)
            elif isinstance(row.get("instruction"), str) and row["instruction"].strip():
                messages.append(user_prompt(row["instruction"], str(row.get("input") or "")))
            else:  # answered as an empty prompt before, with no word
                raise InputError(input_path, line, f"has no 'instruction' text nor chat 'messages' (keys: "
                                 f"{', '.join(row) or 'none'})", 'write {"instruction": "...", "input": "..."} '
                                 'or {"messages": [{"role": "user", "content": "..."}]} on each line')
        if not messages:
            raise Seed2LoraError("nothing to answer. Fix: give prompts as arguments or --input FILE.jsonl")
        peft_model, tokenizer = load_with_adapter(adapter, model=model, quant=quant)
        with peft_model.disable_adapter() if base_only else nullcontext():
            answers = gen(peft_model, tokenizer, messages, **sampling_kwargs(adapter_info(adapter)["sampling"],
                                                                            max_new_tokens))
        for msgs, answer in zip(messages, answers, strict=True):
            click.echo(json.dumps({"prompt": msgs[-1]["content"], "answer": answer}, ensure_ascii=False))

    @cli.command(name="eval")
    @click.argument("adapter", type=click.Path(exists=True, file_okay=False))
    @click.option("--data", help="JSONL of held-out tasks, or user-oriented: the Self-Instruct paper's 252 tasks, "
                                 "downloaded once into the user cache (docs/training.md, eval). Default: those if on this "
                                 "machine (../shared/data or the cache), else the adapter's eval split, and the "
                                 "message says so.")
    @click.option("--limit", type=int, callback=checked("limit", EvalConfig), help=f"Evaluate this many tasks, a seeded sample (default {e('limit')}: all).")
    @click.option("--max-new-tokens", type=int, callback=checked("max_new_tokens", EvalConfig), help=f"Answer length cap (default {e('max_new_tokens')}).")
    @click.option("--judge", metavar="SPEC",
                  help="Teacher spec of a pairwise judge, e.g. openai:gpt-4o-mini or embedded (default: none, ROUGE-L "
                       "only); its other [teacher] keys: --set eval.judge.base_url=URL or an [eval.judge] table. In a run "
                       "directory it uses the run's cache and budget.")
    @click.option("--model", default="", help="Base model folder (default: the adapter's).")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
                  help="Report folder (default ADAPTER/eval).")
    @moved("--output-dir", OUTPUT_DIR_MOVED)
    @config_opt
    @set_opt("eval.limit=50")
    @friendly_errors
    def evaluate(adapter, data, limit, max_new_tokens, judge, model, out_dir, config_path, sets):
        """Base versus adapter on held-out tasks: ROUGE-L against references, optional pairwise judge."""
        from .eval import evaluate as run_eval
        from .eval import summary_line

        flags = {"data": data, "limit": limit, "max_new_tokens": max_new_tokens, "judge.spec": judge}
        cfg = load_section(EvalConfig, config_path, "eval", flag_overrides(flags, sets, EvalConfig, "eval"))
        report = run_eval(adapter, cfg, model=model, out_dir=out_dir, log=lambda m: console.print(m, highlight=False),
                          progress=functools.partial(progress, console=console), flags=EVAL_FLAGS)
        console.print(summary_line(report), highlight=False)
        console.print(f"[green]report:[/] {report['report_dir']}/eval_report.json (+ .md)")
