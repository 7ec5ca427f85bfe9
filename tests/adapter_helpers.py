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
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DATA[name]))
    cfg = TrainConfig(output_dir=str(out), quant=False, lora_r=8, lora_alpha=16, max_steps=steps, batch_size=6,
                      grad_accum=1, learning_rate=3e-3, warmup_ratio=0.0, max_seq_len=64, eval_fraction=0.0,
                      eval_steps=10_000, save_steps=10_000, gradient_checkpointing=False, seed=0)
    train(str(data), cfg, log=lambda m: None)
    return out
