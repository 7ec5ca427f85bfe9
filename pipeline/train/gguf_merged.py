"""A merged GGUF model: the base GGUF's keys and tokenizer, each adapted weight W + alpha / r B A."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import Seed2LoraError
from .gguf_adapter import add_provenance, find_base, provenance, read_adapter, write_gguf
from .gguf_header import read_header
from .gguf_tensors import (
    arch_of,
    check_against_base,
    encode,
    gguf_alpha,
    lora_pairs,
    rotary_heads,
    rotary_order,
    tensor_names,
)

MERGED_OUTTYPES = ("f16", "q8_0")  # f16 keeps the merged weights as trained; q8_0 halves the file at ~0.1% error


def copy_fields(fields: dict[str, tuple[Any, Any, Any]], writer: Any, skip: set[str]) -> None:
    """Every key read by read_header(arrays=True) but `skip` (the writer adds general.architecture itself)."""
    for key, (value, kind, sub) in fields.items():
        if key not in skip and key != "general.architecture":
            writer.add_key_value(key, value, kind, sub)


class Source(NamedTuple):
    """Where a llama.cpp tensor comes from in an HF folder, and what llama.cpp's converter does to it on the way."""

    file: Path
    key: str
    order: np.ndarray | None  # rows in llama.cpp's rotary order (q/k of llama-family bases), else None
    shift: float  # added to the values (Gemma's norms are stored as w + 1), else 0


def hf_weights(hf_dir: Path, config: dict[str, Any]) -> dict[str, Source]:
    """llama.cpp name -> its Source, for every weight of an HF folder."""
    from safetensors import safe_open

    arch = arch_of(config)
    names = tensor_names(arch, config)
    found: dict[str, Source] = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
        for key in keys:
            hit = names.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
            if hit is None:
                continue
            kind, name = hit
            heads = rotary_heads(arch, kind, config)
            rows = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"]) * (heads or 0)
            shift = arch.norm_shift if key.endswith("norm.weight") else 0.0  # as the converter tests it
            found[name] = Source(file, key, rotary_order(rows, heads) if heads else None, shift)
    return found


def converted(source: Source) -> np.ndarray:
    """The HF weight as llama.cpp's converter writes it (float32): rows reordered, norms shifted."""
    from safetensors import safe_open

    with safe_open(str(source.file), framework="pt") as f:
        w = f.get_tensor(source.key).float().numpy()
    w = w[source.order] if source.order is not None else w
    return w + np.float32(source.shift) if source.shift else w


def write_merged_gguf(adapter_dir: str | Path, out: str | Path | None = None, *, outtype: str = "f16",
                      base_gguf: str | Path | None = None, model: str = "") -> dict[str, Any]:
    """Base + adapter as one GGUF model: the base GGUF's metadata and tokenizer, each weight W + alpha/r B A.

    The weights come from the HF folder the adapter was trained on (for the embedded model,
    its GGUF de-quantized, so the same numbers), the metadata from the base GGUF, whose
    tensor list and shapes the merged file keeps.
    """
    import gguf

    if outtype not in MERGED_OUTTYPES:
        raise Seed2LoraError(f"merged outtype must be one of {', '.join(MERGED_OUTTYPES)}, not {outtype!r}")
    base = find_base(adapter_dir, base_gguf, model)
    arch = arch_of(base.config)
    if base.gguf is None:
        raise Seed2LoraError("a merged GGUF takes its tokenizer and settings from a GGUF of the base. Fix: give one "
                             "with --base-gguf (llama.cpp's convert_hf_to_gguf.py makes it from the base folder), "
                             "or run `seed2lora merge` and convert the merged folder with that script")
    state, lora_config = read_adapter(adapter_dir)
    pairs = {p.name: p for p in lora_pairs(state, base.config, lora_config)}
    check_against_base(list(pairs.values()), base.gguf, arch)
    scale = gguf_alpha(lora_config) / int(lora_config["r"])
    fields, shapes = read_header(base.gguf, arrays=True)
    sources = hf_weights(base.hf_dir, base.config)
    missing = [name for name in shapes if name not in sources]
    if missing:
        raise Seed2LoraError(f"{base.gguf} has tensors the base folder {base.hf_dir} lacks ({', '.join(missing[:4])}"
                             f"{' ...' if len(missing) > 4 else ''}); it is not a GGUF of that base. Fix: --base-gguf")
    prov = provenance(adapter_dir, base)
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]

    def weight(name: str) -> np.ndarray:
        w = converted(sources[name])
        if w.shape != shapes[name]:
            raise Seed2LoraError(f"{name} is {shapes[name]} in {base.gguf} but {w.shape} in {base.hf_dir}")
        if name in pairs:
            p = pairs[name]
            w = w + scale * (p.b @ p.a)
        return w

    def fill(w: Any) -> None:
        copy_fields(fields, w, skip={"general.file_type", "general.name"})
        w.add_name(f"{base.name} + {Path(prov['run']).name or Path(adapter_dir).name} (merged)")
        w.add_file_type(ftype)
        add_provenance(w, prov)
        for name in shapes:
            data, kind = encode(weight(name), outtype)
            w.add_tensor(name, data, raw_dtype=kind)

    path = write_gguf(Path(out) if out else Path(adapter_dir) / f"merged.{outtype}.gguf", arch.gguf_name, fill)
    return {"path": path, "base": base, "merged": sorted(pairs), "scale": scale, "provenance": prov,
            "outtype": outtype}
