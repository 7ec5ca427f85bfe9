"""Steps/s of QLoRA on the embedded SmolLM2-135M-Instruct, on this machine's CPU.

Data: the bundled seed tasks as Alpaca rows in the model's chat template (mean ~110
tokens, about a third of them response tokens). Each variant trains `--steps` optimizer
steps of `--batch-size` rows after one warm-up step, in its own process, through
pipeline.train (the code `seed2lora train` runs).

    python benchmarks/train_cpu.py                 # every variant, 4 steps each (~15 min on 2 busy cores)
    python benchmarks/train_cpu.py --variants qlora --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {  # name: TrainConfig overrides
    "qlora": {},  # the defaults: NF4 + double quant, fp32 compute on CPU, r 64, gradient checkpointing
    "qlora_no_checkpointing": {"gradient_checkpointing": False},
    "qlora_packed": {"packing": True, "max_seq_len": 512},
    "lora_fp32": {"quant": False},
}


def worker(variant: str, steps: int, batch_size: int) -> dict:
    import pipeline.train  # noqa: F401, I001 -- first: it sets OMP_WAIT_POLICY before torch loads
    import torch
    from transformers import TrainerCallback

    from pipeline.config import TrainConfig
    from pipeline.train.trainer import fit, prepare

    marks: list[tuple[float, int]] = []

    rows = [json.loads(line) for line in (REPO / "seeds" / "seed_tasks.jsonl").read_text().splitlines() if line.strip()]
    data = Path(tempfile.mkdtemp()) / "seeds.json"
    data.write_text(json.dumps([{"instruction": r["instruction"], "input": r["instances"][0]["input"],
                                 "output": r["instances"][0]["output"]} for r in rows]))
    cfg = TrainConfig(output_dir=str(data.parent / "adapter"), max_steps=steps + 1, batch_size=batch_size, grad_accum=1,
                      eval_fraction=0.0, save_steps=10 ** 6, resume=False, **VARIANTS[variant])
    prepared = prepare(data, cfg, log=lambda m: None)
    trainer = prepared.trainer

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), trainer.tokens_seen))

    trainer.add_callback(Clock())
    summary = fit(prepared, log=lambda m: None)
    (t0, k0), (t1, k1) = marks[0], marks[-1]  # from the end of the warm-up step
    return {"variant": variant, "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "batch_rows": batch_size,
            "rows_per_step_tokens": round((k1 - k0) / steps), "steps": steps,
            "s_per_step": round((t1 - t0) / steps, 2), "steps_per_s": round(steps / (t1 - t0), 4),
            "tokens_per_s": round((k1 - k0) / (t1 - t0), 1), "peak_rss_gb": summary["peak_memory_gb"],
            "loss_first_last": [summary["train_loss"]["first"], summary["train_loss"]["last"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_cpu.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.batch_size)), flush=True)
        return
    results = {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "runs": []}
    for variant in args.variants.split(","):
        proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--steps", str(args.steps),
                               "--batch-size", str(args.batch_size)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        r = json.loads(lines[-1][7:]) if lines else {"variant": variant, "error": proc.stderr[-800:]}
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    results["load_avg_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("\n| variant | s/step | steps/s | tokens/s | tokens/step | peak RSS GB |\n|---|---:|---:|---:|---:|---:|")
    for r in results["runs"]:
        if "error" not in r:
            print(f"| {r['variant']} | {r['s_per_step']} | {r['steps_per_s']} | {r['tokens_per_s']} "
                  f"| {r['rows_per_step_tokens']} | {r['peak_rss_gb']} |")


if __name__ == "__main__":
    main()
