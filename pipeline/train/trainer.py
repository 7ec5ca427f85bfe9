"""The trainer: transformers.Trainer with our batches, our loss and our outputs.

Trainer brings gradient accumulation, paged optimisers, checkpoints and resume, and
multi-GPU data parallelism under `accelerate launch` / `torchrun`. We add:
- the loss on response tokens only, computed in chunks from the last hidden state (loss.py);
- packing or length-grouped batches (data.py);
- outputs: the adapter (safetensors), the tokenizer, training_summary.json, loss_curve.png.

Gradient accumulation and several GPUs are normalised by label tokens: each micro-batch's
loss sum is divided by the label count of the whole accumulated batch on all devices,
so every token weighs the same however the batch is split.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft.helpers import disable_input_dtype_casting
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint, has_length

from ..config import ExportConfig, TrainConfig, current_values
from ..errors import Seed2LoraError
from ..store import ADAPTER_DIR, RunDir, write_text_atomic
from .data import (
    Collator,
    Rows,
    cut_note,
    eval_overlap,
    load_rows,
    pack,
    rows_fingerprint,
    tokenize_rows,
    train_eval_rows,
)
from .loss import causal_lm_loss_sum, full_logits_loss_sum
from .model import (
    CHEAP_DROPOUT_NOTE,
    KEEP_ATTENTION_NOTE,
    MICRO_BATCH_NOTE,
    NO_CHECKPOINTING_NOTE,
    load_for_training,
    load_tokenizer,
    resolve_model,
    resolve_plan,
)
from .model_card import write_folder_card
from .summary import SUMMARY

Log = Callable[[str], None]
Progress = Callable[[str, int | None], Any]  # (description, total or None) -> context manager yielding advance(n)


class LoraTrainer(Trainer):
    """Trainer whose loss is the chunked response-only cross-entropy (or the full-logits one)."""

    def __init__(self, *args: Any, chunked_loss: bool = True, loss_chunk_tokens: int = 1024,
                 autocast_bf16: bool = False, lora_inputs_as_is: bool = False, warmup_ratio: float | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Of the updates, whose count create_scheduler knows (warmup_steps); None: the arguments' warmup, as Trainer
        # reads it
        self.warmup_ratio = warmup_ratio
        self.model_accepts_loss_kwargs = True  # makes Trainer count label tokens over the accumulated batch
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.decoder, self.lm_head = base.get_decoder(), base.get_output_embeddings()
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        self.chunked_loss, self.loss_chunk_tokens = chunked_loss, loss_chunk_tokens
        # accelerate autocasts the model's forward only; the loss's vocabulary projection (two matmuls per chunk,
        # as large as a quarter of a 135M model's) runs under the same autocast, its softmax in fp32 either way.
        self.autocast_bf16 = autocast_bf16
        # peft casts each LoRA layer's input to the LoRA weights' dtype (fp32) before the dropout, and autocast
        # casts it back to bf16 for LoRA-A's matmul: on a bf16 base, two copies of every LoRA input in each forward
        # (and their gradients') that change no number (bf16 -> fp32 is exact; the dropout's scaling rounds to bf16
        # either way). lora_inputs_as_is skips them: the input stays bf16 through the dropout into LoRA-A.
        self.lora_inputs_as_is = lora_inputs_as_is
        self.keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.tokens_seen = 0

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """Trainer's scheduler, its warmup counted by warmup_steps (Trainer rounds the ratio up) and recorded in
        the arguments each checkpoint keeps."""
        if self.warmup_ratio is not None:
            self.args.warmup_steps = warmup_steps(self.warmup_ratio, num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """Eval's bar opens before its first batch: TrainerCallback has no hook there, and opened at that batch's end
        the bar timed the rest alone (a one-batch eval: 'done in 0s (1004/s)')."""
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, TrainProgress) and self.is_world_process_zero():
                cb.eval_begins()
        return super().evaluate(*args, **kwargs)

    def training_step(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        """Forward and backward with peft's casts off alike: checkpointing recomputes the forward inside backward,
        and a recompute that casted where the forward did not would not match what the forward stored."""
        with disable_input_dtype_casting(model, active=self.lora_inputs_as_is):
            return super().training_step(model, *args, **kwargs)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        num_tokens = inputs.pop("num_tokens", None)
        labels = inputs.pop("labels")
        if model.training and num_tokens is not None:
            self.tokens_seen += int(num_tokens)
        with disable_input_dtype_casting(model, active=self.lora_inputs_as_is):  # also for eval's forward
            loss_sum, n, outputs = self.loss_sum(model, inputs, labels)
        if num_items_in_batch is not None:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        else:
            loss = loss_sum / max(n, 1)
        return (loss, outputs) if return_outputs else loss

    def loss_sum(self, model: Any, inputs: dict[str, Any], labels: torch.Tensor) -> tuple[torch.Tensor, int, Any]:
        """(sum of the label tokens' losses, their number, the model's outputs)."""
        if self.chunked_loss:
            captured: dict[str, torch.Tensor] = {}

            def keep_hidden(module: Any, args: Any, output: Any) -> None:
                captured["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

            # The call goes through the (possibly DDP-wrapped) top model, so gradient sync still
            # works; the hook takes the last hidden state and logits are made for 1 position only.
            hook = self.decoder.register_forward_hook(keep_hidden)
            try:
                outputs = model(**inputs, use_cache=False, **({"logits_to_keep": 1} if self.keeps_logits else {}))
            finally:
                hook.remove()
            h = captured["h"]
            with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
                loss_sum, n = causal_lm_loss_sum(h, labels, self.lm_head,
                                                 chunk_tokens=self.loss_chunk_tokens, softcap=self.softcap)
        else:
            outputs = model(**inputs, use_cache=False)
            loss_sum, n = full_logits_loss_sum(outputs.logits, labels)
        return loss_sum, n, outputs


class ConsoleLog(TrainerCallback):
    """One line per logged step instead of Trainer's raw dicts."""

    def __init__(self, log: Log):
        self.log = log

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key, fmt in (("loss", "loss {:.4f}"), ("eval_loss", "eval_loss {:.4f}"),
                         ("learning_rate", "lr {:.2e}"), ("grad_norm", "grad_norm {:.3f}")):
            if key in logs:
                parts.append(fmt.format(logs[key]))
        if len(parts) > 1:
            self.log("  ".join(parts))


