"""Pure parsers of teacher text. No I/O, no randomness: every one is tested on real replies.

Teachers answer in two styles. A completion model continues the prompt ("Provide a
story...\\n10. Make a..."), so the stage passes the text the prompt ended with as
`prefix`. A chat model starts fresh, often with a preamble ("Sure! Here are 8 tasks:")
and markdown, and sometimes a closing remark. Both must give the same items.
"""

from __future__ import annotations

import re

from ..records import Instance
from .schemas import json_items

NOINPUT = "<noinput>"
_ITEM = re.compile(r"^(?P<indent>[ \t]*)(?:[-*•+][ \t]+)?(?P<heading>#{1,6}[ \t]*)?(?P<bold>\*\*|__)?[ \t]*"
                   r"(?P<task>(?:task|instruction)[ \t]*#?[ \t]*)?(?P<num>\d{1,3})[ \t]*(?:\*\*|__)?[ \t]*"
                   r"(?P<sep>[.:)\]](?!\d)|[-–—][ \t])?[ \t]*(?(bold)(?:\*\*|__)?)[ \t]*(?P<text>.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^(?P<indent>[ \t]*)[-*•+][ \t]+(?P<text>\S.*)$")
# "9. **Recipe ideas**: Suggest three ..." -- a bold title is a label, not part of the instruction.
_TITLE = re.compile(r"^(?:\*\*|__)[^*_\n]{1,80}?(?:(?:\*\*|__)[ \t]*[:\-–—]|:[ \t]*(?:\*\*|__))[ \t]*(?=\S)")
# "Travel Planning: Plan a five-day road trip" or "[Travel Planning] Plan ...": a category before the
# task, one to four capitalised words and a colon, or one to four words in brackets. "Turn this list
# into a paragraph: eggs" is a task, so a category is only dropped when most items of the reply open
# with one (a model labelling every task), and only when a capitalised sentence follows it.
_CATEGORY = re.compile(r"^(?:(?:[A-Z][\w'’-]*|&)(?:[ \t]+(?:[A-Z][\w'’-]*|&)){0,3}[ \t]*:"
                       r"|\[[ \t]*[\w'’&/-]+(?:[ \t]+[\w'’&/-]+){0,3}[ \t]*\][ \t]*[:\-–—]?)[ \t]+(?=[A-Z\"“])")
_LABEL = re.compile(r"^(?:task|instruction)\s*(?:\d+)?\s*:\s*", re.IGNORECASE)
# "9. What is the capital of Australia?\nAnswer: Canberra": a model that answered (or illustrated) its
# own task. A capitalised answer label opening a line under an item ends the instruction, as "Input:"
# and "Output:" do; "9. Answer the riddle." (the item's own line) and a wrapped line that goes on
# in lower case ("...and give its\nanswer: ...") stay the task's.
_ANSWER = re.compile(r"^[ \t]*(?:[-*•][ \t]+)?(?:\*\*|__|\*)?[ \t]*(?:Answer|Solution|Response|Example"
                     r"|(?:Sample|Example|Expected)[ \t]+(?:[Aa]nswer|[Oo]utput|[Ss]olution|[Rr]esponse))"
                     r"[ \t]*(?:\*\*|__|\*)?[ \t]*:")
_MARKDOWN = re.compile(r"\*\*|__|`")
_RULE = re.compile(r"^[ \t]*(?:-[ \t]*){3,}$|^[ \t]*(?:\*[ \t]*){3,}$|^[ \t]*(?:_[ \t]*){3,}$")
_FENCE = re.compile(r"^[ \t]*(?:```|~~~)")
# Closing remarks of chat models ("Let me know if you need more examples!"): a line that opens
# like one and speaks of the reply itself (its examples, more, help), or is a bare "Enjoy!".
# Only text after the last item or example is ever cut: for examples, a paragraph set off by a
# blank line (an output may end "...\nLet me know if anything is missing."); for task lists,
# whose tasks are one line each, also a capitalised line right below the last task.
_SIGN_OFF = re.compile(
    r"^\W*(?:let me know|i hope|hope (?:this|these|that|it|you)|feel free|if you(?:'d| would)? (?:like|need|want|have)"
    r"|would you like|do you (?:want|need)|shall i|happy to|i can (?:also )?(?:provide|generate|create|write|make|give|add)"
    r"|(?:these|the above|all of these|the) (?:examples?|tasks|instructions|pairs)\b|each (?:example|task|of these)"
    r"|this (?:list|set)\b|enjoy\b|good luck\b|you can (?:adjust|modify|use these))", re.IGNORECASE)
