"""Held-out chat replies (tests/fixtures/chat_replies_heldout.json), written blind to the parser.

Reports per category how many expected items the parsers recover exactly, and asserts the
overall rates for task lines and for instance pairs reach 0.95. See benchmarks/chat_heldout.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "chat_heldout", Path(__file__).resolve().parents[1] / "benchmarks" / "chat_heldout.py")
chat_heldout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chat_heldout)

THRESHOLD = 0.95
REPORT = chat_heldout.measure()


def _summary() -> str:
    lines = []
    for cat in ("bootstrap_chat", "instances_gen", "instances_clf"):
        r = REPORT[cat]
        lines.append(f"{cat}: {r['recovered']}/{r['expected']} exact "
                     f"({chat_heldout.rate(r['recovered'], r['expected']):.3f}), spurious {r['spurious']}")
        for f in r["failures"]:
            lines.append(f"  {f['id']} missed={f['missed']!r} spurious={f['spurious']!r}")
    k = REPORT["classify"]
    lines.append(f"classify: {k['correct']}/{k['replies']}")
    for f in k["failures"]:
        lines.append(f"  {f['id']} expected={f['expected']} parsed={f['parsed']} reply={f['reply'][:60]!r}")
    return "\n".join(lines)


def test_report(capsys):
    with capsys.disabled():
        print("\n" + _summary())


def test_corpus_size():
    assert REPORT["bootstrap_chat"]["replies"] >= 25
    assert REPORT["instances_gen"]["replies"] >= 15
    assert REPORT["instances_clf"]["replies"] >= 10
    assert REPORT["classify"]["replies"] >= 10


def test_task_lines_recovered():
    r = REPORT["bootstrap_chat"]
    assert chat_heldout.rate(r["recovered"], r["expected"]) >= THRESHOLD, _summary()


def test_instance_pairs_recovered():
    g, c = REPORT["instances_gen"], REPORT["instances_clf"]
    got, want = g["recovered"] + c["recovered"], g["expected"] + c["expected"]
    assert chat_heldout.rate(got, want) >= THRESHOLD, _summary()


def test_yes_no():
    k = REPORT["classify"]
    assert chat_heldout.rate(k["correct"], k["replies"]) >= THRESHOLD, _summary()


def test_no_spurious_items():
    """Refusals and clarifying questions parse to nothing, and no reply yields an item nobody wrote."""
    spurious = sum(REPORT[c]["spurious"] for c in ("bootstrap_chat", "instances_gen", "instances_clf"))
    assert spurious == 0, _summary()
