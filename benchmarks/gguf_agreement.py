"""llama.cpp against PEFT on prompts the adapter never saw: each GGUF form of the adapter, beside the base-only floor.

    python benchmarks/gguf_agreement.py [ADAPTER] [--tokens 48]   # needs llama-cpp-python; prints RESULTS.md's table

Without ADAPTER, trains the `colours` adapter of tests/adapter_helpers.py (the full embedded
SmolLM2-135M-Instruct, plain LoRA r=8, 12 steps) into a temporary folder. The prompts are
adapter_helpers.HELDOUT: none is a training row or a near-copy of one. PEFT runs on the fp32 base
(the embedded GGUF de-quantized). Each row: llama.cpp's free-running greedy answers equal to PEFT's
(exact n/N), and top-1 agreement teacher-forced on PEFT's answers (the share of answer tokens where
llama.cpp's most likely token is PEFT's, over all prompts). The floor rows run the base alone on
both sides: what the base GGUF's own precision costs before any adapter is added.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from adapter_helpers import HELDOUT, f16_base_gguf, llama_cpp_compare, peft_greedy, trained_adapter  # noqa: E402

import pipeline.train  # noqa: E402, F401 -- sets the OpenMP wait policy before torch loads
from pipeline.teachers.embedded import gguf_path  # noqa: E402
from pipeline.train.gguf_adapter import write_adapter_gguf  # noqa: E402
from pipeline.train.gguf_quantize import quantize_gguf, write_merged  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter", nargs="?")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per answer")
    args = ap.parse_args()
    start = time.perf_counter()
    adapter = Path(args.adapter) if args.adapter else trained_adapter(Path(tempfile.mkdtemp()), "colours")
    out = Path(tempfile.mkdtemp(prefix="gguf-agreement-"))
    peft = peft_greedy(adapter, HELDOUT, new_tokens=args.tokens)
    changed = sum(t != b for t, b in zip(peft["tuned"], peft["base"], strict=True))
    f16_base = f16_base_gguf(adapter, out / "base.f16.gguf")
    q4km_base = quantize_gguf(f16_base, out / "base.q4_k_m.gguf", "q4_k_m")
    lora = write_adapter_gguf(adapter, out / "adapter.f16.gguf", outtype="f16")["path"]
    rows = [("adapter (f16 GGUF) on the Q4_1 base GGUF", llama_cpp_compare(gguf_path(), lora, peft)),
            ("adapter (f16 GGUF) on an f16 base GGUF", llama_cpp_compare(f16_base, lora, peft))]
    for outtype in ("f16", "q8_0", "q4_k_m"):
        path = write_merged(adapter, out / f"merged.{outtype}.gguf", outtype=outtype)["path"]
        rows.append((f"merged GGUF, {outtype}", llama_cpp_compare(path, None, peft)))
    floors = [(f"{name} base GGUF alone vs PEFT's fp32 base alone", llama_cpp_compare(path, None, peft, side="base"))
              for name, path in (("Q4_1", gguf_path()), ("f16", f16_base), ("q4_k_m", q4km_base))]
    def length(side: str) -> str:
        n = [len(a) for a in peft[side]]
        return f"{sum(n) / len(n):.1f} tokens on average, {sum(x >= args.tokens for x in n)} cut at {args.tokens}"

    print(f"adapter {adapter}; {len(HELDOUT)} held-out prompts, up to {args.tokens} new tokens; PEFT's adapter "
          f"changes {changed}/{len(HELDOUT)} of the base's answers; PEFT's answers: with the adapter "
          f"{length('tuned')}, the base alone {length('base')}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {time.perf_counter() - start:.0f} s\n")
    print("| llama.cpp model | against | exact answers | top-1 agreement | max logit diff |\n|---|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | PEFT, fp32 base + adapter | {r['same']}/{r['n']} | {r['top1']:.3f} | "
              f"{r['max_logit_diff']:.2f} |")
    for name, r in floors:
        print(f"| {name} | PEFT, fp32 base alone (floor) | {r['same']}/{r['n']} | {r['top1']:.3f} | "
              f"{r['max_logit_diff']:.2f} |")


if __name__ == "__main__":
    main()