class SaveByTime(TrainerCallback):
    """A checkpoint once `every_s` seconds have passed since the last one, at the end of an update (the normal
    save path: model, optimizer, scheduler, RNG and data position), whatever save_steps says."""

    def __init__(self, every_s: float):
        self.every_s, self.last = every_s, time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.every_s > 0 and time.monotonic() - self.last >= self.every_s:
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.last = time.monotonic()


class Runtime(TrainerCallback):
    """Training seconds up to each checkpoint, earlier sessions included, in its RUNTIME_FILE: a resumed run adds
    them to its own, so runtime_s (what `seed2lora cost` prices) is the whole training, not its last session."""

    def __init__(self, before_s: float):
        self.before_s, self.start = before_s, time.perf_counter()
        self.first_step = 0  # the global step this session starts from: the checkpoint's when resumed

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.first_step = state.global_step

    def seconds(self) -> float:
        return self.before_s + time.perf_counter() - self.start

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_text_atomic(folder / RUNTIME_FILE, json.dumps({"runtime_s": round(self.seconds(), 2)}) + "\n")


class TrainProgress(TrainerCallback):
    """Optimizer steps with rate, ETA and the last losses: a bar on a terminal, plain lines elsewhere
    (pipeline/progress.py). Evaluation's batches get one of their own while they run."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.open: dict[str, tuple[Any, Any]] = {}  # "train" / "eval" -> (context manager, advance)
        self.step = 0  # the last global step counted
        self.losses: dict[str, float] = {}
        self.eval_total_unknown = False  # eval's bar opened before its loader was there to count its batches

    def _open(self, name: str, desc: str, total: int | None) -> None:
        manager = self.progress(desc, total)
        self.open[name] = (manager, manager.__enter__())

    def _close(self, name: str, exc_info: tuple[Any, Any, Any] = (None, None, None)) -> None:
        if name in self.open:
            self.open.pop(name)[0].__exit__(*exc_info)

    def close(self, exc_info: tuple[Any, Any, Any] = (None, None, None)) -> None:
        """End what is open: fit() calls it when train() raises, so no bar is left drawn."""
        for name in ("eval", "train"):
            self._close(name, exc_info)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.step = state.global_step  # a resumed run counts (and times) the steps it has left
        resumed = f" (resumed at step {self.step})" if self.step else ""
        self._open("train", f"train{resumed}, steps", max(state.max_steps - self.step, 0))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if "train" in self.open and state.global_step > self.step:
            self.open["train"][1](state.global_step - self.step)
            self.step = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        note = getattr(self.open.get("train", (None, None))[1], "note", None)
        if note is None or not logs:
            return
        self.losses.update({k: logs[k] for k in ("loss", "eval_loss") if k in logs})
        if self.losses:
            note(", ".join(f"{k.replace('_', ' ')} {self.losses[k]:.4f}" for k in ("loss", "eval_loss")
                           if k in self.losses))

    def on_prediction_step(self, args: Any, state: Any, control: Any, eval_dataloader: Any = None,
                           **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        total = len(eval_dataloader) if has_length(eval_dataloader) else None
        if "eval" not in self.open:
            self._open("eval", "train: eval loss, batches", total)
        elif self.eval_total_unknown:  # opened by eval_begins, before the loader was there to count
            getattr(self.open["eval"][1], "set_total", lambda n: None)(total)
        self.eval_total_unknown = False
        self.open["eval"][1](1)

    def eval_begins(self) -> None:
        """LoraTrainer.evaluate's call before the first batch: the bar opens here, its total set at the first."""
        if "eval" not in self.open:
            self._open("eval", "train: eval loss, batches", None)
            self.eval_total_unknown = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._close("eval")

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._close("train")


