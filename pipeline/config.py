"""Configuration: one dataclass per stage plus RunConfig, loaded from TOML, flags override.

The one config module: the generation stages, export, train and eval all read their settings from here.

Every default is the Self-Instruct code's (yizhongw/self-instruct) or Stanford Alpaca's
unless its comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from .errors import InputError, mask_dict

# Self-Instruct's blacklist (tasks a language model cannot do) plus Alpaca's additions.
DEFAULT_BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to",
    "video", "audio", "music", "flowchart", "diagram",
]


@dataclass
class TeacherConfig:
    spec: str = "embedded"  # embedded | openai:MODEL | hf:PATH_OR_ID; embedded needs no key and no network
    base_url: str = ""  # OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI); several comma-separated share the load and fail over; empty = $OPENAI_BASE_URL or OpenAI
    api: Literal["auto", "chat", "completions"] = "auto"  # chat | completions; auto = completions where a server offers it (small models follow it far better), else chat; local models: completions
    structured: Literal["auto", "on", "off"] = "auto"  # on chat, bootstrap and instances replies bound to a JSON schema where the server binds one (no preamble or markdown to read past; auto probes once, else text); on: classify too (bound to Yes|No, a small model said Yes to nearly every task)
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never stored in the manifest
    api_key: str = ""  # a key given here is used, but prefer api_key_env; the manifest shows only "***"
    concurrency: int = 8  # requests kept in flight to a server; vLLM batches them on its side
    batch_size: int = 8  # prompts per forward pass for in-process models; 8 keeps a 2-core CPU busy
    timeout_s: float = 120.0  # per request; long completions from a loaded server can take a minute
    max_retries: int = 6  # transient failures (429, 5xx, timeouts, malformed replies) retried with backoff; also retries of unparseable replies
    max_wait_s: float = 60.0  # longest backoff between two tries of one request (a Retry-After is honoured up to this)
    connect_window_s: float = 20.0  # a server not yet reached in this process is tried this long, then the run stops naming the URL (a wrong port too: this window, not outage_wait_s)
    outage_wait_s: float = 600.0  # a server that has answered and then stops or answers 503 (a restart, a redeploy, a model still loading) is waited for this long; with several, the others take its requests meanwhile
    max_consecutive_failures: int = 20  # circuit breaker: this many failed tries in a row (5xx but 503, timeouts, malformed replies) stop the run with the last error
    max_consecutive_refusals: int = 5  # this many requests in a row refused (400, 413, 422: a prompt over the server's context, a parameter it rejects), no reply between, stop the run with the server's words: the next would be refused too
    device: str = "auto"  # in-process models: auto = cuda if available, else cpu
    dtype: str = "auto"  # in-process models: auto = bfloat16 on GPU, float32 on CPU
    repetition_penalty: float = 1.15  # in-process only: small models loop without it; servers use presence_penalty
    system_prompt: str = ""  # optional system message in chat mode
    trust_remote_code: bool = False  # never run a model repository's code unless asked
    # Batch API (docs/batch.md): requests go in waves through the files and batches endpoints, at the batch price.
    batch: bool = False  # off: hosted batches answer within 24 h, not seconds; on for large runs where half the price matters more
    batch_wave_max: int = 50000  # requests per batch at most: OpenAI's limit per input file; a stage's larger wave is split
    batch_poll_s: float = 30.0  # seconds between two looks at a running batch (and its progress line); batches take minutes to hours
    batch_window: str = "24h"  # the completion_window asked for; "24h" is the only one OpenAI offers
    batch_dir: str = ""  # with batch: write each wave's JSONL here and stop, to run it elsewhere (vLLM's run_batch on a GPU box); its <id>.out.jsonl beside it is read on the next run. Empty: the server's Batch API


@dataclass
class BootstrapConfig:
    mode: Literal["self-instruct", "alpaca"] = "self-instruct"  # self-instruct | alpaca (instruction+input+output in one call)
    num_instructions: int = 100  # target number of new machine instructions (the script's default; the paper made 52K)
    num_prompt_instructions: int = 8  # in-context tasks per prompt, as in the paper
    num_machine_instructions: int = 2  # of those, machine-made ones (fewer while the pool is small)
    max_list_number: int = 16  # the prompt's numbered list stops at this number (stop sequence "16.")
    max_requests: int = 0  # give up after this many prompts; 0 = 20 x num_instructions, so an all-rejecting teacher cannot hang
    expected_yield: float = 2.0  # the dry run's kept instructions per prompt before a run has replies (a healthy run keeps 1-3; a strong teacher up to 8)
    yield_window: int = 50  # the accept rate is judged over this many recent prompts
    yield_warn: float = 0.2  # warn when fewer instructions than this are kept per prompt (a healthy run keeps about 1-3)
    yield_stop: float = 0.05  # stop (exit 6) below this: 1 kept in 20 prompts means the teacher mostly repeats itself
    use_clf_seed_tasks_only: bool = False  # Self-Instruct's option to bootstrap classification tasks only
    max_tokens: int = 1024  # Self-Instruct: room for 8 new tasks
    temperature: float = 0.7  # Self-Instruct's sampling, for diverse but on-topic tasks
    top_p: float = 0.5
    presence_penalty: float = 2.0  # Self-Instruct: push away from repeating the listed tasks
    frequency_penalty: float = 0.0
    alpaca_num_prompt_instructions: int = 3  # Alpaca: 3 seed tasks per prompt
    alpaca_num_tasks: int = 20  # Alpaca: the prompt asks for a list of 20 tasks
    alpaca_max_tokens: int = 3072  # Alpaca: instruction, input and output for up to 20 tasks
    alpaca_temperature: float = 1.0  # Alpaca's sampling
    alpaca_top_p: float = 1.0
    filter_process: Literal["auto", "on", "off"] = "auto"  # the online filter in a forked process of its own (Linux); auto = on when bootstrap streams alone (not in `run`'s flow) at 16 or more requests in flight, where its CPU held the GIL the replies wait for (benchmarks/RESULTS.md)


@dataclass
class ClassifyConfig:
    max_tokens: int = 3  # the answer is "Yes" or "No"
    chat_max_tokens: int = 24  # a chat model writes "**Answer:** Yes." or {"answer": "Yes"}, which 3 tokens would cut; the first Yes or No is read
    temperature: float = 0.0  # a judgement, not creative text: greedy
    top_p: float = 0.0
    method: Literal["auto", "logprobs", "text"] = "auto"  # logprobs | text | auto; auto = logprobs for in-process teachers (greedy text said No to every task with the embedded model), text for servers (not all return logprobs)
    calibrate: bool = True  # logprobs: pick the Yes-minus-No threshold that labels the most labelled seed tasks right, once per run
    threshold: float = 0.0  # logprobs: Yes when log P(Yes) - log P(No) is above this; used when calibration is off or the seeds hold too few labels
    top_logprobs: int = 20  # alternatives asked for the answer token; 20 is OpenAI's chat maximum, and Yes and No are nearly always among them


@dataclass
class InstancesConfig:
    max_instances: int = 5  # Self-Instruct: up to 5 instances per task
    max_tokens: int = 300  # Self-Instruct's completion budget for the instance list
    temperature: float = 0.0  # Self-Instruct generated instances greedily
    top_p: float = 0.0
    presence_penalty: float = 1.5  # Self-Instruct: discourage repeating the same instance
    frequency_penalty: float = 0.0


@dataclass
class FilterConfig:
    rouge_threshold: float = 0.7  # reject when ROUGE-L F against any pool instruction is above this
    rouge_against_seeds_only: bool = False  # the paper: the whole pool; some tools: seeds only (your own file: none)
    most_similar_k: int = 10  # Self-Instruct stored the top-10 most similar instructions
    min_words: int = 4  # Self-Instruct drops instructions of 3 words or fewer
    max_words: int = 150  # ... and of more than 150 words
    blacklist: list[str] = field(default_factory=lambda: list(DEFAULT_BLACKLIST))  # whole-word, case-insensitive
    banned_prefixes: list[str] = field(default_factory=lambda: ["Write a program"])  # Self-Instruct: programs cannot be checked
    max_instances: int = 5  # keep at most this many cleaned instances per task
    require_instances: bool = True  # a task whose instances were all cleaned away is rejected
    drop_copied_demos: bool = True  # drop an instance repeating a worked example of its own instances prompt: Gemma-3-270M copied them into 3 of its 20 kept instances
    copied_demo_min_words: int = 4  # only examples this long count: a label or short input ("Positive", "47", "25 degrees Celsius") is shared by tasks of its kind


# Words that show an evolution copied its evolving prompt: WizardLM's fourth elimination rule
# names "given prompt", "rewritten prompt", "#Rewritten Prompt#", "#Created Prompt#" (matched as
# case-insensitive substrings, so "#...#" forms are covered), plus the labels of our own prompts.
DEFAULT_PROMPT_MARKERS = [
    "given prompt", "rewritten prompt", "created prompt",
    "rewritten instruction", "original instruction", "new instruction:", "the instruction below",
]


@dataclass
class EvolveWeights:
    """Relative chance of each evolution operation, drawn per instruction and round."""

    constraints: float = 1.0  # all equal: WizardLM's script draws its evolving prompt uniformly (random.choice)
    deepen: float = 1.0
    concretize: float = 1.0
    reasoning: float = 1.0
    complicate_input: float = 1.0  # the paper's fifth in-depth method (its released script has only four)
    breadth: float = 1.0


@dataclass
class EvolveConfig:
    source: str = "filter"  # pool to evolve: a stage of this run (filter, instances, ...), "seeds", or a file/folder
    instruction_field: str = "instruction"  # column names in a user's data; Alpaca's by default
    input_field: str = "input"
    output_field: str = "output"
    rounds: int = 4  # WizardLM evolved Alpaca's 52K instructions over 4 rounds (epochs)
    weights: EvolveWeights = field(default_factory=EvolveWeights)
    min_added_words: int = 10  # WizardLM: an in-depth rewrite adds 10 to 20 words, harder but not verbose
    max_added_words: int = 20
    max_words: int = 300  # overrides filter.max_words (150) for evolved instructions: they grow each round, tables included
    max_tokens: int = 1024  # an evolved instruction, table or code included, needs far less than WizardLM's 2048
    temperature: float = 1.0  # WizardLM's sampling for every call
    top_p: float = 0.95
    answer_max_tokens: int = 2048  # WizardLM's budget for a response
    answer_temperature: float = 1.0  # WizardLM answered with the same sampling as it evolved
    answer_top_p: float = 0.95
    judge_max_tokens: int = 8  # the verdict is "Equal" or "Not equal"
    sorry_max_words: int = 80  # rule 2 (WizardLM): an answer with "sorry" and under 80 words is a refusal
    prompt_markers: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPT_MARKERS))  # rule 4, case-insensitive


@dataclass
class BudgetConfig:
    max_tokens_total: int = 0  # stop sending after this many prompt+completion tokens in the run; 0 = no limit
    max_cost: float = 0.0  # stop sending after this many dollars (needs a price for the model); 0 = no limit
    # The third price is what OpenAI bills a prompt token that its prefix cache served (docs/batch.md)
    # $ per 1M (input, output[, cached input]) tokens by model name or prefix (no third: cached = input); list prices when written, check yours
    prices: dict[str, list[float]] = field(default_factory=lambda: {
        "gpt-4o-mini": [0.15, 0.60, 0.075], "gpt-4o": [2.50, 10.00, 1.25], "gpt-4.1-mini": [0.40, 1.60, 0.10],
        "gpt-4.1": [2.00, 8.00, 0.50], "gpt-3.5-turbo": [0.50, 1.50]})
    batch_price_factor: float = 0.5  # Batch API calls (teacher.batch) cost this share of the prices above: OpenAI bills them at half


@dataclass
class DecontamConfig:
    """Rows whose instruction + input overlap an evaluation set are dropped (select and export), so a score on
    that set measures what was learned, not what was copied. `decontaminate = "rouge"` sets the method alone."""

    method: Literal["ngram", "rouge", "both", "off"] = "ngram"  # ngram = a shared 13-gram (GPT-3's test; exact and fast); rouge = ROUGE-L above rouge_threshold (also paraphrases); both = either
    against: str = ""  # JSONL of eval tasks (seed or user-oriented format, or Alpaca rows); empty = the 252 user-oriented tasks when on this machine (../shared/data or the eval cache)
    ngram: int = 13  # GPT-3 (Brown et al. 2020) counted a shared 13-gram as contamination (Llama 2: spans of 10+ tokens): long enough that stock phrases never match
    min_ngram: int = 8  # an eval text shorter than ngram words is matched whole if it has at least this many (GPT-3's floor); shorter ones ("Tell me a joke.") never
    rouge_threshold: float = 0.7  # ROUGE-L F of instruction + input to an eval item's above this = contaminated: Self-Instruct's own bar for "the same task"


@dataclass
class ExportConfig:
    formats: str = "alpaca,messages,hf,parquet"  # every format; each is small next to the run itself
    rows: Literal["instance", "task"] = "instance"  # instance = one row per instance (Self-Instruct's fine-tuning data); task = first instance only (Alpaca)
    include: list[str] = field(default_factory=lambda: ["self-instruct", "evolve"])  # every kept record a run made; with both named, one the run lacks is skipped
    include_seeds: Literal["auto", True, False] = "auto"  # auto = the human seed tasks the run's records came from (bootstrap, evolve over seeds or over a user's file), none for rows a user's --input brought; true adds the seed file's anyway, as the Self-Instruct authors' release script does (--include_seed_tasks); train split only
    eval_fraction: float = 0.1  # of task families (a task and its evolutions), not rows, so no near-duplicates sit on both sides; 10% still gives tens
    seed: int = 42  # the split is drawn from random.Random(seed): same run + same seed = same split
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig, metadata={"shorthand": "method"})  # [export.decontaminate]: the last door before training


# Words instructions use interchangeably, one group a line; the first word stands for the group. Kept to
# near-certain synonyms: a wrong group would merge distinct tasks (near-duplicate checks never see meaning).
DEFAULT_SYNONYMS = [
    "give provide list name suggest offer", "write compose draft", "create generate produce make",
    "explain describe", "tip advice suggestion recommendation", "summary summarize", "short brief",
    "story tale", "rewrite rephrase paraphrase reword", "find identify determine", "choose pick select",
    "classify categorize", "big large", "small little", "quick fast rapid", "start begin", "fix correct",
]


@dataclass
class ScoreConfig:
    """`seed2lora score`: a judge rates each kept instance 1-5 (AlpaGasus-style data selection)."""

    teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(spec=""))  # [score.teacher]: the judge; spec "" = the run's own [teacher]
    max_tokens: int = 96  # a rating and one line of reason; JSON with a sentence fits in under 100 tokens
    temperature: float = 0.0  # a judgement: greedy, so a re-run rates the same
    json_mode: bool = True  # ask chat servers for a JSON object (OpenAI response_format); the tolerant parser reads any other reply
    # logprobs: the rating is 1 + 4 P(Yes) from the log-probabilities of "Good example? Yes/No" (prompts/score_yesno.txt),
    # for judges too small to write a rating (the embedded model rated none of 10 instances in 7 tries each);
    # auto = logprobs for in-process judges, the written 1-5 rubric for servers
    method: Literal["auto", "logprobs", "text"] = "auto"
    top_logprobs: int = 20  # logprobs: alternatives asked for the answer token, as [classify]


@dataclass
class IfdConfig:
    """Instruction-following difficulty (Cherry LLM, Li et al. 2024) with the student: the [train] model."""

    batch_size: int = 8  # rows per forward pass; 8 keeps a 2-core CPU busy without padding waste
    max_len: int = 512  # tokens of instruction + response; Cherry LLM scored at 512, longer rows are cut


@dataclass
class SelectConfig:
    """`seed2lora select`: near-duplicates out, then a top slice by judge score, IFD or at random."""

    # judge | ifd | random | all (near-duplicates and contaminated rows out, nothing else). all: on Alpaca's davinci
    # rows and a 135M student, the judge's and IFD's top quarters both did worse than a random quarter
    # (RESULTS.md, "The selection experiment"): rank only where eval's reference loss shows it helps your student
    by: Literal["judge", "ifd", "random", "all"] = "all"
    top: int = 0  # keep this many rows; 0 = use frac
    frac: float = 0.5  # share of rows to keep when top is 0; AlpaGasus kept 9K of 52K, half is a gentler first cut
    ifd_max: float = 1.0  # IFD >= 1: the instruction does not help the student predict the answer; Cherry LLM drops these as misaligned
    near_dup_threshold: float = 0.7  # Jaccard of content-word sets (instruction + input) at which a row duplicates a kept one; 0 = off. 0.5 still flags no pair of the 175 seeds
    near_dup_synonyms: list[str] = field(default_factory=lambda: list(DEFAULT_SYNONYMS))  # each a group of words counted as its first
    num_perm: int = 128  # MinHash permutations: Jaccard estimated to about +-0.09 (1/sqrt(128)); candidates are then checked exactly
    seed: int = 42  # random selection and MinHash permutations
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig, metadata={"shorthand": "method"})  # [select.decontaminate]: contaminated rows go before ranking


# Training defaults are the QLoRA paper's recipe (Dettmers et al. 2023, artidoro/qlora's qlora.py)
# unless a comment says otherwise.
@dataclass
class TrainConfig:
    model: str = ""  # a local HF folder; empty = the embedded SmolLM2-135M-Instruct, which needs no download
    output_dir: str = ""  # empty = <run dir>/adapter for run/export input, else ./adapter
    # Quantization (QLoRA)
    quant: Literal["auto", "4bit", "none"] = "auto"  # auto = 4bit on CUDA (~4x less weight memory; QLoRA matched 16-bit LoRA quality), none on CPU while the unquantized base (bf16 where the CPU has bf16 instructions, else fp32) fits in half the free memory (4-bit is ~2x slower there: weights de-quantized in every matmul); true/false = 4bit/none
    quant_type: str = "nf4"  # NormalFloat4 is information-theoretically optimal for normally distributed weights (QLoRA)
    double_quant: bool = True  # quantizes the quantization constants too: ~0.37 bits/param saved at no quality cost
    compute_dtype: str = "auto"  # auto = bf16 on GPUs that have it (fp16's range overflows); on CPU with bf16 instructions (AVX512-BF16/AMX) a bf16 base under bf16 autocast, as QLoRA's GPU recipe computes (LoRA weights and optimizer stay fp32): activations half the bytes of fp32 weights' autocast, which lets micro-batches skip the recompute inside 3 GB (RESULTS.md); else fp32
    # LoRA
    lora_r: int = 64  # QLoRA: r=64 on every linear layer matched full 16-bit fine-tuning; r mattered less than coverage
    lora_alpha: int = 16  # qlora.py's value; update scale alpha/r = 0.25
    lora_dropout: float = 0.05  # QLoRA used 0.05-0.1; our datasets are small but a few epochs only, so light regularisation
    lora_targets: str = "all-linear"  # every linear layer but lm_head (peft leaves the output layer out of all-linear)
    # Optimisation
    optim: str = "auto"  # auto = paged_adamw_32bit on CUDA (paged states spill to CPU RAM on memory spikes instead of OOM; paged_adamw_8bit halves them), adamw_torch on CPU (paging is CUDA's: there it ran bitsandbytes' Adam unpaged)
    learning_rate: float = 2e-4  # qlora.py for 7B-13B models; LoRA needs ~10x the full fine-tuning rate
    lr_scheduler: str = "constant_with_warmup"  # qlora.py: constant; short runs gain nothing from decay
    warmup_ratio: float = 0.03  # 3% warmup keeps the first updates of the zero-initialised LoRA-B from overshooting; rounded down, and the last update always at the full rate (a warmup starts at 0: 1 update of warmup trained nothing)
    max_grad_norm: float = 0.3  # qlora.py: clipping at 0.3 steadied training with paged optimisers
    weight_decay: float = 0.0  # qlora.py; the adapters are tiny and few epochs are run
    gradient_checkpointing: bool = True  # bound activation memory: on CUDA by checkpointing (activations dominate memory at long sequences; ~30% more compute); on CPU by micro-batches that fit activation_memory_gb without the recompute, else by checkpointing. Off: neither (the 135M model's packed 512 x 4 then peaked at 4.3-5.8 GB RSS)
    activation_memory_gb: float = 1.5  # CPU: a device batch is split into micro-batches (the same update: the loss is averaged over the whole batch's tokens) whose stored activations, estimated from the model's width and depth, fit this; they train without checkpointing's recompute (2,016 tokens a step: 2.0-2.2x fp32's speed, peak 2.7-2.8 GB, RESULTS.md). 1.5: the 135M model's 2 x 512 packed rows (1.4 GB measured); 0 = always checkpoint
    batch_size: int = 4  # rows per device per micro-step: fits a 7B QLoRA at 1024 tokens on a 24 GB GPU
    grad_accum: int = 4  # x batch_size = 16 rows per update, qlora.py's effective batch
    epochs: float = 3.0  # Alpaca and Self-Instruct fine-tuned for 2-3 epochs
    max_steps: int = -1  # -1 = run the epochs; set for quick runs (it then wins over epochs)
    max_seq_len: int = 1024  # tokens incl. template; Self-Instruct/Alpaca rows average ~320, so almost none are cut
    packing: bool = False  # off = one example per row, as qlora.py trains; on = ~2x tokens/s, fewer and fuller rows
    chunked_loss: bool = True  # cross-entropy on response positions only, in chunks: no full fp32 logits in memory
    loss_chunk_tokens: int = 0  # positions per loss chunk; 0 = auto: 1024 on CUDA (1024 x 152k-vocab fp32 = 0.6 GB at most), 256 on CPU (as fast, and peak RSS of packed 512 x 4 fell from up to 3.05 to 2.3 GB)
    attn_implementation: str = "sdpa"  # PyTorch's fused attention, no extra package; flash_attention_2 if installed
    # Evaluation, checkpoints, logging
    eval_fraction: float = 0.1  # held out when the data has no eval split (an export has one)
    eval_steps: int = 50  # eval loss every this many updates, and always at the end
    save_steps: int = 50  # checkpoint for --resume every this many updates (a GPU update takes seconds)
    save_every_s: float = 600.0  # and after this many seconds of training since the last one: on CPU an update takes 20-60 s, so 50 of them were up to 50 minutes an interrupt lost; 0 = by steps only
    save_total_limit: int = 2  # old checkpoints are deleted; 2 keeps one in case the newest is torn
    logging_steps: int = 1  # the loss curve shows every update; logging a float costs nothing
    max_examples: int = 0  # 0 = all; a cap for quick trials
    seed: int = 42  # data order, LoRA init and dropout
    resume: bool = True  # continue from the newest checkpoint in <output_dir>/checkpoints, as every stage resumes
    trust_remote_code: bool = False  # never run a model repository's code unless asked

    def __post_init__(self) -> None:
        if isinstance(self.quant, bool):  # TrainConfig(quant=False), as code written when quant was a bool does
            self.quant = OLD_VALUES["TrainConfig.quant"][self.quant]


@dataclass
class EvalConfig:
    data: str = ""  # JSONL of tasks; "user-oriented" = Self-Instruct's 252 tasks, downloaded once into the user cache; empty = those if on this machine (../shared/data or the cache), else the held-out split
    limit: int = 0  # evaluate this many tasks (seeded sample); 0 = all
    max_new_tokens: int = 256  # user-oriented reference outputs average ~50 words; 256 tokens leaves room
    batch_size: int = 8  # prompts per generate() call; sorted by length so padding stays small
    repetition_penalty: float = 1.0  # score the model as trained; both sides get the same decoding anyway
    quant: str = "auto"  # auto | 4bit | none; auto = the base as it was trained (4-bit for QLoRA), so logits match training
    reference_max_tokens: int = 2048  # prompt + reference tokens the reference loss reads; longer items are cut (the 252 user-oriented ones are all shorter)
    # [eval.judge]: the pairwise judge is a teacher like any other, so it takes [teacher]'s keys (base_url, api,
    # api_key_env, concurrency, ...); spec "" = no judge, ROUGE-L only. `judge = "openai:gpt-4o-mini"` (a string)
    # still means the spec alone: configs written before the judge was a table keep working.
    judge: TeacherConfig = field(default_factory=lambda: TeacherConfig(spec=""), metadata={"shorthand": "spec"})
    seed: int = 0  # task sample and A/B order for the judge

    def __post_init__(self) -> None:
        if isinstance(self.judge, str):  # EvalConfig(judge="embedded"), as in code written for the string form
            self.judge = TeacherConfig(spec=self.judge)


@dataclass
class CostConfig:
    """`seed2lora cost`: what a dataset cost and when training pays for itself against a longer prompt."""

    serve_usd_per_1k_tokens: float = 0.002  # price of the model the adapter serves on; $0.002 is the classic break-even example's
    finetuned_usd_per_1k_tokens: float = 0.0  # price with the adapter; 0 = the same (one base serves both, as `seed2lora serve` does)
    call_tokens: int = 0  # tokens of one call without extra context; 0 = measured: a mean training row (request + answer)
    context_tokens: int = 0  # tokens a call carries instead of the adapter; 0 = measured: context_examples training rows
    context_examples: int = 8  # examples shown in the prompt instead of training; Self-Instruct's own prompts show 8
    train_usd: float = 0.0  # what training cost; 0 = measured: the adapter's training time at the hourly price below
    gpu_usd_per_hour: float = 2.0  # one rented data-centre GPU on demand, order of magnitude; set yours
    cpu_usd_per_hour: float = 0.1  # a small cloud VM, for adapters trained on CPU
    adapter: str = ""  # adapter folder whose training_summary.json gives the time; empty = <run>/adapter


@dataclass
class RunConfig:
    run_name: str = "run"  # the run directory is output_dir/run_name; re-running the same name resumes it
    output_dir: str = "outputs"  # run directories go under here
    seed: int = 42  # every random choice derives from this; same seed + same replies = same dataset
    seed_tasks: str = ""  # seed file (JSONL, JSON, CSV, TSV, parquet or a datasets folder); empty = the bundled seeds/seed_tasks.jsonl
    prompts_dir: str = ""  # folder of prompt templates; empty = the bundled prompts/
    # What `run` runs, in this order: bootstrap, classify, instances, filter, evolve, score, ifd, select, export, train, eval.
    stages: list[str] = field(default_factory=lambda: ["bootstrap", "classify", "instances", "filter"])
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    instances: InstancesConfig = field(default_factory=InstancesConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    export: ExportConfig = field(default_factory=ExportConfig)  # the same tables `seed2lora export/train/eval --config` read
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    ifd: IfdConfig = field(default_factory=IfdConfig)
    select: SelectConfig = field(default_factory=SelectConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    # Not a setting (no annotation, so no field, never in the manifest): the dotted keys the config file, a flag,
    # --set or the Python API named, as load_config records them. None: built in code (see was_given).
    given = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config for the manifest, secrets masked."""
        return mask_dict(dataclasses.asdict(self))

    def was_given(self, dotted: str) -> bool:
        """Whether `dotted` was named rather than left at its default by omission, so a resume that leaves out
        --teacher is told from one that names the default teacher on purpose. A config built in code (no record)
        names the keys that differ from their defaults."""
        if self.given is not None:
            return dotted in self.given
        return value_at(self, dotted) != value_at(RunConfig(), dotted)

    def give(self, keys: Iterable[str]) -> None:
        """Record `keys` as named too (the Python API's arguments over a RunConfig built in code)."""
        before = self.given if self.given is not None else {
            k for k in named_keys(dataclasses.asdict(self)) if self.was_given(k)}
        self.given = frozenset({*before, *(shorthand_key(RunConfig, k) for k in keys)})


