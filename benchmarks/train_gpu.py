"""QLoRA throughput and memory on one GPU: a qlora.py-style baseline versus seed2lora's trainer.

Same randomly initialised models (Qwen2-0.5B and Qwen2-1.5B shapes, built here from their
config values: no download), same synthetic Alpaca-like examples (prompt + response, mean
~320 tokens, loss on the response), same LoRA (r 64, alpha 16, all linear layers), same
NF4 + double quantization, bf16 compute, paged AdamW 32-bit, gradient checkpointing.

  baseline      qlora.py (artidoro/qlora): prepare_model_for_kbit_training, HF Trainer,
                padding to the longest example, group_by_length, the model's own loss
                (full logits upcast to fp32), eager attention as in 2023
  baseline_sdpa the same with PyTorch SDPA attention (isolates the attention kernel)
  ours          pipeline.train: packed rows (position_ids restart, flash-attention-2 varlen
                when installed, else SDPA with a block-diagonal mask), chunked cross-entropy
                on response tokens only, no fp32 upcast of embeddings

Tokens per micro-step are matched: 16 examples for the baselines (~5.1k real tokens plus
padding), 5 packed rows of 1024 for ours. Each case runs in its own process (clean peak
memory); tokens/s counts real (non-pad) tokens over the measured steps after warm-up.
Then one QLoRA step of each case on a Qwen2-7B-shaped model gives its peak memory.

    python benchmarks/train_gpu.py                      # H100: ~10 min
    python benchmarks/train_gpu.py --tiny               # CPU smoke test of every code path
    python benchmarks/train_gpu.py --models qwen2-0.5b --cases ours --no-7b
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QWEN2 = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu", max_position_embeddings=32768,
             rms_norm_eps=1e-6, rope_theta=1_000_000.0, attention_dropout=0.0, use_sliding_window=False,
             bos_token_id=151643, eos_token_id=151643, pad_token_id=151643)
SHAPES = {  # the published config.json values of each model
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True),
}
BASELINE_BATCH = 16  # qlora.py's guanaco scripts: 16 examples per device
OURS_ROWS, OURS_ROW_LEN = 5, 1024  # 5 x 1024 packed tokens ~ 16 x 320


def build_model(shape: str, folder: Path) -> None:
    """A randomly initialised model of the given shape, saved as a normal HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {**QWEN2, **SHAPES[shape]}
    if shape == "tiny":
        cfg.update(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config = AutoConfig.for_model(**cfg)
    on = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(on):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if on == "cuda" else torch.float32)
    model.save_pretrained(folder)
    del model
    import gc

    gc.collect()
    if on == "cuda":
        torch.cuda.empty_cache()  # the workers need the memory; this process only builds and saves


