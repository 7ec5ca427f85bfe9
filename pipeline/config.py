"""Configuration: one dataclass per stage plus RunConfig, loaded from TOML, flags override.

Every default is the Self-Instruct code's (yizhongw/self-instruct) or Stanford Alpaca's
unless its comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

# Self-Instruct's blacklist (tasks a language model cannot do) plus Alpaca's additions.
DEFAULT_BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to",
    "video", "audio", "music", "flowchart", "diagram",
]


@dataclass
class TeacherConfig:
    spec: str = "embedded"  # embedded | openai:MODEL | hf:PATH_OR_ID; embedded needs no key and no network
    base_url: str = ""  # OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI); empty = $OPENAI_BASE_URL or OpenAI
    api: str = "auto"  # chat | completions; auto = chat for openai, completions for local models (see README)
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never stored in the config or manifest
    concurrency: int = 8  # requests kept in flight to a server; vLLM batches them on its side
    batch_size: int = 8  # prompts per forward pass for in-process models; 8 keeps a 2-core CPU busy
    timeout_s: float = 120.0  # per request; long completions from a loaded server can take a minute
    max_retries: int = 6  # transient failures (429, 5xx, timeouts) retried with backoff, then the prompt is skipped
    device: str = "auto"  # in-process models: auto = cuda if available, else cpu
    dtype: str = "auto"  # in-process models: auto = bfloat16 on GPU, float32 on CPU
    repetition_penalty: float = 1.15  # in-process only: small models loop without it; servers use presence_penalty
    system_prompt: str = ""  # optional system message in chat mode
    trust_remote_code: bool = False  # never run a model repository's code unless asked


@dataclass
class BootstrapConfig:
    mode: str = "self-instruct"  # self-instruct | alpaca (instruction+input+output in one call)
    num_instructions: int = 100  # target number of new machine instructions (the script's default; the paper made 52K)
    num_prompt_instructions: int = 8  # in-context tasks per prompt, as in the paper
    num_machine_instructions: int = 2  # of those, machine-made ones (fewer while the pool is small)
    max_list_number: int = 16  # the prompt's numbered list stops at this number (stop sequence "16.")
    requests_per_batch: int = 5  # prompts sent per round, then the pool is refreshed (Self-Instruct's request_batch_size)
    max_requests: int = 0  # give up after this many prompts; 0 = 20 x num_instructions, so an all-rejecting teacher cannot hang
    use_clf_seed_tasks_only: bool = False  # Self-Instruct's option to bootstrap classification tasks only
    max_tokens: int = 1024  # Self-Instruct: room for 8 new tasks
    temperature: float = 0.7  # Self-Instruct's sampling, for diverse but on-topic tasks
    top_p: float = 0.5
    presence_penalty: float = 2.0  # Self-Instruct: push away from repeating the listed tasks
    frequency_penalty: float = 0.0
    alpaca_num_prompt_instructions: int = 3  # Alpaca: 3 seed tasks per prompt
    alpaca_num_tasks: int = 20  # Alpaca: the prompt asks for a list of 20 tasks
    alpaca_max_tokens: int = 3072  # Alpaca: instruction, input and output for up to 20 tasks
    alpaca_temperature: float = 1.0  # Alpaca's sampling
    alpaca_top_p: float = 1.0


@dataclass
class ClassifyConfig:
    max_tokens: int = 3  # the answer is "Yes" or "No"
    temperature: float = 0.0  # a judgement, not creative text: greedy
    top_p: float = 0.0


@dataclass
class InstancesConfig:
    max_instances: int = 5  # Self-Instruct: up to 5 instances per task
    max_tokens: int = 300  # Self-Instruct's completion budget for the instance list
    temperature: float = 0.0  # Self-Instruct generated instances greedily
    top_p: float = 0.0
    presence_penalty: float = 1.5  # Self-Instruct: discourage repeating the same instance
    frequency_penalty: float = 0.0


@dataclass
class FilterConfig:
    rouge_threshold: float = 0.7  # reject when ROUGE-L F against any pool instruction is above this
    rouge_against_seeds_only: bool = False  # the reference compares with the whole pool; some tools only with seeds
    most_similar_k: int = 10  # Self-Instruct stored the top-10 most similar instructions
    min_words: int = 4  # Self-Instruct drops instructions of 3 words or fewer
    max_words: int = 150  # ... and of more than 150 words
    blacklist: list[str] = field(default_factory=lambda: list(DEFAULT_BLACKLIST))  # whole-word, case-insensitive
    banned_prefixes: list[str] = field(default_factory=lambda: ["Write a program"])  # Self-Instruct: programs cannot be checked
    max_instances: int = 5  # keep at most this many cleaned instances per task
    require_instances: bool = True  # a task whose instances were all cleaned away is rejected


@dataclass
class RunConfig:
    run_name: str = "run"
    output_dir: str = "outputs"  # run directories go under here
    seed: int = 42  # every random choice derives from this; same seed + same replies = same dataset
    seed_tasks: str = ""  # seed file (JSONL, JSON or CSV); empty = the bundled seeds/seed_tasks.jsonl
    prompts_dir: str = ""  # folder of prompt templates; empty = the bundled prompts/
    stages: list[str] = field(default_factory=lambda: ["bootstrap", "classify", "instances", "filter"])
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    instances: InstancesConfig = field(default_factory=InstancesConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a TOML file (or none: all defaults) and apply dotted overrides like {"teacher.spec": "embedded"}."""
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise InputError(path, None, "does not exist", "pass an existing TOML file to --config")
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            line = getattr(e, "lineno", None) or _line_from_message(str(e))
            raise InputError(path, line, f"is not valid TOML ({e})", "fix the TOML syntax") from None
    cfg = _build(RunConfig, data, path, text, section=None)
    for dotted, value in (overrides or {}).items():
        set_value(cfg, dotted, value)
    return cfg


