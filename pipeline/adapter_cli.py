"""CLI commands for using what seed2lora makes: export-adapter (GGUF for llama.cpp and Ollama), serve, cost.

Thin, like the other commands: parse flags, call one function, print where the files went.
pipeline/cli.py adds them to the `seed2lora` group (add_commands).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from .hub import push_options

EXPORT_ADAPTER_EXAMPLES = """\b
Examples:
  seed2lora export-adapter outputs/quickstart/adapter --format gguf
  seed2lora export-adapter outputs/quickstart/adapter --format gguf --outtype f16 --merged q8_0
  seed2lora export-adapter adapters/qwen --format gguf --base-gguf qwen2.5-0.5b-instruct-f16.gguf
"""

SERVE_EXAMPLES = """\b
Examples:
  seed2lora serve outputs/legal/adapter outputs/medical/adapter
  seed2lora serve legal=outputs/a/adapter medical=outputs/b/adapter --engine vllm --port 8001
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "legal", "messages": [{"role": "user", "content": "Hi"}]}'
"""

COST_EXAMPLES = """\b
Examples:
  seed2lora cost outputs/quickstart
  seed2lora cost outputs/a outputs/b --set cost.train_usd=100 --set cost.context_tokens=1000
  seed2lora cost outputs/a --set 'budget.prices={"my-model" = [0.2, 0.8]}'
  seed2lora cost adapters/mine          # an adapter trained on your own file: training and break-even