@dataclass(frozen=True)
class Range:
    """The values a number setting allows; None = no bound on that side; `but`, one value inside them that is not."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    but: float | None = None

    def holds(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt) and v != self.but)

    def __str__(self) -> str:
        but = "" if self.but is None else f", but not {self.but:g}"
        if self.ge is not None and self.le is not None:
            return f"{self.ge:g} to {self.le:g}{but}"
        low = f"{self.ge:g} or more" if self.ge is not None else f"more than {self.gt:g}" if self.gt is not None else ""
        high = f"at most {self.le:g}" if self.le is not None else f"less than {self.lt:g}" if self.lt is not None else ""
        return ", ".join(filter(None, [low, high])) + but


COUNT, NON_NEGATIVE, POSITIVE = Range(ge=1), Range(ge=0), Range(gt=0)
SHARE, PENALTY = Range(ge=0, le=1), Range(ge=-2, le=2)  # a probability or fraction; OpenAI's and vLLM's penalties
# The range of each number setting, as "Class.field": checked with the types (_coerce), so a value out of range
# stops the command with exit 2 and the allowed range, before anything runs. Settings not named take any value
# (seeds, classify.threshold). The same TeacherConfig serves [teacher], [score.teacher] and [eval.judge].
RANGES: dict[str, Range] = {
    "TeacherConfig.concurrency": COUNT,  # 0 in flight never sends a request: the stage would wait forever
    "TeacherConfig.batch_size": COUNT,  # an empty batch answers nothing
    "TeacherConfig.timeout_s": POSITIVE,  # 0 s fails every request before it is sent
    "TeacherConfig.max_retries": NON_NEGATIVE,  # 0 = no retry; a negative count means nothing
    "TeacherConfig.max_wait_s": NON_NEGATIVE,  # a wait; 0 = retry at once
    "TeacherConfig.connect_window_s": NON_NEGATIVE,
    "TeacherConfig.outage_wait_s": NON_NEGATIVE,
    "TeacherConfig.max_consecutive_failures": COUNT,  # 0 would trip the breaker before the first try
    "TeacherConfig.max_consecutive_refusals": COUNT,  # likewise
    "TeacherConfig.repetition_penalty": POSITIVE,  # transformers divides logits by it: 0 or less inverts or breaks them
    "BootstrapConfig.num_instructions": COUNT,  # a target of none: nothing to generate
    "BootstrapConfig.num_prompt_instructions": COUNT,  # a prompt shows at least one example task
    "BootstrapConfig.num_machine_instructions": NON_NEGATIVE,
    "BootstrapConfig.max_list_number": Range(ge=2),  # the list starts at 1; the stop number must come after it
    "BootstrapConfig.max_requests": NON_NEGATIVE,  # 0 = 20 x num_instructions
    "BootstrapConfig.expected_yield": POSITIVE,  # prompts needed = missing / yield: 0 divides by zero
    "BootstrapConfig.yield_window": COUNT,
    "BootstrapConfig.yield_warn": NON_NEGATIVE,  # kept per prompt: 0 = never warn
    "BootstrapConfig.yield_stop": NON_NEGATIVE,  # 0 = never stop
    "BootstrapConfig.max_tokens": COUNT,
    "BootstrapConfig.temperature": NON_NEGATIVE,  # sampling temperatures: 0 = greedy, below 0 is no distribution
    "BootstrapConfig.top_p": SHARE,  # a probability mass, as every top_p
    "BootstrapConfig.presence_penalty": PENALTY,
    "BootstrapConfig.frequency_penalty": PENALTY,
    "BootstrapConfig.alpaca_num_prompt_instructions": COUNT,
    "BootstrapConfig.alpaca_num_tasks": COUNT,
    "BootstrapConfig.alpaca_max_tokens": COUNT,
    "BootstrapConfig.alpaca_temperature": NON_NEGATIVE,
    "BootstrapConfig.alpaca_top_p": SHARE,
    "ClassifyConfig.max_tokens": COUNT,
    "ClassifyConfig.chat_max_tokens": COUNT,
    "ClassifyConfig.temperature": NON_NEGATIVE,
    "ClassifyConfig.top_p": SHARE,
    "ClassifyConfig.top_logprobs": COUNT,  # Yes and No must be among at least one alternative
    "InstancesConfig.max_instances": COUNT,
    "InstancesConfig.max_tokens": COUNT,
    "InstancesConfig.temperature": NON_NEGATIVE,
    "InstancesConfig.top_p": SHARE,
    "InstancesConfig.presence_penalty": PENALTY,
    "InstancesConfig.frequency_penalty": PENALTY,
    "FilterConfig.rouge_threshold": SHARE,  # ROUGE-L F is 0 to 1
    "FilterConfig.most_similar_k": NON_NEGATIVE,
    "FilterConfig.min_words": NON_NEGATIVE,
    "FilterConfig.max_words": COUNT,  # 0 would reject every instruction
    "FilterConfig.max_instances": COUNT,  # 0 would keep no instance, and require_instances rejects the task
    "FilterConfig.copied_demo_min_words": NON_NEGATIVE,
    **{f"EvolveWeights.{op}": NON_NEGATIVE for op in ("constraints", "deepen", "concretize", "reasoning",
                                                       "complicate_input", "breadth")},  # relative chances; 0 = never
    "EvolveConfig.rounds": NON_NEGATIVE,
    "EvolveConfig.min_added_words": NON_NEGATIVE,
    "EvolveConfig.max_added_words": NON_NEGATIVE,
    "EvolveConfig.max_words": COUNT,
    "EvolveConfig.max_tokens": COUNT,
    "EvolveConfig.temperature": NON_NEGATIVE,
    "EvolveConfig.top_p": SHARE,
    "EvolveConfig.answer_max_tokens": COUNT,
    "EvolveConfig.answer_temperature": NON_NEGATIVE,
    "EvolveConfig.answer_top_p": SHARE,
    "EvolveConfig.judge_max_tokens": COUNT,
    "EvolveConfig.sorry_max_words": NON_NEGATIVE,
    "BudgetConfig.max_tokens_total": NON_NEGATIVE,  # 0 = no limit
    "BudgetConfig.max_cost": NON_NEGATIVE,  # 0 = no limit
    "DecontamConfig.ngram": COUNT,  # a 0-gram would match every row
    "DecontamConfig.min_ngram": COUNT,
    "DecontamConfig.rouge_threshold": SHARE,  # ROUGE-L F lies in [0, 1]
    "ExportConfig.eval_fraction": Range(ge=0, lt=1),  # a share of task families; 1 would leave no training data
    "ScoreConfig.max_tokens": COUNT,
    "ScoreConfig.temperature": NON_NEGATIVE,
    "ScoreConfig.top_logprobs": COUNT,
    "IfdConfig.batch_size": COUNT,
    "IfdConfig.max_len": Range(ge=2),  # IFD compares the loss of a response with and without its instruction
    "SelectConfig.top": NON_NEGATIVE,  # 0 = use frac
    "SelectConfig.frac": Range(gt=0, le=1),  # a share of rows; 0 would keep nothing
    "SelectConfig.ifd_max": POSITIVE,
    "SelectConfig.near_dup_threshold": SHARE,  # a Jaccard similarity; 0 = off
    "SelectConfig.num_perm": COUNT,
    "TrainConfig.lora_r": COUNT,  # the rank of the update: 0 trains nothing
    "TrainConfig.lora_alpha": POSITIVE,
    "TrainConfig.lora_dropout": Range(ge=0, lt=1),  # a probability; 1 drops every activation
    "TrainConfig.learning_rate": POSITIVE,
    "TrainConfig.warmup_ratio": SHARE,  # of the training steps
    "TrainConfig.max_grad_norm": NON_NEGATIVE,  # 0 = no clipping
    "TrainConfig.weight_decay": NON_NEGATIVE,
    "TrainConfig.batch_size": COUNT,
    "TrainConfig.grad_accum": COUNT,
    "TrainConfig.epochs": POSITIVE,
    "TrainConfig.max_steps": Range(ge=-1, but=0),  # -1 = run the epochs; 0 updates trained one (transformers' loop)
    "TrainConfig.max_seq_len": Range(ge=2),  # a row needs a prompt token and a response token
    "TrainConfig.loss_chunk_tokens": NON_NEGATIVE,  # 0 = auto
    "TrainConfig.activation_memory_gb": NON_NEGATIVE,  # 0 = always checkpoint on CPU
    "TrainConfig.eval_fraction": Range(ge=0, lt=1),  # 1 would leave no training data
    "TrainConfig.eval_steps": COUNT,
    "TrainConfig.save_steps": COUNT,
    "TrainConfig.save_every_s": NON_NEGATIVE,
    "TrainConfig.save_total_limit": COUNT,  # 0 would delete the checkpoint --resume needs
    "TrainConfig.logging_steps": COUNT,
    "TrainConfig.max_examples": NON_NEGATIVE,  # 0 = all
    "EvalConfig.limit": NON_NEGATIVE,  # 0 = all
    "EvalConfig.max_new_tokens": COUNT,
    "EvalConfig.batch_size": COUNT,
    "EvalConfig.repetition_penalty": POSITIVE,
    "EvalConfig.reference_max_tokens": Range(ge=2),
    "CostConfig.serve_usd_per_1k_tokens": NON_NEGATIVE,  # prices, token counts and hours: none is negative
    "CostConfig.finetuned_usd_per_1k_tokens": NON_NEGATIVE,
    "CostConfig.call_tokens": NON_NEGATIVE,
    "CostConfig.context_tokens": NON_NEGATIVE,
    "CostConfig.context_examples": NON_NEGATIVE,
    "CostConfig.train_usd": NON_NEGATIVE,
    "CostConfig.gpu_usd_per_hour": NON_NEGATIVE,
    "CostConfig.cpu_usd_per_hour": NON_NEGATIVE,
}


# Values a setting took before its type changed, and what they mean now: configs, --set values, recorded training
# summaries and Python callers written for the old type keep working (quant was a bool: true = the 4-bit base).
OLD_VALUES: dict[str, dict[Any, Any]] = {
    "TrainConfig.quant": {True: "4bit", False: "none"},
}


def current_values(cls: type, recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded table of `cls` (a summary's config, checkpoint settings) with values of a setting's old type
    (OLD_VALUES) read as they are now, so quant = true compares equal to "4bit"; all else as recorded."""
    def now(key: str, v: Any) -> Any:
        old = OLD_VALUES.get(f"{cls.__name__}.{key}")
        return old[v] if old and isinstance(v, bool) and v in old else v

    return {k: now(k, v) for k, v in recorded.items()}