def warmup_steps(ratio: float, updates: int) -> int:
    """The updates the warmup takes: `ratio` of them rounded down, and fewer than all. A warmup's first update has
    learning rate 0 (Trainer's schedulers start at step 0 of n), and Trainer rounded the ratio up: a run of 1
    update (train.max_steps=1, a tiny dataset) was all warmup and wrote an adapter equal to its base, saying
    nothing. Rounded down, runs under 1/ratio updates (34 at 3%) have none, and the last update of any run has
    the full rate. The 1e-9: 0.29 x 100 is 28.999999999999996 in floats."""
    return max(0, min(math.floor(ratio * updates + 1e-9), updates - 1))


def training_arguments(cfg: TrainConfig, output_dir: Path, *, bf16: bool, use_cpu: bool, has_eval: bool,
                       optim: str, micro_rows: int = 0) -> TrainingArguments:
    """Trainer's arguments; bf16 = autocast, optim = the resolved optimizer (TrainPlan's: cfg.optim may be auto).
    micro_rows (TrainPlan's): each device batch of cfg.batch_size rows runs as micro-batches of this many, their
    gradients accumulated into the same update (Trainer averages the loss over the tokens of all of them)."""
    rows = micro_rows or cfg.batch_size
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=rows, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum * (cfg.batch_size // rows), num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a fraction of all steps; LoraTrainer.create_scheduler counts it
        max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay, optim=optim,
        bf16=bf16, use_cpu=use_cpu,
        # Packed rows are all about max_seq_len long; plain rows are grouped by length to cut padding (qlora.py).
        train_sampling_strategy="random" if cfg.packing else "group_by_length",
        eval_strategy="steps" if has_eval else "no", eval_steps=cfg.eval_steps,
        eval_on_start=has_eval,  # the base's eval loss: the number every later one is compared with
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps, logging_first_step=True, report_to=[], disable_tqdm=True,
        seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False, prediction_loss_only=True,
        ddp_find_unused_parameters=False, dataloader_pin_memory=not use_cpu,
    )


