"""Second blind corpus of chat replies: how well the text parsers read replies they were never tuned on.

Reads tests/fixtures/chat_replies_blind2.json (written without reading pipeline/stages/parse.py or the other
fixtures) and prints, per category, exact recovery of the expected items, the spurious items (parsed but not
expected), whole-reply exact matches, and every miss.

    python3 benchmarks/chat_blind2.py [--quiet]

Each list category is measured twice: the text parser alone (the API under test), and as the stages read a
reply (bootstrap.py / instances.py first try the JSON reader parse_structured_*, then the text parser).

Matching is exact after stripping outer whitespace of each string; items are matched as a multiset, so order
does not count against a reply. Yes/No compares parse_yes_no's result with true/false/null.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.stages.parse import (  # noqa: E402
    parse_input_first,
    parse_numbered_list,
    parse_output_first,
    parse_structured_instances,
    parse_structured_tasks,
    parse_yes_no,
)

FIXTURE = ROOT / "tests" / "fixtures" / "chat_replies_blind2.json"


def excerpt(s: str, n: int = 90) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 3] + "..."


def compare(expected: list, got: list) -> tuple[int, list, list]:
    """(matched count, expected items missed, got items not expected), as multisets."""
    want, have = Counter(expected), Counter(got)
    matched = sum((want & have).values())
    return matched, list((want - have).elements()), list((have - want).elements())


def run_lists(name: str, entries: list, parse, key) -> dict:
    tot = dict(expected=0, matched=0, spurious=0, replies=len(entries), exact_replies=0, errors=0)
    misses = []
    for i, e in enumerate(entries):
        truncated = e.get("finish_reason") == "length"
        expected = [key(x) for x in e["expected"]]
        try:
            got = [key(x) for x in parse(e["reply"], truncated)]
        except Exception as exc:  # a crash counts as reading nothing
            got, tot["errors"] = [], tot["errors"] + 1
            misses.append((i, e, f"raised {type(exc).__name__}: {exc}", expected, []))
        m, missed, extra = compare(expected, got)
        tot["expected"] += len(expected)
        tot["matched"] += m
        tot["spurious"] += len(extra)
        if not missed and not extra:
            tot["exact_replies"] += 1
        else:
            misses.append((i, e, None, missed, extra))
    print(f"\n== {name}: {tot['matched']}/{tot['expected']} expected items recovered exactly"
          f" ({100 * tot['matched'] / max(tot['expected'], 1):.1f}%), {tot['spurious']} spurious, "
          f"{tot['exact_replies']}/{tot['replies']} replies read exactly, {tot['errors']} errors")
    for i, e, err, missed, extra in misses:
        print(f"  -- #{i} [{e.get('source_style', '?')}] finish={e.get('finish_reason')} reply: {excerpt(e['reply'])}")
        if err:
            print(f"     {err}")
        for x in missed:
            print(f"     MISSED   {excerpt(repr(x), 160)}")
        for x in extra:
            print(f"     SPURIOUS {excerpt(repr(x), 160)}")
        if e.get("note"):
            print(f"     note: {excerpt(e['note'], 160)}")
    return tot


def stage_tasks(reply: str, truncated: bool) -> list[str]:
    structured = parse_structured_tasks(reply)
    return structured if structured is not None else parse_numbered_list(reply, prefix="", truncated=truncated)


def stage_instances(labelled: bool):
    def read(reply: str, truncated: bool):
        structured = parse_structured_instances(reply, labelled)
        if structured is not None:
            return structured
        return (parse_output_first if labelled else parse_input_first)(reply, "", truncated)
    return read


def main() -> None:
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    results = {}
    print("######## text parsers alone")
    results["task lines (bootstrap)"] = run_lists(
        "bootstrap task lines", data["bootstrap_chat"],
        lambda r, t: parse_numbered_list(r, prefix="", truncated=t), lambda x: x.strip())

    def pair(x):
        if isinstance(x, dict):
            return (x["input"].strip(), x["output"].strip())
        return (x.input.strip(), x.output.strip())

    results["instance pairs (input-first)"] = run_lists(
        "input-first instance pairs", data["instances_gen"], lambda r, t: parse_input_first(r, "", t), pair)
    results["instance pairs (output-first)"] = run_lists(
        "output-first (classification) instance pairs", data["instances_clf"],
        lambda r, t: parse_output_first(r, "", t), pair)

    print("\n######## as the stages read a reply (JSON reader first, then the text parser)")
    results["task lines, stage path"] = run_lists(
        "bootstrap task lines (stage path)", data["bootstrap_chat"], stage_tasks, lambda x: x.strip())
    results["input-first, stage path"] = run_lists(
        "input-first instance pairs (stage path)", data["instances_gen"], stage_instances(False), pair)
    results["output-first, stage path"] = run_lists(
        "output-first instance pairs (stage path)", data["instances_clf"], stage_instances(True), pair)

    yn = data["classify"]
    ok, misses = 0, []
    for i, e in enumerate(yn):
        try:
            got = parse_yes_no(e["reply"])
        except Exception as exc:
            got = f"raised {type(exc).__name__}"
        if got == e["expected"]:
            ok += 1
        else:
            misses.append((i, e, got))
    print(f"\n== classify Yes/No: {ok}/{len(yn)} correct ({100 * ok / max(len(yn), 1):.1f}%)")
    for i, e, got in misses:
        print(f"  -- #{i} [{e.get('source_style', '?')}] reply: {excerpt(e['reply'])}")
        print(f"     expected {e['expected']!r}, got {got!r}")
    results["Yes/No"] = dict(expected=len(yn), matched=ok, spurious=0, replies=len(yn), exact_replies=ok)

    print("\n== summary")
    for k, v in results.items():
        print(f"  {k:34s} {v['matched']:3d}/{v['expected']:<3d} exact, {v['spurious']} spurious, "
              f"{v['exact_replies']}/{v['replies']} replies exact")


if __name__ == "__main__":
    main()
