"""A minimal OpenAI-compatible server for benchmarks: fixed or lognormal latency, capacity C.

asyncio, stdlib only, run as its own process so that its CPU does not mix with the
client's. A request waits for one of C slots (like a GPU server's batch slots), then
for its latency, then gets a short completion. It prints its port on the first line.
With --replies evolve it answers seed2lora's Evol-Instruct prompts so that every evolution
goes on to its judgement and answer: a rewrite that adds a few words, "Not equal", an answer.
With --replies self-instruct it answers every stage's prompts as a competent chat teacher would
(SelfInstructReplies: bootstrap lists continued with _synthetic.py sentences, about 15% near-copies,
classify, instances, score and evolve).
With --log FILE it appends one JSON line per request: its kind, when it arrived, when it took
a slot and when it left it (time.time()), for a busy-slot count on the server's side.

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
import time
import zlib
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


def request_kind(prompt: str, max_tokens: int | None) -> str:
    """What a request is for: the run's probes (api auto, structured replies) or one of its stages."""
    if max_tokens == 1 or prompt.startswith("Is water wet?"):
        return "probe"
    if "numbered list of" in prompt:
        return "bootstrap"
    if prompt.rstrip().endswith("Is it classification?"):
        return "classify"
    if prompt.rstrip().endswith(("Input:", "Class label:")):
        return "instances"
    if '"rating"' in prompt:
        return "score"
    if prompt.endswith(("Judgement:", "Response:")) or "\nInstruction:\n" in prompt:
        return "evolve"
    return "other"


class SelfInstructReplies:
    """A competent teacher's replies, in chat form, to every stage's prompts: a bootstrap reply continues the
    prompt's list with new synthetic instructions (_synthetic.py: about 15% near-copies of earlier ones, which the
    ROUGE-L filter rejects) up to the number before its stop ("16." by default); classify says Yes for about one
    task in five (by the task's text, so every order of the same run gets the same labels); instances two
    well-formed examples (class labels for a classification task); score a rating; evolve what evolve_reply gives."""

    def __init__(self, seed: int):
        self.sentences = SentenceGenerator(seed)
        self.n = itertools.count()

    def __call__(self, prompt: str, kind: str | None = None) -> str:
        kind = kind or request_kind(prompt, None)
        n = next(self.n)
        task = prompt.rsplit("Task:", 1)[-1].split("\n")[0].strip()
        if kind == "bootstrap":  # the list goes on from the prompt's last number to the one before max_number
            first = int(prompt.rstrip().rsplit("\n", 1)[-1].rstrip(".") or 9)
            last = int(m.group(1)) - 1 if (m := re.search(r"up to task (\d+)", prompt)) else first + 6
            return "\n".join(f"{i}. {self.sentences.sentence()}" for i in range(first, last + 1))
        if kind == "classify":
            return "Yes" if zlib.crc32(task.encode()) % 5 == 0 else "No"
        if prompt.rstrip().endswith("Class label:"):
            return "Class label: First\nInput: the first of two options\n\nClass label: Second\nInput: the other option"
        if kind == "score":
            return json.dumps({"rating": 3 + n % 3, "reason": "clear and correct"})
        if kind == "evolve":
            return evolve_reply(prompt, n)
        return (f"Example 1\nInput: a question about {task[:30]}, case {n}\nOutput: a careful answer about "
                f"{task[-30:]}, case {n}\n\nExample 2\nInput: <noinput>\nOutput: a general answer for: {task}")


def make_handler(capacity: int, latency: float, dist: str, sigma: float, seed: int, replies: str = "fixed",
                 log=None):
    slots = asyncio.Semaphore(capacity)
    rng = random.Random(seed)
    counter = itertools.count()
    selfinstruct = SelfInstructReplies(seed)
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
                prompt = body["messages"][-1]["content"] if "messages" in body else str(body.get("prompt", ""))
                kind = request_kind(prompt, body.get("max_tokens"))
                arrive = time.time()
                async with slots:
                    start = time.time()
                    await asyncio.sleep(draw())
                    end = time.time()
                if log is not None:
                    log.write(json.dumps({"kind": kind, "arrive": arrive, "start": start, "end": end}) + "\n")
                    log.flush()
                prompts = body.get("prompt", "")
                n = len(prompts) if isinstance(prompts, list) else 1
                usage = {"prompt_tokens": 50 * n, "completion_tokens": 8 * n, "total_tokens": 58 * n}
                if path.endswith("/chat/completions"):
                    text = REPLY
                    if replies == "evolve":
                        text = evolve_reply(body["messages"][-1]["content"], next(counter))
                    elif replies == "self-instruct" and kind != "probe":
                        text = selfinstruct(prompt, kind)
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
    ap.add_argument("--replies", choices=["fixed", "evolve", "self-instruct"], default="fixed",
                    help="fixed: one short list for every prompt; evolve, self-instruct: replies to those prompts")
    ap.add_argument("--log", help="append one JSON line per request (kind, arrive, start, end) to this file")
    args = ap.parse_args()
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115 (open while the server runs)
    handler = make_handler(args.capacity, args.latency, args.dist, args.sigma, args.seed, args.replies, log)
    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