# "Note: I included one example for each label.": a note closes the reply only when it speaks of
# the examples; "Note: use a clean pan." may end a recipe the output is.
_NOTE = re.compile(r"^\W*note\b.*\b(?:examples?|pairs)\b", re.IGNORECASE)
_ABOUT_REPLY = re.compile(r"\b(?:examples?|tasks?|instructions?|list|pairs?|more|other|further|help\w*|assist\w*|need"
                          r"|questions?|use|useful|adjust\w*|modif\w*|format|topics?|different)\b", re.IGNORECASE)
# A chat preamble line before the first example ("Sure! Here are 5 examples:", "Task: <the task>").
_INTRO = re.compile(r"^\W*(?:sure|certainly|of course|okay|ok|absolutely|great|here(?:'s| is| are)|below are|task\s*:)"
                    r"|:\s*$", re.IGNORECASE)
# "Input: No input needed." and its kin: the task takes no input.
_NO_INPUT = re.compile(r"^\W*(?:<\s*no\s*input\s*>|none|nothing|n/?a|empty|not applicable|-+"
                       r"|\(?(?:no|none|not) (?:input|needed|required|applicable)[^)]*\)?)\W*$", re.IGNORECASE)


def clean_instruction(text: str) -> str:
    """One line, no markdown emphasis, title or leading label, first letter upper-case."""
    text = _TITLE.sub("", text.strip())
    if "*" in text or "_" in text or "`" in text:  # most lines hold none of _MARKDOWN's characters
        text = _MARKDOWN.sub("", text)
    # re.sub(r"\s+", " ", text).strip(), the same text (\s and str.split's white space are one set of characters,
    # tests/test_parse.py): the regex cost a bootstrap line 2.5 us of its 3.7 here, split and join 0.4 (issue 20)
    text = " ".join(text.split())
    text = _LABEL.sub("", text).strip()
    if len(text) > 1 and text[0] == text[-1] == '"':  # a whole quoted instruction; inner quotes stay
        text = text[1:-1].strip()
    return text[:1].upper() + text[1:] if text else text


def _indent(line: str) -> int:
    if not line[:1].isspace():  # most lines: nothing to strip, and expandtabs over the whole line twice for 0
        return 0
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())