USER_ORIENTED_NAME = "user-oriented"  # what eval.data / --data say to ask for Self-Instruct's 252 tasks by name


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a TOML file (or none: all defaults) and apply dotted overrides like {"teacher.spec": "embedded"}."""
    data, text = _read_toml(path)
    cfg = _build(RunConfig, data, Path(path) if path else None, text, section=None)
    for dotted, value in (overrides or {}).items():
        set_value(cfg, dotted, value)
    cfg.given = frozenset({*named_keys(data), *(shorthand_key(RunConfig, k) for k in overrides or {})})
    for table in (cfg.teacher, cfg.score.teacher, cfg.eval.judge):
        # The folder a run's waves wait in must be the same on every later command, from any directory: a relative
        # one is read from the current directory once and recorded whole in the manifest
        if table.batch_dir:
            table.batch_dir = str(Path(table.batch_dir).expanduser().absolute())
    # The run's adapter, seeds and prompts likewise: a relative one, recorded as given, was read under the current
    # directory of each later command (Run.open from another one too): another folder's seeds.jsonl, taken
    # silently; an adapter sought there (eval: "not an adapter folder") or trained afresh there (train)
    # The eval set, the decontamination sets and cost's adapter too: each was read under whichever directory a
    # later command ran in (an eval set's name, "user-oriented", is not a path)
    for table, key in ((cfg.train, "output_dir"), (cfg, "seed_tasks"), (cfg, "prompts_dir"), (cfg.eval, "data"),
                       (cfg.export.decontaminate, "against"), (cfg.select.decontaminate, "against"),
                       (cfg.cost, "adapter")):
        value = getattr(table, key)
        if value and not (table is cfg.eval and value == USER_ORIENTED_NAME):
            setattr(table, key, str(Path(value).expanduser().absolute()))
    return cfg


def named_keys(data: dict[str, Any], cls: type = RunConfig, prefix: str = "") -> set[str]:
    """The dotted settings a TOML file's tables (or a config as a dict) name; a table's one-string form
    (judge = "openai:x") names its shorthand key (eval.judge.spec)."""
    out: set[str] = set()
    hints = _hints(cls)
    for key, value in data.items():
        if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            out |= named_keys(value, hints[key], f"{prefix}{key}.")
        else:
            out.add(prefix + shorthand_key(cls, key))
    return out


def value_at(cfg: Any, dotted: str) -> Any:
    """The value of a dotted setting of a config (teacher.spec)."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def load_section(cls: type, path: str | Path | None, section: str, overrides: dict[str, Any]) -> Any:
    """A dataclass from the [section] table of a TOML file (optional), then overrides; None values are skipped.

    Override keys may name the section or not: train.lora_r works like lora_r.
    """
    data, text = _read_toml(path)
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise InputError(path, _line_of(text, section, None), f"'{section}' must be a [{section}] table",
                         f"write it as a [{section}] section")
    cfg = _build(cls, table, Path(path) if path else None, text, section=section)
    for key, value in overrides.items():
        if value is not None:
            set_value(cfg, key.removeprefix(f"{section}."), value, section=section)
    return cfg