def default_output_dir(cfg: TrainConfig, rows: Rows) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return RunDir(rows.run_dir).adapter_dir() if rows.run_dir else Path(ADAPTER_DIR)


@dataclass
class Prepared:
    """Everything a training run needs, built but not yet run (tests reach in for the model)."""

    trainer: LoraTrainer
    tokenizer: Any
    cfg: TrainConfig
    data: str
    rows: Rows
    model_path: str
    out: Path
    stats: dict[str, Any]


def prepare(data: str | Path, cfg: TrainConfig, log: Log = print, progress: Progress | None = None,
            export: ExportConfig | None = None, rows: Rows | None = None) -> Prepared:
    """Load and tokenize the data, load the model with fresh adapters, build the trainer.
    `progress` (pipeline/progress.py's, or any of that protocol) shows steps with an ETA; None: log lines only.
    `export`: how a run directory given as `data` is read (load_rows). `rows`: `data`'s, where the caller has read
    them already (the train step, for the fingerprint it compares): a run's rows are not read twice."""
    from transformers import set_seed

    set_seed(cfg.seed)
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    tokenizer.padding_side = "right"
    rows = rows if rows is not None else load_rows(data, export)
    if rows.run_dir and rows.decontaminated:  # a run directory, read as export reads it: say what left and why
        RunDir(rows.run_dir).replace_rejected("export", rows.contaminated)
        log(f"{len(rows.contaminated)} row(s) overlapping the eval set left out ({rows.decontaminated}); "
            f"{'recorded in ' + str(RunDir(rows.run_dir).rejected_file) if rows.contaminated else 'none found'}")
    overlap = [] if rows.run_dir else eval_overlap(rows)[0]
    if overlap:  # the user's own file: named, not changed (export and `train RUN_DIR` leave such rows out)
        log(f"warning: {len(overlap)} row(s) of {rows.source} overlap the eval set `seed2lora eval` scores on (row "
            f"{overlap[0][0]}: {overlap[0][1]}), so eval would score what the adapter copied. Fix: leave them out, or "
            "evaluate on other tasks with eval --data FILE")
    train_rows, eval_rows = train_eval_rows(rows, cfg.eval_fraction, cfg.seed)
    if cfg.max_examples:
        train_rows = train_rows[:cfg.max_examples]
    train_tok = tokenize_rows(tokenizer, train_rows, cfg.max_seq_len)
    eval_tok = tokenize_rows(tokenizer, eval_rows, cfg.max_seq_len)
    if not train_rows:
        raise Seed2LoraError(f"no training example in {data}: it holds no rows for the train split. Fix: give a "
                             "file with rows (Alpaca instruction/input/output or chat messages)")
    if not train_tok.examples:
        shortest = min(len(e["input_ids"]) for e in tokenize_rows(tokenizer, train_rows, 10**9).examples)
        raise Seed2LoraError(f"no training example left from {data}: every response of its {len(train_rows)} rows was "
                             f"cut away at --max-seq-len {cfg.max_seq_len} (the shortest row is {shortest} tokens). "
                             f"Fix: --max-seq-len {shortest} or more (512 keeps a CPU run short)")
    train_set = pack(train_tok.examples, cfg.max_seq_len) if cfg.packing else train_tok.examples
    eval_set = pack(eval_tok.examples, cfg.max_seq_len) if cfg.packing else eval_tok.examples
    out = default_output_dir(cfg, rows)
    plan = resolve_plan(cfg, model_path, row_tokens=max(len(r["input_ids"]) for r in train_set))
    on = plan.device
    if plan.why:
        log(plan.why)
    log(f"training on {len(train_tok.examples)} examples ({len(train_set)} rows{', packed' if cfg.packing else ''}), "
        f"{len(eval_tok.examples)} eval{cut_note(train_tok.stats, eval_tok.stats, cfg.max_seq_len)}; model "
        f"{model_path}; {plan.describe()}")
    model = load_for_training(model_path, cfg, plan)
    args = training_arguments(cfg, out / "checkpoints", bf16=plan.autocast_bf16, use_cpu=on == "cpu",
                              has_eval=bool(eval_set), optim=plan.optim, micro_rows=plan.micro_rows)
    trainer = LoraTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set or None,
                          data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer,
                          callbacks=[ConsoleLog(log), SaveByTime(cfg.save_every_s),
                                     *([TrainProgress(progress)] if progress else [])],
                          chunked_loss=cfg.chunked_loss, loss_chunk_tokens=plan.loss_chunk_tokens,
                          autocast_bf16=plan.autocast_bf16, warmup_ratio=cfg.warmup_ratio,
                          lora_inputs_as_is=on == "cpu" and plan.autocast_bf16 and plan.load_dtype == torch.bfloat16)
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    stats = {"train_data": train_tok.stats, "eval_data": eval_tok.stats,
             "rows": {"train": len(train_set), "eval": len(eval_set), "packed": cfg.packing},
             **({} if rows.run_dir else {"eval_overlap_rows": len(overlap)}),
             "compute_dtype": str(plan.load_dtype).removeprefix("torch."), "autocast_bf16": plan.autocast_bf16,
             "quantized": plan.quant, "optim": plan.optim, "training_path": plan.describe(), "device": on,
             "data_sha256": rows_fingerprint(rows),
             # A run directory's rows as these [export] settings give them: eval's held-out split reads them again
             **({"export": dataclasses.asdict(export or ExportConfig())} if rows.run_dir else {})}
    return Prepared(trainer, tokenizer, cfg, str(data), rows, model_path, out, stats)


