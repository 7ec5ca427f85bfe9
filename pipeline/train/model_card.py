"""The Hub model card and file list of an adapter, for `export-adapter --push-to-hub`.

The card says what the adapter is (PEFT LoRA, its rank and targets, the base), where it came from (the
provenance the GGUF carries: run, dataset files and their sha256, seed2lora version), how it was trained
and scored (the training summary and, when `seed2lora eval` ran, its one-line result) and how to use it
(PEFT, llama.cpp, Ollama). It is built from the adapter folder's own files and given to the Hub as bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..hub import folder_files, push_files, yaml_list
from ..store import read_adapter_config
from .model import SUMMARY

# Left out of the upload: checkpoints and a merged HF folder (the base's size, not the adapter's), the
# Modelfiles (they name files by local path), PEFT's boilerplate README.md (the card replaces it).
NOT_PUSHED = ("checkpoint", "merged", "Modelfile", "README.md")  # checkpoint-N/ and checkpoints/


def adapter_files(adapter_dir: Path, ggufs: list[Path]) -> dict[str, Path]:
    """{path in the repository: file}: the adapter folder's files (GGUFs only those written now) plus `ggufs`."""
    written = {p.resolve() for p in ggufs}
    files = folder_files(adapter_dir, keep=lambda top: not top.startswith(NOT_PUSHED))
    files = {k: p for k, p in files.items() if not k.endswith(".gguf") or p.resolve() in written}
    for p in ggufs:
        files.setdefault(p.name, p)
    return files


def hub_id(config: dict[str, Any], name: str) -> str:
    """The base's Hub id (ORG/NAME) for the card's base_model, or "" when only a local folder name is known: the
    Hub checks base_model against its repositories, and a bare folder name is none."""
    from ..teachers.embedded import EMBEDDED_NAME

    if name == EMBEDDED_NAME:
        return f"HuggingFaceTB/{EMBEDDED_NAME}"  # the embedded GGUF is this model's Q4_1 quantization
    source = str(config.get("_name_or_path") or "")
    return source if source.count("/") == 1 and not Path(source).exists() and not source.startswith(("/", ".")) else ""


def model_card(adapter_dir: Path, prov: dict[str, str], done: dict[str, Any], files: dict[str, Path]) -> str:
    """README.md of the adapter's Hub repository; `done` is what write_adapter_gguf returned."""
    d = Path(adapter_dir)
    lora = read_adapter_config(d) or {}  # write_adapter_gguf has read it already: the folder is an adapter
    summary = json.loads((d / SUMMARY).read_text(encoding="utf-8")) if (d / SUMMARY).is_file() else {}
    base = done["base"]
    arch = (base.config.get("architectures") or ["?"])[0]
    gguf_name = done["path"].name
    targets = lora.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
    lines = ["---", "library_name: peft", *yaml_list("base_model", [hub_id(base.config, prov["base_model"])]),
             *yaml_list("tags", ["seed2lora", "lora", "gguf", "self-instruct"]), "---", "",
             f"# {Path(prov['run']).name or d.name}: a LoRA adapter made by seed2lora", "",
             f"A LoRA adapter (rank {lora.get('r')}, alpha {lora.get('lora_alpha')}, on {targets}) for "
             f"{prov['base_model']} ({arch}), in PEFT's format and as a GGUF LoRA adapter ({gguf_name}, "
             f"{done['outtype']}) for llama.cpp and Ollama.", "",
             "## Provenance", "",
             "| what | value |", "| --- | --- |",
             *[f"| {k} | {v or '-'} |" for k, v in prov.items() if k != "adapter"], ""]
    if summary:
        loss = summary.get("train_loss") or {}
        # training_path names base, compute and optimizer; summaries written before it say 4-bit or not
        path = summary.get("training_path") or ("QLoRA on a 4-bit base" if summary.get("quantized")
                                                else "LoRA on an unquantized base")
        lines += ["## Training", "",
                  f"{summary.get('steps')} steps ({summary.get('epochs')} epochs) on "
                  f"{(summary.get('rows') or {}).get('train', '?')} training rows, {path}; "
                  f"loss {loss.get('first')} -> {loss.get('last')}.", ""]
    report = d / "eval" / "eval_report.json"
    if report.is_file():
        from .eval import summary_line

        lines += ["## Evaluation (seed2lora eval)", "", summary_line(json.loads(report.read_text(encoding="utf-8"))),
                  ""]
    lines += ["## Files", "", *[f"- `{name}`" for name in sorted([*files, "README.md"])], "",
              "## Use", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "",
              f'base = AutoModelForCausalLM.from_pretrained("{prov["base_model"]}")',
              'model = PeftModel.from_pretrained(base, "<this repository>")', "```", "",
              f"llama.cpp: `llama-cli -m <base>.gguf --lora {gguf_name}`; Ollama: a Modelfile with "
              f"`FROM <base>.gguf` and `ADAPTER {gguf_name}`. The GGUF adapter applies to a GGUF of the same base "
              "(the base named above).", ""]
    return "\n".join(lines)


def push_adapter(adapter_dir: Path, done: dict[str, Any], ggufs: list[Path], repo: str, token: str,
                 private: bool = False) -> str:
    """The adapter folder's files, the GGUFs written now and a model card, as a commit to a Hub model repository."""
    files = adapter_files(adapter_dir, ggufs)
    card = model_card(adapter_dir, done["provenance"], done, files)
    return push_files(repo, "model", adapter_dir, files, card,
                      f"seed2lora adapter {Path(done['provenance']['run']).name or adapter_dir.name}", token, private)
