"""Training data: rows from any supported source -> templated text -> token ids with masked labels.

Sources: an export folder, a run directory (the rows `seed2lora export` would write:
filter.jsonl, evolve.jsonl and the seed tasks, see pipeline.rows), a datasets folder
(save_to_disk), or one file: Alpaca .json, .jsonl (chat `messages`, Alpaca fields, or
tasks with `instances`), .parquet. Every row becomes chat messages (records.row_messages);
a row that cannot is reported with its file when loaded.

Templating: the tokenizer's chat template when it has one, else Alpaca's prompt. The loss
is on response tokens only: prompt tokens get label -100. EOS stays in the labels even
when the pad token is EOS, because labels are built here, never derived from input_ids
by masking pad ids (the bug that makes a model never stop).

Packing (optional) concatenates examples into rows of up to max_seq_len tokens with
position_ids restarting at 0 for each example and no attention mask. transformers then
keeps attention inside each example: flash-attention-2 runs varlen kernels on the
sequence boundaries read from position_ids; SDPA and eager (CPU) get a block-diagonal
causal mask built from the same position_ids, which is correct but materialises an
L x L mask per row and rules out SDPA's flash kernel. transformers reads packing from
position_ids only without a KV cache, so training runs with use_cache=False.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExportConfig
from ..datasets_io import read_records
from ..decontam import clean_run_rows, contamination, row_text
from ..errors import InputError, Seed2LoraError, counted
from ..records import RowError, Task, row_messages, split_by_task, task_rows
from ..rows import SOURCES
from ..store import EXPORT_INFO, RunDir, read_export_info

IGNORE_INDEX = -100  # torch's cross_entropy skips this label
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


@dataclass
class Rows:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] | None  # None = the source has no eval split
    run_dir: Path | None = None  # where the data came from, for the default output folder and the summary
    source: str = ""
    contaminated: list[Task] = field(default_factory=list)  # a run directory's rows that overlap the eval set
    decontaminated: str = ""  # what they were checked against, or why they were not (a run directory only)


# ---------------------------------------------------------------- loading


def load_rows(path: str | Path, export: ExportConfig | None = None) -> Rows:
    """Rows of an export folder, run directory, datasets folder or single file; every row checked. A run directory
    is read as `export` would write it (the run's own [export] settings, where a step of the run trains; export's
    defaults for a folder given alone)."""
    rows = _load(Path(path), export or ExportConfig())
    for name, part in (("train", rows.train), ("eval", rows.eval or [])):
        check_rows(part, f"{rows.source} ({name})" if rows.eval is not None else rows.source)
    return rows


def _load(p: Path, export: ExportConfig) -> Rows:
    if not p.exists():
        raise InputError(p, None, "does not exist", "give an export folder, a run directory or a data file")
    if p.is_dir():
        if (p / EXPORT_INFO).is_file():
            return _load_export(p)
        if any(RunDir(p).stage_file(stage).is_file() for stage in SOURCES.values()):
            # The rows `seed2lora export` would write with these settings, unsplit: the same split comes later.
            # Decontaminated as export would: a row export would drop is not trained on.
            data, rows, contaminated, note = clean_run_rows(RunDir(p), export)
            return Rows(rows, None, p, ", ".join(map(str, data.sources)), contaminated, note)
        if (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file():
            return _load_hf(p)
        raise InputError(p, None, "is a folder with no export.json, filter.jsonl, evolve.jsonl or saved dataset",
                         "give an export folder (seed2lora export), a run directory or a data file")
    return Rows(read_rows_file(p), None, None, str(p))


def eval_overlap(rows: Rows) -> tuple[list[tuple[int, str]], str]:
    """(row number, reason) of each row whose prompt overlaps the eval set export checks against (the
    user-oriented set when on this machine), and what was checked. For a file or dataset of the user's own, which
    is trained on as it is: a run directory's rows are decontaminated as export's are (Rows.contaminated)."""
    contam, note = contamination(ExportConfig().decontaminate)
    if contam is None:
        return [], note
    hits = []
    for n, row in enumerate([*rows.train, *(rows.eval or [])], 1):
        if "instruction" in row:
            prompt = row_text(str(row["instruction"]), str(row.get("input") or ""))
        else:
            prompt = "\n".join(m["content"] for m in row_messages(row) if m["role"] == "user")
        if (hit := contam.check(prompt)) is not None:
            hits.append((n, contam.reason(hit)))
    return hits, note


def rows_fingerprint(rows: Rows) -> str:
    """sha256 of the rows themselves (both splits): a finished adapter or a checkpoint is reused only for the same data."""
    blob = json.dumps([rows.train, rows.eval], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_rows(rows: list[dict[str, Any]], source: str) -> None:
    """Every row must become a conversation ending in a response (records.row_messages); name the first that cannot."""
    for i, row in enumerate(rows):
        try:
            row_messages(row)
        except RowError as e:
            raise InputError(source, None, f"row {i + 1}: {e.problem}", e.fix) from None


def _load_export(p: Path) -> Rows:
    run_dir = RunDir.of_export(p).path
    # The formats this export wrote (export.json): a folder of another, left by an earlier export, holds old rows
    written = read_export_info(p).get("formats") or ["messages", "parquet", "alpaca", "hf"]
    for train, held in (("messages/train.jsonl", "messages/eval.jsonl"), ("parquet/train.parquet", "parquet/eval.parquet"),
                        ("alpaca/train.json", "alpaca/eval.json")):
        if train.split("/")[0] in written and (p / train).is_file():
            held_rows = read_rows_file(p / held) if (p / held).is_file() else None
            return Rows(read_rows_file(p / train), held_rows, run_dir, str(p / train))
    if "hf" in written and (p / "hf").is_dir():
        rows = _load_hf(p / "hf")
        return Rows(rows.train, rows.eval, run_dir, rows.source)
    raise InputError(p, None, "is an export folder without data files", "run `seed2lora export` again")


def _load_hf(p: Path) -> Rows:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(p))
    if not isinstance(ds, DatasetDict):
        return Rows(ds.to_list(), None, None, str(p))
    if "train" not in ds:
        raise InputError(p, None, f"has splits {list(ds)} but no 'train'", "save a DatasetDict with a train split")
    held = next((ds[s].to_list() for s in ("eval", "validation", "test") if s in ds), None)
    return Rows(ds["train"].to_list(), held, None, str(p))


def read_rows_file(p: Path) -> list[dict[str, Any]]:
    """Rows of one data file (datasets_io.read_records: .json, .jsonl, .csv, .tsv, .parquet); tasks expand per instance."""
    rows = [obj for _, obj in read_records(p)[0]]
    if rows and "instances" in rows[0] and "output" not in rows[0]:
        rows = task_rows(_tasks(rows))
    return rows


def _tasks(rows: list[dict[str, Any]]) -> list[Task]:
    return [Task.from_dict({"id": f"task_{i}", **r}) for i, r in enumerate(rows)]


def train_eval_rows(rows: Rows, eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """The source's own split, or a seeded split by task when it has none."""
    if rows.eval is not None:
        return rows.train, rows.eval
    return split_by_task(rows.train, eval_fraction, random.Random(seed))


