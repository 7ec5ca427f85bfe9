"""Second blind corpus (tests/fixtures/chat_replies_blind2.json), read as the stages read a reply: the
JSON reader first, then the text parser. Asserts 0.95 exact recovery for task lines and for instance
pairs, and no spurious item. See benchmarks/chat_blind2.py, which prints every miss."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "chat_blind2", Path(__file__).resolve().parents[1] / "benchmarks" / "chat_blind2.py")
chat_blind2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chat_blind2)

THRESHOLD = 0.95
DATA = json.loads(chat_blind2.FIXTURE.read_text(encoding="utf-8"))


def _pair(x):
    return (x["input"].strip(), x["output"].strip()) if isinstance(x, dict) else (x.input.strip(), x.output.strip())


def _measure(category: str, parse, key) -> tuple[dict, str]:
    """The benchmark's totals for one category, and its printed misses (the message of a failure)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        totals = chat_blind2.run_lists(category, DATA[category], parse, key)
    return totals, printed.getvalue()


TASKS = _measure("bootstrap_chat", chat_blind2.stage_tasks, lambda x: x.strip())
GEN = _measure("instances_gen", chat_blind2.stage_instances(False), _pair)
CLF = _measure("instances_clf", chat_blind2.stage_instances(True), _pair)


def test_task_lines_recovered():
    totals, misses = TASKS
    assert totals["matched"] / totals["expected"] >= THRESHOLD, misses


def test_instance_pairs_recovered():
    got = GEN[0]["matched"] + CLF[0]["matched"]
    want = GEN[0]["expected"] + CLF[0]["expected"]
    assert got / want >= THRESHOLD, GEN[1] + CLF[1]


def test_no_spurious_items_and_no_errors():
    for totals, misses in (TASKS, GEN, CLF):
        assert totals["spurious"] == 0 and totals["errors"] == 0, misses


def test_yes_no():
    ok = sum(chat_blind2.parse_yes_no(e["reply"]) == e["expected"] for e in DATA["classify"])
    assert ok / len(DATA["classify"]) >= THRESHOLD
