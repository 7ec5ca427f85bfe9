"""Settings of export, train, generate and eval: one dataclass each, a why-comment per default.

Training defaults are the QLoRA paper's recipe (Dettmers et al. 2023, artidoro/qlora's
qlora.py) unless a comment says otherwise. Any field can be set from the command line
with --set KEY=VALUE or from the [train] / [export] / [eval] tables of a TOML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from ..errors import InputError


@dataclass
class ExportConfig:
    formats: str = "alpaca,messages,hf,parquet"  # every format; each is small next to the run itself
    rows: str = "instance"  # instance = one row per instance (Self-Instruct's fine-tuning data); task = first instance only (Alpaca)
    include_seeds: bool = True  # the Self-Instruct authors' release script adds the human seed instances (--include_seed_tasks); train split only
    eval_fraction: float = 0.1  # of machine tasks, not rows, so no task's instances sit on both sides; runs are small, 10% still gives tens
    seed: int = 42  # the split is drawn from random.Random(seed): same run + same seed = same split


@dataclass
class TrainConfig:
    model: str = ""  # a local HF folder; empty = the embedded SmolLM2-135M-Instruct, which needs no download
    output_dir: str = ""  # empty = <run dir>/adapter for run/export input, else ./adapter
    # Quantization (QLoRA)
    quant: bool = True  # 4-bit base: ~4x less weight memory, and QLoRA matched 16-bit LoRA quality
    quant_type: str = "nf4"  # NormalFloat4 is information-theoretically optimal for normally distributed weights (QLoRA)
    double_quant: bool = True  # quantizes the quantization constants too: ~0.37 bits/param saved at no quality cost
    compute_dtype: str = "auto"  # auto = bf16 on GPUs that have it (fp16's range overflows), fp32 on CPU and older GPUs
    # LoRA
    lora_r: int = 64  # QLoRA: r=64 on every linear layer matched full 16-bit fine-tuning; r mattered less than coverage
    lora_alpha: int = 16  # qlora.py's value; update scale alpha/r = 0.25
    lora_dropout: float = 0.05  # QLoRA used 0.05-0.1; our datasets are small but a few epochs only, so light regularisation
    lora_targets: str = "all-linear"  # every linear layer but lm_head (peft leaves the output layer out of all-linear)
    # Optimisation
    optim: str = "paged_adamw_32bit"  # paged states spill to CPU RAM on memory spikes instead of OOM; paged_adamw_8bit halves them
    learning_rate: float = 2e-4  # qlora.py for 7B-13B models; LoRA needs ~10x the full fine-tuning rate
    lr_scheduler: str = "constant_with_warmup"  # qlora.py: constant; short runs gain nothing from decay
    warmup_ratio: float = 0.03  # 3% warmup keeps the first updates of the zero-initialised LoRA-B from overshooting
    max_grad_norm: float = 0.3  # qlora.py: clipping at 0.3 steadied training with paged optimisers
    weight_decay: float = 0.0  # qlora.py; the adapters are tiny and few epochs are run
    gradient_checkpointing: bool = True  # activations dominate memory at long sequences; costs ~30% more compute
    batch_size: int = 4  # rows per device per micro-step: fits a 7B QLoRA at 1024 tokens on a 24 GB GPU
    grad_accum: int = 4  # x batch_size = 16 rows per update, qlora.py's effective batch
    epochs: float = 3.0  # Alpaca and Self-Instruct fine-tuned for 2-3 epochs
    max_steps: int = -1  # -1 = run the epochs; set for quick runs (it then wins over epochs)
    max_seq_len: int = 1024  # tokens incl. template; Self-Instruct/Alpaca rows average ~320, so almost none are cut
    packing: bool = False  # off = one example per row, as qlora.py trains; on = ~2x tokens/s, fewer and fuller rows
    chunked_loss: bool = True  # cross-entropy on response positions only, in chunks: no full fp32 logits in memory
    loss_chunk_tokens: int = 1024  # positions per loss chunk: 1024 x 152k-vocab fp32 = 0.6 GB peak at most
    attn_implementation: str = "sdpa"  # PyTorch's fused attention, no extra package; flash_attention_2 if installed
    # Evaluation, checkpoints, logging
    eval_fraction: float = 0.1  # held out when the data has no eval split (an export has one)
    eval_steps: int = 50  # eval loss every this many updates, and always at the end
    save_steps: int = 50  # checkpoint for --resume; a CPU step takes seconds, so little work is ever lost
    save_total_limit: int = 2  # old checkpoints are deleted; 2 keeps one in case the newest is torn
    logging_steps: int = 1  # the loss curve shows every update; logging a float costs nothing
    max_examples: int = 0  # 0 = all; a cap for quick trials
    seed: int = 42  # data order, LoRA init and dropout
    resume: bool = True  # continue from the newest checkpoint in <output_dir>/checkpoints, as every stage resumes
    trust_remote_code: bool = False  # never run a model repository's code unless asked


@dataclass
class EvalConfig:
    data: str = ""  # JSONL of tasks; empty = ../shared/data/user_oriented_instructions.jsonl if present, else the held-out split
    limit: int = 0  # evaluate this many tasks (seeded sample); 0 = all
    max_new_tokens: int = 256  # user-oriented reference outputs average ~50 words; 256 tokens leaves room
    batch_size: int = 8  # prompts per generate() call; sorted by length so padding stays small
    repetition_penalty: float = 1.0  # score the model as trained; both sides get the same decoding anyway
    quant: str = "auto"  # auto | 4bit | none; auto = the base as it was trained (4-bit for QLoRA), so logits match training
    judge: str = ""  # teacher spec for a pairwise judge (e.g. openai:gpt-4o-mini); empty = ROUGE-L only
    seed: int = 0  # task sample and A/B order for the judge


def load_section(cls: type, path: str | Path | None, section: str, overrides: dict[str, Any]) -> Any:
    """A dataclass from the [section] table of a TOML file (optional), then KEY=VALUE overrides."""
    from ..config import _build  # here: pipeline.config holds these sections, so it imports this module

    data: dict[str, Any] = {}
    text = ""
    if path:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, None, "does not exist", "pass an existing TOML file to --config")
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text).get(section, {})
        except tomllib.TOMLDecodeError as e:
            raise InputError(path, None, f"is not valid TOML ({e})", "fix the TOML syntax") from None
    cfg = _build(cls, data, Path(path) if path else None, text, section=section)
    for key, value in overrides.items():
        if value is None:
            continue
        key = key.removeprefix(f"{section}.")  # --set train.lora_r=16 works like --set lora_r=16
        if not hasattr(cfg, key):
            raise InputError(None, None, f"unknown {section} setting '{key}'",
                             f"use one of: {', '.join(sorted(cfg.__dataclass_fields__))}")
        setattr(cfg, key, value)
    return cfg
