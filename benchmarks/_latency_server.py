"""A minimal OpenAI-compatible server for benchmarks: fixed or lognormal latency, capacity C.

asyncio, stdlib only, run as its own process so that its CPU does not mix with the
client's. A request waits for one of C slots (like a GPU server's batch slots), then
for its latency, then gets a short completion. It prints its port on the first line.

    python benchmarks/_latency_server.py --capacity 256 --latency 0.5 --dist lognormal --sigma 0.8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random

REPLY = "1. An instruction\n2. Another one"


def make_handler(capacity: int, latency: float, dist: str, sigma: float, seed: int):
    slots = asyncio.Semaphore(capacity)
    rng = random.Random(seed)
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
                    choices = [{"index": 0, "message": {"role": "assistant", "content": REPLY},
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
    args = ap.parse_args()
    server = await asyncio.start_server(make_handler(args.capacity, args.latency, args.dist, args.sigma, args.seed),
                                        "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