def parse_numbered_list(reply: str, prefix: str = "", truncated: bool = False) -> list[str]:
    """Items of a task list: "9. ...", "Task 9: ...", "**9.** ...", "9) ...", "- ...", "### Task 9".

    The first item line sets the list's style (numbered or bulleted) and indentation;
    bullets under a numbered item, and items indented deeper, belong to the item above.
    Numbers are not checked, so a list that restarts at 1 is read the same. A line that
    does not start an item continues the one above until a blank line; a heading or bold
    line with no task ("### Task 9", "**Task 9:**") takes the lines below it, and a
    heading or bold title ("### 9. Recipe ideas", "9. **Recipe ideas**") is replaced by them.
    When most items open with a short category ("9. Travel Planning: Plan a trip..."), it is
    dropped (see _CATEGORY). Text before the first item (a preamble), a closing remark, a
    "---" rule, and an "Input:"/"Output:" line end the item and are dropped; but a task
    sentence right above a list that starts past 1 is its unnumbered first task (see
    _continues_number). A labelled answer below an item ("Answer: Canberra") ends it too (see
    _ANSWER). When the reply was cut by the length limit the last item is
    dropped, since it is probably incomplete (as Self-Instruct did).
    """
    items: list[dict] = []
    style = base = None
    open_item = None
    before: list[str] = []  # the lines above the first item
    for line in _rewrite_tables(prefix + reply, _task_row, _opens_item).split("\n"):
        if _RULE.match(line):  # before bullets: "* * *" is a rule, not an item
            open_item = None
            continue
        m = _ITEM.match(line)
        if m and not (m.group("sep") or m.group("task") or (m.group("heading") or m.group("bold")) and
                      not m.group("text").strip()):
            m = None
        bullet = _BULLET.match(line) if m is None else None
        starts = None
        if m is not None and (style in (None, "numbered") or _indent(line) <= base):
            starts = ("numbered", m.group("text"), bool(m.group("heading")) or ("**" in line or "__" in line)
                      and (_whole_bold(line) or _whole_bold(m.group("text"))))  # whole bold holds one of them
        elif bullet is not None and style in (None, "bullet"):
            starts = ("bullet", bullet.group("text"), False)
        if starts is not None and base is not None and _indent(line) >= base + 2 and open_item is not None:
            starts = None  # a nested list inside the item above
        if starts is not None and style is None and m is not None and _continues_number(before, m.group("num")):
            items.append({"head": before[-1].strip(), "body": [], "titled": False})
        if starts is not None:
            style = style or starts[0]
            base = _indent(line) if base is None else base
            open_item = {"head": starts[1].strip(), "body": [], "titled": starts[2]}
            items.append(open_item)
        elif style is None:
            before.append(line)
        elif not line.strip():
            if open_item is not None and (open_item["head"] or open_item["body"]):
                open_item = None
        elif _is_field(line) or _ANSWER.match(line) or line.strip()[:1].isupper() and _is_sign_off([line]):
            open_item = None
        elif open_item is not None:
            open_item["body"].append(line.strip())
    if truncated and items:
        items.pop()
    out = []
    for item in items:
        if not item["body"]:  # most items: one line, stripped (the join below gives it alone)
            text = clean_instruction(item["head"])
        else:
            if item["titled"] and item["head"]:  # "### 9. Recipe ideas" over its task
                parts = item["body"]
            else:
                parts = [item["head"], *item["body"]]
            text = clean_instruction(" ".join(p for p in parts if p))
        if text:  # repeats are kept: the stage rejects them as duplicates, with a record
            out.append(text)
    if sum(bool(_CATEGORY.match(text)) for text in out) * 2 > len(out):
        out = [_CATEGORY.sub("", text) for text in out]
    return out


# A preamble opens like one ("Here you go.", "I came up with these."), ends with a colon, or speaks
# of the tasks it introduces; a task opens with a verb or a question word.
_LIST_PREAMBLE = re.compile(r"^\W*(?:here|below|these|this is|the following|i|i'm|i've|i'll|we|happy|glad|no problem"
                            r"|got it|alright|continuing)\b|\b(?:tasks|instructions)\b|:\s*$", re.IGNORECASE)


def _continues_number(before: list[str], num: str) -> bool:
    """Whether the one line above a list that starts past 1 is its first task, unnumbered: a chat
    model continuing the prompt's "9." writes "Write a horoscope for Leo.\n10. Explain ...".
    The line must sit right above the first item and read as a task sentence, not a preamble."""
    lines = [ln.strip() for ln in before if ln.strip()]
    return (int(num) > 1 and len(lines) == 1 and bool(before[-1].strip()) and lines[0][:1].isupper()
            and re.search(r"[.?][\"”')]*$", lines[0]) is not None  # a sentence; "Here you go!" is not a task
            and not _INTRO.search(lines[0]) and not _LIST_PREAMBLE.search(lines[0]) and not _is_field(lines[0]))


def _whole_bold(line: str) -> bool:
    s = line.strip()
    return len(s) > 4 and s[:2] in ("**", "__") and s.rstrip(":")[-2:] in ("**", "__")


# Markdown tables: "| # | Task |" over "|---|---|" over "| 9 | Write a bio. |". A table is read by its header:
# a column of numbers is numbering, a column headed "Task"/"Instruction" holds tasks, columns headed with
# field names ("Input", "Output", "Class label") hold examples; any other table is left as text.
_TABLE_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$")
_TASK_COLUMN = re.compile(r"(?:new |the )?(?:task|instruction|prompt)s?(?: (?:description|text))?")