def fit(p: Prepared, log: Log = print) -> dict[str, Any]:
    """Run (or resume) training, evaluate, and write the adapter, tokenizer, summary and loss curve."""
    trainer, cfg, out = p.trainer, p.cfg, p.out
    ckpts = out / "checkpoints"
    resume = get_last_checkpoint(str(ckpts)) if cfg.resume and ckpts.is_dir() else None
    settings = checkpoint_settings(p)
    if resume:
        check_resumable(ckpts, settings)
        kept = finished_adapter(p, Path(resume))
        if kept is not None:
            log(f"{out} is already trained: {resume} holds {kept['steps']} update(s), all this run asks for, and the adapter "
                "beside it; nothing to train. Fix: a higher --max-steps or --epochs goes on from there, --no-resume "
                "starts over")
            return kept
        log(f"resuming from {resume}")
        if base_eval_known(Path(resume)):  # eval_on_start would measure the checkpoint: a pass over the eval split
            trainer.args.eval_on_start = False
    elif trainer.is_world_process_zero():
        stale = sorted(ckpts.glob("checkpoint-*")) if ckpts.is_dir() else []
        for old in stale:  # a fresh start must never be resumed from an older run's later checkpoint
            shutil.rmtree(old)
        if stale:
            log(f"starting over: removed {len(stale)} old checkpoint(s) in {ckpts}")
    if trainer.is_world_process_zero():
        write_text_atomic(ckpts / CHECKPOINT_SETTINGS, json.dumps(settings, indent=2, default=str) + "\n")
    on_gpu = p.stats["device"].startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    runtime = Runtime(read_runtime(Path(resume)) if resume else 0.0)
    trainer.add_callback(runtime)
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except BaseException as stop:
        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, TrainProgress):
                cb.close(sys.exc_info())
        if isinstance(stop, KeyboardInterrupt):  # the CLI prints it under "interrupted" (cli.said_pending)
            stop.pending = resume_note(trainer, ckpts)
        raise
    train_seconds = time.perf_counter() - start
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if trainer.eval_dataset and not (evals and evals[-1]["step"] == trainer.state.global_step):
        evals.append(trainer.evaluate())  # Trainer evaluates at the last step only when it falls on eval_steps
    history = trainer.state.log_history
    summary = {
        "model": whole(p.model_path), "data": whole(p.data), "source": ", ".join(map(whole, p.rows.source.split(", "))),
        "output_dir": str(out),
        **({"decontaminated": p.rows.decontaminated, "contaminated_rows": len(p.rows.contaminated)}
           if p.rows.decontaminated else {}),
        **p.stats, "world_size": trainer.args.world_size, "config": dataclasses.asdict(cfg),
        "trainable_params": sum(x.numel() for x in trainer.model.parameters() if x.requires_grad),
        "steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0.0, 3), "resumed_from": resume,
        "train_loss": _losses(history, "loss"),
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "eval_losses": _losses(history, "eval_loss"),
        "runtime_s": round(runtime.before_s + train_seconds, 2), "session_runtime_s": round(train_seconds, 2),
        "session_steps": trainer.state.global_step - runtime.first_step,  # steps_per_s and tokens_per_s are theirs
        "steps_per_s": round(result.metrics.get("train_steps_per_second", 0.0), 4),
        "tokens_per_s": round(trainer.tokens_seen * trainer.args.world_size / max(train_seconds, 1e-9), 1),
        "peak_memory_gb": round(_peak_memory_bytes(on_gpu) / 2**30, 3),
        "log_history": history,
    }
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))  # adapter_model.safetensors + adapter_config.json + tokenizer
        write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")
        write_loss_curve(history, out / "loss_curve.png")
        write_folder_card(out, p.model_path)  # over PEFT's blank template; after the summary, which it reads
        log(f"adapter written to {out} (loss {summary['train_loss']['first']} -> {summary['train_loss']['last']}"
            + (f", eval loss {summary['eval_losses']['first']} -> {summary['eval_losses']['last']}"
               if summary["eval_loss"] is not None else "") + ")")
        if stale := made_before(out):
            log(f"note: out of date, made from the adapter before this training: {', '.join(stale)}. Fix: run "
                "`seed2lora merge`, `seed2lora export-adapter` and `seed2lora eval` on it again for those you use")
    return summary


