"""Decontamination: rows whose instruction + input overlap an evaluation set, found by n-grams or ROUGE-L.

Each row's instruction + input is compared with each eval item's instruction + input (one text per
instance). Two tests, either or both ([select.decontaminate] / [export.decontaminate]):

- ngram: they share a run of `ngram` words (GPT-3's test; words as ROUGE's tokenizer reads them: lower-case
  runs of [a-z0-9]). An eval text shorter than `ngram` words counts as matched when the row holds it whole,
  if it has at least `min_ngram` words; shorter eval texts never match (a stock phrase is not a leak).
- rouge: ROUGE-L F (pipeline.similarity's exact index) above `rouge_threshold`; it also catches a reworded copy.

`Contamination.check(text)` returns the first match as a dict (eval item id, method, the shared words or the
score, the eval text), or None; `drop_contaminated` splits fine-tuning rows into those left and rejected
records that carry the match (meta.contaminated_by) and the reason "contaminated: <how> of <eval id>".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DecontamConfig, ExportConfig
from .datasets_io import read_records
from .errors import InputError
from .evalsets import find_user_oriented, where_to_get
from .records import Instance, Task
from .rows import RunRows, run_rows
from .similarity import RougeLIndex
from .store import RunDir

_WORD = re.compile(r"[a-z0-9]+")  # rouge-score's tokenizer, so both methods read the same words


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def row_text(instruction: str, input: str) -> str:
    return f"{instruction}\n{input}" if input.strip() else instruction


@dataclass
class EvalText:
    id: str  # the eval task's id, with "#k" for its k-th instance past the first
    text: str  # instruction + input


def load_eval_texts(path: str | Path) -> list[EvalText]:
    """Instruction + input of every instance of an eval file: tasks {id, instruction, instances} or rows
    {instruction, input, output}; the error names file and line."""
    records, _ = read_records(Path(path))
    out: list[EvalText] = []
    for n, obj in records:
        if not isinstance(obj.get("instruction"), str):
            raise InputError(Path(path), n, "has no instruction text",
                             "give eval tasks as {instruction, instances: [{input, output}]} or Alpaca rows")
        base = str(obj.get("id", f"{Path(path).stem}-{n}"))
        instances = obj.get("instances") if isinstance(obj.get("instances"), list) else [obj]
        for k, inst in enumerate(instances or [{}]):
            inp = inst.get("input", "") if isinstance(inst, dict) else ""
            out.append(EvalText(base if k == 0 else f"{base}#{k}", row_text(obj["instruction"], str(inp or ""))))
    return out


@dataclass
class Contamination:
    """An eval set, indexed for both tests."""

    cfg: DecontamConfig
    source: str  # the eval file
    items: list[EvalText]
    grams: dict[tuple[str, ...], int] = field(default_factory=dict)  # n-gram -> the first eval item holding it
    short: list[tuple[str, int]] = field(default_factory=list)  # (" w1 w2 ... ", item) of eval texts under ngram words
    index: RougeLIndex | None = None

    def __post_init__(self) -> None:
        n = self.cfg.ngram
        if self.cfg.method in ("ngram", "both"):
            for i, it in enumerate(self.items):
                ws = words(it.text)
                if len(ws) >= n:
                    for j in range(len(ws) - n + 1):
                        self.grams.setdefault(tuple(ws[j:j + n]), i)
                elif len(ws) >= self.cfg.min_ngram:
                    self.short.append((f" {' '.join(ws)} ", i))
        if self.cfg.method in ("rouge", "both"):
            self.index = RougeLIndex()
            for it in self.items:
                self.index.add(it.text)

    def check(self, text: str) -> dict[str, Any] | None:
        """The first eval item `text` overlaps, as {eval_id, method, match or score, eval_text}; None if none."""
        ws = words(text)
        n = self.cfg.ngram
        if self.grams or self.short:
            for j in range(len(ws) - n + 1):
                hit = self.grams.get(tuple(ws[j:j + n]))
                if hit is not None:
                    return self._found(hit, "ngram", match=" ".join(ws[j:j + n]))
            padded = f" {' '.join(ws)} "
            for phrase, i in self.short:
                if phrase in padded:
                    return self._found(i, "ngram", match=phrase.strip())
        if self.index is not None and ws:
            (pos, score), = self.index.top_k(text, k=1)
            if score > self.cfg.rouge_threshold:
                return self._found(pos, "rouge", score=round(float(score), 4))
        return None

    def _found(self, i: int, method: str, **detail: Any) -> dict[str, Any]:
        return {"eval_id": self.items[i].id, "method": method, **detail, "eval_text": self.items[i].text,
                "against": self.source}

    def reason(self, hit: dict[str, Any]) -> str:
        """rejected.jsonl's reason: "contaminated: <how> of <eval id>"."""
        if hit["method"] == "rouge":
            how = f"ROUGE-L {hit['score']:.3f} > {self.cfg.rouge_threshold}"
        elif len(hit["match"].split()) >= self.cfg.ngram:
            how = f"{self.cfg.ngram}-gram {hit['match']!r}"
        else:
            how = f"whole eval text {hit['match']!r}"
        return f"contaminated: {how} of {hit['eval_id']}"


