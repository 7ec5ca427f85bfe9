"""How much of a chat-only teacher's replies become records, read exactly.

A fake OpenAI-compatible server with no completions endpoint (so `--api auto` picks chat)
answers every Self-Instruct prompt in the forms hosted chat models use: a preamble,
bullets or headings instead of "9.", bold labels, restarted numbering, titles, "No input
needed." placeholders, code fences, lists inside outputs, "---" rules and a sign-off.
It remembers what it meant (the task lines, the instance pairs, the Yes/No answers), and
like a real server it applies the stop sequences it is sent and cuts at max_tokens.
The real stages run through `pipeline.runner.Session`: bootstrap, classify, instances,
filter. Then, measured:

- tasks: the fraction of task lines sent that became a record (kept, or rejected by a
  filter rule with its reason) whose instruction equals the line's text exactly;
- pairs: the fraction of (input, output) pairs sent that a task's instances record holds exactly;
- classify: the fraction of Yes/No answers read as meant;
- chrome: kept texts (instructions, inputs, outputs in filter.jsonl) that still carry a
  preamble, a sign-off, or a markdown label or heading.

    python benchmarks/chat_forms.py                 # 40 bootstrap replies
    python benchmarks/chat_forms.py --replies 200 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fakeserver import FakeOpenAI  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.errors import Incomplete  # noqa: E402
from pipeline.runner import Session  # noqa: E402
from pipeline.store import read_tasks  # noqa: E402

# ---------------------------------------------------------------- what the teacher means

TOPICS = [
    "a sourdough starter that has stopped rising", "renting a first flat in a new city", "the causes of ocean tides",
    "a beginner's weekly running plan", "composting kitchen waste on a balcony", "the water cycle for ten-year-olds",
    "negotiating a higher salary", "keeping a sailboat upright in gusty wind", "the history of the printing press",
    "choosing a used electric car", "pruning apple trees in late winter", "a wedding toast for an old friend",
    "how vaccines train the immune system", "reducing the size of a Docker image", "birdwatching near wetlands",
    "planning a three-day trip to Lisbon", "a polite reminder about an unpaid invoice", "the rules of cricket",
    "teaching a dog to walk on a loose lead", "Python list comprehensions", "mortgage interest rates",
    "the life cycle of a monarch butterfly", "a cover letter for a museum guide job", "insulating an attic",
    "photosynthesis in desert plants", "splitting rent fairly between flatmates", "SQL joins on two tables",
    "the French Revolution's first year", "packing for a winter hike", "a bedtime story about a shy dragon",
    "lowering a household's electricity bill", "reading nutrition labels", "the plot of Hamlet",
    "Git rebase versus merge", "growing tomatoes in pots", "first aid for a sprained ankle",
    "black holes and event horizons", "a product description for a bamboo toothbrush", "time zones for remote teams",
    "the rise of the Roman Republic", "fermenting cabbage into sauerkraut", "regular expressions for dates",
]
FRAMES = [
    "Explain {t} in three short paragraphs.", "Write a short guide about {t} for a complete beginner.",
    "List five common mistakes people make with {t}.", "Summarize the key facts about {t} in one sentence.",
    "Suggest three questions a curious student might ask about {t}.", "Give practical tips on {t}, as a numbered list.",
    "Write a haiku inspired by {t}.", "Describe the main steps involved in {t}.",
    "Compare two popular approaches to {t} and say which suits a small budget.",
    "Write a friendly email to a colleague about {t}.",
]
CLF_FRAMES = [
    ("Decide whether the given sentence about {t} is a fact or an opinion.", ["Fact", "Opinion"]),
    ("Classify the sentiment of the comment about {t} as positive, negative or neutral.",
     ["Positive", "Negative", "Neutral"]),
    ("Tell whether the question about {t} can be answered with yes or no.", ["Yes", "No"]),
]


def instructions(rng: random.Random):
    """Endless distinct (instruction, is_classification, labels, topic)."""
    combos = [(f, t) for f in range(len(FRAMES) + len(CLF_FRAMES)) for t in range(len(TOPICS))]
    rng.shuffle(combos)
    for f, t in combos:
        if f < len(FRAMES):
            yield FRAMES[f].format(t=TOPICS[t]), False, [], TOPICS[t]
        else:
            frame, labels = CLF_FRAMES[f - len(FRAMES)]
            yield frame.format(t=TOPICS[t]), True, labels, TOPICS[t]
    for n in range(10**6):  # past the combinations: still distinct, if less natural
        yield f"Write a limerick about item number {n} of a long inventory of odd objects.", False, [], f"item {n}"


def pairs_for(rng: random.Random, topic: str, labels: list[str]) -> list[tuple[str, str]]:
    """The (input, output) pairs the teacher writes for a task: plain, empty inputs, lists and code inside."""
    if labels:
        return [(f"Example sentence {k + 1} on {topic}, worded plainly.", rng.choice(labels))
                for k in range(rng.randint(2, 4))]
    shapes = [
        (f"A reader who asks about {topic}.", f"Start with the basics of {topic}, then practise a little every day."),
        ("", f"Most people underestimate {topic}. Take it one step at a time."),
        (f"Notes on {topic}", "1. Read one short guide.\n2. Try it once.\n3. Write down what went wrong."),
        (f"A short question on {topic}", f"First point about {topic}.\n\nSecond point, in its own paragraph."),
        ("def total(xs):\n    return sum(xs)", "The function returns the sum of the list."),
        ("", f"- Keep notes on {topic}.\n- Ask someone who has done it before."),
    ]
    return [shapes[k] for k in sorted(rng.sample(range(len(shapes)), rng.randint(2, 6)))]


# ---------------------------------------------------------------- how a chat model writes it

PREAMBLES = ["Sure! Here are {n} more tasks:", "Here are some additional tasks for the list:",
             "Certainly! Continuing the list:", "Of course. Here's the continuation of the list:", ""]
EX_PREAMBLES = ["Sure! Here are some examples for this task:", "Here are {n} examples:",
                "Certainly! Below are examples for the task.", "**Task:** {task}", "Task: {task}", "", ""]
SIGN_OFFS = ["Let me know if you need more examples!", "I hope this helps!",
             "Feel free to ask if you'd like more tasks or a different format.",
             "These tasks cover a range of topics and formats. Let me know if you want more!", "", ""]
NO_INPUT = ["<noinput>", "No input needed.", "None", "(none)", "N/A", "-", "No input required.", "(No input)"]


def task_list(rng: random.Random, items: list[str], first: int) -> str:
    """A task list in one of the forms chat models use."""
    form = rng.randrange(12)
    n = len(items)
    if form == 0:
        lines = [f"{first + i}. {t}" for i, t in enumerate(items)]
    elif form == 1:
        lines = [f"{rng.choice('-*•')} {t}" for t in items]
        lines = [f"{lines[0][0]}{ln[1:]}" for ln in lines]  # one bullet character per list
    elif form == 2:
        lines = [f"### Task {first + i}\n{t}\n" for i, t in enumerate(items)]
    elif form == 3:
        lines = [f"**Task {first + i}:**\n{t}\n" for i, t in enumerate(items)]
    elif form == 4:
        lines = [f"**{first + i}.** {t}" for i, t in enumerate(items)]
    elif form == 5:
        lines = [f"{first + i}) {t}" for i, t in enumerate(items)]
    elif form == 6:  # restarted numbering
        lines = [f"{1 + i}. {t}" for i, t in enumerate(items)]
    elif form == 7:  # a bold title before each task
        lines = [f"{first + i}. **{title(t)}**: {t}" for i, t in enumerate(items)]
    elif form == 8:
        lines = [f"Task {first + i}: {t}" for i, t in enumerate(items)]
    elif form == 9:
        lines = [f"**Task {first + i}:** {t}" for i, t in enumerate(items)]
    elif form == 10:  # blank lines between items
        lines = [f"{first + i}. {t}\n" for i, t in enumerate(items)]
    else:  # a heading with a title, the task below it
        lines = [f"### {first + i}. {title(t)}\n{t}\n" for i, t in enumerate(items)]
    body = "\n".join(lines).rstrip()
    pre = rng.choice(PREAMBLES).format(n=n)
    sign = rng.choice(SIGN_OFFS)
    rule = rng.random() < 0.3
    return ((pre + "\n\n") if pre else "") + body + ("\n\n---" if rule else "") + (("\n\n" + sign) if sign else "")


def title(task: str) -> str:
    words = re.findall(r"[A-Za-z']+", task)
    return " ".join(words[-3:]).title()


def no_input(rng: random.Random) -> str:
    return rng.choice(NO_INPUT)


def field_value(text: str, code: bool) -> tuple[str, bool]:
    """(text as written, starts on its own line): code goes in a fence, multi-line text below its label."""
    if code:
        return f"```python\n{text}\n```", True
    return text, "\n" in text


def input_first(rng: random.Random, pairs: list[tuple[str, str]], task: str) -> str:
    form = rng.randrange(7)
    label = [("Input:", "Output:"), ("**Input:**", "**Output:**"), ("**Input**:", "**Output**:")][form % 3]
    blocks = []
    for k, (inp, out) in enumerate(pairs, 1):
        shown_in = inp or no_input(rng)
        in_text, in_below = field_value(shown_in, inp.startswith("def "))
        out_text, out_below = field_value(out, False)
        fields = (f"{label[0]}{chr(10) if in_below else ' '}{in_text}\n"
                  f"{label[1]}{chr(10) if out_below else ' '}{out_text}")
        head = ["Example {k}", "### Example {k}", "**Example {k}:**", "Example {k}:", "", "**Example {k}**",
                "Example {k}: "][form].format(k=k)
        if form == 6:  # "Example 1: Input: ..." on one line
            blocks.append(head + fields)
        else:
            blocks.append((head + "\n" if head else "") + fields)
    sep = "\n\n---\n\n" if rng.random() < 0.3 else "\n\n"
    pre = rng.choice(EX_PREAMBLES).format(n=len(pairs), task=task)
    sign = rng.choice(SIGN_OFFS)
    return ((pre + "\n\n") if pre else "") + sep.join(blocks) + (("\n\n" + sign) if sign else "")


def output_first(rng: random.Random, pairs: list[tuple[str, str]], task: str) -> str:
    form = rng.randrange(6)
    blocks = []
    for k, (inp, label) in enumerate(pairs, 1):
        if form == 0:
            blocks.append(f"Class label: {label}\nInput: {inp}")
        elif form == 1:
            blocks.append(f"**Class label:** {label}\n**Input:** {inp}")
        elif form == 2:
            blocks.append(f"Label: {label}\nInput: {inp}")
        elif form == 3:
            blocks.append(f"### Example {k}\nClass label: **{label}**\nInput: {inp}")
        elif form == 4:
            blocks.append(f"Example {k}:\nClass Label: {label}\nInput: {inp}")
        else:
            blocks.append(f"**Label:** {label}\n**Input:** {inp}")
    pre = rng.choice(EX_PREAMBLES).format(n=len(pairs), task=task)
    sign = rng.choice(SIGN_OFFS)
    return ((pre + "\n\n") if pre else "") + "\n\n".join(blocks) + (("\n\n" + sign) if sign else "")


def yes_no(rng: random.Random, yes: bool) -> str:
    word = "Yes" if yes else "No"
    return rng.choice([word, f"**{word}**", f"{word}.", f"Answer: {word}", f"\n{word}", f"\n\n{word}",
                       f"{word}. This is {'' if yes else 'not '}a classification task because of its labels.",
                       f"{word}, it {'is' if yes else 'is not'} a classification task."])


# ---------------------------------------------------------------- the server

_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]+|\s+")


def as_served(text: str, body: dict[str, Any]) -> tuple[str, str]:
    """What a real server returns: cut at the first stop sequence, then at max_tokens (roughly, by words)."""
    stops = [s for s in body.get("stop") or [] if s and s in text]
    if stops:
        return text[:min(text.index(s) for s in stops)], "stop"
    tokens = _TOKEN.findall(text)
    limit = body.get("max_tokens") or len(tokens)
    return ("".join(tokens[:limit]), "length") if len(tokens) > limit else (text, "stop")


class ChatFormsServer(FakeOpenAI):
    """A chat-only teacher that writes in chat-model forms and remembers what it meant."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.rng = random.Random(seed)
        self.new = instructions(random.Random(seed + 1))
        self.meant: dict[str, tuple[bool, list[str], str]] = {}  # instruction -> (is_classification, labels, topic)
        self.task_lines: list[str] = []
        self.pairs: dict[tuple[str, bool], list[tuple[str, str]]] = {}  # (instruction, output-first) -> pairs
        self.answers: dict[str, bool] = {}
        self.cut = 0  # replies cut by max_tokens

    def default_reply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        prompt = self.prompt_of(body)
        task = prompt.rsplit("Task:", 1)[-1].split("\n")[0].strip()
        if "numbered list of" in prompt:
            first = int(prompt.rstrip().rsplit("\n", 1)[-1].rstrip("."))
            items = []
            for _ in range(self.rng.randint(3, 8)):
                instruction, *meant = next(self.new)
                self.meant[instruction] = tuple(meant)
                items.append(instruction)
            text = task_list(self.rng, items, first)
        elif "Is it classification?" in prompt:
            yes = self.meant.get(task, (False,))[0]
            self.answers[task] = yes
            text = yes_no(random.Random(f"{task}:classify"), yes)  # a retry gets the same form, as from a real model
        elif prompt.rstrip().endswith(("Class label:", "Input:")):
            clf = prompt.rstrip().endswith("Class label:")
            _, labels, topic = self.meant.get(task, (False, [], "the task"))
            labels = labels or (["First", "Second"] if clf else [])
            key = (task, clf)
            if key not in self.pairs:  # a retried prompt gets the same examples
                self.pairs[key] = pairs_for(random.Random(f"{task}:{clf}"), topic, labels)
            write = output_first if clf else input_first
            text = write(random.Random(f"{task}:{clf}:form"), self.pairs[key], task)  # a retry: the same form
        else:
            text = "I'm ready to assist. What would you like me to do?"
        text, finish = as_served(text, body)
        if "numbered list of" in prompt:  # a task the stop sequence cut off was never sent
            self.task_lines += [t for t in items if t in text]
        self.cut += finish == "length" and "Is it classification?" not in prompt
        return self.wrap(path, text, finish)