# Settings that change no number of the finished adapter: where it goes, how often it is saved, logged and evaluated,
# and how activations fit in memory (micro-batches or checkpointing train the same update). A finished adapter whose
# summary differs in these alone is kept (train_step), not trained again.
NOT_IN_ADAPTER = frozenset({"output_dir", "resume", "eval_steps", "save_steps", "save_every_s", "save_total_limit",
                            "logging_steps", "activation_memory_gb", "gradient_checkpointing"})
# Settings a resumed run may change: those, and how long it trains (so a run that ran out of memory resumes with a
# lower activation_memory_gb or checkpointing back on); any other change makes the checkpoints another model's or
# another dataset's, and resuming from them would mix the two.
RESUMABLE = NOT_IN_ADAPTER | {"epochs", "max_steps"}
CHECKPOINT_SETTINGS = "seed2lora_settings.json"
RUNTIME_FILE = "seed2lora_runtime.json"  # in each checkpoint: training seconds up to it (Runtime)


def made_before(out: Path) -> list[str]:
    """What merge, export-adapter and eval made in the adapter folder from weights older than its current ones."""
    weights = (out / "adapter_model.safetensors").stat().st_mtime
    made = [out / "merged", *sorted(out.glob("*.gguf")), out / "Modelfile", *sorted(out.glob("Modelfile.*")),
            out / "eval" / "eval_report.json"]
    return [str(p.relative_to(out)) for p in made if p.exists() and p.stat().st_mtime < weights]


