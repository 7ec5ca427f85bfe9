"""`seed2lora serve`: many adapters on one base behind an existing OpenAI-compatible server.

A request picks an adapter by naming it as `model`; seed2lora writes no server of its own:
- vLLM (a GPU and vllm installed): `vllm serve BASE --enable-lora --lora-modules name=path ...`
  loads the PEFT folders as they are and batches requests for different adapters together;
- llama-cpp-python's server (CPU): a config file lists the base GGUF once under "base" and
  once per adapter with that adapter's GGUF (written by export-adapter if missing). It holds
  one model at a time and reloads when a request names another: a fraction of a second for
  the embedded model, too slow for large bases, where vLLM is the engine to use.

Each adapter answers with the sampling settings `eval` scored it with (its sampling.json:
greedy, no repetition penalty, eval's answer length and stop tokens), a request's own values
winning. llama-cpp-python's config has no per-model sampling defaults, so the server runs
under pipeline/train/llama_server.py, which fills a request's missing settings from the named
model's (SAMPLING_KEY of the config file) before llama-cpp-python reads it. vLLM takes one
set for every model (--override-generation-config).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Seed2LoraError
from ..store import ADAPTER_DIR
from .gguf_adapter import ADAPTER_FILE, ADAPTER_OUTTYPE, find_base, outtype_of, write_adapter_gguf
from .model import adapter_info

ENGINES = ("auto", "vllm", "llama-cpp")
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts (its MaxLoRARanks)
BASE_ALIAS = "base"  # the model name that answers without any adapter
SAMPLING_KEY = "seed2lora_sampling"  # the config file's alias -> sampling settings; llama_server.py reads it


@dataclass
class Adapter:
    name: str
    path: Path
    rank: int
    base: str
    sampling: dict[str, Any] = field(default_factory=dict)  # model.adapter_info's: eval's settings, or its defaults
    sampling_recorded: bool = False  # True: sampling.json was there (eval has run)


@dataclass
class Plan:
    """What `serve` starts: the command line, the URL it answers on, the names a request may use."""

    engine: str
    argv: list[str]
    url: str
    names: list[str]
    config_file: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def parse_adapters(specs: list[str]) -> list[Adapter]:
    """NAME=DIR or DIR (named after the folder, or the run folder above one called `adapter`)."""
    out: list[Adapter] = []
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or Path(spec).exists():  # a folder whose name holds '=' is a folder
            name, path = "", spec
        d = Path(path)
        if not name:
            name = d.resolve().parent.name if d.resolve().name in (ADAPTER_DIR, "adapters") else d.resolve().name
        info = adapter_info(d)  # refuses a folder that is not an adapter
        out.append(Adapter(name, d, info["rank"], str(info["base"] or ""), info["sampling"], info["sampling_recorded"]))
    names = [a.name for a in out]
    clash = sorted({n for n in names if names.count(n) > 1} | ({BASE_ALIAS} & set(names)))
    if clash:
        raise Seed2LoraError(f"adapter name(s) {', '.join(clash)} used twice or reserved. Fix: name each adapter, "
                             "e.g. seed2lora serve legal=outputs/a/adapter medical=outputs/b/adapter")
    bases = {Path(a.base).name for a in out}
    if len(bases) > 1:
        raise Seed2LoraError(f"the adapters were trained on different bases ({', '.join(sorted(bases))}); one server "
                             "shares one base. Fix: serve each base's adapters with their own command")
    return out


def vllm_rank(ranks: list[int]) -> int:
    need = max(ranks)
    for r in VLLM_RANKS:
        if r >= need:
            return r
    raise Seed2LoraError(f"rank {need} is above vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]})")


def vllm_command(base_model: str, adapters: list[Adapter], host: str, port: int) -> list[str]:
    """`vllm serve` with every adapter loaded as a LoRA module under its name, answering with the first
    adapter's sampling settings (vLLM's defaults are one set for all models; sampling_note says when they differ)."""
    s = adapters[0].sampling
    gen = {"temperature": s["temperature"], "top_p": s["top_p"], "repetition_penalty": s["repeat_penalty"],
           "max_new_tokens": s["max_new_tokens"]}
    return ["vllm", "serve", base_model, "--host", host, "--port", str(port), "--enable-lora",
            "--lora-modules", *(f"{a.name}={a.path.resolve()}" for a in adapters),
            "--max-loras", str(len(adapters)), "--max-lora-rank", str(vllm_rank([a.rank for a in adapters])),
            "--override-generation-config", json.dumps(gen)]


def sampling_note(adapters: list[Adapter], engine: str) -> str | None:
    """What to tell the user about the sampling settings each model answers with; None: nothing to say."""
    unrecorded = [a.name for a in adapters if not a.sampling_recorded]
    if engine == "vllm" and any(a.sampling != adapters[0].sampling for a in adapters):
        return (f"the adapters were evaluated with different sampling settings and vLLM takes one set: all answer "
                f"with {adapters[0].name}'s; a request may set its own")
    return (f"{', '.join(unrecorded)}: no sampling.json (not evaluated yet), so eval's defaults apply (greedy, "
            "no repetition penalty)") if unrecorded else None


def sampling_defaults(adapters: list[Adapter]) -> dict[str, dict[str, Any]]:
    """alias -> the sampling settings it answers with; the base gets the first adapter's, as eval scored both sides
    with the same settings."""
    return {BASE_ALIAS: adapters[0].sampling, **{a.name: a.sampling for a in adapters}}


def llama_cpp_config(base_gguf: Path, adapters: list[tuple[str, Path]], host: str, port: int,
                     n_ctx: int = 2048, n_threads: int | None = None) -> dict[str, Any]:
    """llama-cpp-python's server config file (llama_cpp/server/settings.py ConfigFileSettings).

    The first model is the default, so a request naming no model gets the base alone (a name it does not
    serve is refused: llama_server).
    """
    base = str(base_gguf.resolve())
    # n_threads: llama-cpp-python's own default is cpu_count // 2, one thread on a 2-core machine
    common = {"model": base, "n_ctx": n_ctx, "verbose": False, "n_threads": n_threads or os.cpu_count() or 1}
    return {"host": host, "port": port,
            "models": [{**common, "model_alias": BASE_ALIAS},
                       *({**common, "model_alias": name, "lora_path": str(path.resolve())} for name, path in adapters)]}


def llama_cpp_command(config_file: Path) -> list[str]:
    """llama-cpp-python's server, started by llama_server.py to give each model its sampling defaults."""
    return [sys.executable, "-m", "pipeline.train.llama_server", "--config_file", str(config_file)]


