"""Adapter size on disk: PEFT safetensors and GGUF, measured for the embedded model, computed for a 7B llama.

    python benchmarks/adapter_sizes.py            # prints a markdown table (RESULTS.md, "GGUF adapters")

Measured: an r=64 all-linear adapter on SmolLM2-135M-Instruct (the TrainConfig default), saved by
PEFT and written by export-adapter as f32 and f16. Computed: the same and a q/v-only adapter for
the Llama-2-7B shape (hidden 4096, MLP 11008, 32 layers, 32 KV heads) and Llama-3-8B (8 KV heads,
MLP 14336), from r * (in + out) parameters per adapted matrix, plus a GGUF header (~10 KB).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

SHAPES = {  # name: (hidden, intermediate, layers, kv width)
    "SmolLM2-135M (embedded)": (576, 1536, 30, 192),
    "Llama-2-7B": (4096, 11008, 32, 4096),
    "Llama-3-8B": (4096, 14336, 32, 1024),
}


def lora_params(hidden: int, inter: int, layers: int, kv: int, r: int, targets: str) -> int:
    mats = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    names = list(mats) if targets == "all-linear" else targets.split(",")
    return layers * r * sum(sum(mats[n]) for n in names)


def measured(r: int = 64) -> dict[str, int]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.teachers.embedded import embedded_model_dir
    from pipeline.train.gguf_adapter import write_adapter_gguf

    out = Path(tempfile.mkdtemp(prefix="adapter-size-"))
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=r, lora_alpha=16, target_modules="all-linear")).save_pretrained(out)
    sizes = {"PEFT safetensors (fp32)": (out / "adapter_model.safetensors").stat().st_size}
    for outtype in ("f32", "f16"):
        sizes[f"GGUF {outtype}"] = write_adapter_gguf(out, out / f"a.{outtype}.gguf", outtype=outtype)["path"].stat().st_size
    return sizes


def main() -> None:
    mb = 1e6
    print("| adapter (r=64) | params | fp32 / GGUF f32 | f16 / GGUF f16 |\n|---|---:|---:|---:|")
    for name, shape in SHAPES.items():
        for targets in ("all-linear", "q_proj,v_proj"):
            n = lora_params(*shape, r=64, targets=targets)
            print(f"| {name}, {targets} (computed) | {n / 1e6:.1f} M | {4 * n / mb:.1f} MB | {2 * n / mb:.1f} MB |")
    print()
    for label, size in measured().items():
        print(f"measured, embedded r=64 all-linear, {label}: {size / mb:.2f} MB")


if __name__ == "__main__":
    main()
