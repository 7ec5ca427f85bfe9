"""A minimal OpenAI-compatible server for benchmarks: fixed or lognormal latency, capacity C.

asyncio, stdlib only, run as its own process so that its CPU does not mix with the
client's. A request waits for one of C slots (like a GPU server's batch slots), then
for its latency, then gets a short completion. It prints its port on the first line.
With --replies evolve it answers seed2lora's Evol-Instruct prompts so that every evolution
goes on to its judgement and answer: a rewrite that adds a few words, "Not equal", an answer.
With --replies selfinstruct it answers a Self-Instruct run's prompts: bootstrap gets every free place of its
list filled with new synthetic instructions (benchmarks/_synthetic.py: Zipf vocabulary, ~15% near-duplicates of
earlier ones, so that the ROUGE-L filter keeps most but not all), classify a Yes for one task in five and No for
the rest, instances two well-formed examples (class labels for a classification task).
With --replies pipeline, every stage's prompts (chat), score included.

    python benchmarks/_latency_server.py --capacity 256 --latency 0.5 --dist lognormal --sigma 0.8
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import SentenceGenerator  # noqa: E402

REPLY = "1. An instruction\n2. Another one"
ANSWER = ("A careful response: first set out the main facts, then weigh the practical trade-offs, "
          "and finally give a clear recommendation with one worked example.")


def evolve_reply(prompt: str, n: int) -> str:
    """The n-th reply to an evolve prompt; each rewrite is new text, so none is filtered as a copy."""
    if prompt.endswith("Judgement:"):
        return "Not equal"
    if prompt.endswith("Response:"):
        return ANSWER
    instruction = prompt.rsplit("\nInstruction:\n", 1)[-1].rsplit("\n\n", 1)[0]
    return f"{instruction.splitlines()[0]} Cover case {n} in detail."


class SelfInstructReplies:
    """A Self-Instruct teacher's replies, in chat form: each bootstrap reply continues the prompt's list with new
    synthetic instructions up to the number before its stop ("16." by default)."""

    def __init__(self, seed: int):
        self.sentences = SentenceGenerator(seed)
        self.n = itertools.count()

    def __call__(self, prompt: str) -> str:
        if "numbered list of" in prompt:  # bootstrap: "... up to task 16." then the list and "9."
            last = int(re.search(r"up to task (\d+)", prompt).group(1)) - 1
            first = int(prompt.rstrip().rsplit("\n", 1)[-1].rstrip("."))
            return "\n".join(f"{i}. {self.sentences.sentence()}" for i in range(first, last + 1))
        n = next(self.n)
        if prompt.rstrip().endswith("Is it classification?"):
            return "Yes" if n % 5 == 0 else "No"
        task = prompt.rsplit("Task:", 1)[-1].split("\n")[0].strip()
        if prompt.rstrip().endswith("Class label:"):
            return "Class label: First\nInput: the first of two options\n\nClass label: Second\nInput: the other option"
        return (f"Example 1\nInput: a question about {task[:30]}, case {n}\nOutput: a careful answer about "
                f"{task[-30:]}, case {n}\n\nExample 2\nInput: <noinput>\nOutput: a general answer for: {task}")
def pipeline_reply(prompt: str, n: int, sentences) -> str:
    """What a competent teacher answers to each of seed2lora's prompts (the test suite's fake teacher, in brief):
    bootstrap gets 7 new instructions (benchmarks/_synthetic.py, a few of them near-duplicates), classify a Yes or
    No, instances two examples, score a rating, and evolve's prompts what evolve_reply gives."""
    if "numbered list of" in prompt:  # bootstrap
        return "\n".join(f"{i}. {sentences.sentence()}" for i in range(9, 16))
    if "Is it classification?" in prompt:
        return "Yes" if n % 5 == 0 else "No"
    if prompt.rstrip().endswith("Class label:"):
        return "Class label: First\nInput: the first option\n\nClass label: Second\nInput: the other option"
    if prompt.rstrip().endswith("Input:"):
        return (f"Example 1\nInput: a question numbered {n}\nOutput: a careful answer numbered {n}\n\n"
                f"Example 2\nInput: <noinput>\nOutput: a general answer, case {n}")
    if '"rating"' in prompt:  # score
        return json.dumps({"rating": 3 + n % 3, "reason": "clear and correct"})
    return evolve_reply(prompt, n)


def make_handler(capacity: int, latency: float, dist: str, sigma: float, seed: int, replies: str = "fixed"):
    slots = asyncio.Semaphore(capacity)
    rng = random.Random(seed)
    counter = itertools.count()
    selfinstruct = SelfInstructReplies(seed)
    sentences = None
    if replies == "pipeline":
        sentences = SentenceGenerator(seed + 1)
    # lognormal with the given mean: mu = ln(mean) - sigma^2 / 2
    mu = math.log(latency) - sigma * sigma / 2 if latency > 0 else 0.0

    def draw() -> float:
        return rng.lognormvariate(mu, sigma) if dist == "lognormal" else latency

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = json.loads(await reader.readexactly(length)) if length else {}
                path = head.split(b" ", 2)[1].decode()
                async with slots:
                    await asyncio.sleep(draw())
                prompts = body.get("prompt", "")
                n = len(prompts) if isinstance(prompts, list) else 1
                usage = {"prompt_tokens": 50 * n, "completion_tokens": 8 * n, "total_tokens": 58 * n}
                if path.endswith("/chat/completions"):
                    text = REPLY
                    if replies == "evolve":
                        text = evolve_reply(body["messages"][-1]["content"], next(counter))
                    elif replies == "selfinstruct":
                        text = selfinstruct(body["messages"][-1]["content"])
                    elif replies == "pipeline":
                        text = pipeline_reply(body["messages"][-1]["content"], next(counter), sentences)
                    choices = [{"index": 0, "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop"}]
                else:
                    choices = [{"index": i, "text": REPLY, "finish_reason": "stop", "logprobs": None} for i in range(n)]
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "bench",
                                   "choices": choices, "usage": usage}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(data)).encode() + b"\r\n\r\n" + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    return handle


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capacity", type=int, default=256)
    ap.add_argument("--latency", type=float, default=0.5, help="mean seconds per request")
    ap.add_argument("--dist", choices=["fixed", "lognormal"], default="fixed")
    ap.add_argument("--sigma", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replies", choices=["fixed", "evolve", "selfinstruct", "pipeline"], default="fixed",
                    help="fixed: one short list for every prompt; evolve: replies to the Evol-Instruct prompts; "
                         "selfinstruct: replies to a Self-Instruct run's prompts (bootstrap, classify, instances); "
                         "pipeline: replies to every stage's prompts (chat)")
    args = ap.parse_args()
    handler = make_handler(args.capacity, args.latency, args.dist, args.sigma, args.seed, args.replies)
    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