def parse_overrides(items: Iterable[str], cls: type = RunConfig, section: str | None = None,
                    scope: Sequence[str] | None = None) -> dict[str, Any]:
    """`--set KEY=VALUE` items as {key: value}, checked against `cls` exactly as a TOML file's values are.

    A value is read as TOML (42, 0.5, true, ["a", "b"], {k = [1, 2]}); a bare word is a string only
    for a string setting, so `--set bootstrap.num_instructions=eight` is an error, not a string.
    Every command takes `section.key` (full_key); a bare key of one of the command's sections works where only one
    has it. With `section` (export, train, eval), keys come back without it: train.lora_r and lora_r give lora_r.
    `scope`: the sections a RunConfig-wide command reads (cost: cost and budget.prices); None = all of them.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key, where = key.strip(), f"--set {item}"
        if not eq or not key:
            example = f"{section}.{dataclasses.fields(cls)[0].name}=VALUE" if section else "filter.rouge_threshold=0.6"
            raise InputError(where, None, "is not KEY=VALUE", f"write e.g. --set {example}")
        key = full_key(key, (section,) if section else scope, where)
        if section:
            key = key.removeprefix(f"{section}.")
        key = shorthand_key(cls, key)
        hint, default, limits, old = _setting(cls, key, where, section)
        full = ".".join(filter(None, [section, key]))
        value = _coerce(_parse_value(raw, hint), hint, where, None, "", f"--set {full}={_example(default)}", limits,
                        old)
        if key.rpartition(".")[2] == "base_url" and out.get(key):  # a server's URLs: repeated, every one is an
            value = ",".join(filter(None, [out[key], value]))  # endpoint, as --base-url A --base-url B gives them
        out[key] = value
    return out


def full_key(key: str, scope: Sequence[str] | None, where: str) -> str:
    """A --set key as its `section.key` form, for a command that reads the sections in `scope` (None = all, with
    the top-level keys: `run` and the stage commands).

    `section.key` is taken as it is; a bare key (`rouge_threshold`, `judge.base_url`) is looked up among the keys of
    the command's sections and must belong to exactly one: `--set max_tokens=64` on `run` names five sections, so
    it is refused with their full keys. An unknown key is left for _setting to name the valid ones.
    """
    tables = [f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(_hints(RunConfig)[f.name])]
    readable = list(scope) if scope is not None else tables  # a section, or one key of it ("budget.prices")
    first = key.split(".")[0]
    if first in tables:
        if scope is not None and not any(key == r or key.startswith(f"{r}.") for r in readable):
            example = f"{readable[0]}.{dataclasses.fields(_hints(RunConfig)[readable[0]])[0].name}"
            raise InputError(where, None, f"this command does not read {key}",
                             f"set a key of {' or '.join(f'[{r}]' if '.' not in r else r for r in readable)}, "
                             f"e.g. --set {example}=VALUE")
        return key
    if scope is None and first in _hints(RunConfig):  # a top-level key: seed, run_name, output_dir, ...
        return key
    found = []
    for r in readable:
        table, _, only = r.partition(".")
        if (not only and _has(RunConfig, f"{r}.{key}")) or (only and (key == only or key.startswith(f"{only}."))):
            found.append(f"{table}.{key}")
    if len(found) > 1:
        raise InputError(where, None, f"'{key}' is ambiguous: it is {', '.join(found)}",
                         f"name the section, e.g. --set {found[0]}=VALUE")
    if found:
        return found[0]
    return f"{readable[0].split('.')[0]}.{key}" if scope is not None else key


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A config class's field types, resolved once: get_type_hints evaluates every annotation string again on
    each call, and a run's settings asked it about 1,100 times (0.3 s of a run's start, profiled)."""
    return typing.get_type_hints(cls)


