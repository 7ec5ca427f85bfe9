"""What Ollama needs beside the GGUF files: a Modelfile with the training prompt format, and the commands to run it."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import ALPACA_PREAMBLE, has_chat_template, prompt_text

MODELFILE = "Modelfile"


@dataclass
class ChatFormat:
    """A prompt format as text around each message, the same pieces for Python and an Ollama Go template."""

    name: str
    around: dict[str, tuple[str, str]]  # role -> (before, after) its content
    generation: str  # after the last message, where the answer starts
    system: str  # sent when a conversation has no system message ("" = none)
    stop: list[str] = field(default_factory=list)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The text Ollama makes of `messages` (ending with a user turn) with this template and SYSTEM."""
        if self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}, *messages]
        text = "".join(self.around[m["role"]][0] + m["content"] + self.around[m["role"]][1] for m in messages)
        return text + self.generation

    def go_template(self) -> str:
        def piece(role: str) -> str:
            before, after = self.around[role]
            return f"{before}{{{{ .Content }}}}{after}"

        return ('{{- range .Messages }}{{ if eq .Role "system" }}' + piece("system")
                + '{{ else if eq .Role "user" }}' + piece("user") + "{{ else }}" + piece("assistant")
                + "{{ end }}{{ end }}" + self.generation)


PROBES = [  # conversations a derived format must render exactly as training did
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
]


def chat_format(tokenizer: Any) -> ChatFormat | None:
    """The training prompt format (pipeline/train/data.py) as a ChatFormat, or None when it is neither of
    the two known here (ChatML, Alpaca); every candidate is checked against the training text."""
    if has_chat_template(tokenizer):
        default = tokenizer.apply_chat_template(PROBES[0], tokenize=False, add_generation_prompt=True)
        system = ""
        head = "<|im_start|>system\n"
        if default.startswith(head) and "<|im_end|>\n" in default:
            system = default[len(head):default.index("<|im_end|>\n")]
        candidate = ChatFormat("chatml", {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("system", "user",
                                                                                             "assistant")},
                               "<|im_start|>assistant\n", system, ["<|im_end|>", "<|im_start|>"])
    else:
        eos = tokenizer.eos_token or "</s>"
        candidate = ChatFormat("alpaca", {"system": ("", "\n\n"), "user": ("### Instruction:\n", "\n\n### Response:\n"),
                                          "assistant": ("", "\n\n")}, "", ALPACA_PREAMBLE, [eos, "### Instruction:"])
    ok = all(candidate.render(p) == prompt_text(tokenizer, p) for p in PROBES)
    return candidate if ok else None


def modelfile(base_gguf: Path, adapter_gguf: Path | None, fmt: ChatFormat | None, prov: dict[str, str],
              sampling: dict[str, Any] | None = None) -> str:
    """An Ollama Modelfile: the base GGUF (or a merged one), the adapter, the training template, stop tokens
    and the sampling settings `eval` scored the adapter with (model.adapter_info's "sampling")."""
    lines = ["# Made by seed2lora export-adapter.",
             f"# run: {prov['run']}", f"# base model: {prov['base_model']}",
             f"# dataset: {prov['dataset'] or '?'} (sha256 {prov['dataset_sha256'] or '?'})",
             f"FROM {base_gguf.resolve()}"]
    if adapter_gguf is not None:
        lines.append(f"ADAPTER {adapter_gguf.resolve()}")
    stops = list((sampling or {}).get("stop") or [])
    if fmt is None:
        lines.append("# The training template is not one this tool writes for Ollama; Ollama uses the base's own.")
    else:
        lines.append(f'TEMPLATE """{fmt.go_template()}"""')
        if fmt.system:
            lines.append(f'SYSTEM """{fmt.system}"""')
        stops = [*fmt.stop, *stops]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in dict.fromkeys(stops)]
    s = sampling or {"temperature": 0, "repeat_penalty": 1}  # eval's greedy decoding, no repetition penalty
    lines.append("# as `seed2lora eval` scored the adapter" + ("" if sampling else " by default (no sampling.json)"))
    lines += [f"PARAMETER temperature {s['temperature']:g}", f"PARAMETER repeat_penalty {s['repeat_penalty']:g}"]
    if sampling:
        lines += [f"PARAMETER top_p {s['top_p']:g}", f"PARAMETER num_predict {s['max_new_tokens']}"]
    return "\n".join(lines) + "\n"


def run_commands(name: str, base_gguf: Path, adapter_gguf: Path, modelfile_path: Path) -> list[str]:
    q = shlex.quote
    return [f"ollama create {q(name)} -f {q(str(modelfile_path.resolve()))} && ollama run {q(name)}",
            f"llama-cli -m {q(str(base_gguf.resolve()))} --lora {q(str(adapter_gguf.resolve()))} -cnv"]


def ollama_name(text: str) -> str:
    """A model name Ollama accepts: lowercase letters, digits, '-', '_' and '.'."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.lower()).strip("-.")
    return cleaned or "seed2lora-adapter"