def _cells(line: str) -> list[str]:
    """A table row's cells, markdown emphasis kept; "\\|" is a pipe inside a cell."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _rewrite_tables(text: str, row_lines, opens) -> str:
    """`text` with each markdown table outside a code fence that `row_lines` can read rewritten: the header and
    rule as blank lines, each row as the lines `row_lines(header, numbers, row, k)` gives (None leaves the
    table as text). Only tables above the first line that `opens` an item or field are read: one below
    it is part of a task or an output ("Output:\n| Input | Output |" may be a truth table)."""
    if "|" not in text:  # no table: most replies, each of whose lines the loop below would match twice for nothing
        return text
    lines = text.split("\n")
    out: list[str] = []
    i, in_fence, opened = 0, False, False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        opened = opened or (not in_fence and opens(line))
        is_table = (not in_fence and not opened and line.strip().startswith("|") and i + 1 < len(lines)
                    and "|" in lines[i + 1] and _TABLE_RULE.match(lines[i + 1]))
        if not is_table:
            out.append(line)
            i += 1
            continue
        header = [_MARKDOWN.sub("", c).strip() for c in _cells(line)]
        end = i + 2
        while end < len(lines) and lines[end].strip().startswith("|"):
            end += 1
        rows = [_cells(ln) for ln in lines[i + 2:end]]
        numbers = [all(re.fullmatch(r"#?\d{1,3}\.?", r[c] if c < len(r) else "") for r in rows)
                   for c in range(len(header))]
        read = [row_lines(header, numbers, row, k) for k, row in enumerate(rows)]
        if not rows or any(r is None for r in read):
            out.extend(lines[i:end])
        else:
            out.extend(["", ""] + [ln for r in read for ln in r])
        i = end
    return "\n".join(out)


def _opens_item(line: str) -> bool:
    """Whether a line opens an item of a task list ("9. ...", "- ...", "Task 9: ...")."""
    m = _ITEM.match(line)
    return bool(m and (m.group("sep") or m.group("task"))) or bool(_BULLET.match(line))


def _task_row(header: list[str], numbers: list[bool], row: list[str], k: int) -> list[str] | None:
    """A task table's row as a numbered item ("9. Write a bio."); None unless one column is headed as tasks."""
    columns = [c for c, name in enumerate(header) if _TASK_COLUMN.fullmatch(name.lower())]
    if len(columns) != 1:
        return None
    number = next((row[c].strip("#.") for c, n in enumerate(numbers) if n and c < len(row)), str(k + 1))
    return [f"{number}. {row[columns[0]]}" if columns[0] < len(row) else f"{number}."]


def _example_rows(names: dict[str, str]):
    """Rows of an examples table as "Example N" and one "Name: cell" line a field; a table is read only when
    two or more of its columns are headed by distinct fields of `names`, the others being numbering."""
    def row_lines(header: list[str], numbers: list[bool], row: list[str], k: int) -> list[str] | None:
        fields = {c: _field_name(f"{name}:", names) for c, name in enumerate(header)}
        named = [f for f in fields.values() if f and f != "skip"]
        if len(named) < 2 or len(set(named)) != len(named):
            return None
        if any(not f and not numbers[c] and header[c].lower() not in ("", "#", "example", "no.", "no")
               for c, f in fields.items()):
            return None  # a column nobody can read ("Notes"): the table may not be examples at all
        return [f"Example {k + 1}"] + [f"{header[c]}: {row[c] if c < len(row) else ''}" for c, f in fields.items()
                                       if f and f != "skip"]
    return row_lines


# "This is not a classification task": the question (is it classification?) answered by negating it.
# Only a negation of classification itself counts: "It is not open-ended" negates the other side.
_NOT_CLASSIFICATION = re.compile(r"(?:(?:^\W*|\b(?:is|are|does)\s+)not|\b(?:isn|aren|doesn)['’]t)\s+"
                                 r"(?:[\w-]+\s+){0,3}?classif", re.IGNORECASE)
# "The given task is a classification task, which ...": a chat model's Yes without the word (SmolLM2 served by
# llama.cpp wrote such replies, each asked again: 23-33 extra calls per 20 tasks). Read only in a sentence with no hedge.
_IS_CLASSIFICATION = re.compile(r"\b(?:is|are)\s+(?:an?\s+)?(?:[\w-]+\s+){0,2}?classification\s+(?:task|problem)",
                                re.IGNORECASE)