def _has(cls: type, dotted: str) -> bool:
    """Whether `dotted` names a setting or table of `cls`."""
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls) or part not in {f.name for f in dataclasses.fields(cls)}:
            return False
        cls = _hints(cls)[part]
    return True


def flag_overrides(flags: dict[str, Any], sets: Iterable[str], cls: type = RunConfig,
                   section: str | None = None) -> dict[str, Any]:
    """A command's overrides: the flags given (None = not given), then --set, which wins as it does for `run`."""
    return {**{k: v for k, v in flags.items() if v is not None}, **parse_overrides(sets, cls, section)}


def default_of(dotted: str, cls: type = RunConfig) -> Any:
    """The default of a setting, e.g. default_of("bootstrap.num_instructions") == 100 (for help texts)."""
    return _setting(cls, dotted, dotted, None)[1]


def check_flag(flag: str, dotted: str, value: Any, cls: type = RunConfig) -> None:
    """A command-line flag's value checked as its setting's (`dotted`, of `cls`) is, with the flag's form as the fix:
    `--frac 2` said "select.frac: ... e.g. select.frac = 0.5", a key and a TOML line the user never typed."""
    hint, default, limits, old = _setting(cls, dotted, flag, None)
    _coerce(value, hint, flag, None, "", f"{flag} {_example(default)}", limits, old)


