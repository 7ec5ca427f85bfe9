"""The embedded SmolLM2-135M-Instruct teacher, for real (CPU, a few seconds per batch)."""

import json

import pytest

from pipeline.config import load_config
from pipeline.runner import Session
from pipeline.teachers import GenParams

pytestmark = pytest.mark.slow


def test_embedded_teacher_generates_with_finish_reasons_and_usage(embedded_teacher):
    t = embedded_teacher
    assert t.name == "embedded" and t.api == "completions"
    out = t.generate(["1. Name a fruit.\n2. Name a colour.\n3.", "The capital of France is"],
                     GenParams(max_tokens=6, temperature=0.0), kind="probe")
    assert len(out) == 2 and all(c.ok and c.text for c in out)
    assert all(c.finish_reason in ("stop", "length") and 0 < c.completion_tokens <= 6 for c in out)
    again = t.generate(["1. Name a fruit.\n2. Name a colour.\n3.", "The capital of France is"],
                       GenParams(max_tokens=6, temperature=0.0), kind="probe")
    assert [c.text for c in again] == [c.text for c in out]  # greedy is deterministic
    assert t.usage.to_dict()["probe"]["calls"] == 4


def test_real_bootstrap_on_the_embedded_model(embedded_teacher, tmp_path):
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "e", "bootstrap.num_instructions": 3,
                             "bootstrap.max_tokens": 96,
                             "bootstrap.max_requests": 16})
    session = Session(cfg, teacher=embedded_teacher)
    message = session.bootstrap()
    tasks = [json.loads(x) for x in (tmp_path / "e" / "bootstrap.jsonl").read_text().splitlines()]
    seeds = {s.instruction for s in session.seeds}
    assert 1 <= len(tasks) <= 3, message
    for t in tasks:
        assert t["instruction"] not in seeds and t["origin"] == "machine" and t["teacher"] == "embedded"
        assert len(t["instruction"].split()) > 3 and t["most_similar_instructions"]
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["teacher"]["kind"] == "hf" and manifest["usage"]["bootstrap"]["completion_tokens"] > 0
