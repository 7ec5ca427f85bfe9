"""The chat-forms measurement, small: a chat-only teacher replying in the usual chat-model forms
(benchmarks/chat_forms.py) through bootstrap, classify, instances and filter."""

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("chat_forms", ROOT / "benchmarks" / "chat_forms.py")
chat_forms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chat_forms)


def test_chat_forms_are_read_exactly_and_kept_without_chrome(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-PLANTED-SECRET-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    r = chat_forms.measure(replies=12, seed=3, workdir=tmp_path)
    assert r["task_lines_sent"] > 40 and r["pairs_sent"] > 60, r
    assert r["tasks_recovered"] >= 0.95, r["examples"]
    assert r["pairs_recovered"] >= 0.95, r["examples"]
    assert r["classify_right"] >= 0.95, r
    assert r["chrome"] == 0, r["examples"]["chrome"]
    assert r["task_records_misread"] == 0 and r["unparseable_replies"] == 0, r["examples"]


def test_the_chrome_detector_sees_chrome():
    assert chat_forms.chrome("Sure! Here are the examples:\n1. a") and chat_forms.chrome("b\n\nI hope this helps!")
    assert chat_forms.chrome("**Output:** 5") and chat_forms.chrome("```\nx = 1\n```")
    assert not chat_forms.chrome("1. Read one short guide.\n2. Try it once.")