def set_value(cfg: Any, dotted: str, value: Any, section: str | None = None) -> None:
    """Set 'section.key' or 'key' on a config, checked like a TOML value (a flag's value, already parsed)."""
    dotted = shorthand_key(type(cfg), dotted)
    where = ".".join(filter(None, [section, dotted]))  # the key as --set names it: export.eval_fraction
    hint, default, limits, old = _setting(type(cfg), dotted, where, section)
    value = _coerce(value, hint, where, None, "", f"{where} = {_example(default)}", limits, old)
    *sections, key = dotted.split(".")
    target = cfg
    for s in sections:
        target = getattr(target, s)
    setattr(target, key, value)


def shorthand_key(cls: type, dotted: str) -> str:
    """The key a table's one-string form sets: eval.judge -> eval.judge.spec (a field's metadata "shorthand").

    Any other key comes back as it is; an unknown one is left for _setting to name.
    """
    f = None
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls) or part not in (fields := {f.name: f for f in dataclasses.fields(cls)}):
            return dotted
        f, cls = fields[part], _hints(cls)[part]
    short = f.metadata.get("shorthand") if f is not None and dataclasses.is_dataclass(cls) else None
    return f"{dotted}.{short}" if short else dotted


def _read_toml(path: str | Path | None) -> tuple[dict[str, Any], str]:
    if path is None or path == "":
        return {}, ""
    path = Path(path)
    if path.is_dir():  # Run("outputs/NAME") for Run.open: "does not exist" said a folder that is there was missing
        raise InputError(path, None, "is a folder, not a TOML file",
                         "give a run config's TOML file; a run folder is opened by Run.open(path) in Python, "
                         "or as a command's RUN_DIR")
    if not path.is_file():
        raise InputError(path, None, "does not exist", "pass an existing TOML file to --config (config= in Python)")
    text = path.read_text(encoding="utf-8")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", None) or _line_from_message(str(e))
        raise InputError(path, line, f"is not valid TOML ({e})", "fix the TOML syntax") from None


