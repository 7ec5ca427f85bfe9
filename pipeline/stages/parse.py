"""Pure parsers of teacher text. No I/O, no randomness: every one is tested on real replies.

Teachers answer in two styles. A completion model continues the prompt ("Provide a
story...\\n10. Make a..."), so the stage passes the text the prompt ended with as
`prefix`. A chat model starts fresh, often with a preamble ("Sure! Here are 8 tasks:")
and markdown, and sometimes a closing remark. Both must give the same items.
"""

from __future__ import annotations

import re

from ..records import Instance

NOINPUT = "<noinput>"
_ITEM = re.compile(r"^\s*(?:[-*]\s*)?(?:\*\*)?(?:#+\s*)?(?:task|instruction)?\s*#?(\d{1,3})\s*(?:[.:)\]]|\s-)\s*(?:\*\*)?\s*(.*)$",
                   re.IGNORECASE)
_LABEL = re.compile(r"^(?:task|instruction)\s*(?:\d+)?\s*:\s*", re.IGNORECASE)
_MARKDOWN = re.compile(r"\*\*|__|`")


def clean_instruction(text: str) -> str:
    """One line, no markdown emphasis or leading label, first letter upper-case."""
    text = _MARKDOWN.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _LABEL.sub("", text).strip()
    if len(text) > 1 and text[0] == text[-1] == '"':  # a whole quoted instruction; inner quotes stay
        text = text[1:-1].strip()
    return text[:1].upper() + text[1:] if text else text


def parse_numbered_list(reply: str, prefix: str = "", truncated: bool = False) -> list[str]:
    """Items of a numbered task list ("9. ...", "Task 9: ...", "**9.** ...", "9) ...").

    Lines that do not start an item continue the item above them, until a blank line;
    text before the first item (a chat preamble) and after the list (a sign-off) is
    dropped. When the reply was cut by the length limit the last item is dropped, since
    it is probably incomplete (as Self-Instruct did).
    """
    items: list[list[str]] = []
    open_item = False
    for line in (prefix + reply).split("\n"):
        m = _ITEM.match(line)
        if m and m.group(2).strip():
            items.append([m.group(2)])
            open_item = True
        elif not line.strip():
            open_item = False
        elif open_item:
            items[-1].append(line)
    if truncated and items:
        items.pop()
    out = []
    for parts in items:
        text = clean_instruction(" ".join(parts))
        if text:  # repeats are kept: the stage rejects them as duplicates, with a record
            out.append(text)
    return out


def parse_yes_no(reply: str) -> bool | None:
    """The first yes/no word of a classification judgement; None when there is none."""
    m = re.search(r"\b(yes|no)\b", reply, re.IGNORECASE)
    return None if m is None else m.group(1).lower() == "yes"


def _field(text: str) -> str:
    text = text.strip()
    return "" if text.lower() in (NOINPUT, "<no input>", "none", "(none)", "n/a") else text


def parse_input_first(reply: str, prefix: str = "", truncated: bool = False) -> list[Instance]:
    """Instances from "Example N / Input: ... / Output: ..." blocks (non-classification tasks)."""
    text = prefix + reply
    blocks = [b for b in re.split(r"(?im)^\s*\**example\s*\d+\s*\**\s*:?\s*$", text) if b.strip()]
    out = []
    for block in blocks:
        m = re.search(r"(?is)^(?:.*?input\s*:)?(.*?)\boutput\s*:(.*)$", block)
        if not m:
            continue
        out.append(Instance(input=_field(m.group(1)), output=_field(m.group(2))))
    if truncated and out:
        out.pop()
    return out


def parse_output_first(reply: str, prefix: str = "", truncated: bool = False) -> list[Instance]:
    """Instances from "Class label: X / Input: ..." pairs (classification tasks, output first)."""
    text = prefix + reply
    out = []
    for chunk in re.split(r"(?i)\bclass\s*label\s*:", text)[1:]:
        m = re.match(r"(?is)\s*(.*?)\s*\n\s*input\s*:(.*)$", chunk)
        if not m:
            continue
        label = m.group(1).strip().strip(".").strip()
        if label and "\n" not in label:
            out.append(Instance(input=_field(m.group(2)), output=label))
    if truncated and out:
        out.pop()
    return out


def parse_alpaca(reply: str, prefix: str = "", truncated: bool = False) -> list[tuple[str, Instance]]:
    """(instruction, instance) triples from Alpaca-style "N. Instruction: / N. Input: / N. Output:" blocks."""
    text = prefix + reply
    out = []
    blocks = re.split(r"\n?\s*###\s*\n?", text)
    for block in blocks:
        parts = re.split(r"(?im)^\s*\d+\s*\.\s*(instruction|input|output)\s*:", "\n" + block)
        fields: dict[str, str] = {}
        for name, value in zip(parts[1::2], parts[2::2], strict=False):
            fields.setdefault(name.lower(), value.strip())
        if "instruction" in fields and "output" in fields:
            out.append((clean_instruction(fields["instruction"]),
                        Instance(input=_field(fields.get("input", "")), output=fields["output"].strip())))
    if truncated and out:
        out.pop()
    return out


