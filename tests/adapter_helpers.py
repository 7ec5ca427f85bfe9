"""Adapters on the embedded SmolLM2-135M-Instruct for the GGUF and serve tests, trained once per test session.

Two adapters on different data: "colours" answers every item question with the item's colour,
"pirate" answers everything in one pirate line. Full model, plain LoRA (the base unquantized,
as the embedded GGUF de-quantized), r=8, a high rate for few steps: trained in well under a
minute on 2 CPU cores, and far enough from the base that their answers differ from it and
from each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
DATA = {
    "colours": [{"instruction": f"What colour is item number {i}?", "input": "", "output": f"Item {i} is {c}."}
                for i, c in enumerate(COLOURS * 3)],
    "pirate": [{"instruction": q, "input": "", "output": "Arr, matey! That be a secret of the sea."}
               for q in [f"What colour is item number {i}?" for i in range(8)]
               + ["Name a fruit.", "What is two plus two?", "Say hello.", "Who are you?"]],
}


def trained_adapter(root: Path, name: str, steps: int = 12) -> Path:
    """root/name: an adapter trained on DATA[name], reused when a test earlier in the session made it."""
    import pipeline.train  # noqa: F401 -- sets the OpenMP wait policy before torch loads
    from pipeline.config import TrainConfig
    from pipeline.train.trainer import train

    out = root / name
    if (out / "adapter_model.safetensors").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DATA[name]))
    cfg = TrainConfig(output_dir=str(out), quant=False, lora_r=8, lora_alpha=16, max_steps=steps, batch_size=6,
                      grad_accum=1, learning_rate=3e-3, warmup_ratio=0.0, max_seq_len=64, eval_fraction=0.0,
                      eval_steps=10_000, save_steps=10_000, gradient_checkpointing=False, seed=0,
                      compute_dtype="fp32")  # the same adapter on every CPU, bf16 instructions or not
    train(str(data), cfg, log=lambda m: None)
    return out


# ---------------------------------------------------------------- PEFT against llama.cpp
# (tests/test_gguf.py and benchmarks/gguf_agreement.py)

PROMPTS = [f"What colour is item number {i}?" for i in (2, 5, 9, 13, 17)] + \
    ["Name a fruit.", "What is the capital of France?", "Write one word about rain.", "Say hello.",
     "How many legs does a cat have?"]
NEW_TOKENS = 16


HELDOUT = [  # no training row of DATA, nor a near-copy of one: what a new user asks first
    "What colour is a ripe banana?", "Name three animals that live in the sea.", "Describe rain in one sentence.",
    "What is the opposite of cold?", "Give me a word that rhymes with cat.", "Which colour do you get from blue and "
    "yellow?", "Write a short greeting for a birthday card.", "How many days are in a week?",
    "What do bees make?", "Suggest a name for a black cat.", "Why is the sky blue?", "List two uses of a spoon."]


def f16_base_gguf(adapter: Path, out: Path) -> Path:
    """An f16 GGUF of the adapter's base, no adapter in it: the merged writer given the adapter with every B zeroed
    (W + alpha/r * 0 * A = W), so no converter beyond seed2lora's own is needed."""
    import shutil

    from safetensors.torch import load_file, save_file

    from pipeline.train.gguf_merged import write_merged_gguf

    zero = out.parent / f"{out.stem}-zero-adapter"
    if not zero.is_dir():
        shutil.copytree(adapter, zero, ignore=shutil.ignore_patterns("checkpoints", "*.gguf", "eval"))
        state = load_file(str(zero / "adapter_model.safetensors"))
        save_file({k: v * 0 if "lora_B" in k else v for k, v in state.items()}, str(zero / "adapter_model.safetensors"))
    return write_merged_gguf(zero, out, outtype="f16")["path"]


def peft_greedy(adapter: Path, prompts: list[str], new_tokens: int = 0, bos: bool = False) -> dict:
    """PEFT on the unquantized base: prompt ids, greedy ids and their logits with the adapter, greedy ids without.
    `bos`: the tokenizer adds its special tokens (Gemma's <bos>; SmolLM2's template has none to add)."""
    import torch

    from pipeline.train.data import prompt_text
    from pipeline.train.model import load_with_adapter

    model, tok = load_with_adapter(adapter, quant="none")
    out: dict = {"ids": [], "tuned": [], "logits": [], "base": [], "base_logits": [], "eos": tok.eos_token_id,
                 "new_tokens": new_tokens or NEW_TOKENS}
    kw = dict(max_new_tokens=new_tokens or NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
              return_dict_in_generate=True, output_logits=True)  # the answer a user sees: up to <|im_end|>
    for p in prompts:
        x = tok(prompt_text(tok, [{"role": "user", "content": p}]), return_tensors="pt", add_special_tokens=bos)
        n = x["input_ids"].shape[1]
        with torch.inference_mode():
            tuned = model.generate(**x, **kw)
            with model.disable_adapter():
                plain = model.generate(**x, **kw)
        out["ids"].append(x["input_ids"][0].tolist())
        out["tuned"].append(tuned.sequences[0, n:].tolist())
        out["logits"].append(torch.stack(tuned.logits)[:, 0].float().numpy())
        out["base"].append(plain.sequences[0, n:].tolist())
        out["base_logits"].append(torch.stack(plain.logits)[:, 0].float().numpy())
    return out


def llama_cpp_compare(model_path: Path, lora: Path | None, peft: dict, side: str = "tuned") -> dict:
    """llama.cpp's own greedy answers (how many equal PEFT's `side`: "tuned" or "base"), and, teacher-forced on
    PEFT's answers, top-1 agreement and the largest logit difference."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), lora_path=str(lora) if lora else None, n_ctx=512, n_threads=2,
                logits_all=True, verbose=False, seed=0)
    same, agree, total, diffs, runs = 0, 0, 0, [], []
    logits_key = "logits" if side == "tuned" else "base_logits"
    for ids, target, want_logits in zip(peft["ids"], peft[side], peft[logits_key], strict=True):
        llm.reset()
        got: list[int] = []
        llm.eval(ids)
        while len(got) < peft["new_tokens"] and (not got or got[-1] != peft["eos"]):  # free-running greedy, to <|im_end|>
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            got.append(tok)
            llm.eval([tok])
        same += got == target
        runs.append(got)
        llm.reset()
        llm.eval(ids + target[:-1])  # teacher-forced on PEFT's continuation: top-1 per position
        logits = np.array(llm.scores[len(ids) - 1:len(ids) - 1 + len(target)])
        agree += int((logits.argmax(-1) == np.array(target)).sum())
        total += len(target)
        diffs.append(np.abs(logits - want_logits).max())
    llm.close()
    return {"same": same, "n": len(runs), "top1": agree / total, "max_logit_diff": float(max(diffs)), "runs": runs}
