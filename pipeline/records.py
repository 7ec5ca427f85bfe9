"""The one schema of every JSONL line seed2lora writes.

A `Task` is an instruction with its instances and its provenance. The same type is a
seed, a machine-generated instruction at any stage, an evolved instruction, or a
rejected record (then `reject_reason` is set). Field names for the Self-Instruct part
(`instruction`, `instances`, `is_classification`, `most_similar_instructions`,
`avg_similarity_score`) match the files the Self-Instruct code wrote, so its tools can
read ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

ORIGINS = ("seed", "machine", "evolved")


@dataclass
class Instance:
    input: str = ""
    output: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(input=str(d.get("input") or ""), output=str(d.get("output") or ""))


@dataclass
class Task:
    id: str
    instruction: str
    instances: list[Instance] = field(default_factory=list)
    is_classification: bool | None = None  # None until the classify stage has run
    origin: str = "machine"  # seed | machine | evolved
    parent_id: str | None = None  # the task it was evolved from (Evol-Instruct)
    round: int = 0  # bootstrap request number or evolution round that produced it
    stage: str = ""  # the last stage that wrote this record
    teacher: str | None = None  # teacher spec that produced the instruction, e.g. "openai:gpt-4o-mini"
    prompt: str | None = None  # prompt template file that produced it, e.g. "bootstrap.txt"
    most_similar_instructions: dict[str, float] = field(default_factory=dict)  # top-10, as Self-Instruct stored it
    avg_similarity_score: float | None = None  # mean ROUGE-L against the whole pool
    reject_reason: str | None = None  # set only on records in rejected.jsonl
    meta: dict[str, Any] = field(default_factory=dict)  # free-form provenance (operation, name, raw reply, ...)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["reject_reason"] is None:
            del d["reject_reason"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        kwargs["instances"] = [Instance.from_dict(i) for i in d.get("instances") or []]
        kwargs.setdefault("meta", {})
        kwargs["meta"] = {**extra, **(kwargs["meta"] or {})}
        return cls(**kwargs)

    def rejected(self, reason: str, stage: str) -> Task:
        """A copy of this record marked as rejected by `stage` for `reason`."""
        return dataclasses.replace(self, reject_reason=reason, stage=stage)


def task_id(prefix: str, text: str) -> str:
    """A stable id from content, so a resumed run names the same task the same way."""
    return f"{prefix}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"
