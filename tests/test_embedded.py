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


def test_one_cache_folder_one_name_and_the_old_name_read_with_a_note(monkeypatch, tmp_path, capsys):
    """The embedded model's copy read $SEED2LORA_CACHE and the evaluation sets $SEED2LORA_CACHE_DIR, for the same
    folder (~/.cache/seed2lora by default): setting the one the docs named moved half of it. One name now; the old
    one is read with a note saying to rename it, and the two naming different folders stop with both named."""
    import pytest

    from pipeline import evalsets
    from pipeline.errors import Seed2LoraError
    from pipeline.teachers.embedded import cache_root

    monkeypatch.delenv("SEED2LORA_CACHE", raising=False)
    monkeypatch.setenv("SEED2LORA_CACHE_DIR", str(tmp_path / "new"))
    assert cache_root() == evalsets.cache_dir() == tmp_path / "new"
    monkeypatch.delenv("SEED2LORA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == evalsets.cache_dir() == tmp_path / "xdg" / "seed2lora"
    monkeypatch.setattr("pipeline.usercache._noted", [])
    monkeypatch.setenv("SEED2LORA_CACHE", str(tmp_path / "old"))
    assert cache_root() == evalsets.cache_dir() == tmp_path / "old"
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("$SEED2LORA_CACHE is the old name of $SEED2LORA_CACHE_DIR") == 1  # once a process
    assert f"export SEED2LORA_CACHE_DIR={tmp_path / 'old'}" in err
    monkeypatch.setenv("SEED2LORA_CACHE_DIR", str(tmp_path / "new"))
    with pytest.raises(Seed2LoraError, match="both name seed2lora's cache folder"):
        cache_root()
