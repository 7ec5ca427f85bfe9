"""Parsers on real messy replies. Most fixtures are verbatim SmolLM2-135M-Instruct output
(collected with the bundled prompts); a few chat-model shapes (markdown, preamble,
sign-off) and truncations are written to match what hosted chat models return."""

import json
import random
import re
import sys

import pytest
from conftest import FIXTURES

from pipeline.stages import parse
from pipeline.stages.parse import (
    clean_instruction,
    parse_alpaca,
    parse_input_first,
    parse_numbered_list,
    parse_output_first,
    parse_yes_no,
)

FX = json.loads((FIXTURES / "replies.json").read_text())


@pytest.mark.parametrize("case", FX["bootstrap_completion"] + FX["bootstrap_chat"])
def test_numbered_lists(case):
    got = parse_numbered_list(case["reply"], case["prefix"], truncated=case["finish_reason"] == "length")
    assert got == case["expected"]


@pytest.mark.parametrize("case", FX["instances_gen"])
def test_input_first_instances(case):
    got = parse_input_first(case["reply"], case["prefix"], truncated=case["finish_reason"] == "length")
    assert [[i.input, i.output] for i in got] == case["expected"]


def test_truncated_instance_list_drops_the_last_example():
    reply = " a\nOutput: b\n\nExample 2\nInput: c\nOutput: d is cut he"
    assert [i.output for i in parse_input_first(reply, "Input:", truncated=True)] == ["b"]


@pytest.mark.parametrize("case", FX["instances_clf"])
def test_output_first_instances(case):
    got = parse_output_first(case["reply"], case["prefix"])
    assert [[i.input, i.output] for i in got] == case["expected"]


@pytest.mark.parametrize("reply, expected", [
    (" Yes", True), ("No", False), (" yes, it is", True), ("**No.**", False), ("B) How", None), ("", None),
    ("I think the answer is no", False),
])
def test_yes_no(reply, expected):
    assert parse_yes_no(reply) is expected


def test_alpaca_blocks_completion_and_truncation():
    reply = (" Name a fruit that is yellow.\n4. Input:\n<noinput>\n4. Output:\nA banana.\n###\n"
             "5. Instruction: Sort the numbers in ascending order.\n5. Input:\n3, 1, 2\n5. Output:\n1, 2, 3\n###\n"
             "6. Instruction: Explain gravity to a child.\n6. Input:\n<noinput>\n6. Output:\nThings fall because")
    full = parse_alpaca(reply, "4. Instruction:")
    assert [(i, x.input, x.output) for i, x in full] == [
        ("Name a fruit that is yellow.", "", "A banana."),
        ("Sort the numbers in ascending order.", "3, 1, 2", "1, 2, 3"),
        ("Explain gravity to a child.", "", "Things fall because")]
    assert len(parse_alpaca(reply, "4. Instruction:", truncated=True)) == 2


def test_clean_instruction():
    assert clean_instruction('  **Task 3:** "write a  haiku\nabout rain."  ') == "Write a haiku about rain."


def test_clean_instruction_is_the_regex_cleaning_it_replaced():
    """clean_instruction joins the words of str.split() and skips _MARKDOWN when none of its characters is there
    (issue 20): the same text as the regexes (re.sub(r"\\s+", " ", ...).strip()), on every white space character
    Python knows, markdown, quotes and labels; and _indent's shortcut for a line that opens with no space."""
    def regex_cleaning(text):
        text = parse._TITLE.sub("", text.strip())
        text = parse._MARKDOWN.sub("", text)
        text = re.sub(r"\s+", " ", text).strip()
        text = parse._LABEL.sub("", text).strip()
        if len(text) > 1 and text[0] == text[-1] == '"':
            text = text[1:-1].strip()
        return text[:1].upper() + text[1:] if text else text

    spaces = [chr(c) for c in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(c))]
    assert spaces == [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]  # one set of characters
    rnd = random.Random(5)
    pieces = [*spaces, "a", "Task", "task 2:", "**", "__", "`", '"', ":", "Ab", "é", "\u200b", "\t"]
    texts = ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 14))) for _ in range(20000)]
    assert [clean_instruction(t) for t in texts] == [regex_cleaning(t) for t in texts]
    for line in texts:
        assert parse._indent(line) == len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())