def pick_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise Seed2LoraError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    if engine == "auto":
        import torch

        if has_vllm and torch.cuda.is_available():
            return "vllm"
        engine = "llama-cpp"
    if engine == "vllm" and not has_vllm:
        raise Seed2LoraError("vLLM is not installed. Fix: pip install vllm (needs a GPU), or --engine llama-cpp")
    if engine == "llama-cpp" and not has_llama_cpp:
        raise Seed2LoraError('llama-cpp-python is not installed. Fix: pip install "llama-cpp-python[server]" (if a '
                             'native build dies with SIGILL, build with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON '
                             '-DGGML_AVX512=ON"), or --engine vllm on a GPU machine')
    return engine


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def plan(specs: list[str], *, engine: str = "auto", host: str = "127.0.0.1", port: int = 8000,
         base_gguf: str | None = None, config_dir: str | Path | None = None, n_ctx: int = 2048,
         n_threads: int | None = None, dry_run: bool = False, log: Any = print) -> Plan:
    """Check the adapters, write what the engine needs (GGUF adapters, a config file), build its command.

    dry_run: write nothing; say what would be written (the Plan holds the config it would write).
    """
    adapters = parse_adapters(specs)
    engine = pick_engine(engine)
    base = find_base(adapters[0].path, base_gguf)
    url = f"http://{host}:{port}/v1"
    note = sampling_note(adapters, engine)
    if note:
        log(f"serve: {note}")
    if engine == "vllm":
        return Plan(engine, vllm_command(str(base.hf_dir), adapters, host, port), url,
                    [str(base.hf_dir), *(a.name for a in adapters)])
    if base.gguf is None:
        raise Seed2LoraError("llama.cpp serves GGUF files and this base has none here. Fix: --base-gguf FILE (the "
                             "base converted with llama.cpp's convert_hf_to_gguf.py)")
    ggufs = []
    for a in adapters:
        target = a.path / ADAPTER_FILE
        if not target.is_file() or target.stat().st_mtime < (a.path / "adapter_model.safetensors").stat().st_mtime:
            # A re-export keeps the type of the file it replaces (an f16 export came back f32, unsaid); a first one
            # is export-adapter's default (an f32 one here was twice an export's size, for the same answers).
            kept = outtype_of(target) if target.is_file() else None
            outtype = kept or ADAPTER_OUTTYPE
            why = (f"{kept} as the file it replaces, older than the adapter's weights" if kept else
                   f"{outtype}, as export-adapter writes it; export-adapter --outtype f32 keeps the tensors as trained")
            log(f"{'would write' if dry_run else 'writing'} {target} ({why})")
            if not dry_run:
                write_adapter_gguf(a.path, target, outtype=outtype, base_gguf=base_gguf)
        ggufs.append((a.name, target))
    config = {**llama_cpp_config(base.gguf, ggufs, host, port, n_ctx, n_threads),
              SAMPLING_KEY: sampling_defaults(adapters)}
    folder = Path(config_dir) if config_dir else Path(os.environ.get("TMPDIR", "/tmp"))
    config_file = folder / f"seed2lora-serve-{port}.json"
    if not dry_run:
        folder.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return Plan(engine, llama_cpp_command(config_file), url, [BASE_ALIAS, *(a.name for a in adapters)],
                config_file, config)


def start(p: Plan, *, quiet: bool = False) -> subprocess.Popen:
    out = subprocess.DEVNULL if quiet else None
    # Idle OpenMP threads sleep, not spin: spinning threads made a llama.cpp check 17x slower on a busy CPU.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return subprocess.Popen(p.argv, stdout=out, stderr=out, env=env)


def wait_ready(p: Plan, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Until GET {url}/models answers; the engine's own exit code ends the wait with an error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Seed2LoraError(f"{p.engine} exited with code {proc.returncode} before serving ({' '.join(p.argv)})")
        try:
            with urllib.request.urlopen(f"{p.url}/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise Seed2LoraError(f"{p.engine} did not answer on {p.url} within {timeout_s:.0f} s")
