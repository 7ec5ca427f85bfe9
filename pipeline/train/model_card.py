"""The model card and file list of an adapter: its folder's README.md, written when training ends, and the Hub's,
for `export-adapter --push-to-hub` (with the GGUF written then).

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
from ..store import read_adapter_config, write_text_atomic
from .summary import SUMMARY

# Left out of the upload: checkpoints and a merged HF folder (the base's size, not the adapter's), the
# Modelfiles (they name files by local path), the folder's README.md (the card train wrote; the Hub's, with the
# GGUF written now, replaces it).
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


def model_card(adapter_dir: Path, prov: dict[str, str], base_config: dict[str, Any],
               files: dict[str, Path] | None = None, gguf: tuple[str, str] | None = None) -> str:
    """README.md of an adapter: `files` the Hub repository's (None: the folder's card, which lists none, as the
    folder grows), `gguf` the (file name, outtype) of the GGUF adapter written with it, if one was."""
    d = Path(adapter_dir)
    lora = read_adapter_config(d) or {}  # the caller has checked the folder is an adapter
    summary = json.loads((d / SUMMARY).read_text(encoding="utf-8")) if (d / SUMMARY).is_file() else {}
    arch = (base_config.get("architectures") or ["?"])[0]
    targets = lora.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
    forms = (f"in PEFT's format and as a GGUF LoRA adapter ({gguf[0]}, {gguf[1]}) for llama.cpp and Ollama" if gguf
             else "in PEFT's format")
    lines = ["---", "library_name: peft", *yaml_list("base_model", [hub_id(base_config, prov["base_model"])]),
             *yaml_list("tags", ["seed2lora", "lora", "gguf" if gguf else "", "self-instruct"]), "---", "",
             f"# {Path(prov['run']).name or d.name}: a LoRA adapter made by seed2lora", "",
             f"A LoRA adapter (rank {lora.get('r')}, alpha {lora.get('lora_alpha')}, on {targets}) for "
             f"{prov['base_model']} ({arch}), {forms}.", "",
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
    report, weights = d / "eval" / "eval_report.json", d / "adapter_model.safetensors"
    if report.is_file() and weights.is_file() and report.stat().st_mtime < weights.stat().st_mtime:
        # measured on the weights before these (trained again since): not this adapter's numbers
        lines += ["## Evaluation (seed2lora eval)", "", "eval/eval_report.json is older than these weights (the "
                  "adapter was trained again since): run `seed2lora eval` again to measure this one.", ""]
    elif report.is_file():
        from .eval import summary_line

        lines += ["## Evaluation (seed2lora eval)", "", summary_line(json.loads(report.read_text(encoding="utf-8"))),
                  ""]
    if files is not None:
        lines += ["## Files", "", *[f"- `{name}`" for name in sorted([*files, "README.md"])], ""]
    here = "<this repository>" if files is not None else "<this folder>"
    # What from_pretrained can load: the folder's card the base it was trained on (PEFT's record of it), a Hub card
    # the base's Hub id; a bare name ("SmolLM2-135M-Instruct", the embedded base) is neither
    base = (lora.get("base_model_name_or_path") if files is None else "") \
        or hub_id(base_config, prov["base_model"]) or prov["base_model"]
    lines += ["## Use", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "",
              f'base = AutoModelForCausalLM.from_pretrained("{base}")',
              f'model = PeftModel.from_pretrained(base, "{here}")', "```", ""]
    if gguf:
        lines += [f"llama.cpp: `llama-cli -m <base>.gguf --lora {gguf[0]}`; Ollama: a Modelfile with "
                  f"`FROM <base>.gguf` and `ADAPTER {gguf[0]}`. The GGUF adapter applies to a GGUF of the same base "
                  "(the base named above).", ""]
    else:
        lines += [f"llama.cpp and Ollama: `seed2lora export-adapter {here}` writes it as a GGUF LoRA adapter, with "
                  "an Ollama Modelfile.", ""]
    return "\n".join(lines)


def write_folder_card(adapter_dir: Path, model_path: str) -> Path:
    """Our card as the adapter folder's README.md, over PEFT's blank template ("Model Card for Model ID ... [More
    Information Needed]"), so a copy of the folder says what it is; `model_path` is the base it was trained on."""
    from .gguf_adapter import find_base, provenance

    base = find_base(adapter_dir, model=model_path)
    card = model_card(adapter_dir, provenance(adapter_dir, base), base.config)
    out = Path(adapter_dir) / "README.md"
    write_text_atomic(out, card)
    return out


def push_adapter(adapter_dir: Path, done: dict[str, Any], ggufs: list[Path], repo: str, token: str,
                 private: bool = False) -> str:
    """The adapter folder's files, the GGUFs written now and a model card, as a commit to a Hub model repository."""
    files = adapter_files(adapter_dir, ggufs)
    card = model_card(adapter_dir, done["provenance"], done["base"].config, files, (done["path"].name, done["outtype"]))
    return push_files(repo, "model", adapter_dir, files, card,
                      f"seed2lora adapter {Path(done['provenance']['run']).name or adapter_dir.name}", token, private)