# Chat-model reply forms (tests/fixtures/chat_replies.json): written to match what hosted chat
# models (gpt-4o-mini-like, vLLM and Ollama chat endpoints) reply to our prompts, each with its exact parse.
CHAT = json.loads((FIXTURES / "chat_replies.json").read_text())


@pytest.mark.parametrize("case", CHAT["bootstrap"], ids=lambda c: c["name"])
def test_chat_task_lists(case):
    assert parse_numbered_list(case["reply"], truncated=case["finish_reason"] == "length") == case["expected"]


@pytest.mark.parametrize("case", CHAT["input_first"], ids=lambda c: c["name"])
def test_chat_input_first(case):
    got = parse_input_first(case["reply"], truncated=case["finish_reason"] == "length")
    assert [[i.input, i.output] for i in got] == case["expected"]


@pytest.mark.parametrize("case", CHAT["output_first"], ids=lambda c: c["name"])
def test_chat_output_first(case):
    got = parse_output_first(case["reply"], truncated=case["finish_reason"] == "length")
    assert [[i.input, i.output] for i in got] == case["expected"]


@pytest.mark.parametrize("case", CHAT["yes_no"], ids=lambda c: c["reply"][:30])
def test_chat_yes_no(case):
    assert parse_yes_no(case["reply"]) is case["expected"]


# The general rules behind the held-out corpus fixes (tests/fixtures/chat_replies_heldout.json), each
# tested in both directions: the form it reads, and the look-alike it must leave alone.

def _pairs(instances):
    return [[i.input, i.output] for i in instances]


def test_chat_reply_continuing_the_class_label_reads_label_first():
    reply = "Spam\nInput: Win a cruise now.\nClass label: Not spam\nInput: Lunch at noon?"
    assert _pairs(parse_output_first(reply)) == [["Win a cruise now.", "Spam"], ["Lunch at noon?", "Not spam"]]
    # The same reply written input first, after a preamble, still reads input first.
    reply = "Sure! Here are some examples:\nInput: Win a cruise now.\nClass label: Spam\nInput: Lunch?\nClass label: Ham"
    assert _pairs(parse_output_first(reply)) == [["Win a cruise now.", "Spam"], ["Lunch?", "Ham"]]


def test_a_bare_line_before_input_first_pairs_is_ambiguous_and_dropped():
    # "Spam" may be the first label (every label below shifts by one) or a title: never guess.
    reply = "Spam\nInput: Win a cruise now.\nClass label: Spam\nInput: Lunch at noon?\nClass label: Not spam"
    assert parse_output_first(reply) == []
    assert parse_output_first("Spam\nInput: Win a cruise.\nClass label: Spam\nInput: Lun", truncated=True) == []


def test_numbered_and_one_line_labelled_pairs():
    reply = "1. Class label: Prime\n   Input: 29\n2. Class label: Composite\n   Input: 42"
    assert _pairs(parse_output_first(reply)) == [["29", "Prime"], ["42", "Composite"]]
    reply = '**Label:** Positive — *Input:* "Loved it."\n**Label:** Negative | Input: Dull - a waste: of time'
    assert _pairs(parse_output_first(reply)) == [["Loved it.", "Positive"], ["Dull - a waste: of time", "Negative"]]
    # A dash inside an input that is not followed by a field label stays in it.
    assert _pairs(parse_input_first("Input: 3 - 1\nOutput: 2 — an input: of sorts")) == [
        ["3 - 1", "2 — an input: of sorts"]]


def test_quotes_around_a_whole_field_are_removed_but_not_partial_ones():
    reply = 'Input: "Hey, send me that file."\nOutput: "Hi," she said. "Bye."'
    assert _pairs(parse_input_first(reply)) == [["Hey, send me that file.", '"Hi," she said. "Bye."']]
    assert _pairs(parse_input_first('Input: “Thanks!”\nOutput: She said "thanks"')) == [
        ["Thanks!", 'She said "thanks"']]


def test_a_note_about_the_examples_is_cut_but_a_note_in_an_output_stays():
    reply = "Class label: No\nInput: Warm jacket.\n\nNote: I included one example for each label."
    assert _pairs(parse_output_first(reply)) == [["Warm jacket.", "No"]]
    reply = "Input: pancakes\nOutput: Mix flour, milk and eggs.\n\nNote: use a hot pan for the first one."
    assert _pairs(parse_input_first(reply)) == [
        ["pancakes", "Mix flour, milk and eggs.\n\nNote: use a hot pan for the first one."]]