# ---------------------------------------------------------------- templating


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The conversation as text pieces, each marked True when it is a response to learn."""
    if not has_chat_template(tokenizer):
        return _alpaca_segments(messages)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            # The template rewrites earlier turns (e.g. drops reasoning): learn the last response only.
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            if not full.startswith(prompt):
                raise Seed2LoraError("the chat template renders a prompt that is not a prefix of the conversation; "
                                     "cannot tell response tokens from prompt tokens")
            return [(prompt, False), (full[len(prompt):], True)]
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return pieces


def _alpaca_segments(messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    system = next((m["content"] for m in messages if m["role"] == "system"), ALPACA_PREAMBLE)
    pieces: list[tuple[str, bool]] = [(system + "\n\n", False)]
    for m in messages:
        if m["role"] == "user":
            pieces.append((f"### Instruction:\n{m['content']}\n\n### Response:\n", False))
        elif m["role"] == "assistant":
            pieces.append((m["content"], True))
            pieces.append(("\n\n", False))  # separates a following turn; EOS is appended to the response
    return pieces[:-1] if pieces[-1] == ("\n\n", False) else pieces


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text a model continues to answer `messages` (which end with a user turn), as in training."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(text for text, _ in _alpaca_segments(messages))


# ---------------------------------------------------------------- tokenizing and packing


def tokenize_example(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """input_ids and labels (-100 on prompt tokens); EOS ends every response."""
    chat = has_chat_template(tokenizer)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, learn) in enumerate(render_segments(tokenizer, messages)):
        # Chat templates write their own BOS; the Alpaca prompt gets the tokenizer's (if it adds one).
        piece = tokenizer(text, add_special_tokens=not chat and i == 0)["input_ids"]
        if learn and eos is not None and eos not in piece:
            piece = [*piece, eos]
        ids += piece
        labels += piece if learn else [IGNORE_INDEX] * len(piece)
    return {"input_ids": ids, "labels": labels}


def has_target(example: dict[str, list[int]]) -> bool:
    return any(t != IGNORE_INDEX for t in example["labels"][1:])  # labels[0] is never predicted


@dataclass
class Tokenized:
    examples: list[dict[str, list[int]]]
    stats: dict[str, Any] = field(default_factory=dict)


def cut_note(train: dict[str, int], held_out: dict[str, int], max_len: int) -> str:
    """The training line's note on the rows cut at max_len (tokenize_rows's stats), each split named: after "8 eval",
    an unnamed "(3 cut ...; 1 dropped ...)" read as eval rows where all four were train rows."""
    def rows(key: str) -> str:
        said = [(n, split) for n, split in ((train[key], "train"), (held_out[key], "eval")) if n]
        return " and ".join(counted(n, f"{split} row") for n, split in said)

    if not rows("truncated"):
        return ""
    both = train["truncated"] and held_out["truncated"]  # one split cut: its count says which rows "them" are
    dropped = rows("dropped") if both else str(train["dropped"] + held_out["dropped"])
    dropped = f", {dropped} of them dropped (no response token left)" if rows("dropped") else ""
    return f"; {rows('truncated')} cut at --max-seq-len {max_len} (their responses' ends are not learned){dropped}"


def tokenize_rows(tokenizer: Any, rows: list[dict[str, Any]], max_len: int) -> Tokenized:
    """Tokenize every row; cut at max_len tokens, drop rows whose response was cut away entirely."""
    examples, truncated, dropped = [], 0, 0
    for row in rows:
        ex = tokenize_example(tokenizer, row_messages(row))
        if len(ex["input_ids"]) > max_len:
            truncated += 1
            ex = {k: v[:max_len] for k, v in ex.items()}
        if not has_target(ex):
            dropped += 1
            continue
        examples.append(ex)
    lengths = [len(e["input_ids"]) for e in examples]
    stats = {"examples": len(examples), "tokens": sum(lengths),
             "label_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples),
             "mean_tokens": round(sum(lengths) / max(1, len(lengths)), 1), "max_tokens": max(lengths, default=0),
             "truncated": truncated, "dropped": dropped}
    return Tokenized(examples, stats)


def pack(examples: list[dict[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """Best-fit-decreasing packing into rows of at most max_len tokens; position_ids restart per example."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]["input_ids"]), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted: the tightest fit is found by bisect
    for i in order:
        n = len(examples[i]["input_ids"])
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            space, b = free.pop(j)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_len - n, len(bins) - 1))
    rows = []
    for members in bins:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            ex = examples[i]
            row["input_ids"] += ex["input_ids"]
            row["labels"] += [IGNORE_INDEX, *ex["labels"][1:]]  # never predict one example from the one before
            row["position_ids"] += list(range(len(ex["input_ids"])))
        rows.append(row)
    return rows


@dataclass
class Collator:
    """Pads a batch to its longest row. Plain rows get an attention mask; packed rows get position_ids."""

    pad_token_id: int
    pad_to_multiple_of: int = 8  # tensor cores want multiples of 8; costs < 8 pad tokens per row

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        m = self.pad_to_multiple_of
        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // m) * m if m > 1 else longest
        batch = len(features)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        packed = "position_ids" in features[0]
        extra = torch.zeros((batch, width), dtype=torch.long)
        for r, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[r, :n] = torch.tensor(f["input_ids"])
            labels[r, :n] = torch.tensor(f["labels"])
            if packed:  # the padded tail counts from 0: a sequence of its own that attends only to itself
                extra[r, :n] = torch.tensor(f["position_ids"])
                extra[r, n:] = torch.arange(width - n)
            else:
                extra[r, :n] = 1
        out = {"input_ids": input_ids, "labels": labels, "position_ids" if packed else "attention_mask": extra}
        out["num_tokens"] = torch.tensor(sum(len(f["input_ids"]) for f in features))
        return out