def synthetic_examples(n: int, vocab: int, pad_id: int, seed: int = 0, max_len: int = 1024) -> list[dict]:
    """Alpaca-like token sequences: prompt (instruction + optional input) then response + EOS; mean ~320 tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = min(int(rng.lognormvariate(5.0, 0.6)), max_len // 2)  # median ~150, mean ~180
        response = min(int(rng.lognormvariate(4.7, 0.7)), max_len - prompt - 1)  # median ~110, mean ~140
        ids = [rng.randrange(10, vocab) for _ in range(prompt + response)] + [pad_id]  # pad == eos, as in Qwen
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


class TokenClock:
    """Counts real tokens as batches are made and stamps each optimizer step."""

    def __init__(self):
        self.tokens = 0
        self.marks: list[tuple[float, int]] = []


def make_step_callback(clock: TokenClock):
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            clock.marks.append((time.perf_counter(), clock.tokens))

    return StepClock()


def baseline_trainer(model_dir: str, examples: list[dict], args: argparse.Namespace, clock: TokenClock, attn: str):
    """qlora.py's recipe with today's transformers/peft/bitsandbytes."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=attn, device_map={"": 0 if on_gpu else "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)} - {"lm_head"})
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, target_modules=names,
                                             bias="none", task_type="CAUSAL_LM"))
    for name, module in model.named_modules():  # qlora.py's dtype fix-up after get_peft_model
        if isinstance(module, LoraLayer) and on_gpu:
            module.to(torch.bfloat16)
        if "norm" in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and getattr(module, "weight", None) is not None \
                and module.weight.dtype == torch.float32 and on_gpu:
            module.to(torch.bfloat16)
    pad_id = model.config.pad_token_id

    def collate(features):  # qlora.py's DataCollatorForCausalLM: pad to the longest, -100 on prompt and padding
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id)
        labels = torch.full((len(features), width), -100)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for r, f in enumerate(features):
            n = len(f["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        clock.tokens += int(mask.sum())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BASELINE_BATCH if not args.tiny else 4,
        gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=2e-4,
        lr_scheduler_type="constant", warmup_steps=0.03, max_grad_norm=0.3, optim="paged_adamw_32bit",
        bf16=on_gpu, use_cpu=not on_gpu, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},  # qlora.py's era: reentrant checkpointing
        train_sampling_strategy="group_by_length", save_strategy="no", report_to=[], logging_steps=10 ** 6,
        remove_unused_columns=False, disable_tqdm=True, seed=0)
    return Trainer(model=model, args=targs, train_dataset=examples, data_collator=collate,
                   callbacks=[make_step_callback(clock)])


def ours_trainer(model_dir: str, examples: list[dict], args: argparse.Namespace, clock: TokenClock):
    """seed2lora's trainer with its defaults, packing on."""
    import importlib.util

    from pipeline.config import TrainConfig
    from pipeline.train.data import Collator, pack
    from pipeline.train.model import device, load_for_training, resolve_plan
    from pipeline.train.trainer import LoraTrainer, training_arguments

    flash = importlib.util.find_spec("flash_attn") is not None and device().startswith("cuda")
    row_len = OURS_ROW_LEN if not args.tiny else 256
    cfg = TrainConfig(packing=True, max_seq_len=row_len, batch_size=OURS_ROWS if not args.tiny else 2, grad_accum=1,
                      max_steps=args.warmup + args.steps, attn_implementation="flash_attention_2" if flash else "sdpa",
                      save_steps=10 ** 6, logging_steps=10 ** 6, eval_steps=10 ** 6,
                      gradient_checkpointing=not args.no_checkpointing)
    plan = resolve_plan(cfg, model_dir)  # on a GPU: QLoRA, bf16 compute, paged_adamw_32bit
    model = load_for_training(model_dir, cfg, plan)
    pad_id = model.config.pad_token_id
    targs = training_arguments(cfg, Path(tempfile.mkdtemp()), bf16=plan.autocast_bf16, use_cpu=plan.device == "cpu",
                               has_eval=False, optim=plan.optim)
    targs.save_strategy = "no"
    collator = Collator(pad_id)

    def collate(features):
        batch = collator(features)
        clock.tokens += int(batch["num_tokens"])
        return batch

    return LoraTrainer(model=model, args=targs, train_dataset=pack(examples, row_len), data_collator=collate,
                       callbacks=[make_step_callback(clock)], loss_chunk_tokens=plan.loss_chunk_tokens,
                       autocast_bf16=plan.autocast_bf16), cfg.attn_implementation


