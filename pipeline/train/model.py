"""Models: the quantization and LoRA configs (pure helpers), and loading for training, inference and merging.

QLoRA = a frozen base stored in 4-bit NF4, de-quantized block by block to the compute
dtype inside each matmul, plus trainable LoRA matrices kept in fp32. A merge never
touches the 4-bit weights: the base is loaded again unquantized and the adapter is
added to those weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import EvalConfig, TrainConfig, config_from_dict
from ..errors import Seed2LoraError
from ..store import read_adapter_config
from .summary import read_summary, summary_path

SAMPLING = "sampling.json"  # the generation settings `eval` scored the adapter with; serve, Modelfile, generate use them

# Known, harmless notices would bury our own lines on every run: peft calls a transformers
# method that 5.x renamed; on CPU bitsandbytes runs the paged optimiser unpaged.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"Paged optimizers are not supported on CPU", category=UserWarning)


def resolve_model(model: str) -> str:
    """A model folder: the given one, or the embedded SmolLM2-135M-Instruct."""
    if not model:
        from ..teachers.embedded import embedded_model_dir

        return str(embedded_model_dir("or give a local HF model folder with --model DIR"))
    if not (Path(model) / "config.json").is_file():
        raise Seed2LoraError(f"{model!r} is not a model folder (no config.json). Fix: give a local Hugging Face "
                             "model folder; hub downloads need network")
    return model


def device() -> str:
    """cuda:<local rank> under torchrun / accelerate launch, cuda:0 alone, else cpu."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def compute_dtype(name: str = "auto", on: str | None = None) -> torch.dtype:
    """bf16 on GPUs that support it, else fp32 (CPU bf16 matmuls are slower without AMX; fp16 overflows)."""
    if name != "auto":
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}[name]
    on = on or device()
    if on.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX). Without them oneDNN emulates bf16 and autocast is
    slower than fp32. torch.cpu's checks are private, so a torch without them counts as no."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


# Share of the available memory the unquantized base (bf16, or fp32 on a CPU without bf16) may take on CPU for quant
# "auto" to leave it unquantized: the rest holds activations, the LoRA weights, gradients and Adam states, a loss
# chunk and everyone else.
BASE_MEMORY_SHARE = 0.5


def base_weight_bytes(model_path: str, bytes_per_param: int = 4) -> int:
    """The base's weights at `bytes_per_param` (fp32: 4), from its checkpoint files' sizes and stored dtype."""
    path = Path(model_path)
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    stored_bytes = 2 if stored in ("bfloat16", "float16") else 4
    return sum(f.stat().st_size for f in files) * bytes_per_param // stored_bytes


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# How training_path names the 16-bit-mask dropout; a checkpoint's resume ignores it (trainer.check_resumable): the
# masks' random stream differs from nn.Dropout's, their distribution and everything saved do not.
CHEAP_DROPOUT_NOTE = ", LoRA dropout from 16-bit masks"
KEEP_ATTENTION_NOTE = ", attention kept through the recompute"  # recompute.py: the same numbers, so resumable too
# Micro-batches train the same update (the loss is averaged over the whole device batch's tokens), so resumable too
MICRO_BATCH_NOTE = ", {rows} row(s) a forward pass without checkpointing"
# Asked for: every activation kept for backward, as many as the batch makes (the same numbers, so resumable too)
NO_CHECKPOINTING_NOTE = ", without gradient checkpointing (train.gradient_checkpointing=false)"