@pytest.mark.parametrize("reply, expected", [
    ("This is not a classification task. It asks for an essay.", False),
    ("It isn't really a classification problem.", False),
    ("Yes, it is not open-ended.", True),  # the yes/no word wins
    ("It is not open-ended.", None),  # negates the other side: no answer, not a No
    ("I am not sure this is classification.", None),
    ("1. The given task is a classification task, which asks for one of two labels.", True),  # llama.cpp, SmolLM2
    ("This is a binary classification problem.", True),
    ("It is unclear whether this is a classification task.", None),  # a hedge: asked again
    ("This might be a classification task.", None),
    ("I don't think this is a classification task.", None),
    ("The task is to write an essay. Some would say it is a classification task.", None),  # not the first sentence
])
def test_yes_no_reads_a_negated_classification_as_no(reply, expected):
    assert parse_yes_no(reply) is expected


def test_a_bold_title_alone_on_its_line_gives_way_to_the_task_below():
    reply = "9. **Cooking**\n   Suggest a substitute for eggs.\n\n10. **Poetry**\n   Write a poem about rain."
    assert parse_numbered_list(reply) == ["Suggest a substitute for eggs.", "Write a poem about rain."]
    # A bold task with nothing below it is the task.
    assert parse_numbered_list("9. **Write a poem about rain.**\n10. List two fish.") == [
        "Write a poem about rain.", "List two fish."]


def test_category_labels_are_dropped_only_when_most_items_carry_one():
    reply = "9. Travel Planning: Plan a road trip.\n10. Poetry: Write a sonnet.\n11. Describe photosynthesis."
    assert parse_numbered_list(reply) == ["Plan a road trip.", "Write a sonnet.", "Describe photosynthesis."]
    reply = ("9. Turn this list into a paragraph: eggs, flour.\n10. Summary: Give the gist of a text.\n"
             "11. Write a haiku.\n12. Rewrite as a question: The sky is blue.")
    assert parse_numbered_list(reply) == ["Turn this list into a paragraph: eggs, flour.",
                                          "Summary: Give the gist of a text.", "Write a haiku.",
                                          "Rewrite as a question: The sky is blue."]


@pytest.mark.parametrize("first, kept", [
    ("Write a short horoscope for Leo.", True),
    ("What is the capital of Peru?", True),
    ("Here you go!", False), ("Here are eight more tasks.", False), ("I came up with these.", False),
    ("Sure.", False), ("Continuing the list:", False),
])
def test_an_unnumbered_first_task_before_item_10_is_kept_but_never_a_preamble(first, kept):
    got = parse_numbered_list(first + "\n10. Explain rain.\n11. List two fish.")
    assert got == ([first] if kept else []) + ["Explain rain.", "List two fish."]
    # Set off by a blank line, or above a list that starts at 1, the line is not read as a task.
    assert parse_numbered_list(first + "\n\n10. Explain rain.") == ["Explain rain."]
    assert parse_numbered_list(first + "\n1. Explain rain.") == ["Explain rain."]


def test_bracketed_category_labels_are_dropped_only_when_most_items_carry_one():
    reply = "9. [Creative Writing] Write a poem.\n10. [Math]: Solve 2x = 4.\n11. Explain rain."
    assert parse_numbered_list(reply) == ["Write a poem.", "Solve 2x = 4.", "Explain rain."]
    # One bracket among plain tasks, or a placeholder going on in lower case, is the task's own text.
    reply = "9. [Name] is new here; write a welcome note.\n10. [Math] Solve 2x = 4.\n11. Explain rain."
    assert parse_numbered_list(reply) == ["[Name] is new here; write a welcome note.", "[Math] Solve 2x = 4.",
                                          "Explain rain."]


def test_an_answer_line_under_a_task_ends_it_but_a_wrapped_line_goes_on():
    reply = ("9. What is the capital of Australia?\nAnswer: Canberra\n10. Name three primary colors.\n"
             "   **Solution:** Red, blue\n   and yellow.\n11. Classify a review.\nExample: \"Great!\" -> Positive")
    assert parse_numbered_list(reply) == ["What is the capital of Australia?", "Name three primary colors.",
                                          "Classify a review."]
    # The item's own line may open with the word; a line that wraps mid-sentence in lower case goes on.
    reply = "9. Answer the riddle in one word.\n10. Write a quiz question and give its\nanswer: keep it short."
    assert parse_numbered_list(reply) == ["Answer the riddle in one word.",
                                          "Write a quiz question and give its answer: keep it short."]


