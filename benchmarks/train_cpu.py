"""CPU training paths on the embedded SmolLM2-135M-Instruct, side by side: tokens/s, peak RSS and loss curves.

Data: the bundled seed tasks as Alpaca rows in the model's chat template, packed into rows of
`--seq-len` tokens (issue 21's workload: packed rows of 512, batch 4). Each variant trains one
warm-up step and then `--steps` optimizer steps, in its own process (so peak RSS is its own),
through pipeline.train (the code `seed2lora train` runs), with the same data order and seed.

Variants (TrainConfig overrides), in the order they run:
- lora_fp32_before:  `--no-quant` before issue 21 (fp32, loss chunks of 1024, paged_adamw_32bit, whole layers
                     recomputed): the fastest path then
- default:           today's defaults on this machine (on a bf16 CPU: LoRA on a bf16 base under bf16 autocast,
                     adamw_torch, LoRA dropout from 16-bit masks, micro-batches that fit train.activation_memory_gb
                     without checkpointing: 2 rows of 512 for this model)
- checkpointed:      the CPU default before micro-batches: fp32 weights under bf16 autocast, checkpointing keeping
                     attention's outputs through the recompute
- nn_dropout, compile_layers, bf16_linears, full_recompute, sac_attn_mlp, sac_all: `checkpointed` with peft's own
                     nn.Dropout; with each decoder layer torch.compile'd (compile time in first_step_s); with the
                     frozen linear weights stored in bf16; recomputing whole layers; keeping the frozen gate/up
                     projections' outputs too; keeping every frozen projection's (all tried in issue 21, RESULTS.md)
- bf16_base_checkpointed: the bf16 base with checkpointing (activation_memory_gb 0)
- fp32_weights_micro1, fp32_weights_micro2, micro1: micro-batches of 1 or 2 rows on the fp32 weights, of 1 on
                     the bf16 base
- no_ckpt:           gradient_checkpointing off: the whole batch's activations (peak RSS against the 3 GB target)
- no_lora_dropout:   the default with lora_dropout 0 (a recipe change): what drawing the dropout masks costs
- lora_fp32_init43:  lora_fp32_before with LoRA-A drawn from another seed: the run-to-run noise of the loss curve
- qlora_before:      the 4-bit NF4 base, fp32 compute, paged_adamw_32bit: the default before issue 21
- lora_full_logits:  lora_fp32_before with the model's own full-vocabulary fp32 logits (chunked_loss off)

    python benchmarks/train_cpu.py --steps 10               # every variant
    python benchmarks/train_cpu.py --variants default,lora_fp32_before --steps 3
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

# What --no-quant did at 85506e8 (the loss in chunks of 1024 then)
BEFORE = {"quant": "none", "compute_dtype": "fp32", "optim": "paged_adamw_32bit", "loss_chunk_tokens": 1024,
          "peft_dropout": True, "sac": "none", "activation_memory_gb": 0}
# The CPU default before micro-batches (f1323e1): fp32 weights under bf16 autocast, checkpointing keeping attention
CHECKPOINTED = {"activation_memory_gb": 0, "fp32_weights": True}
VARIANTS = {  # name: TrainConfig overrides; "init_seed" re-draws the LoRA init only (data order and dropout stay);
    # "bf16_linears" stores the frozen linear weights in bf16 after prepare (no setting does); "peft_dropout" puts
    # peft's nn.Dropout back; "compile_layers" compiles each decoder layer after prepare; "fp32_weights" loads the
    # base in fp32 under bf16 autocast (the CPU default before micro-batches; no setting does now)
    "lora_fp32_before": BEFORE,
    "default": {},
    "checkpointed": CHECKPOINTED,
    "nn_dropout": {**CHECKPOINTED, "peft_dropout": True},
    # F.dropout inside the compiled layers (inductor lowers it; the 16-bit masks' random_ would break the graph)
    "compile_layers": {**CHECKPOINTED, "compile_layers": True, "peft_dropout": True},
    "bf16_linears": {**CHECKPOINTED, "bf16_linears": True},
    # checkpointing's recompute: "none" recomputes whole layers (the CPU default before attention was kept through
    # it); "mlp" keeps the frozen gate/up projections' outputs too, "all" every frozen projection's
    "full_recompute": {**CHECKPOINTED, "sac": "none"},
    "sac_attn_mlp": {**CHECKPOINTED, "sac": "mlp"},
    "sac_all": {**CHECKPOINTED, "sac": "all"},
    "bf16_base_checkpointed": {"activation_memory_gb": 0},
    # micro-batches of 1, 2 or 4 (the whole batch) rows without checkpointing, on the fp32 or the bf16 base
    "fp32_weights_micro1": {"fp32_weights": True, "activation_memory_gb": 1.5},
    "fp32_weights_micro2": {"fp32_weights": True, "activation_memory_gb": 3.0},
    "micro1": {"activation_memory_gb": 0.7},
    "no_ckpt": {"gradient_checkpointing": False},
    "no_lora_dropout": {"lora_dropout": 0.0},
    "lora_fp32_init43": {**BEFORE, "init_seed": 43},
    "qlora_before": {"quant": "4bit", "compute_dtype": "fp32", "optim": "paged_adamw_32bit", "loss_chunk_tokens": 1024,
                     "peft_dropout": True, "sac": "none", "activation_memory_gb": 0},
    "lora_full_logits": {**BEFORE, "chunked_loss": False},
}
REFERENCE = "lora_fp32_before"  # loss curves are compared with this one's


def worker(variant: str, steps: int, batch_size: int, seq_len: int) -> dict:
    import pipeline.train  # noqa: F401, I001 -- first: it sets OMP_WAIT_POLICY before torch loads
    import torch
    from transformers import TrainerCallback

    from pipeline.config import TrainConfig
    from pipeline.train.trainer import fit, prepare

    marks: list[tuple[float, int, float]] = []  # (wall clock, tokens seen, CPU seconds of this process's threads)
    overrides = dict(VARIANTS[variant])
    init_seed = overrides.pop("init_seed", None)
    bf16_linears = overrides.pop("bf16_linears", False)
    peft_dropout = overrides.pop("peft_dropout", False)
    compile_layers = overrides.pop("compile_layers", False)
    sac = overrides.pop("sac", "")
    if overrides.pop("fp32_weights", False):
        fp32_weights()
    rows = [json.loads(line) for line in (REPO / "seeds" / "seed_tasks.jsonl").read_text().splitlines() if line.strip()]
    data = Path(tempfile.mkdtemp()) / "seeds.json"
    data.write_text(json.dumps([{"instruction": r["instruction"], "input": r["instances"][0]["input"],
                                 "output": r["instances"][0]["output"]} for r in rows]))
    cfg = TrainConfig(**{"output_dir": str(data.parent / "adapter"), "max_steps": steps + 1, "batch_size": batch_size,
                         "grad_accum": 1, "packing": True, "max_seq_len": seq_len, "eval_fraction": 0.0,
                         "save_steps": 10 ** 6, "resume": False, **overrides})
    prepared = prepare(data, cfg, log=lambda m: None)
    trainer = prepared.trainer
    linears_in_bf16 = store_frozen_linears(trainer.model, torch.bfloat16) if bf16_linears else 0
    if peft_dropout:
        put_back_peft_dropout(trainer.model)
    if sac:
        selective_checkpointing(trainer.model, sac)
    if compile_layers:
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True  # transformers' context var
        for layer in trainer.model.get_base_model().model.layers:
            layer.compile()
    if init_seed is not None:
        torch.manual_seed(init_seed)
        for module in trainer.model.modules():
            if hasattr(module, "reset_lora_parameters") and "default" in getattr(module, "lora_A", {}):
                module.reset_lora_parameters("default", True)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks.append((time.perf_counter(), trainer.tokens_seen, time.process_time()))

        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), trainer.tokens_seen, time.process_time()))

    trainer.add_callback(Clock())
    summary = fit(prepared, log=lambda m: None)
    (ts, _, cs), (t0, k0, c0), (t1, k1, c1) = marks[0], marks[1], marks[-1]  # from the end of the warm-up step
    path = summary["training_path"]
    if peft_dropout:
        path = path.replace(", LoRA dropout from 16-bit masks", ", peft's nn.Dropout")
    if sac == "none":
        path = path.replace(", attention kept through the recompute", "") + ", whole layers recomputed (benchmark)"
    elif sac:
        path += f", projections kept through the recompute ({sac}; benchmark)"
    if compile_layers and "compiled" not in path:
        path += ", decoder layers compiled (benchmark)"
    return {"variant": variant, "path": path, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "batch_rows": batch_size, "seq_len": seq_len,
            "tokens_per_step": round((k1 - k0) / steps), "steps": steps, "linears_in_bf16": linears_in_bf16,
            "first_step_s": round(t0 - ts, 1), "first_step_cpu_s": round(c0 - cs, 1),  # warm-up (and any compile)
            "s_per_step": round((t1 - t0) / steps, 2), "tokens_per_s": round((k1 - k0) / (t1 - t0), 1),
            # CPU time moves far less than wall time with the other jobs' load (threads wait passively)
            "cpu_s_per_step": round((c1 - c0) / steps, 2),
            "peak_rss_gb": summary["peak_memory_gb"], "losses": [v for _, v in summary["train_loss"]["points"]],
            "adapter": summary["output_dir"], **(compile_counts() if compile_layers else {})}  # for benchmarks/train_cpu_readback.py


def fp32_weights() -> None:
    """The base loaded in fp32 under bf16 autocast, as the CPU default was before micro-batches: the plan that
    pipeline.train resolves, with only its load dtype changed."""
    import dataclasses

    import torch

    from pipeline.train import trainer
    from pipeline.train.model import micro_batch_rows

    resolve = trainer.resolve_plan

    def plan(cfg, model_path, on=None, row_tokens=0):
        rows = micro_batch_rows(cfg, model_path, torch.float32, row_tokens or cfg.max_seq_len)  # fp32 activations
        checkpointing = cfg.gradient_checkpointing and not rows
        return dataclasses.replace(resolve(cfg, model_path, on, row_tokens), load_dtype=torch.float32,
                                   micro_rows=rows, checkpointing=checkpointing, keep_attention=checkpointing)

    trainer.resolve_plan = plan


def selective_checkpointing(model, keep: str) -> None:
    """Checkpointing that keeps some outputs through the recompute: "none" nothing (whole layers recomputed);
    otherwise attention's (as the CPU default does, pipeline/train/recompute.py) and with "mlp" the frozen
    projections 1536 wide (gate, up), with "all" every frozen projection. LoRA's own matmuls (rank wide) and the
    rest are recomputed. The masks' random draws repeat (torch restores the RNG)."""
    import functools

    import torch
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    from pipeline.train.model import enable_checkpointing
    from pipeline.train.recompute import attention_ops

    aten = torch.ops.aten
    r = model.peft_config["default"].r
    model = model.get_base_model()
    attention, matmuls = attention_ops(), {aten.mm.default, aten.addmm.default}
    wide = model.config.intermediate_size

    def policy(ctx, op, *args, **kwargs):
        if keep == "none":
            return CheckpointPolicy.PREFER_RECOMPUTE
        if op in attention:
            return CheckpointPolicy.MUST_SAVE
        if keep != "attn" and op in matmuls:
            b = args[2] if op is aten.addmm.default else args[1]
            k, n = b.shape[0], b.shape[1]
            if k != r and n != r and (keep == "all" or n == wide):  # a frozen projection's, not LoRA's (rank wide)
                return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    enable_checkpointing(model, {"use_reentrant": False,
                                 "context_fn": functools.partial(create_selective_checkpoint_contexts, policy)})