# ---------------------------------------------------------------- the measurement

CHROME = re.compile(
    r"(?im)^\W*(?:sure|certainly|of course|here (?:are|is)|let me know|i hope|hope (?:this|these)|feel free)\b"
    r"|let me know if|i hope (?:this|these)|feel free to"
    r"|\*\*|^#{1,6}\s|^\s*(?:-{3,}|\*{3,})\s*$|^\W*(?:input|output|class label|label|example \d+)\s*:"
    r"|\A\s*```|```\s*\Z")


MAX_INSTANCES = 5  # instances.max_instances


def chrome(text: str) -> bool:
    return bool(CHROME.search(text))


def measure(replies: int = 40, seed: int = 0, workdir: str | Path | None = None) -> dict[str, Any]:
    """Run bootstrap (for `replies` prompts), classify, instances and filter against the chat-forms server."""
    server = ChatFormsServer(seed)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    out = Path(workdir or tmp.name)
    try:
        cfg = load_config(None, {
            "output_dir": str(out), "run_name": "chat", "teacher.spec": "openai:fake-model",
            "teacher.base_url": server.url, "teacher.api": "auto", "teacher.max_retries": 1,
            "bootstrap.num_instructions": 10**6, "bootstrap.max_requests": replies, "bootstrap.yield_stop": 0.0,
            "bootstrap.yield_warn": 0.0, "seed": seed})
        os.environ.setdefault("OPENAI_API_KEY", "sk-fake-for-the-benchmark")
        t0 = time.perf_counter()
        try:
            Session(cfg).run_steps(["bootstrap"])
        except Incomplete:  # stopped at bootstrap.max_requests, as asked
            pass
        Session(cfg).run_steps(["classify", "instances", "filter"])
        seconds = time.perf_counter() - t0
        run = out / "chat"
        rejected = read_tasks(run / "rejected.jsonl") if (run / "rejected.jsonl").exists() else []
        boot = read_tasks(run / "bootstrap.jsonl") + [r for r in rejected if r.stage == "bootstrap"]
        read_instructions = {t.instruction for t in boot}
        exact = sum(1 for t in server.task_lines if t in read_instructions)
        misread = sorted(t.instruction for t in boot if t.instruction and t.instruction not in server.meant)
        unparseable = sum(1 for t in boot if not t.instruction)

        classified = read_tasks(run / "classify.jsonl")
        asked = [t for t in classified if t.instruction in server.answers]
        right = sum(1 for t in asked if t.is_classification == server.answers[t.instruction])

        records = {t.instruction: t for t in read_tasks(run / "instances.jsonl")}
        sent = found = 0
        missed: list[Any] = []
        for (instruction, _), pairs in server.pairs.items():
            got = {(i.input, i.output) for i in records[instruction].instances} if instruction in records else set()
            pairs = pairs[:MAX_INSTANCES]  # the stage keeps the first max_instances, as asked
            sent += len(pairs)
            hit = [p for p in pairs if p in got]
            found += len(hit)
            if len(hit) < len(pairs):
                missed.append({"task": instruction, "sent": pairs, "read": sorted(got)})

        kept = read_tasks(run / "filter.jsonl")
        texts = [t.instruction for t in kept] + [x for t in kept for i in t.instances for x in (i.input, i.output)]
        dirty = [x for x in texts if chrome(x)]
        return {
            "task_lines_sent": len(server.task_lines), "tasks_recovered": exact / max(1, len(server.task_lines)),
            "task_records_misread": len(misread), "unparseable_replies": unparseable,
            "pairs_sent": sent, "pairs_recovered": found / max(1, sent),
            "classify_answers": len(asked), "classify_right": right / max(1, len(asked)),
            "kept_tasks": len(kept), "kept_texts": len(texts), "chrome": len(dirty),
            "replies_cut_by_max_tokens": server.cut, "seconds": round(seconds, 1),
            "examples": {"misread": misread[:5], "chrome": dirty[:5], "missed_pairs": missed[:3]},
        }
    finally:
        server.close()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replies", type=int, default=40, help="bootstrap prompts to send")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = ap.parse_args()
    r = measure(args.replies, args.seed)
    if args.json:
        print(json.dumps(r, indent=1))
        return
    print(f"task lines sent {r['task_lines_sent']}: recovered exactly {r['tasks_recovered']:.3f}, "
          f"{r['task_records_misread']} records misread, {r['unparseable_replies']} replies unparseable")
    print(f"instance pairs sent {r['pairs_sent']}: recovered exactly {r['pairs_recovered']:.3f}")
    print(f"classify: {r['classify_right']:.3f} of {r['classify_answers']} Yes/No answers read as meant")
    print(f"kept: {r['kept_tasks']} tasks, {r['kept_texts']} texts; with chat chrome: {r['chrome']}")
    print(f"replies cut by max_tokens: {r['replies_cut_by_max_tokens']}; {r['seconds']} s")
    for kind, items in r["examples"].items():
        for item in items:
            print(f"  {kind}: {json.dumps(item)[:300]}")


if __name__ == "__main__":
    main()