# Evol-Instruct replies. A chat model may open with "Sure! Here is ...:" and may echo the
# label our prompt ends with ("Rewritten instruction:"); both are dropped. Prompt words
# anywhere else ("#Rewritten Prompt#", "given prompt") stay: the evolve stage eliminates
# such copies (WizardLM's fourth rule), so the parser must not hide them.
_PREAMBLE = re.compile(r"^\s*(?:sure|certainly|of course|okay|ok|here)\b[^\n]*:[ \t]*\n", re.IGNORECASE)
_EVOL_LABEL = re.compile(r"^\s*(?:\*\*|#+\s*)?(?:rewritten\s+|new\s+)?instruction\s*(?:\*\*)?\s*:\s*(?:\*\*)?",
                         re.IGNORECASE)
_RESPONSE_LABEL = re.compile(r"^\s*(?:\*\*|#+\s*)?response\s*(?:\*\*)?\s*:\s*(?:\*\*)?", re.IGNORECASE)
_JUDGEMENT = re.compile(r"\b(not\s+equal|unequal|different|equal|same|identical)\b", re.IGNORECASE)


def _unquote(text: str) -> str:
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1].strip()
    return text


def parse_evolved_instruction(reply: str) -> str:
    """The instruction a rewriter replied with, its lines kept (it may carry a table or code)."""
    text = _PREAMBLE.sub("", reply, count=1)
    text = _EVOL_LABEL.sub("", text, count=1)
    return _unquote(text.strip())


def parse_answer(reply: str) -> str:
    """A reply to an evolved instruction, without an echoed "Response:" label."""
    return _RESPONSE_LABEL.sub("", reply, count=1).strip()


def parse_equal(reply: str) -> bool | None:
    """The judge's verdict: True for equal, False for not equal, None when it gave neither."""
    m = _JUDGEMENT.search(reply)
    if m is None:
        return None
    return m.group(1).lower() in ("equal", "same", "identical")


# Judge replies (seed2lora score). A server with structured output returns a JSON object;
# others write prose: "Rating: 4/5 - correct but terse", "I would give this a 3.", "**4**".
_RATING_LABELED = re.compile(r"\b(?:rating|score|grade)\b\s*(?:is|of|=|:)?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_RATING_OUT_OF = re.compile(r"(?<![\d.])([1-5](?:\.\d+)?)\s*(?:/|out of)\s*5\b", re.IGNORECASE)
_RATING_ALONE = re.compile(r"(?<![\d.])([1-5])(?![\d.]\d)\b")
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_REASON_LABEL = re.compile(r"\b(?:reason|because|explanation)\b\s*[:=-]?\s*(.+)", re.IGNORECASE)


def parse_rating(reply: str, low: int = 1, high: int = 5) -> tuple[int | None, str]:
    """(rating, one-line reason) from a judge's reply; (None, why) when it holds no usable rating.

    Tried in order: a JSON object with "rating" (or "score") and "reason" (code fences and a
    preamble around it are fine); a labelled number ("Rating: 4", "score of 3/5"); "N/5" or
    "N out of 5"; a reply that is a bare number; else the first lone digit in range when it
    is the only one (prose with two candidate numbers is ambiguous and rejected).
    A fractional rating is rounded; one outside low..high is rejected, not clipped.
    """
    import json

    text = reply.strip()
    if not text:
        return None, "empty reply"
    m = _JSON_OBJECT.search(text)
    if m:
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            value = next((obj[k] for k in ("rating", "score", "grade") if k in obj), None)
            reason = str(obj.get("reason") or obj.get("explanation") or "").strip()
            if isinstance(value, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*(?:/\s*5)?\s*", value):
                value = float(value.split("/")[0])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return _in_range(value, low, high, _one_line(reason))
            return None, f"JSON without a numeric rating: {m.group(0)[:60]!r}"
    reason = _reason_of(text)
    for pattern in (_RATING_LABELED, _RATING_OUT_OF):
        if found := pattern.search(text):
            return _in_range(float(found.group(1)), low, high, reason)
    if re.fullmatch(r"\**\s*\d+(?:\.\d+)?\s*\**\.?", text):
        return _in_range(float(text.strip("*. ")), low, high, "")
    lone = {d for d in _RATING_ALONE.findall(text)}
    if len(lone) == 1:
        return _in_range(float(lone.pop()), low, high, reason)
    if len(lone) > 1:
        return None, f"several candidate ratings {sorted(lone)} in {text[:60]!r}"
    return None, f"no rating in {text[:60]!r}"


def _in_range(value: float, low: int, high: int, reason: str) -> tuple[int | None, str]:
    rating = int(value + 0.5)  # round half up: 3.5 -> 4, never Python's banker's rounding
    if not low <= rating <= high:
        return None, f"rating {value:g} outside {low}-{high}"
    return rating, reason


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:200]


def _reason_of(text: str) -> str:
    """The reason a prose reply gives: after a "Reason:"/"because" label, else the first line without the rating."""
    if m := _REASON_LABEL.search(text):
        return _one_line(m.group(1))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rest = [ln for ln in lines if not _RATING_LABELED.search(ln)] or lines
    return _one_line(_MARKDOWN.sub("", rest[0]))