def resume_note(trainer: LoraTrainer, ckpts: Path) -> str:
    """What the same command does after a stop: resume from the newest checkpoint, or start over when none is
    written yet (the updates since the last checkpoint are trained again either way)."""
    state, args = trainer.state, trainer.args
    newest = get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
    where = f"train: stopped at update {state.global_step} of {state.max_steps}"
    if newest is None:
        by_time = [f" or {cb.every_s:.0f} s" for cb in trainer.callback_handler.callbacks
                   if isinstance(cb, SaveByTime) and cb.every_s > 0]
        return (f"{where}, before its first checkpoint (every {args.save_steps} updates{''.join(by_time[:1])}): "
                "nothing to resume from; the same command starts over")
    return f"{where}; the same command resumes from {Path(newest).name} (in {ckpts})"


def finished_adapter(p: Prepared, checkpoint: Path) -> dict[str, Any] | None:
    """The summary of the adapter in p.out when `checkpoint` already holds every update this run plans and that
    adapter was written from it (same step, same rows), else None. Trainer checks the step count only after an
    update, so resuming from such a checkpoint would train one update past the end and overwrite the adapter."""
    state_file, summary_file = checkpoint / "trainer_state.json", p.out / SUMMARY
    if not state_file.is_file() or not summary_file.is_file():
        return None
    done = json.loads(state_file.read_text(encoding="utf-8")).get("global_step", 0)
    planned = p.trainer.set_initial_training_values(p.trainer.args, p.trainer.get_train_dataloader())[6]
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    same = summary.get("steps") == done and summary.get("data_sha256") == p.stats["data_sha256"]
    return summary if done >= planned and same else None


def base_eval_known(checkpoint: Path) -> bool:
    """Whether the checkpoint's history holds the base's eval loss (step 0), which eval_on_start measures."""
    f = checkpoint / "trainer_state.json"
    history = json.loads(f.read_text(encoding="utf-8")).get("log_history", []) if f.is_file() else []
    return any(h.get("step") == 0 and "eval_loss" in h for h in history)


def read_runtime(checkpoint: Path) -> float:
    """The training seconds up to a checkpoint; 0 for one written before checkpoints kept them."""
    f = checkpoint / RUNTIME_FILE
    return float(json.loads(f.read_text(encoding="utf-8")).get("runtime_s", 0.0)) if f.is_file() else 0.0


def checkpoint_settings(p: Prepared) -> dict[str, Any]:
    """What the checkpoints of this run depend on: the settings, the base model and the data."""
    fixed = {k: v for k, v in dataclasses.asdict(p.cfg).items() if k not in RESUMABLE}
    return {**fixed, "training_path": p.stats["training_path"], "model": p.model_path, "data": p.data,
            "train_rows": p.stats["rows"]["train"],
            "train_tokens": p.stats["train_data"]["tokens"], "data_sha256": p.stats["data_sha256"]}


ADDED_SETTINGS = {"data_sha256", "training_path"}  # recorded since; checkpoints saved without them are judged by the rest


def same_model_path(path: Any) -> str:
    """training_path less the notes that change no number a checkpoint holds (the dropout masks' random stream,
    what the recompute keeps, micro-batches of the same update, checkpointing off). The CPU default's fp32 weights
    under bf16 autocast (before micro-batches) count as its bf16 base under bf16 autocast: a checkpoint holds only
    the fp32 LoRA weights and Adam states, valid for both, and the matmuls ran on bf16-rounded weights either way;
    only the norms and the residual stream round to bf16 after the switch."""
    path = str(path).replace(CHEAP_DROPOUT_NOTE, "").replace(KEEP_ATTENTION_NOTE, "").replace(NO_CHECKPOINTING_NOTE, "")
    path = path.replace("LoRA on an fp32 base, bf16 autocast", "LoRA on a bf16 base, bf16 autocast")
    return re.sub(re.escape(MICRO_BATCH_NOTE).replace(re.escape("{rows}"), r"\d+"), "", path)