def test_bulleted_field_words_inside_an_output_stay_its_text_but_bulleted_examples_still_split():
    reply = ("Example 1\nInput: I/O\nOutput: It is how a computer talks to the world:\n- Input: data coming in.\n"
             "- Output: data going out.\n\nExample 2\nInput: RAM\nOutput: Short-term memory.")
    assert [(i.input, i.output) for i in parse_input_first(reply)] == [
        ("I/O", "It is how a computer talks to the world:\n- Input: data coming in.\n- Output: data going out."),
        ("RAM", "Short-term memory.")]
    # Examples whose own labels are bullets; plain examples then bulleted ones, after a blank line or
    # under an output that does not open a list: each is its own example, as before.
    for reply in ("- **Input:** 12 and 18\n- **Output:** 6\n- **Input:** 7 and 13\n- **Output:** 1",
                  "Input: 12 and 18\nOutput: 6\n\n- Input: 7 and 13\n- Output: 1",
                  "Input: 12 and 18\nOutput: 6\n- Input: 7 and 13\n- Output: 1"):
        assert [(i.input, i.output) for i in parse_input_first(reply)] == [("12 and 18", "6"), ("7 and 13", "1")]


def test_q_and_a_labels_read_as_input_and_output_only_where_no_input_label_is():
    reply = "Q: What is the largest planet?\nA: Jupiter\n\n**Question:** Who wrote Emma?\n**Answer:** Jane Austen"
    assert [(i.input, i.output) for i in parse_input_first(reply)] == [
        ("What is the largest planet?", "Jupiter"), ("Who wrote Emma?", "Jane Austen")]
    # Options of a multiple-choice input stay in it; an answer with no question above it is not read.
    reply = "Input: Which is the capital of France?\nA: Paris\nB: Rome\nOutput: A"
    assert [(i.input, i.output) for i in parse_input_first(reply)] == [
        ("Which is the capital of France?\nA: Paris\nB: Rome", "A")]
    assert parse_input_first("Sure!\nA: Jupiter") == []


def test_a_markdown_table_is_read_by_its_header():
    reply = ("Here you go:\n\n| # | Category | Task |\n|---|:---|---|\n| 9 | Writing | Write a bio. |\n"
             "| 10 | Math | Compute 2 \\| 3 in binary. |\n| 11 | Travel | Plan a tr")
    assert parse_numbered_list(reply) == ["Write a bio.", "Compute 2 | 3 in binary.", "Plan a tr"]
    assert parse_numbered_list(reply, truncated=True) == ["Write a bio.", "Compute 2 | 3 in binary."]
    # No column headed as tasks, or a table under a task (its content): left as text.
    assert parse_numbered_list("| Fruit | Colour |\n|---|---|\n| Apple | Red |") == []
    assert len(parse_numbered_list("9. Fill in the table:\n| Task |\n|---|\n| Fly |")) == 1
    reply = "| Example | Input | Output |\n|---|---|---|\n| 1 | 50 USD | 46 EUR |\n| 2 | None | 0 EUR |"
    assert [(i.input, i.output) for i in parse_input_first(reply)] == [("50 USD", "46 EUR"), ("", "0 EUR")]
    reply = "| **Class label** | **Input** |\n|---|---|\n| Mammal | Dolphin |\n| Bird | Penguin |"
    assert [(i.input, i.output) for i in parse_output_first(reply)] == [("Dolphin", "Mammal"), ("Penguin", "Bird")]


def test_a_table_inside_an_output_or_with_a_column_nobody_reads_is_not_examples():
    reply = "Input: the AND gate\nOutput:\n| Input | Output |\n|---|---|\n| 1 1 | 1 |\n| 1 0 | 0 |"
    assert [(i.input, i.output) for i in parse_input_first(reply)] == [
        ("the AND gate", "| Input | Output |\n|---|---|\n| 1 1 | 1 |\n| 1 0 | 0 |")]
    assert parse_input_first("| Input | Output | Notes |\n|---|---|---|\n| 2 | 4 | doubled |") == []
