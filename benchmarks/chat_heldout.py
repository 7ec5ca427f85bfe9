"""Exact recovery of the held-out chat-reply corpus (tests/fixtures/chat_replies_heldout.json).

The corpus was written blind to pipeline/stages/parse.py; this measures the parsers against it.
`python3 benchmarks/chat_heldout.py` prints per-category rates and every miss.
Rates: recovered = expected items found exactly (multiset match) in the parse / expected items;
"spurious" counts parsed items no expected item matches; "ws" rates compare with all whitespace
runs collapsed to one space (separates formatting disagreements from real misses).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.stages.parse import parse_input_first, parse_numbered_list, parse_output_first, parse_yes_no  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "chat_replies_heldout.json"


def _ws(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def _key(item, norm: bool):
    if isinstance(item, dict):
        return (_ws(item["input"]), _ws(item["output"])) if norm else (item["input"], item["output"])
    return _ws(item) if norm else item


def _match(expected: list, got: list, norm: bool) -> tuple[int, list, list]:
    """(matched count, expected items missed, parsed items not matched) as multisets."""
    exp = Counter(_key(e, norm) for e in expected)
    gotc = Counter(_key(g, norm) for g in got)
    matched = sum((exp & gotc).values())
    missed = list((exp - gotc).elements())
    extra = list((gotc - exp).elements())
    return matched, missed, extra


def _parse(category: str, case: dict) -> list:
    truncated = case.get("finish_reason") == "length"
    if category == "bootstrap_chat":
        return parse_numbered_list(case["reply"], prefix="", truncated=truncated)
    fn = parse_input_first if category == "instances_gen" else parse_output_first
    return [{"input": i.input, "output": i.output} for i in fn(case["reply"], "", truncated)]


def measure(corpus: dict | None = None) -> dict:
    corpus = corpus or json.loads(CORPUS.read_text(encoding="utf-8"))
    report: dict = {}
    for cat in ("bootstrap_chat", "instances_gen", "instances_clf"):
        r = {"replies": len(corpus[cat]), "expected": 0, "recovered": 0, "recovered_ws": 0, "spurious": 0,
             "failures": []}
        for case in corpus[cat]:
            got = _parse(cat, case)
            m, missed, extra = _match(case["expected"], got, norm=False)
            m_ws, _, _ = _match(case["expected"], got, norm=True)
            r["expected"] += len(case["expected"])
            r["recovered"] += m
            r["recovered_ws"] += m_ws
            r["spurious"] += len(extra)
            if missed or extra:
                r["failures"].append({"id": case.get("id"), "style": case.get("style"), "missed": missed,
                                      "spurious": extra, "parsed": got})
        report[cat] = r
    k = {"replies": len(corpus["classify"]), "correct": 0, "failures": []}
    for case in corpus["classify"]:
        got = parse_yes_no(case["reply"])
        if got is case["expected"]:
            k["correct"] += 1
        else:
            k["failures"].append({"id": case.get("id"), "reply": case["reply"], "expected": case["expected"],
                                  "parsed": got})
    report["classify"] = k
    return report


def rate(n: int, d: int) -> float:
    return n / d if d else 1.0


def main() -> None:
    rep = measure()
    for cat in ("bootstrap_chat", "instances_gen", "instances_clf"):
        r = rep[cat]
        print(f"{cat}: {r['replies']} replies, recovered {r['recovered']}/{r['expected']} = "
              f"{rate(r['recovered'], r['expected']):.3f} exact, {rate(r['recovered_ws'], r['expected']):.3f} "
              f"whitespace-normalised; spurious items {r['spurious']}")
    k = rep["classify"]
    print(f"classify: {k['correct']}/{k['replies']} = {rate(k['correct'], k['replies']):.3f}")
    print()
    for cat in ("bootstrap_chat", "instances_gen", "instances_clf", "classify"):
        for f in rep[cat]["failures"]:
            print(f"--- {cat} {f['id']}: {f.get('style', '')}")
            for key in ("missed", "spurious", "reply", "expected", "parsed"):
                if key in f:
                    print(f"  {key}: {json.dumps(f[key], ensure_ascii=False)}")


if __name__ == "__main__":
    main()