_HEDGE = re.compile(r"\b(?:not|sure|unclear|whether|if|may|might|could|perhaps|possibly|maybe)\b|n['’]t\b",
                    re.IGNORECASE)


def parse_yes_no(reply: str) -> bool | None:
    """The first yes/no word of a classification judgement; None when there is none.

    "Yes/No" and "yes or no" name the choice, not the answer, so they are skipped. A reply
    with no yes/no word that negates ("This is not a classification task") is a No, and one whose
    first sentence says it is one, with no hedge ("The given task is a classification task"), a
    Yes; the first yes/no word still wins over either ("Yes, it is not open-ended").
    """
    text = re.sub(r"\byes\s*(?:/|or)\s*no\b", " ", reply, flags=re.IGNORECASE)
    m = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
    if m is None:
        if _NOT_CLASSIFICATION.search(text):
            return False
        answer = re.sub(r"^\s*\d{1,3}[.)]\s+", "", text.strip())  # "1. The given task is ..."
        first = re.split(r"(?<=[.!?])\s+|\n", answer, maxsplit=1)[0]  # the answer's own sentence
        return True if _IS_CLASSIFICATION.search(first) and not _HEDGE.search(first) else None
    return m.group(1).lower() == "yes"


# A field label at the start of a line: "Input:", "**Input:**", "**Input**:", "- Input:", "#### Input".
# "Q:"/"A:" (capitals only) and "Question:"/"Answer:" are read only where a parser names them (_QA).
_FIELD = re.compile(r"^[ \t]*(?P<list>[-*•][ \t]+|\d{1,3}[.)][ \t]+)?(?:(?P<h>#{1,6})[ \t]*)?(?:\*\*|__|\*)?[ \t]*"
                    r"(?P<name>input|output|class[ \t]*label|label|class|explanation|reason(?:ing)?"
                    r"|question|answer|(?-i:Q|A))"
                    r"[ \t]*(?:\*\*|__|\*)?[ \t]*(?(h):?|:)[ \t]*(?:\*\*|__|\*)?[ \t]*(?P<rest>.*)$", re.IGNORECASE)
# "**Label:** Positive — *Input:* "...": another field on the same line, after a dash, bar or semicolon.
_NEXT_FIELD = re.compile(r"[ \t]+(?:[-–—|;]|--)[ \t]+(?=(?:\*\*|__|\*)?[ \t]*(?:input|output|class[ \t]*label|label)"
                         r"[ \t]*(?:\*\*|__|\*)?[ \t]*:)", re.IGNORECASE)
_EXAMPLE = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*example[ \t]*#?[ \t]*\d+[ \t]*(?:\*\*|__)?"
                      r"[ \t]*[:.)\-–—]?[ \t]*(?:\*\*|__)?[ \t]*(?P<rest>.*)$", re.IGNORECASE)
_QA_NAMES = ("q", "a", "question", "answer")
_TASK_LINE = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*task[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE)


def _events(text: str, names: dict[str, str]) -> list[tuple[str, str, str]]:
    """The reply as ("example"|"field:NAME"|"line"|"task", text, its line) events; fenced code is only
    ever "line". A "Task:" line counts only as a paragraph's first line (an echo of the task, or the
    model going on to another); inside an output ("Task: buy milk") it is text."""
    events: list[tuple[str, str, str]] = []
    in_fence = False
    after_blank = True
    for raw in text.split("\n"):
        line = raw
        follows_blank, after_blank = after_blank, not line.strip()
        if in_fence:
            events.append(("line", line, raw))
            in_fence = not _FENCE.match(line)
            continue
        if _FENCE.match(line):
            in_fence = True
            events.append(("line", line, raw))
            continue
        if m := _EXAMPLE.match(line):
            events.append(("example", "", raw))
            line = m.group("rest")
            if not line.strip():
                continue
            if not (_is_field(line) or _field_name(line, names)):  # "### Example 1: Celsius to Fahrenheit": a title
                continue
        if name := _field_name(line, names):
            rest = _FIELD.match(line).group("rest")
            while (nxt := _NEXT_FIELD.search(rest)) and (f := _FIELD.match(rest[nxt.end():])) and (
                    other := names.get(re.sub(r"\s+", " ", f.group("name").lower()))):
                events.append((f"field:{name}", rest[:nxt.start()], raw))
                name, rest = other, f.group("rest")
            events.append((f"field:{name}", rest, raw))
        elif follows_blank and _TASK_LINE.match(line):  # a new paragraph: not a to-do line of an output
            events.append(("task", line, raw))
        else:
            events.append(("line", line, raw))
    return events