def worker(args: argparse.Namespace) -> dict:
    """One case in this process: train warmup + steps, report tokens/s and peak memory."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model_dir)
    per_step = BASELINE_BATCH if not args.tiny else 4
    examples = synthetic_examples(int(per_step * (args.warmup + args.steps + 2) * 1.3), config.vocab_size,
                                  config.pad_token_id, max_len=OURS_ROW_LEN if not args.tiny else 256)
    clock = TokenClock()
    attn = {"baseline": "eager", "baseline_sdpa": "sdpa"}.get(args.case)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if attn:
        trainer = baseline_trainer(args.model_dir, examples, args, clock, attn)
    else:
        trainer, attn = ours_trainer(args.model_dir, examples, args, clock)
    trainer.train()
    marks = clock.marks[args.warmup - 1:] if args.warmup else [(clock.marks[0][0], 0), *clock.marks]
    seconds = marks[-1][0] - marks[0][0]
    tokens = marks[-1][1] - marks[0][1]
    return {"case": args.case, "attn": attn, "steps": len(marks) - 1, "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "s_per_step": round(seconds / max(1, len(marks) - 1), 4),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if torch.cuda.is_available() else None}


def run_case(model_dir: Path, case: str, args: argparse.Namespace, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--case", case, "--model-dir", str(model_dir),
           "--steps", str(steps), "--warmup", str(warmup)] + (["--tiny"] if args.tiny else []) \
        + (["--no-checkpointing"] if args.no_checkpointing and case == "ours" else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"case": case, "error": "out of memory" if "OutOfMemory" in tail else tail.strip().splitlines()[-1:]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen2-0.5b,qwen2-1.5b")
    p.add_argument("--cases", default="baseline,baseline_sdpa,ours")
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps per case")
    p.add_argument("--warmup", type=int, default=3, help="steps run before the clock starts")
    p.add_argument("--no-7b", dest="seven_b", action="store_false", help="skip the 7B-shaped one-step memory test")
    p.add_argument("--no-checkpointing", action="store_true", help="ours without gradient checkpointing")
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy model: checks the code paths on CPU")
    p.add_argument("--out", help="results JSON (default benchmarks/results/train_gpu.json; --tiny writes none)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    import torch

    models = ["tiny"] if args.tiny else [m.strip() for m in args.models.split(",")]
    cases = [c.strip() for c in args.cases.split(",")]
    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup, "runs": [], "seven_b": []}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in models:
            folder = Path(tmp) / shape
            t0 = time.perf_counter()
            build_model(shape, folder)
            print(f"{shape}: random model built in {time.perf_counter() - t0:.0f}s", flush=True)
            for case in cases:
                r = {"model": shape, **run_case(folder, case, args, args.steps, args.warmup)}
                results["runs"].append(r)
                print(json.dumps(r), flush=True)
        if args.seven_b and not args.tiny:
            folder = Path(tmp) / "qwen2-7b"
            build_model("qwen2-7b", folder)
            for case in cases:
                r = {"model": "qwen2-7b", **run_case(folder, case, args, steps=1, warmup=0)}
                results["seven_b"].append(r)
                print(json.dumps(r), flush=True)
    out = args.out or (None if args.tiny else str(REPO / "benchmarks" / "results" / "train_gpu.json"))
    if out:  # a smoke test's numbers must never stand where the GPU results go
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"Device: {results['device']}; {results['steps']} measured steps after {results['warmup']} warm-up.", "",
             "| model | case | attention | tokens/s | s/step | peak GPU GB | speed-up |", "|---|---|---|---:|---:|---:|---:|"]
    for r in results["runs"]:
        base = next((b for b in results["runs"] if b["model"] == r["model"] and b["case"] == "baseline"
                     and b.get("tokens_per_s")), None)
        if "error" in r:
            lines.append(f"| {r['model']} | {r['case']} | | error: {r['error']} | | | |")
            continue
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and r.get("tokens_per_s") else ""
        lines.append(f"| {r['model']} | {r['case']} | {r['attn']} | {r['tokens_per_s']:,.0f} | {r['s_per_step']:.3f} "
                     f"| {r['peak_gb'] if r['peak_gb'] is not None else 'n/a'} | {speed} |")
    if results["seven_b"]:
        lines += ["", "One QLoRA step, Qwen2-7B shape:", "", "| case | peak GPU GB |", "|---|---:|"]
        lines += [f"| {r['case']} | {r.get('peak_gb', r.get('error'))} |" for r in results["seven_b"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