def setting_changes(recorded: dict[str, Any], cfg: TrainConfig) -> tuple[dict[str, str], dict[str, str]]:
    """The settings that differ between a finished adapter's summary and `cfg`, each as "lora_r 16 -> 32" (values
    of an old type read as today's: current_values), split in two: those that change the adapter, and those that
    change no weight (NOT_IN_ADAPTER), which a kept adapter says it ignored. output_dir and resume are the step's own
    (where the adapter is, whether checkpoints are read), never a setting the adapter was asked to differ in."""
    then = current_values(TrainConfig, recorded)
    changed, ignored = {}, {}
    for k, v in dataclasses.asdict(cfg).items():
        if k not in NOT_IN_ADAPTER and then.get(k) != v:
            changed[k] = f"{k} {then.get(k)!r} -> {v!r}"
        elif k in NOT_IN_ADAPTER - {"output_dir", "resume"} and k in then and then[k] != v:
            ignored[k] = f"{k} {then[k]!r} -> {v!r}"
    return changed, ignored


def check_resumable(ckpts: Path, settings: dict[str, Any]) -> None:
    saved_file = ckpts / CHECKPOINT_SETTINGS
    if not saved_file.is_file():
        return  # checkpoints written before settings were recorded: trust them
    saved = json.loads(saved_file.read_text(encoding="utf-8"))
    saved = current_values(TrainConfig, saved)  # quant = true, saved before quant took auto|4bit|none, is "4bit"
    saved = {k: v for k, v in saved.items() if k not in RESUMABLE}  # saved before a key became resumable
    # Checkpoints from before (or after) the 16-bit dropout masks, attention kept through the recompute or
    # micro-batches, on CPU, resume with the other: the same model and numbers.
    saved, settings = ({**s, "training_path": same_model_path(s["training_path"])} if "training_path" in s else s
                       for s in (saved, settings))
    if saved.get("data_sha256") and saved.get("data_sha256") == settings.get("data_sha256"):
        # The same rows named by another path (absolute, or from another directory): the same data
        saved, settings = ({k: v for k, v in s.items() if k != "data"} for s in (saved, settings))
    changed = [f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(saved) | set(settings))
               if saved.get(k) != settings.get(k) and (k in saved or k not in ADDED_SETTINGS)]
    if changed:
        raise Seed2LoraError(f"the checkpoints in {ckpts} were made with other settings or data ({'; '.join(changed)}). "
                             "Fix: --no-resume (in a config: [train] resume = false) to start over; the old checkpoints are "
                             "removed. Or train into another --out")


def whole(path: str | Path) -> str:
    """A path the summary names, whole when it is there: export-adapter's dataset hash, eval's held-out split and
    the base of eval, serve and export-adapter read it from any directory (one relative to where `train` ran was
    found from there only; summary.py reads those of older adapters)."""
    return str(Path(path).absolute()) if path and Path(path).exists() else str(path)


def train(data: str | Path, cfg: TrainConfig, log: Log = print, progress: Progress | None = None,
          export: ExportConfig | None = None, rows: Rows | None = None) -> dict[str, Any]:
    """Train a (Q)LoRA adapter on `data`; write it with its tokenizer, summary and loss curve. Returns the summary.
    `export`: how a run directory given as `data` is read (load_rows); `rows`: its rows, read already (prepare)."""
    return fit(prepare(data, cfg, log, progress, export, rows), log)


def _losses(history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    points = [(h["step"], h[key]) for h in history if key in h]
    if not points:
        return {"first": None, "last": None, "points": []}
    return {"first": round(points[0][1], 4), "last": round(points[-1][1], 4), "points": points}


def _peak_memory_bytes(on_gpu: bool) -> int:
    if on_gpu:
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB: the process's peak RSS


def write_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("eval_loss", "o-")):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=key.replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (response tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    if any(h.get("loss") for h in history) and math.isfinite(max(h.get("loss", 0) for h in history)):
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
