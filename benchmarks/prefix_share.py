"""How much of each stage's prompt tokens a hosted prefix cache can serve, before and after a prompt change.

Builds each stage's real prompts for a run on the seeds (seeds/seed_tasks.jsonl and, where present,
../shared/data/self_instruct_seed_tasks.jsonl) with the stage's own prompt builder, in the order the stage sends
them: bootstrap (self-instruct and alpaca modes, its machine pool growing with synthetic instructions from
benchmarks/_synthetic.py), classify, instances, evolve (the evolution at an operation drawn as the stage draws it,
the equality judgement, the answer) and score. Each prompt is tokenized and walked through a trie of the
stage's earlier prompts: the tokens it shares from the start with some earlier request are what a prefix cache
could serve. Three shares of the stage's prompt tokens:

- shared: any shared start (an upper bound);
- block16: the shared start in whole blocks of 16 tokens (vLLM's automatic prefix caching reuses whole KV
  blocks; 16 is its default block size);
- openai: OpenAI's rule, from its prompt caching guide: a cached prefix counts from 1,024 tokens on, in steps
  of 128 (pipeline.estimate.cacheable).

The tokenizer is tiktoken's o200k_base where tiktoken and its encoding file load, else the embedded model's
(SmolLM2, a 49K BPE vocabulary: English comes out at a similar count, slightly more tokens than o200k_base),
else 4 characters a token. "before" renders the templates of git revision --before (default: the parent of the
last commit that changed prompts/), "after" those of prompts/ now.

    PYTHONPATH=. python3 benchmarks/prefix_share.py [--requests 300] [--before REV]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _synthetic import instructions  # noqa: E402

from pipeline.config import RunConfig  # noqa: E402
from pipeline.estimate import CHARS_PER_TOKEN, cacheable  # noqa: E402
from pipeline.prompts import PROMPT_VARS, Prompts  # noqa: E402
from pipeline.records import Task  # noqa: E402
from pipeline.seeds import bundled_seeds, load_seeds  # noqa: E402
from pipeline.stages.bootstrap import build_prompt, free_places  # noqa: E402
from pipeline.stages.evolve import answer_prompt, evolution_prompt, judge_prompt, pick_operation  # noqa: E402
from pipeline.stages.instances import instance_prompt  # noqa: E402

SHARED_SEEDS = REPO.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
BLOCK = 16  # vLLM's default KV-cache block size: its prefix cache reuses whole blocks


def tokenizer() -> tuple[str, Callable[[str], list[int]]]:
    try:
        import tiktoken

        enc = tiktoken.get_encoding("o200k_base")
        return "tiktoken o200k_base", lambda text: enc.encode(text)
    except Exception:  # not installed, or its encoding file cannot be fetched (no internet)
        pass
    try:
        import llama_cpp

        from pipeline.teachers.embedded import gguf_path

        vocab = llama_cpp.Llama(str(gguf_path()), vocab_only=True, verbose=False)
        return "embedded model's (SmolLM2 BPE)", lambda text: vocab.tokenize(text.encode(), add_bos=False)
    except Exception:
        return f"approximation: {CHARS_PER_TOKEN} characters a token", \
            lambda text: list(range(-(-len(text) // CHARS_PER_TOKEN)))


def seeds() -> list[Task]:
    out = load_seeds(bundled_seeds())
    if SHARED_SEEDS.is_file():
        out += load_seeds(SHARED_SEEDS)
    return list({t.instruction: t for t in out}.values())  # a task in both files counts once


def stage_prompts(prompts: Prompts, tasks: list[Task], n: int) -> Iterator[tuple[str, list[str]]]:
    """(stage, its first n prompts in the order it sends them)."""
    cfg = RunConfig()
    rng, pool = random.Random(1), instructions(n * free_places(cfg), seed=3)
    machine: list[str] = []
    out = []
    for _ in range(n):  # the pool grows by the new places of every prompt, as at a yield of one per place
        out.append(build_prompt(prompts, cfg, rng, tasks, machine)[1])
        machine += pool[len(machine):len(machine) + free_places(cfg)]
    yield "bootstrap", out
    cfg.bootstrap.mode = "alpaca"
    yield "bootstrap (alpaca)", [build_prompt(prompts, cfg, rng, tasks, [])[1] for _ in range(n)]
    picked = [tasks[i % len(tasks)] for i in range(n)]
    yield "classify", [prompts.render("classify.txt", instruction=t.instruction) for t in picked]
    yield "instances", [instance_prompt(t, prompts)[1] for t in picked]
    ops = [pick_operation(rng, cfg.evolve.weights) for _ in picked]
    yield "evolve", [evolution_prompt(prompts, op, t.instruction, cfg.evolve)[1] for op, t in zip(ops, picked, strict=True)]
    yield "evolve_judge", [judge_prompt(prompts, t, t) for t in picked]
    yield "evolve_answer", [answer_prompt(prompts, t) for t in picked]
    yield "score", [prompts.render("score.txt", instruction=t.instruction.strip(),
                                   input=(t.instances[0].input.strip() if t.instances else "") or "(none)",
                                   output=(t.instances[0].output.strip() if t.instances else "") or "(empty)")
                    for t in picked]


def shares(token_lists: list[list[int]]) -> dict[str, float]:
    """Of all prompt tokens, the share each prefix-cache rule serves, each prompt against the earlier ones."""
    trie: dict = {}
    total = shared = block = openai = 0
    for toks in token_lists:
        node, depth = trie, 0
        for tok in toks:  # walk the earlier prompts' shared start, adding this prompt's path as it goes
            if tok not in node:
                break
            node, depth = node[tok], depth + 1
        for tok in toks[depth:]:
            node = node.setdefault(tok, {})
        total += len(toks)
        shared += depth
        block += depth // BLOCK * BLOCK
        openai += cacheable(depth)
    return {"tokens": total / max(1, len(token_lists)), "shared": shared / max(1, total),
            "block16": block / max(1, total), "openai": openai / max(1, total)}


def prompts_at(rev: str, into: Path) -> Prompts:
    for name in PROMPT_VARS:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:prompts/{name}"], check=True,
                              capture_output=True, text=True).stdout
        (into / name).write_text(text, encoding="utf-8")
    return Prompts(into)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="prompts per stage (default 300)")
    ap.add_argument("--before", default="", help="git revision of the prompts before (default: the parent of the "
                                                 "last commit that changed prompts/)")
    args = ap.parse_args()
    last = subprocess.run(["git", "-C", str(REPO), "log", "-n1", "--format=%h", "--", "prompts/"], check=True,
                          capture_output=True, text=True).stdout.strip()
    before = args.before or f"{last}^"
    name, encode = tokenizer()
    tasks = seeds()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"before": prompts_at(before, Path(tmp)), "after": Prompts()}
        results = {label: {stage: shares([encode(p) for p in texts])
                           for stage, texts in stage_prompts(p, tasks, args.requests)}
                   for label, p in sets.items()}
    print(f"prefix share of prompt tokens, {args.requests} requests a stage, {len(tasks)} seed tasks; "
          f"tokenizer: {name}; before = {before}; load average {os.getloadavg()[0]:.2f}; "
          f"{time.perf_counter() - start:.1f} s")
    print(f"{'stage':<20}{'tokens/prompt':>14}{'shared':>16}{'block16':>16}{'openai >=1024':>18}")
    print(f"{'':<20}{'before/after':>14}{'before/after':>16}{'before/after':>16}{'before/after':>18}")
    for stage in results["after"]:
        b, a = results["before"][stage], results["after"][stage]
        print(f"{stage:<20}{b['tokens']:>7.0f}/{a['tokens']:<6.0f}"
              + "".join(f"{b[k]:>9.1%}/{a[k]:<6.1%}" for k in ("shared", "block16"))
              + f"{b['openai']:>11.1%}/{a['openai']:<6.1%}")


if __name__ == "__main__":
    main()