def _field_name(line: str, names: dict[str, str]) -> str | None:
    """The field a line opens, as `names` calls it; None when it opens none of them."""
    m = _FIELD.match(line)
    return names.get(re.sub(r"\s+", " ", m.group("name").lower())) if m else None


def _is_field(line: str) -> bool:
    """Whether a line opens a field of an example (not a Q:/A: one), which ends a task of a list."""
    m = _FIELD.match(line)
    return m is not None and m.group("name").lower() not in _QA_NAMES


def _listed(line: str) -> bool:
    """Whether a line is a list item ("- ...", "* ...", "2. ...")."""
    return re.match(r"^[ \t]*(?:[-*•+]|\d{1,3}[.)])[ \t]+\S", line) is not None


def _field_in_text(block: dict[str, list[str]], name: str, line: str, above: str, listed_fields: bool) -> bool:
    """Whether a field line is text of the field above: "Output: It talks to the world:\n- Input: data in\n
    - Output: data out" is one output with two bullets, not a second example. Only a list item that
    repeats a field the example already has, in an example of two fields or more whose own labels are
    not list items, right under a line that opens a list (ends with ":") or is an item of it."""
    fields = [k for k in block if k not in ("pre", "skip")]
    return (len(fields) >= 2 and name in block and not listed_fields and _listed(line)
            and bool(above.strip()) and (above.rstrip().endswith(":") or _listed(above)))


def _field_text(lines: list[str], last: bool = False) -> str:
    """A field's text: trailing rules and, for the reply's last field, closing remarks dropped;
    a code fence around the whole field, and bold around a one-line field, removed."""
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    while paragraphs and (not paragraphs[-1] or all(_RULE.match(ln) for ln in paragraphs[-1])
                          or (last and len(paragraphs) > 1 and _is_sign_off(paragraphs[-1]))):
        paragraphs.pop()
    text = "\n\n".join("\n".join(p) for p in paragraphs).strip()
    while text.endswith(("\n---", "\n***", "\n___")):
        text = text[:-4].rstrip()
    fence = re.fullmatch(r"(```|~~~)[\w+.-]*[ \t]*\n(.*?)\n[ \t]*\1", text, re.DOTALL)
    if fence and "```" not in fence.group(2) and "~~~" not in fence.group(2):  # the fence wraps the whole field
        return fence.group(2).strip("\n")
    bold = re.fullmatch(r"(\*\*|__)([^*_\n]+)\1", text)
    text = bold.group(2).strip() if bold else text
    # "Input: "Hey, send me that file."": quotes around the whole field are not part of it; a field
    # that holds a quote elsewhere ("Hi," she said. "Bye.") keeps all of its quotes.
    quoted = re.fullmatch(r'"([^"]*)"|“([^“”]*)”', text)
    return next(g for g in quoted.groups() if g is not None).strip() if quoted else text


def _is_sign_off(paragraph: list[str]) -> bool:
    """A short paragraph that reads as a closing remark (see _SIGN_OFF)."""
    text = " ".join(ln.strip() for ln in paragraph)
    words = len(text.split())
    return len(paragraph) <= 3 and words <= 60 and (bool(_NOTE.match(text)) or bool(_SIGN_OFF.match(text))
                                                    and (words <= 3 or bool(_ABOUT_REPLY.search(text))))


def _field(text: str) -> str:
    """An input as written, "" for a placeholder that means no input ("<noinput>", "None", "No input needed.")."""
    text = text.strip()
    return "" if _NO_INPUT.match(text) else text


