"""Instruction-following difficulty (IFD) with the student (Cherry LLM, Li et al. 2024).

For a row (instruction, input, output): IFD = L(output | instruction) / L(output), the
student's mean token cross-entropy on the output when it is given the prompt, divided by
the same on the output alone. Near 0: the prompt makes the answer easy to predict; near
1: the prompt barely helps, the row teaches the most; >= 1: the prompt does not help at
all (Cherry LLM drops these as misaligned). Cherry selects rows with HIGH IFD.

Both losses are over exactly the same tokens: the response tokens (EOS included) of the
row as training sees it (train.data.tokenize_example: chat template or Alpaca prompt).
Alone, they follow a single start token (the tokenizer's BOS, else EOS) so the first one
is scored too. The student is the [train] model (default: the embedded SmolLM2), loaded
unquantized in the compute dtype, so the scores do not depend on a quantization layout.

Input: the run's kept records (export.include), one row per instance, seeds left out.
Output: ifd.jsonl, one Task record per row (id "<task id>-<k>", its one instance,
meta["row_of"], meta["ifd"] = {"ifd", "loss_cond", "loss_alone", "tokens"}), appended a
batch at a time; a re-run scores only the rows not in it yet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import IfdConfig, TrainConfig
from ..progress import no_progress
from ..records import Instance, Task, row_messages
from ..rows import generated_rows
from ..store import JsonlWriter, RunDir
from .data import IGNORE_INDEX, tokenize_example
from .loss import mean_losses
from .model import compute_dtype, load_base, load_tokenizer, resolve_model

STAGE = "ifd"


def ifd_pairs(tokenizer: Any, row: dict[str, Any], max_len: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(conditioned ids, their labels, alone ids, their labels): the same response tokens carry the labels in both."""
    ex = tokenize_example(tokenizer, row_messages(row))
    ids, labels = ex["input_ids"][:max_len], ex["labels"][:max_len]
    response = [t for t in labels[1:] if t != IGNORE_INDEX]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ids, labels, [start, *response], [IGNORE_INDEX, *response]


def ifd_scores(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, batch_size: int = 8,
               max_len: int = 512, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """{ifd, loss_cond, loss_alone, tokens} per row, in order; rows sorted by length into batches."""
    pairs = [ifd_pairs(tokenizer, r, max_len) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(pairs[i][0]))
    out: list[dict[str, Any]] = [{}] * len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        cond = mean_losses(model, [(pairs[i][0], pairs[i][1]) for i in idx], pad)
        alone = mean_losses(model, [(pairs[i][2], pairs[i][3]) for i in idx], pad)
        for i, (lc, n), (la, _) in zip(idx, cond, alone, strict=True):
            value = lc / la if n and la > 0 else None
            out[i] = {"ifd": None if value is None else round(value, 6), "loss_cond": round(lc, 6),
                      "loss_alone": round(la, 6), "tokens": n}
        if progress:
            progress(len(idx))
    return out


def load_student(cfg: TrainConfig) -> tuple[Any, Any]:
    """The [train] base model, unquantized, in eval mode, and its tokenizer."""
    path = resolve_model(cfg.model)
    model = load_base(path, quant_config=None, dtype=compute_dtype(cfg.compute_dtype),
                      attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code)
    return model.eval(), load_tokenizer(path, cfg.trust_remote_code)


def ifd_run(run_dir: str | Path, include: list[str] | str, train_cfg: TrainConfig, cfg: IfdConfig, *,
            log: Callable[[str], None] = print, student: tuple[Any, Any] | None = None,
            progress: Callable[[str, int | None], Any] | None = None) -> dict[str, int]:
    """Score every kept row of a run not yet in ifd.jsonl; returns {rows, scored, done}.
    progress: pipeline/progress.py's (a bar or plain lines with an ETA), or any of its protocol; None: silent."""
    run = RunDir(run_dir)
    rows = generated_rows(run, include)
    done = {t.id for t in run.read_stage(STAGE)}
    todo = [r for r in rows if r["id"] not in done]
    if todo:
        model, tokenizer = student or load_student(train_cfg)
        log(f"ifd: {len(todo)} rows to score with {train_cfg.model or 'the embedded SmolLM2-135M-Instruct'}")
        progress = progress or no_progress
        with JsonlWriter(run.stage_file(STAGE)) as out, progress("ifd: rows scored", len(todo)) as advance:
            for s in range(0, len(todo), cfg.batch_size * 8):  # written every few batches: an interruption loses little
                chunk = todo[s:s + cfg.batch_size * 8]
                for r, score in zip(chunk, ifd_scores(model, tokenizer, chunk, batch_size=cfg.batch_size,
                                                      max_len=cfg.max_len, progress=advance), strict=True):
                    out.write(Task(id=r["id"], instruction=r["instruction"], instances=[Instance(r["input"], r["output"])],
                                   origin=r["origin"], stage=STAGE, meta={"row_of": r["task_id"], "ifd": score}))
    return {"rows": len(rows), "scored": len(todo), "done": len(done) + len(todo)}