def set_value(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set 'section.key' or 'key' on a config, checking the key exists."""
    target: Any = cfg
    *sections, key = dotted.split(".")
    for s in sections:
        target = getattr(target, s)
    if not hasattr(target, key):
        raise InputError(None, None, f"unknown setting '{dotted}'", "see the config reference in README.md")
    setattr(target, key, value)


def _build(cls: type, data: dict[str, Any], path: Path | None, text: str, section: str | None) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"[{section}] " if section else ""
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise InputError(path, _line_of(text, key, section), f"unknown key {where}'{key}'",
                             f"use one of: {valid}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise InputError(path, _line_of(text, key, None), f"'{key}' must be a [{key}] table",
                                 f"write it as a [{key}] section")
            kwargs[key] = _build(hint, value, path, text, section=key)
            continue
        kwargs[key] = _coerce(value, hint, path, _line_of(text, key, section), f"{where}'{key}'")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: Path | None, line: int | None, name: str) -> Any:
    origin = typing.get_origin(hint) or hint
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, float),
        str: isinstance(value, str),
        list: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }.get(origin, True)
    if not ok:
        want = {list: "a list of strings"}.get(origin, getattr(origin, "__name__", str(origin)))
        raise InputError(path, line, f"{name} is {value!r}, which is not {want}", f"give {name} {want}")
    return value


def _line_of(text: str, key: str, section: str | None) -> int | None:
    """Best-effort line number of `key` (inside [section] when given) for error messages."""
    current = None
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[([^\]]+)\]", s)
        if m:
            current = m.group(1).strip()
            if section is None and current == key:
                return i
            continue
        if re.match(rf"^{re.escape(key)}\s*=", s) and current == section:
            return i
    return None


def _line_from_message(msg: str) -> int | None:
    m = re.search(r"line (\d+)", msg)
    return int(m.group(1)) if m else None