"""


def add_commands(cli: click.Group, friendly_errors: Callable, console: Any, run_dir_only: Callable) -> None:
    """The commands by group: export (export-adapter), serve, cost."""
    add_export_command(cli, friendly_errors, console)
    add_serve_command(cli, friendly_errors, console)
    add_cost_command(cli, friendly_errors, run_dir_only)


def add_export_command(cli: click.Group, friendly_errors: Callable, console: Any) -> None:
    @cli.command(name="export-adapter", epilog=EXPORT_ADAPTER_EXAMPLES)
    @click.argument("adapter", type=click.Path(exists=True, file_okay=False))
    @click.option("--format", "fmt", type=click.Choice(["gguf"]), default="gguf", show_default=True,
                  help="Output format: a GGUF LoRA adapter for llama.cpp (--lora) and Ollama (ADAPTER).")
    @click.option("--outtype", type=click.Choice(["f32", "f16", "bf16"]), default="f16", show_default=True,
                  help="Precision of the LoRA tensors: f16, as llama.cpp's own converter writes them (half of f32's "
                       "size); f32 keeps them as trained.")
    @click.option("--out", "out", type=click.Path(dir_okay=False), help="Adapter file (default ADAPTER/adapter.gguf).")
    @click.option("--base-gguf", type=click.Path(exists=True, dir_okay=False),
                  help="GGUF of the base the adapter must apply to (default: the embedded model's own file, when "
                       "the adapter was trained on it). Every tensor is checked against it.")
    @click.option("--model", default="", help="Base model folder (default: the one the adapter was trained on).")
    @click.option("--merged", type=click.Choice(["f16", "q8_0", "q4_k_m", "q5_k_m"]),
                  help="Also write base + adapter merged into one GGUF model in this precision (supported bases); "
                       "q4_k_m / q5_k_m: the merged f16 quantized by llama.cpp's own quantizer (llama-cpp-python).")
    @push_options("the adapter (PEFT files, the GGUF written now, a model card with the provenance) to this "
                  "Hugging Face model repository")
    @friendly_errors
    def export_adapter(adapter, fmt, outtype, out, base_gguf, model, merged, push_to_hub, private):
        """Write an adapter as a GGUF LoRA for llama.cpp and Ollama, with an Ollama Modelfile."""
        from .hub import push_target
        from .train.gguf_export import (
            MODELFILE,
            chat_format,
            modelfile,
            ollama_name,
            run_commands,
            write_adapter_gguf,
        )
        from .train.gguf_quantize import write_merged
        from .train.model import adapter_info, load_tokenizer

        target = push_target(push_to_hub, private)  # a bad name or a missing token stops before anything is written
        done = write_adapter_gguf(adapter, out, outtype=outtype, base_gguf=base_gguf, model=model)
        path, base, prov = done["path"], done["base"], done["provenance"]
        for note in done["notes"]:  # an older adapter's summary: where its data was read from, or was not found
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        console.print(f"[green]GGUF adapter:[/] {escape(str(path))}  ({path.stat().st_size / 2**20:.1f} MiB, "
                      f"{len(done['pairs'])} LoRA pairs, r={done['rank']}, alpha={done['alpha']:g}, {outtype}, "
                      f"{escape(str(base.config.get('architectures', ['?'])[0]))} base {escape(str(base.name))})", highlight=False)
        tokenizer = load_tokenizer(adapter if (Path(adapter) / "tokenizer_config.json").is_file() else str(base.hf_dir))
        fmt_ = chat_format(tokenizer)
        name = ollama_name(Path(prov["run"]).stem if prov["run"] else Path(adapter).name)
        info = adapter_info(adapter)
        sampling = info["sampling"] if info["sampling_recorded"] else None  # eval's settings, once it has run
        if base.gguf is None:
            console.print("[yellow]no base GGUF known:[/] give --base-gguf to have the adapter checked against it "
                          "and an Ollama Modelfile written")
        else:
            mf = path.parent / MODELFILE
            mf.write_text(modelfile(base.gguf, path, fmt_, prov, sampling), encoding="utf-8")
            console.print(f"[green]Ollama Modelfile:[/] {escape(str(mf))}", highlight=False)
            for line in run_commands(name, base.gguf, path, mf):
                click.echo(line)
        if merged:
            m = write_merged(adapter, None, outtype=merged, base_gguf=base_gguf, model=model)
            mf = m["path"].parent / f"{MODELFILE}.merged"
            mf.write_text(modelfile(m["path"], None, fmt_, prov, sampling), encoding="utf-8")
            console.print(f"[green]merged GGUF:[/] {escape(str(m['path']))}  ({m['path'].stat().st_size / 2**20:.1f} MiB; "
                          f"Modelfile {escape(str(mf))})", highlight=False)
            click.echo(f"llama-cli -m {m['path'].resolve()} -cnv")
        if target:
            from .train.model_card import push_adapter

            url = push_adapter(Path(adapter), done, [path, *([m["path"]] if merged else [])], *target, private)
            console.print(f"[green]pushed:[/] {escape(str(url))}", highlight=False)


def add_serve_command(cli: click.Group, friendly_errors: Callable, console: Any) -> None:
    @cli.command(epilog=SERVE_EXAMPLES)
    @click.argument("adapters", nargs=-1, required=True)
    @click.option("--engine", type=click.Choice(["auto", "vllm", "llama-cpp"]), default="auto", show_default=True,
                  help="auto = vLLM when it is installed and a GPU is there, else llama-cpp-python's server.")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
    @click.option("--port", type=int, default=8000, show_default=True, help="Listen port.")
    @click.option("--base-gguf", type=click.Path(exists=True, dir_okay=False),
                  help="llama-cpp: the base GGUF (default: the embedded model's own file).")
    @click.option("--n-ctx", type=int, default=2048, show_default=True, help="llama-cpp: context length per model.")
    @click.option("--n-threads", type=click.IntRange(min=1), default=None,
                  help="llama-cpp: CPU threads (default: every core; llama-cpp-python's own default is half).")
    @click.option("--dry-run", is_flag=True,
                  help="Print the config file and the command it would run; write nothing, start nothing.")
    @friendly_errors
    def serve(adapters, engine, host, port, base_gguf, n_ctx, n_threads, dry_run):
        """Serve many adapters on one base behind an OpenAI-compatible URL; a request names its adapter as `model`.

        ADAPTERS are adapter folders, each NAME=DIR or DIR (named after its run folder).
        """
        import shlex

        from .train.serve import plan, start, wait_ready

        p = plan(list(adapters), engine=engine, host=host, port=port, base_gguf=base_gguf, n_ctx=n_ctx,
                 n_threads=n_threads, dry_run=dry_run, log=lambda m: console.print(m, highlight=False, markup=False))
        if p.config_file:
            console.print(f"config file{' (dry run: not written)' if dry_run else ''}: {escape(str(p.config_file))}",
                          highlight=False)
            if dry_run:
                click.echo(json.dumps(p.config, indent=2))
        click.echo(" ".join(shlex.quote(a) for a in p.argv))
        if dry_run:
            return
        proc = start(p)
        try:
            wait_ready(p, proc, timeout_s=600)
            console.print(f"[green]serving:[/] {escape(p.url)}  models: {escape(', '.join(p.names))}  (Ctrl-C stops it)", highlight=False)
            proc.wait()
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: a server stops; there is no run to resume
            console.print(f"serve: stopped; {escape(p.url)} no longer answers", highlight=False)
            raise SystemExit(getattr(stop, "exit_code", 130)) from None
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
            if p.config_file:  # the engine's config is this server's alone: not left in $TMPDIR once it stops
                Path(p.config_file).unlink(missing_ok=True)


def add_cost_command(cli: click.Group, friendly_errors: Callable, run_dir_only: Callable) -> None:
    @cli.command(epilog=COST_EXAMPLES)
    @click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True), metavar="RUN_OR_ADAPTER...")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="TOML file; its [cost] table and [budget] prices are read (default: the run's own).")
    @click.option("--adapter", type=click.Path(exists=True, file_okay=False),
                  help="Adapter whose training time is priced (default RUN/adapter).")
    @click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Any [cost] setting, e.g. --set cost.train_usd=100 (train_usd alone works too), or "
                       "budget.prices; checked like the TOML file (repeatable).")
    @click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
    @run_dir_only
    @friendly_errors
    def cost(runs, config_path, adapter, sets, as_json):
        """Tokens and dollars per stage and teacher, per 1,000 kept instructions and rows, and the break-even calls.

        Each path is a run directory, or an adapter folder (or your data file with --adapter): one trained on your
        own file has no teacher spend to price, and gets its training cost and the break-even against that alone.
        """
        import tomllib

        from .config import CostConfig, load_section, parse_overrides
        from .cost import cost_of, print_cost
        from .show import stdout_console

        # cost reads [cost] and [budget] prices, from --config and from --set cost.KEY / budget.prices
        overrides = parse_overrides(sets, scope=("cost", "budget.prices"))
        cfg = load_section(CostConfig, config_path, "cost", {k: v for k, v in overrides.items() if k.startswith("cost.")})
        prices = None
        if config_path:
            with open(config_path, "rb") as f:
                prices = (tomllib.load(f).get("budget") or {}).get("prices")
        if "budget.prices" in overrides:
            prices = {**(prices or {}), **overrides["budget.prices"]}
        figures = [cost_of(r, cfg, prices, adapter) for r in runs]
        if as_json:
            click.echo(json.dumps(figures, indent=1))
            return
        out = stdout_console()
        for c in figures:
            print_cost(out, c)