def store_frozen_linears(model, dtype) -> int:
    """The frozen nn.Linear layers (not LoRA A/B, not the output layer, which SmolLM2 ties to the input embeddings)
    stored in `dtype`. Under autocast to `dtype` no number changes: autocast caches casts of trainable leaves only,
    so it casts each frozen fp32 weight to these same values in every forward and checkpointed recompute."""
    import torch

    head = model.get_output_embeddings()
    changed = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if type(module) is torch.nn.Linear and not any(p.requires_grad or p is head.weight for p in params):
            module.to(dtype)
            changed += 1
    return changed


def compile_counts() -> dict:
    """How many graphs dynamo compiled and where it broke them (a break inside a layer runs the layer eagerly)."""
    from torch._dynamo.utils import counters

    return {"compiled_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": {k.splitlines()[0]: v for k, v in counters["graph_break"].items()}}


def put_back_peft_dropout(model) -> int:
    """peft's nn.Dropout before each LoRA-A again, where the CPU default put pipeline/train/dropout.py's."""
    import torch

    from pipeline.train.dropout import LoraDropout

    put = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        for name, dropout in list(dropouts.items()) if isinstance(dropouts, torch.nn.ModuleDict) else []:
            if isinstance(dropout, LoraDropout):
                dropouts[name] = torch.nn.Dropout(dropout.p).train(dropout.training)
                put += 1
    return put


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    load = os.getloadavg()
    steps = args.full_logits_steps if variant == "lora_full_logits" else args.steps
    proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--steps", str(steps),
                           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    r = json.loads(lines[-1][7:]) if lines else {"variant": variant, "error": proc.stderr[-800:]}
    r["load_avg_at_start"] = [round(x, 2) for x in load]
    return r


