"""LoRA's input dropout on CPU, one LoRA layer's worth: forward and backward through dropout and LoRA-A.

The input is one step of issue 21's workload at one LoRA layer of SmolLM2-135M (4 packed rows of about
502 tokens x 576 hidden, or x 1536 at down_proj), LoRA-A of rank 64. Variants, interleaved rep by rep
so the other jobs' load falls on all of them alike; CPU milliseconds (time.process_time(), all threads),
min and median over the reps:
- nn_dropout:   peft's nn.Dropout (bernoulli_ draws a double per element)
- masks16:      pipeline/train/dropout.py's LoraDropout (16 random bits per element, a bool mask)
- masks16_bf16: the same on a bf16 copy of the input under bf16 autocast (LoRA-A casts to bf16 anyway)
- none:         no dropout: what the dropout costs is the difference

    python benchmarks/lora_dropout_cpu.py --reps 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.train  # noqa: E402, F401, I001 -- sets OMP_WAIT_POLICY before torch loads
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pipeline.train.dropout import LoraDropout, MaskedScale, effective_p, keep_mask  # noqa: E402


class Bf16Copy(LoraDropout):
    """LoraDropout on a bf16 copy of its input under bf16 autocast (tried; see the module's docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = keep_mask(x.shape, self.p, x.device)
        return MaskedScale.apply(x.to(torch.bfloat16), keep, 1.0 / (1.0 - effective_p(self.p)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--tokens", type=int, default=2010)
    p.add_argument("--width", type=int, default=1536)
    p.add_argument("--p", type=float, default=0.05)
    args = p.parse_args()
    load = os.getloadavg()
    x = torch.randn(args.tokens, args.width, requires_grad=True)
    lora_a = nn.Linear(args.width, 64, bias=False)
    dropouts = {"nn_dropout": nn.Dropout(args.p), "masks16": LoraDropout(args.p), "masks16_bf16": Bf16Copy(args.p),
                "none": nn.Identity()}
    cases = [(name, autocast) for autocast in (False, True) for name in dropouts
             if autocast or name != "masks16_bf16"]
    times: dict[tuple[str, bool], list[float]] = {case: [] for case in cases}
    for _ in range(args.reps + 3):  # 3 warm-ups: the allocator settles
        for name, autocast in cases:
            start = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = lora_a(dropouts[name](x))
            y.float().sum().backward()
            times[(name, autocast)].append((time.process_time() - start) * 1e3)
    print(f"load average at start {load}, at end {os.getloadavg()}; {torch.get_num_threads()} threads; "
          f"x {args.tokens} x {args.width} fp32, p {args.p}, {args.reps} reps\n")
    print("| variant | bf16 autocast | min CPU ms | median CPU ms | dropout's share (min - none's min) |")
    print("|---|---|---:|---:|---:|")
    for name, autocast in cases:
        runs = times[(name, autocast)][3:]
        none = min(times[("none", autocast)][3:])
        print(f"| {name} | {autocast} | {min(runs):.1f} | {statistics.median(runs):.1f} | {min(runs) - none:.1f} |")


if __name__ == "__main__":
    main()