def _examples(reply: str, names: dict[str, str], leader: str | None) -> list[dict[str, list[str]]]:
    """Blocks of fields: a new block at an "Example N" heading, at the `leader` field (the one
    each example starts with; None: whichever comes first in the reply), or when a field the
    block already has comes again.

    Lines before the first field are kept under "pre" (a completion continues the prompt's
    "Input:" without repeating it); a "Task:" line after the first field ends the reply
    (the model went on to another task). A bulleted "- Input:" inside an output may be the
    output's own text (see _field_in_text).
    """
    blocks: list[dict[str, list[str]]] = [{}]
    current = "pre"
    above = ""  # the line above, as written
    listed_fields = False  # whether the example's first field label is a list item ("- **Input:**")
    for kind, text, line in _events(reply, names):
        has_fields = any(k not in ("pre", "skip") for k in blocks[-1])
        name = kind[6:] if kind.startswith("field:") else ""
        if name and current != "pre" and _field_in_text(blocks[-1], name, line, above, listed_fields):
            kind, text = "line", line
        if kind == "example":
            if has_fields:
                blocks.append({})
            current = "pre"
        elif kind.startswith("field:"):
            if leader is None and name != "skip":
                leader = name
            if has_fields and (name == leader or name in blocks[-1]):
                blocks.append({})
            if not any(k not in ("pre", "skip") for k in blocks[-1]):
                listed_fields = _listed(line)
            current = name
            blocks[-1].setdefault(name, []).append(text)
        elif kind == "task":
            if any(k not in ("pre", "skip") for b in blocks for k in b):
                break
        else:
            blocks[-1].setdefault(current, []).append(text)
        above = line
    return [b for b in blocks if any(k not in ("pre", "skip") for k in b)]


def _pre_input(lines: list[str]) -> str:
    """The input a continuation wrote before its first label, without a chat preamble."""
    kept = [ln for ln in lines if not _INTRO.search(ln.strip()) and not _TASK_LINE.match(ln)]
    return "\n".join(kept).strip()


_INPUT_FIRST = {"input": "input", "output": "output"}
# "Q: What is the largest planet?\nA: Jupiter": questions and answers for inputs and outputs, read only in a
# reply with no "Input:"/"Output:" label (where "A: Paris" may be an option of a multiple-choice input).
_QA = {"q": "input", "question": "input", "a": "output", "answer": "output"}


def parse_input_first(reply: str, prefix: str = "", truncated: bool = False) -> list[Instance]:
    """Instances from "Example N / Input: ... / Output: ..." blocks (non-classification tasks).

    Chat forms read the same: "### Example 1", "**Example 1:**", "Example 1: Input: ...",
    "**Input:**" labels, placeholders for no input, "---" between examples, a preamble and
    a closing remark. Lists and paragraphs inside an output stay in it; a code fence around
    a whole field is removed, one inside a field is kept. A reply with no "Input:"/"Output:"
    label is read by "Q:"/"A:" or "Question:"/"Answer:" (see _QA).
    """
    names = {**_QA, **_INPUT_FIRST}
    text = _rewrite_tables(prefix + reply, _example_rows(names), lambda line: bool(_field_name(line, names)))
    qa = not any(kind.startswith("field:") for kind, _, _ in _events(text, _INPUT_FIRST))
    blocks = _examples(text, _QA if qa else _INPUT_FIRST, "input")
    out = []
    for k, block in enumerate(blocks):
        if "output" not in block or qa and "input" not in block:
            continue  # an example without its output (or an answer without its question): never half-read
        if "input" in block:
            inp = _field_text(block["input"])
        elif k == 0:
            inp = _pre_input(block.get("pre", []))
        else:
            inp = ""
        last = k == len(blocks) - 1
        output = _field_text(block["output"], last=last)
        out.append(Instance(input=_field(inp), output=output))
    if truncated and out:
        out.pop()
    return out


# Output-first pairs: "Output:" is read as the label too (some chat models write it), and a
# reason the model adds after the input is dropped.
_OUTPUT_FIRST = {"class label": "label", "label": "label", "class": "label", "output": "label", "input": "input",
                 "explanation": "skip", "reason": "skip", "reasoning": "skip"}


