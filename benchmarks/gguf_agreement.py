"""llama.cpp against PEFT: the GGUF adapter and the merged GGUF answer as PEFT's base + adapter does.

    python benchmarks/gguf_agreement.py [ADAPTER]   # needs llama-cpp-python; prints RESULTS.md's table

Without ADAPTER, trains the `colours` adapter of tests/adapter_helpers.py (the full embedded model,
plain LoRA r=8, 12 steps) into a temporary folder. The comparison helpers are the tests' own.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from adapter_helpers import PROMPTS, llama_cpp_compare, peft_greedy, trained_adapter  # noqa: E402

import pipeline.train  # noqa: E402, F401 -- sets the OpenMP wait policy before torch loads
from pipeline.teachers.embedded import gguf_path  # noqa: E402
from pipeline.train.gguf_adapter import write_adapter_gguf  # noqa: E402
from pipeline.train.gguf_merged import write_merged_gguf  # noqa: E402


def main() -> None:
    adapter = Path(sys.argv[1]) if len(sys.argv) > 1 else trained_adapter(Path(tempfile.mkdtemp()), "colours")
    out = Path(tempfile.mkdtemp(prefix="gguf-agreement-"))
    peft = peft_greedy(adapter, PROMPTS)
    rows = []
    for outtype in ("f32", "f16"):
        path = write_adapter_gguf(adapter, out / f"adapter.{outtype}.gguf", outtype=outtype)["path"]
        rows.append((f"Q4_1 base + GGUF adapter ({outtype})", llama_cpp_compare(gguf_path(), path, peft)))
    for outtype in ("f16", "q8_0"):
        path = write_merged_gguf(adapter, out / f"merged.{outtype}.gguf", outtype=outtype)["path"]
        rows.append((f"merged GGUF, {outtype}", llama_cpp_compare(path, None, peft)))
    rows.append(("Q4_1 base alone, against PEFT with the adapter", llama_cpp_compare(gguf_path(), None, peft)))
    rows.append(("Q4_1 base alone, against PEFT's base alone (the floor)",
                 llama_cpp_compare(gguf_path(), None, peft, side="base")))
    print("| llama.cpp model | same answers | top-1 | max logit diff |\n|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['same']}/{len(PROMPTS)} | {r['top1']:.3f} | {r['max_logit_diff']:.2f} |")


if __name__ == "__main__":
    main()