def valid_keys(key: str, fields: Iterable[str]) -> str:
    """The fix for an unknown key: the nearest valid one first (a typo: batch_sise), then all of them."""
    near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.75)
    keys = ", ".join(sorted(fields))
    return f"did you mean '{near[0]}'? The keys here: {keys}" if near else f"use one of: {keys}"


def _setting(cls: type, dotted: str, where: str, section: str | None) -> tuple[Any, Any, Range | None, dict | None]:
    """The type, default, range and old values (OLD_VALUES) of a dotted setting of `cls`; an unknown key names the
    valid ones."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        table = ".".join(filter(None, [section, *parts[:i]]))  # the TOML table we are in, e.g. evolve.weights
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            inside = f" in [{table}]" if table else ""
            raise InputError(where, None, f"unknown key '{part}'{inside}", valid_keys(part, fields))
        hint = _hints(cls)[part]
        here = ".".join(filter(None, [table, part]))
        if dataclasses.is_dataclass(hint) and i == len(parts) - 1:
            keys = ", ".join(f.name for f in dataclasses.fields(hint))
            raise InputError(where, None, f"[{here}] is a section, not a value",
                             f"set one of its keys, e.g. --set {'.'.join(parts)}.{dataclasses.fields(hint)[0].name}=VALUE; "
                             f"its keys: {keys}")
        if not dataclasses.is_dataclass(hint) and i < len(parts) - 1:
            raise InputError(where, None, f"'{here}' is a value, not a section",
                             f"set it as --set {'.'.join(parts[:i + 1])}=VALUE")
        if dataclasses.is_dataclass(hint):
            cls = hint
            continue
        f = fields[part]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return hint, default, RANGES.get(f"{cls.__name__}.{part}"), OLD_VALUES.get(f"{cls.__name__}.{part}")
    raise AssertionError("unreachable")


def _parse_value(raw: str, hint: Any) -> Any:
    """A --set value: TOML if it parses, else the bare text, which only a string setting accepts."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()
    if hint is str and not isinstance(value, str):
        return raw.strip()  # --set run_name=2024 names the run "2024"
    return value


