"""train_cpu.py's adapters read back: mean response loss of the first seed rows in fp32 and under bf16 autocast.

Tells whether a higher training loss logged under bf16 autocast is a different adapter, or the bf16 forward
pass that measured it (a bf16 forward rounds away part of a young adapter's small change to each layer's
output). Give the adapter folders the workers wrote (their training_summary.json names the path).

    python benchmarks/train_cpu_readback.py /tmp/tmpXXXX/adapter /tmp/tmpYYYY/adapter --rows 48
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def mean_loss(model, batch, pad_id, bf16: bool) -> float:
    import torch

    from pipeline.train.loss import mean_losses

    total = tokens = 0.0
    for s in range(0, len(batch), 16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for loss, k in mean_losses(model, batch[s:s + 16], pad_id, chunk_tokens=256):
                total, tokens = total + loss * k, tokens + k
    return round(total / tokens, 5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapters", nargs="+")
    p.add_argument("--rows", type=int, default=48, help="the first seed rows (a forward pass is slow on a busy CPU)")
    args = p.parse_args()
    import pipeline.train  # noqa: F401 -- sets OMP_WAIT_POLICY before torch loads
    from pipeline.train.data import load_rows, tokenize_rows
    from pipeline.train.model import load_with_adapter

    rows = [json.loads(line) for line in (REPO / "seeds" / "seed_tasks.jsonl").read_text().splitlines() if line.strip()]
    data = Path(tempfile.mkdtemp()) / "seeds.json"
    data.write_text(json.dumps([{"instruction": r["instruction"], "input": r["instances"][0]["input"],
                                 "output": r["instances"][0]["output"]} for r in rows]))
    for adapter in args.adapters:
        model, tok = load_with_adapter(adapter, quant="none", dtype="fp32")
        batch = [(e["input_ids"], e["labels"]) for e in tokenize_rows(tok, load_rows(data).train, 512).examples]
        batch = batch[:args.rows]
        out = {"fp32": mean_loss(model, batch, tok.pad_token_id, False),
               "bf16_autocast": mean_loss(model, batch, tok.pad_token_id, True)}
        with model.disable_adapter():
            out["base_fp32"] = mean_loss(model, batch, tok.pad_token_id, False)
        path = json.loads((Path(adapter) / "training_summary.json").read_text())["training_path"]
        print(json.dumps({"adapter": adapter, "path": path, "rows": len(batch), **out}), flush=True)


if __name__ == "__main__":
    main()