def contamination(cfg: DecontamConfig) -> tuple[Contamination | None, str]:
    """The eval set to check against, and a note for the stage's message: what was checked, or why nothing was.

    cfg.against names a file (an error if it is missing); empty = the user-oriented set when on this machine.
    """
    if cfg.method == "off":
        return None, "decontamination off"
    if cfg.against:
        path = Path(cfg.against)
        if not path.exists():
            raise InputError(path, None, "(decontaminate.against) does not exist",
                             "give the eval set's JSONL, or leave it empty for the user-oriented set")
    else:
        found = find_user_oriented()
        if found is None:
            return None, (f"not decontaminated: no eval set given and the user-oriented set is absent ({where_to_get()}; "
                          "or set decontaminate.against = FILE)")
        path = found
    items = load_eval_texts(path)
    if not items:
        raise InputError(path, None, "(decontaminate.against) holds no eval tasks",
                         "give a JSONL of tasks {instruction, instances} or rows {instruction, input, output}")
    c = Contamination(cfg, str(path), items)
    return c, f"decontaminated ({cfg.method}) against {len(c.items)} eval items of {path.name}"


def drop_contaminated(rows: list[dict[str, Any]], contam: Contamination | None,
                      stage: str) -> tuple[list[dict[str, Any]], list[Task]]:
    """(rows left, a rejected record per fine-tuning row whose instruction + input overlaps the eval set): the
    record is the row (id "<task id>-<k>", its one instance) with meta row_of and contaminated_by (the match)."""
    if contam is None:
        return rows, []
    clean, rejected = [], []
    for r in rows:
        hit = contam.check(row_text(r["instruction"], r["input"]))
        if hit is None:
            clean.append(r)
            continue
        record = Task(id=r["id"], instruction=r["instruction"], instances=[Instance(r["input"], r["output"])],
                      origin=r["origin"], meta={"row_of": r["task_id"], "contaminated_by": hit})
        rejected.append(record.rejected(contam.reason(hit), stage))
    return clean, rejected


def clean_run_rows(run: RunDir, cfg: ExportConfig) -> tuple[RunRows, list[dict[str, Any]], list[Task], str]:
    """The rows export writes from a run: run_rows less those that overlap the eval set (cfg.decontaminate).
    Returns (what run_rows read, the rows left, a rejected record per row dropped, the note on what was checked);
    export and `train RUN_DIR` both come through here, so training on a run directory never sees a row that
    exporting it would have dropped."""
    data = run_rows(run, cfg)
    contam, note = contamination(cfg.decontaminate)
    rows, contaminated = drop_contaminated(data.rows, contam, "export")
    return data, rows, contaminated, note