@dataclass(frozen=True)
class TrainPlan:
    """How a training run computes on this machine: TrainConfig's "auto"s resolved (resolve_plan)."""

    quant: bool  # a 4-bit NF4 base (QLoRA); else the base unquantized in load_dtype
    load_dtype: torch.dtype  # the base's weights; QLoRA's de-quantized compute dtype
    autocast_bf16: bool  # forward and loss under bf16 autocast (Trainer's bf16); LoRA weights and optimizer stay fp32
    optim: str
    device: str
    loss_chunk_tokens: int = 1024  # positions per chunk of the chunked loss
    why: str = ""  # why quant auto chose as it did, for the log
    cheap_dropout: bool = False  # LoRA's dropout from 16-bit masks (dropout.py): on CPU, when lora_dropout > 0
    keep_attention: bool = False  # checkpointing keeps attention's outputs (recompute.py): on CPU, when checkpointing
    checkpointing: bool = True  # gradient checkpointing on the decoder layers
    micro_rows: int = 0  # rows per forward pass, without checkpointing (micro_batch_rows); 0 = batch_size rows

    def describe(self) -> str:
        """The path taken, in words, e.g. "LoRA on an fp32 base, bf16 autocast on cpu, adamw_torch"."""
        name = str(self.load_dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
        on = "CPU" if self.device == "cpu" else self.device
        base = "QLoRA on an NF4 base" if self.quant else f"LoRA on {'an' if name.startswith('f') else 'a'} {name} base"
        compute = "bf16 autocast" if self.autocast_bf16 and not self.quant else f"{name} compute"
        dropout = CHEAP_DROPOUT_NOTE if self.cheap_dropout else ""
        kept = KEEP_ATTENTION_NOTE if self.keep_attention else ""
        split = (MICRO_BATCH_NOTE.format(rows=self.micro_rows) if self.micro_rows else
                 NO_CHECKPOINTING_NOTE if not self.checkpointing else "")
        return f"{base}, {compute} on {on}, {self.optim}{dropout}{kept}{split}"


def resolve_plan(cfg: TrainConfig, model_path: str, on: str | None = None, row_tokens: int = 0) -> TrainPlan:
    """quant auto: 4-bit on CUDA, none on CPU while the unquantized base fits in BASE_MEMORY_SHARE of the available
    memory. compute_dtype auto: bf16 on CUDA where supported; on CPU a bf16 base under bf16 autocast when the base
    is unquantized and the CPU has bf16 instructions, else fp32. optim auto: paged_adamw_32bit on CUDA, else
    adamw_torch. loss_chunk_tokens 0: 1024 on CUDA, 256 on CPU. On CPU a LoRA dropout above 0 draws its masks from
    16-bit integers (dropout.py: the same distribution, a third of the bernoulli draw's work); CUDA keeps
    nn.Dropout, one fused kernel there, which this was never measured against. On CPU, with gradient_checkpointing
    on, a device batch whose rows (row_tokens long; 0 = max_seq_len) fit activation_memory_gb as micro-batches
    trains without checkpointing (micro_batch_rows); otherwise checkpointing keeps attention's outputs through the
    recompute (recompute.py). CUDA checkpoints whole layers, as measured there."""
    on = on or device()
    cpu = not on.startswith("cuda")
    why = ""
    if cfg.quant == "auto" and cpu:
        unquantized = compute_dtype(cfg.compute_dtype) if cfg.compute_dtype != "auto" else \
            torch.bfloat16 if cpu_has_bf16() else torch.float32  # the base the branch below loads if unquantized
        need, free = base_weight_bytes(model_path, unquantized.itemsize), available_memory_bytes()
        quant = need > BASE_MEMORY_SHARE * free
        name = str(unquantized).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
        why = (f"quant auto: the {name} base needs {need / 2**30:.1f} GB, {'more' if quant else 'not more'} than "
               f"{BASE_MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GB available: "
               + ("4-bit" if quant else "unquantized"))
    else:
        quant = cfg.quant == "4bit" or (cfg.quant == "auto" and not cpu)
    if cfg.compute_dtype != "auto":
        dtype = compute_dtype(cfg.compute_dtype)
        autocast = dtype == torch.bfloat16  # as chosen: bf16 weights compute under bf16 autocast
    elif cpu:
        # 4-bit on CPU stays fp32: bitsandbytes' CPU kernel de-quantizes to the compute dtype either way.
        autocast = not quant and cpu_has_bf16()
        dtype = torch.bfloat16 if autocast else torch.float32
    else:
        dtype = compute_dtype("auto", on)
        autocast = dtype == torch.bfloat16
    optim = cfg.optim if cfg.optim != "auto" else "adamw_torch" if cpu else "paged_adamw_32bit"
    chunk = cfg.loss_chunk_tokens or (256 if cpu else 1024)
    rows = micro_batch_rows(cfg, model_path, dtype, row_tokens or cfg.max_seq_len) if cpu else 0
    checkpointing = cfg.gradient_checkpointing and not rows
    return TrainPlan(quant=quant, load_dtype=dtype, autocast_bf16=autocast, optim=optim, device=on,
                     loss_chunk_tokens=chunk, why=why, cheap_dropout=cpu and cfg.lora_dropout > 0,
                     keep_attention=cpu and checkpointing, checkpointing=checkpointing,
                     micro_rows=rows)


def activation_bytes_per_token(model_path: str, dtype: torch.dtype) -> int:
    """What training without checkpointing stores for backward per token, estimated for a Llama-style decoder
    with LoRA (and its dropout) on every linear layer; 0 when the model's config lacks the sizes. Counted per layer
    from what autograd saves, in 16-bit units: the two RMSNorms' fp32 inputs and normalized copies (~20 x hidden),
    the LoRA inputs after dropout with their 8-bit masks (~9 x hidden, 1.5 x intermediate), attention's q, k, v,
    output and the RoPE'd q, k (~10 x hidden), the MLP's gate, up, SiLU and product (~4 x intermediate): 48 x
    hidden + 11 x intermediate bytes in bf16, twice that in fp32. For SmolLM2-135M (30 x 576 wide, 1,536 inner)
    that is 1.34 MB a token in bf16, against 1.40 measured (RESULTS.md, issue 21)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        config = config.get("text_config", config)  # multimodal configs nest the language model's
        hidden, inner, layers = (int(config[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return layers * (48 * hidden + 11 * inner) * (1 if dtype.itemsize <= 2 else 2)


def micro_batch_rows(cfg: TrainConfig, model_path: str, dtype: torch.dtype, row_tokens: int) -> int:
    """On CPU with checkpointing asked for: the most rows (a divisor of batch_size, so every update sees the same
    rows as one batch) whose activations fit activation_memory_gb, trained without checkpointing; 0 = none fit (or
    checkpointing is off, or the model's sizes are unknown): the device batch runs whole, as configured."""
    per_row = activation_bytes_per_token(model_path, dtype) * row_tokens
    if not cfg.gradient_checkpointing or not per_row:
        return 0
    fit = int(cfg.activation_memory_gb * 2**30 // per_row)
    return max((d for d in range(1, cfg.batch_size + 1) if cfg.batch_size % d == 0 and d <= fit), default=0)


def get_quantization_config(cfg: TrainConfig, dtype: torch.dtype) -> Any:
    """BitsAndBytesConfig for QLoRA (quant "4bit"), or None for plain LoRA ("none"); resolve_plan decides "auto"."""
    if cfg.quant == "auto":
        raise ValueError("quant 'auto' is resolved by resolve_plan before a model is loaded")
    if cfg.quant != "4bit":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                              bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_quant_storage=torch.uint8)


def get_peft_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = cfg.lora_targets
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def load_tokenizer(model_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:  # padding only fills space; labels are built separately, so EOS is never masked
        tok.pad_token = tok.eos_token
    return tok


def load_base(model_path: str, *, quant_config: Any, dtype: torch.dtype, attn_implementation: str = "sdpa",
              trust_remote_code: bool = False) -> Any:
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()  # load reports drown our own messages
    transformers.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code,
                              "attn_implementation": attn_implementation, "device_map": {"": device()}}
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except (OSError, ValueError) as e:
        raise Seed2LoraError(f"cannot load model {model_path!r}: {str(e).splitlines()[0]}") from None
    if quant_config is not None:
        keep_one_4bit_layout(model)
    return model


def keep_one_4bit_layout(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, the first no-grad forward in eval mode (generate(), an eval
    loss) rewrites each Linear4bit in place into another layout with bf16-rounded scales.
    Training after that runs on a different base (the "generate() before training leaves
    LoRA-B at zero" trap) and logits stop matching a fresh load. One layout everywhere.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def enable_checkpointing(model: Any, kwargs: dict[str, Any]) -> None:
    """Gradient checkpointing on every decoder layer, with torch.utils.checkpoint's `kwargs` (recompute.py)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5's name; older ones have the other
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_for_training(model_path: str, cfg: TrainConfig, plan: TrainPlan | None = None) -> Any:
    """The base as `plan` says (4-bit or not, its dtype; default resolve_plan's), frozen, checkpointed, with fresh
    LoRA adapters (their dropout from 16-bit masks where the plan says). Nothing runs the base before get_peft_model
    (see keep_one_4bit_layout)."""
    from peft import get_peft_model

    from .dropout import use_cheap_lora_dropout
    from .recompute import checkpoint_kwargs

    plan = plan or resolve_plan(cfg, model_path)
    quant_config = get_quantization_config(dataclasses.replace(cfg, quant="4bit" if plan.quant else "none"),
                                           plan.load_dtype)
    model = load_base(model_path, quant_config=quant_config, dtype=plan.load_dtype,
                      attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code)
    # peft's prepare_model_for_kbit_training would also upcast every non-4-bit weight to fp32
    # (0.9 GB for a 152k x 1536 embedding); norms already compute in fp32 inside, and only the
    # LoRA weights train (peft keeps those in fp32), so freezing is all that is needed.
    for p in model.parameters():
        p.requires_grad_(False)
    if plan.checkpointing:
        enable_checkpointing(model, checkpoint_kwargs(plan.keep_attention))
    model.config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing
    model = get_peft_model(model, get_peft_config(cfg))
    if plan.cheap_dropout:
        use_cheap_lora_dropout(model)
    return model


def eval_sampling(cfg: EvalConfig, stop: list[str]) -> dict[str, Any]:
    """The generation settings of an eval with `cfg`, as sampling.json records them: greedy (temperature 0,
    top_p 1), cfg's answer length and repetition penalty, and the stop tokens."""
    return {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": cfg.max_new_tokens,
            "repeat_penalty": cfg.repetition_penalty, "stop": stop}


def not_an_adapter(d: Path) -> Seed2LoraError:
    """The error for a folder with no adapter_config.json. An interrupted training's folder (checkpoints, no
    adapter yet) is the output folder of `seed2lora train`: it says so, and how to finish it."""
    ckpts = sorted(d.glob("checkpoints/checkpoint-*"), key=lambda c: int(c.name.rpartition("-")[2] or 0))
    if ckpts:
        return Seed2LoraError(f"{d} holds no adapter yet: its training stopped before its end (newest checkpoint "
                              f"{ckpts[-1].name}). Fix: run the same `seed2lora train` command again (or `seed2lora "
                              "run` for a run's adapter): it resumes from that checkpoint and writes the adapter here")
    return Seed2LoraError(f"{d} is not an adapter folder (no adapter_config.json). Fix: give the output folder "
                          "of `seed2lora train`")


def adapter_info(adapter_dir: str | Path) -> dict[str, Any]:
    """What an adapter folder says about itself: adapter_config.json, our training summary, and the sampling
    settings `eval` recorded (sampling.json; eval's defaults, sampling_recorded False, before any eval)."""
    d = Path(adapter_dir)
    info = read_adapter_config(d)
    if info is None:
        raise not_an_adapter(d)
    summary = read_summary(d)
    recorded = json.loads((d / SAMPLING).read_text(encoding="utf-8")) if (d / SAMPLING).is_file() else None
    base = summary.get("model") or info.get("base_model_name_or_path")
    if base and summary.get("model"):  # a base folder named relative to where train ran (older summaries)
        found = summary_path(d, summary, base, "model")
        base = str(found.path) if found.path is not None and not found.guessed else base
    return {"base": base,
            "quant": bool(summary.get("quantized", False)), "config": summary.get("config", {}),
            "export": summary.get("export"),
            "rank": int(info.get("r", 0)), "sampling": {**eval_sampling(EvalConfig(), []), **(recorded or {})},
            "sampling_recorded": recorded is not None}


def load_with_adapter(adapter_dir: str | Path, *, model: str = "", quant: str = "auto",
                      dtype: str = "auto") -> tuple[Any, Any]:
    """(PeftModel in eval mode, tokenizer). quant: auto (the base loaded as it was trained) | 4bit | none."""
    from peft import PeftModel

    info = adapter_info(adapter_dir)
    base_path = resolve_model(model or info["base"] or "")
    if quant not in ("auto", "4bit", "none"):
        raise Seed2LoraError(f"quant must be auto, 4bit or none, not {quant!r}")
    use_quant = info["quant"] if quant == "auto" else quant == "4bit"
    cfg = config_from_dict(TrainConfig, info["config"])
    cfg.quant = "4bit" if use_quant else "none"
    torch_dtype = compute_dtype(dtype if dtype != "auto" else cfg.compute_dtype)
    base = load_base(base_path, quant_config=get_quantization_config(cfg, torch_dtype), dtype=torch_dtype,
                     attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(str(adapter_dir) if (Path(adapter_dir) / "tokenizer_config.json").is_file()
                               else base_path, cfg.trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), tokenizer


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, model: str = "", dtype: str = "auto") -> Path:
    """Base re-loaded unquantized (bf16/fp16/fp32) + adapter, merged and saved as a plain model."""
    from peft import PeftModel
    from transformers import AutoConfig

    info = adapter_info(adapter_dir)
    base_path = resolve_model(model or info["base"] or "")
    out = Path(out_dir)
    # A merged model written over the adapter's files or over the base would leave neither usable.
    for taken, what in ((Path(adapter_dir), "the adapter folder itself"), (Path(base_path), "the base model's folder")):
        if out.resolve() == taken.resolve():
            raise Seed2LoraError(f"merge --out {out} is {what}: the merged model would be written over it. Fix: --out "
                                 f"a new folder (default {Path(adapter_dir) / 'merged'})")
    config = AutoConfig.from_pretrained(base_path)
    if getattr(config, "quantization_config", None):
        raise Seed2LoraError(f"{base_path} is a quantized checkpoint; merging into 4-bit weights loses the adapter's "
                             "precision. Fix: give the original 16-bit base with --model")
    # auto = the precision the base was published in (its config.json), so the merged model is a drop-in.
    torch_dtype = compute_dtype(dtype) if dtype != "auto" else (getattr(config, "dtype", None) or torch.float32)
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    base = load_base(base_path, quant_config=None, dtype=torch_dtype,
                     trust_remote_code=bool(info["config"].get("trust_remote_code", False)))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
    load_tokenizer(str(adapter_dir) if (Path(adapter_dir) / "tokenizer_config.json").is_file()
                   else base_path).save_pretrained(out)
    return out