def parse_output_first(reply: str, prefix: str = "", truncated: bool = False) -> list[Instance]:
    """Instances from "Class label: X / Input: ..." pairs (classification tasks, output first).

    Also "**Class label:** X", "Label: X", "Class label: **X**", under "Example N" headings,
    "1. Class label: X", "**Label:** X — *Input:* Y" on one line, and pairs written input
    first. A label must be one line. A chat reply that continues the prompt's "Class label:"
    with a bare label reads as if the stage had passed that prefix (see _continues_label).
    """
    reply = _rewrite_tables(reply, _example_rows(_OUTPUT_FIRST), lambda line: bool(_field_name(line, _OUTPUT_FIRST)))
    if not prefix:
        reading = _continues_label(reply, truncated)
        if reading is None:
            return []  # label first or input first: either reading may shift every label by one
        if reading:
            prefix = "Class label: "
    blocks = _examples(prefix + reply, _OUTPUT_FIRST, None)
    out = []
    for k, block in enumerate(blocks):
        if "label" not in block or "input" not in block:
            continue  # a label without its input, or the reverse: never half-read
        last = k == len(blocks) - 1
        label = _MARKDOWN.sub("", _field_text(block["label"], last)).strip().strip("\"'").strip(".").strip()
        inp = _field_text(block["input"], last)
        if label and "\n" not in label:
            out.append(Instance(input=_field(inp), output=label))
    if truncated and out:
        out.pop()
    return out


def _continues_label(reply: str, truncated: bool) -> bool | None:
    """Whether a chat reply continues the prompt's trailing "Class label:" ("Spam\nInput: ...\nClass
    label: Not spam\nInput: ..."): True, False, or None when it cannot be told.

    Such a reply has one bare line (the first label) before its first field, which is an input, and
    then alternates input, label, ..., input: one input more than labels. Read input first, the same
    fields would pair each input with the label below it, every label shifted by one. A reply that has
    the bare line but ends on a label (or was cut short) fits both readings, so it is None: dropped,
    never mislabelled. A preamble ("Sure! Here are some examples:") is not a bare label.
    """
    pre: list[str] = []
    fields: list[str] = []
    for kind, text, _ in _events(reply, _OUTPUT_FIRST):
        if kind.startswith("field:") and kind != "field:skip":
            fields.append(kind[6:])
        elif kind in ("example", "task") and not fields:
            return False
        elif kind == "line" and not fields and text.strip():
            pre.append(text)
    if len(_pre_input(pre).splitlines()) != 1 or not fields or fields[0] != "input":
        return False
    alternating = all(name == ("input", "label")[k % 2] for k, name in enumerate(fields))
    return True if alternating and len(fields) % 2 == 1 and not truncated else None


# Structured replies (teacher.structured): JSON bound to a schema of stages/schemas.py. None when a reply
# is not that JSON (a server that ignored the schema): the stage then reads it with the text parsers.
_LEADING_NUMBER = re.compile(r"^\s*(?:task\s*)?#?\d{1,3}\s*[.:)]\s+", re.IGNORECASE)


# What a small model bound to the schema leaves around a label: the grammar lets any character into a string, and
# SmolLM2-135M on llama-cpp-python's server wrote the JSON's own syntax there ("}{", "Negative},{", "Command,"). A
# class label never holds it; a label left empty is skipped, as one the model left empty.
_LABEL_DEBRIS = " \t\r\n.,;{}[]\"'"


def parse_structured_tasks(reply: str) -> list[str] | None:
    """Instructions of a {"tasks": [...]} reply; a number a model put before a task ("9. ...") is dropped."""
    items = json_items(reply, "tasks")
    if items is None:
        return None
    return [text for x in items if isinstance(x, str) and (text := clean_instruction(_LEADING_NUMBER.sub("", x)))]


def parse_structured_instances(reply: str, labelled: bool) -> list[Instance] | None:
    """Instances of an {"examples": [{input, output}]} (or, labelled, [{label, input}]) reply; an example
    with an empty output or label is skipped, never half-read."""
    items = json_items(reply, "labelled_examples" if labelled else "examples")
    if items is None:
        return None
    out = []
    for x in items:
        if not isinstance(x, dict):
            continue
        output = str(x.get("label" if labelled else "output") or "").strip()
        if labelled:
            output = output.strip(_LABEL_DEBRIS)
        if output:
            out.append(Instance(input=_field(str(x.get("input") or "")), output=output))
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