def _build(cls: type, data: dict[str, Any], path: Path | None, text: str, section: str | None) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        line = _line_of(text, key, section)
        if key not in fields:
            inside = f" in [{section}]" if section else ""
            raise InputError(path, line, f"unknown key '{key}'{inside}", valid_keys(key, fields))
        hint = hints[key]
        table = f"{section}.{key}" if section else key
        if dataclasses.is_dataclass(hint):
            if isinstance(value, str) and fields[key].metadata.get("shorthand"):
                value = {fields[key].metadata["shorthand"]: value}  # judge = "openai:x" is [eval.judge] spec = "openai:x"
            if not isinstance(value, dict):
                raise InputError(path, line, f"'{table}' must be a [{table}] table", f"write it as a [{table}] section")
            kwargs[key] = _build(hint, value, path, text, section=table)
            continue
        f = fields[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        name = f"[{section}] {key}" if section else key
        kwargs[key] = _coerce(value, hint, path, line, f"{name} = {_toml_value(value)}", f"{key} = {_example(default)}",
                              RANGES.get(f"{cls.__name__}.{key}"), OLD_VALUES.get(f"{cls.__name__}.{key}"))
    return cls(**kwargs)


# What each type of setting takes, in the words of the error messages.
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list of strings", dict: "a table of [input, output] or [input, output, cached input] prices"}


def _coerce(value: Any, hint: Any, where: str | Path | None, line: int | None, name: str, example: str,
            limits: Range | None = None, old: dict[Any, Any] | None = None) -> Any:
    """`value` checked against a setting's type and range (RANGES): the one check for TOML files, --set and flags.

    An int is taken where a float is wanted (rouge_threshold = 1), and a value of the setting's old type becomes
    its new one (`old`, from OLD_VALUES: quant = true is quant = "4bit"); nothing else is converted.
    """
    if old and isinstance(value, bool) and value in old:
        value = old[value]
    origin = typing.get_origin(hint) or hint
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices or (isinstance(value, int) and not isinstance(value, bool)):  # 1 == True
            said = ", ".join(c if isinstance(c, str) else _toml_value(c) for c in choices)  # true, not True
            raise InputError(where, line, f"{name}: expected one of {said}" if name else f"expected one of {said}",
                             f"give one of them, e.g. {example}")
        return value
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, float),
        str: isinstance(value, str),
        list: isinstance(value, list) and all(isinstance(v, str) for v in value),
        dict: isinstance(value, dict) and all(
            isinstance(v, list) and len(v) in (2, 3) and all(isinstance(x, (int, float)) for x in v) for v in value.values()),
    }.get(origin, True)
    if not ok:
        want = _EXPECTED.get(origin, getattr(origin, "__name__", str(origin)))
        raise InputError(where, line, f"{name}: expected {want}" if name else f"expected {want}",
                         f"give {want}, e.g. {example}")
    if limits is not None and origin in (int, float) and not limits.holds(value):
        raise InputError(where, line, f"{name or _toml_value(value)} is out of range (allowed: {limits})",
                         f"give a value in range, e.g. {example}")
    return value


def _example(default: Any) -> str:
    """A setting's default as the example of an error's fix; long lists and tables cut to two items."""
    if isinstance(default, list):
        default = default[:2]
    elif isinstance(default, dict):
        default = dict(list(default.items())[:1])
    return _toml_value(default)


def _toml_value(v: Any) -> str:
    """A value as it is written in TOML (and after --set KEY=)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v, ensure_ascii=False)


def _line_of(text: str, key: str, section: str | None) -> int | None:
    """Best-effort line number of `key` (inside [section] when given) for error messages."""
    current = None
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[([^\]]+)\]", s)
        if m:
            current = m.group(1).strip()
            if section is None and current == key:
                return i
            continue
        if re.match(rf"^{re.escape(key)}\s*=", s) and current == section:
            return i
    return None


def _line_from_message(msg: str) -> int | None:
    m = re.search(r"line (\d+)", msg)
    return int(m.group(1)) if m else None


def default_toml() -> str:
    """The default config as commented TOML (`seed2lora config`); docs/config.md's reference is this text."""
    import inspect

    def comments(cls: type) -> dict[str, str]:
        found = {}
        pending = None  # a comment on its own line describes the field below it
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"^\s+(\w+):[^#]*#\s*(.*)$", line)
            if m:
                found[m.group(1)] = m.group(2)
            elif re.match(r"^\s+#\s*(.*)$", line):
                pending = line.strip()[1:].strip()
            elif pending and (m := re.match(r"^\s+(\w+):", line)):
                found[m.group(1)], pending = pending, None
        return found

    def table(obj: Any) -> list[str]:
        notes = comments(type(obj))
        lines = []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                continue
            limits = RANGES.get(f"{type(obj).__name__}.{f.name}")
            note = " ".join(filter(None, [notes.get(f.name), f"(allowed: {limits})" if limits else None]))
            note = f"  # {note}" if note else ""
            lines.append(f"{f.name} = {_toml_value(v)}{note}")
        return lines

    def sections(obj: Any, prefix: str) -> list[str]:
        """Each table below obj, nested ones ([evolve.weights], [eval.judge]) after their parent's keys."""
        lines: list[str] = []
        for f in dataclasses.fields(obj):
            section = getattr(obj, f.name)
            if dataclasses.is_dataclass(section):
                lines += ["", f"[{prefix}{f.name}]", *table(section), *sections(section, f"{prefix}{f.name}.")]
        return lines

    cfg = RunConfig()
    return "\n".join([*table(cfg), *sections(cfg, "")]) + "\n"


def _recorded_overrides(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The dotted settings of a recorded config (a manifest's, a training summary's) that `cls` still has.

    Keys it no longer has are dropped, a masked secret ("***") is no value, and a table recorded in an older
    form (a string) keeps its default; every value left is then checked like a TOML value by set_value."""
    out: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data or data[f.name] == "***":
            continue
        here = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            if isinstance(data[f.name], dict):
                out.update(_recorded_overrides(hints[f.name], data[f.name], here + "."))
        else:
            out[here] = data[f.name]
    return out


def recorded_settings(data: dict[str, Any], cls: type = RunConfig) -> dict[str, Any]:
    """A recorded config (or `to_dict()`) as its dotted settings, tables opened, masked secrets left out."""
    return _recorded_overrides(cls, data)


def toml_value(v: Any) -> str:
    """A value as --set KEY= takes it."""
    return _toml_value(v)


def config_from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """A config dataclass (RunConfig or one table) from a recorded dict, every value type-checked; the one
    place a config is rebuilt from data outside a TOML file."""
    cfg = cls()
    for dotted, value in _recorded_overrides(cls, data or {}).items():
        set_value(cfg, dotted, value)
    return cfg


def recorded_config(recorded: dict[str, Any], run_dir: str | Path, path: str | Path | None = None,
                    overrides: dict[str, Any] | None = None) -> RunConfig:
    """The config of an existing run: the TOML file at `path` if given, else the one its manifest recorded;
    output_dir and run_name name `run_dir`; then `overrides` (flags, --set)."""
    run = Path(run_dir)
    base = {} if path else _recorded_overrides(RunConfig, recorded)
    cfg = load_config(path, {**base, "output_dir": str(run.parent), "run_name": run.name, **(overrides or {})})
    # The manifest's settings were named by an earlier command, or were its defaults (an older `filter` recorded the
    # default teacher; now a command keeps the teacher tables it builds nothing from): not by this one, so a recorded
    # teacher that is not the run's own is no choice made here
    cfg.given = cfg.given - (base.keys() - {shorthand_key(RunConfig, k) for k in overrides or {}})
    return cfg