def table(runs: list[dict]) -> str:
    ref = next((r for r in runs if r["variant"] == REFERENCE and "error" not in r), None)
    out = ["| variant | path | first step s | s/step | tokens/s | x lora_fp32_before | CPU s/step | x on CPU time "
           f"| peak RSS GB | max abs loss diff vs {REFERENCE} | load at start |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        if "error" in r:
            out.append(f"| {r['variant']} | error: {r['error'][-200:]!r} | | | | | | | | | |")
            continue
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if ref else "-"
        cpu = f"{ref['cpu_s_per_step'] / r['cpu_s_per_step']:.2f}" if ref else "-"
        # over the steps both ran (lora_full_logits runs fewer)
        diff = f"{max(abs(a - b) for a, b in zip(r['losses'], ref['losses'], strict=False)):.4f}" if ref else "-"
        out.append(f"| {r['variant']} | {r['path']} | {r.get('first_step_s', '-')} | {r['s_per_step']} | {r['tokens_per_s']} | {speed} "
                   f"| {r['cpu_s_per_step']} | {cpu} | {r['peak_rss_gb']} | {diff} | {r['load_avg_at_start'][0]} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps after 1 warm-up step")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512, help="tokens per packed row")
    p.add_argument("--full-logits-steps", type=int, default=2,
                   help="measured steps of lora_full_logits (its peak memory is the point, and it is the heaviest)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_cpu.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.batch_size, args.seq_len)), flush=True)
        return
    results = {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "runs": []}
    print(f"load average at start: {results['load_avg_at_start']}", flush=True)
    for variant in args.variants.split(","):
        results["runs"].append(run_variant(variant, args))
        print(json.dumps(results["runs"][-1]), flush=True)
    results["load_avg_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average at end: {results['load_avg_at_end']}\n\n{table(results['runs'])}")
    print("\nloss per step:")
    for r in results["runs"]:
        if "error" not in r:
            print(f"  {r['variant']:18s} " + " ".join(f"{x:.4f}" for x in r["losses"]))


if __name__ == "__main__":
    main()
