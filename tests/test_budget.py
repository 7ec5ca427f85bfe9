"""Every call priced at its own model: the live budget, `seed2lora cost`, `show`, old usage logs, the dry run."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from click.testing import CliRunner
from helpers import invoke, read, teacher_flags

from pipeline.budget import GENERATION_STAGES, Budget, attribute_unlogged, stage_models
from pipeline.cache import CACHE_FILE, ResponseCache
from pipeline.cli import cli
from pipeline.config import BudgetConfig, ClassifyConfig, load_config
from pipeline.cost import run_cost
from pipeline.errors import Seed2LoraError
from pipeline.estimate import estimate_run
from pipeline.prompts import Prompts
from pipeline.records import Instance, Task
from pipeline.runner import STEPS, Session
from pipeline.store import RunDir, write_jsonl_atomic
from pipeline.teachers.base import Completion, Usage

MINI, FOUR_O = (0.15, 0.60), (2.50, 10.00)  # the default [budget.prices] of gpt-4o-mini and gpt-4o, $ per 1M tokens
BOOTSTRAP = {"calls": 50, "prompt_tokens": 1_000_000, "completion_tokens": 100_000}  # $0.21 at mini, $3.50 at 4o


def usage_of(prompt: int, completion: int = 0) -> Usage:
    u = Usage()
    u.add("score", Completion("x", "stop", prompt_tokens=prompt, completion_tokens=completion))
    return u


def test_each_model_is_priced_at_its_own_price_and_the_whole_run_counts():
    budget = Budget(BudgetConfig(max_cost=1.0), {"gpt-4o-mini": {"bootstrap": dict(BOOTSTRAP)}})
    judge = usage_of(0)
    budget.track("gpt-4o", judge)
    assert not budget.exhausted()  # $0.21 of mini tokens: priced at gpt-4o they would be $3.50, over the limit
    spend = budget.spend()
    assert spend["cost_usd"] == pytest.approx(0.21) and spend["by_model"]["gpt-4o"]["cost_usd"] == 0
    judge.add("score", Completion("x", "stop", prompt_tokens=316_000))  # + $0.79 at gpt-4o: $1.00 in all
    assert budget.exhausted() and budget.reached
    assert budget.spend()["by_model"]["gpt-4o"]["cost_usd"] == pytest.approx(0.79)


def test_max_cost_with_an_unpriced_model_names_it_earlier_sessions_included():
    with pytest.raises(Seed2LoraError, match="no price for model 'local-llama'.*prices"):
        Budget(BudgetConfig(max_cost=1.0), {"local-llama": {"bootstrap": dict(BOOTSTRAP)}})
    budget = Budget(BudgetConfig(max_cost=1.0), {"local-llama": {"bootstrap": {"calls": 0, "cached": 3}}})
    with pytest.raises(Seed2LoraError, match="'qwen2.5:1.5b'"):  # tokens-free cache hits need no price; a teacher does
        budget.track("qwen2.5:1.5b", Usage())
    assert Budget(BudgetConfig(), {"local-llama": {"bootstrap": dict(BOOTSTRAP)}}).spend()["unpriced"] == ["local-llama"]


def scored_run(tmp_path, fake_openai, **overrides):
    """A run whose gpt-4o-mini teacher spent $0.21 in an earlier session; score is to use a gpt-4o judge."""
    tasks = [Task(id=f"t{i}", instruction=f"Name a fruit that is {c}.", origin="machine", stage="filter",
                  instances=[Instance("", f"A {c} fruit.")]) for i, c in enumerate(("red", "green", "yellow"))]
    run = RunDir(tmp_path / "r").ensure()
    write_jsonl_atomic(run.stage_file("filter"), tasks)
    run.update_manifest(teacher={"name": "openai:gpt-4o-mini", "model": "gpt-4o-mini"})
    cache = ResponseCache(run.path / CACHE_FILE)
    cache.log_usage("earlier", "bootstrap", BOOTSTRAP, model="gpt-4o-mini")
    cache.close()
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, '{"rating": 4, "reason": "fine"}')
    return load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:gpt-4o-mini",
                              "teacher.base_url": "http://127.0.0.1:9/v1", "budget.max_cost": 1.0,
                              "score.teacher.spec": "openai:gpt-4o", "score.teacher.base_url": fake_openai.url,
                              **overrides})


def test_a_cheap_teachers_spend_does_not_stop_a_dear_judge_at_once(fake_openai, tmp_path):
    cfg = scored_run(tmp_path, fake_openai)
    message = Session(cfg).score()  # before: BudgetReached (exit 3) with 0 calls, the mini tokens at gpt-4o prices
    assert "3 instances rated" in message and len(fake_openai.history) == 3
    assert {h["body"]["model"] for h in fake_openai.history} == {"gpt-4o"}
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    spend = manifest["spend"]
    assert set(spend["by_model"]) == {"gpt-4o-mini", "gpt-4o"}
    assert spend["by_model"]["gpt-4o-mini"]["cost_usd"] == pytest.approx(0.21)
    judge_tokens = spend["by_model"]["gpt-4o"]["prompt_tokens"], spend["by_model"]["gpt-4o"]["completion_tokens"]
    assert spend["cost_usd"] == pytest.approx(0.21 + (judge_tokens[0] * 2.5 + judge_tokens[1] * 10) / 1e6, abs=1e-6)
    cache = ResponseCache(tmp_path / "r" / CACHE_FILE)
    assert cache.usage_by_model()["gpt-4o"]["score"]["calls"] == 3  # the usage log names the judge's model
    cache.close()
    shown = CliRunner().invoke(cli, ["show", str(tmp_path / "r")], catch_exceptions=False).output
    assert "Spend:" in shown and "gpt-4o-mini $0.2100" in shown and "gpt-4o $0.0" in shown


def test_the_whole_runs_spend_still_stops_the_judge(fake_openai, tmp_path):
    cfg = scored_run(tmp_path, fake_openai, **{"budget.max_cost": 0.2})  # the teacher alone spent $0.21
    result = CliRunner().invoke(cli, ["score", str(tmp_path / "r"), "--set", "budget.max_cost=0.2",
                                      "--set", "score.teacher.spec=openai:gpt-4o",
                                      "--set", f"score.teacher.base_url={fake_openai.url}"])
    assert cfg.budget.max_cost == 0.2 and result.exit_code == 3, result.output
    assert "budget reached in score" in result.output and not fake_openai.history


def test_cost_shows_spend_per_model(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"teacher": {"name": "openai:gpt-4o-mini"},
                                                   "config": {"score": {"teacher": {"spec": "openai:gpt-4o"}}}}))
    cache = ResponseCache(run / CACHE_FILE)
    cache.log_usage("s1", "bootstrap", BOOTSTRAP, model="gpt-4o-mini")
    cache.log_usage("s2", "score", {"calls": 10, "prompt_tokens": 40_000, "completion_tokens": 1_000}, model="gpt-4o")
    cache.log_usage("s3", "judge", {"calls": 2, "prompt_tokens": 1_000, "completion_tokens": 10}, model="gpt-4.1")
    cache.close()
    c = run_cost(run)
    assert c["models"]["gpt-4o-mini"]["usd"] == pytest.approx(0.21)
    assert c["models"]["gpt-4o"]["usd"] == pytest.approx((40_000 * 2.5 + 1_000 * 10) / 1e6)  # $0.11
    assert c["models"]["gpt-4.1"]["usd"] == pytest.approx((1_000 * 2.0 + 10 * 8.0) / 1e6)  # eval's pairwise judge
    assert c["dataset_usd"] == pytest.approx(0.21 + 0.11 + 0.00208)
    out = CliRunner().invoke(cli, ["cost", str(run)], catch_exceptions=False).output
    for line in ("score", "gpt-4o-mini", "gpt-4.1", "$0.2100", "$0.1100"):
        assert line in out


def test_an_old_usage_log_without_models_loads_and_is_priced_at_the_recorded_teacher_and_judge(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    db = sqlite3.connect(run / CACHE_FILE)  # the schema before models were logged
    db.execute("CREATE TABLE usage (session TEXT, kind TEXT, calls INTEGER, errors INTEGER, cached INTEGER, "
               "prompt_tokens INTEGER, completion_tokens INTEGER, retries INTEGER, timeouts INTEGER)")
    db.execute("INSERT INTO usage VALUES ('old', 'bootstrap', 50, 0, 0, 1000000, 100000, 0, 0)")
    db.execute("INSERT INTO usage VALUES ('old', 'score', 10, 0, 0, 40000, 1000, 0, 0)")
    db.commit()
    db.close()
    manifest = {"teacher": {"name": "openai:gpt-4o-mini", "model": "gpt-4o-mini"},
                "config": {"teacher": {"spec": "openai:gpt-4o-mini"}, "score": {"teacher": {"spec": "openai:gpt-4o"}}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    c = run_cost(run)  # opens (and migrates) the old database
    assert {(s["stage"], s["model"]) for s in c["stages"]} == {("bootstrap", "gpt-4o-mini"), ("score", "gpt-4o")}
    assert c["dataset_usd"] == pytest.approx(0.21 + 0.11)
    cache = ResponseCache(run / CACHE_FILE)
    cache.record(None, Completion("x", "stop", prompt_tokens=5), "new", "score",
                 {"calls": 1, "prompt_tokens": 5}, "gpt-4.1")  # a new session's row names its model
    by_model = cache.usage_by_model()
    assert by_model[None]["bootstrap"]["calls"] == 50 and by_model["gpt-4.1"]["score"]["calls"] == 1
    assert cache.usage()["score"]["calls"] == 11  # per kind, over every model
    cache.close()
    attributed = attribute_unlogged(by_model, manifest)
    assert attributed["gpt-4o"]["score"]["calls"] == 10 and attributed["gpt-4o-mini"]["bootstrap"]["calls"] == 50
    assert attribute_unlogged({None: {"bootstrap": {"calls": 1}}}, {})["unknown"]["bootstrap"]["calls"] == 1


def test_the_dry_run_prices_every_listed_stage_at_its_own_model(tmp_path):
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:gpt-4o-mini",
                             "score.teacher.spec": "openai:gpt-4o", "bootstrap.num_instructions": 10,
                             "evolve.rounds": 2, "stages": ["bootstrap", "classify", "instances", "filter", "evolve",
                                                            "score"]})
    s = Session(cfg)
    est = estimate_run(cfg, s.prompts, s.seeds, s.run, None)
    rows = est["stages"]
    assert list(rows) == ["bootstrap", "classify", "instances", "evolve", "evolve_judge", "evolve_answer", "score"]
    assert {n: r["model"] for n, r in rows.items()} == {**{n: "gpt-4o-mini" for n in rows}, "score": "gpt-4o"}
    assert rows["evolve"]["calls"] == rows["evolve_answer"]["calls"] == 10 * 2  # the filter's 10 tasks, 2 rounds
    assert rows["evolve_answer"]["max_completion_tokens"] == 20 * cfg.evolve.answer_max_tokens
    assert rows["score"]["calls"] == 10 * cfg.filter.max_instances + 20  # every row of filter and evolve at most
    score = rows["score"]
    assert score["max_cost_usd"] == pytest.approx((score["prompt_tokens"] * 2.5 + score["max_completion_tokens"] * 10) / 1e6)
    assert est["max_cost_usd"] == pytest.approx(sum(r["max_cost_usd"] for r in rows.values()))
    out = CliRunner().invoke(cli, ["run", "--dry-run", "--output-dir", str(tmp_path), "--run-name", "r",
                                   "--teacher", "openai:gpt-4o-mini", "--set", "score.teacher.spec=openai:gpt-4o",
                                   "--set", 'stages=["bootstrap","classify","instances","filter","evolve","score"]'],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    for word in ("evolve_judge", "evolve_answer", "score", "gpt-4o-mini", "gpt-4o"):
        assert word in out.output
    assert not (tmp_path / "r").exists()  # nothing written


def test_the_dry_run_counts_only_what_is_left(tmp_path):
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:local",
                             "stages": ["score"], "export.include": ["self-instruct"]})
    run = RunDir(cfg.run_dir).ensure()
    tasks = [Task(id=f"t{i}", instruction="Name a fruit.", stage="filter", instances=[Instance("", "Apple.")] * 2)
             for i in range(3)]
    write_jsonl_atomic(run.stage_file("filter"), tasks)
    write_jsonl_atomic(run.stage_file("score"), [Task(id="t0-0", instruction="Name a fruit.", stage="score")])
    est = estimate_run(cfg, Prompts(), [], run, None)
    assert list(est["stages"]) == ["score"] and est["stages"]["score"]["calls"] == 5  # 6 rows, 1 rated
    assert est["max_cost_usd"] is None and est["unpriced"] == ["local"]
    assert read(run.stage_file("score"))  # untouched


def test_the_dry_runs_bootstrap_yield_counts_the_prompts_answered_not_those_in_flight_at_a_stop(tmp_path):
    """Killed with 3 of 8 bootstrap prompts in flight (or in an open batch), 15 kept from the 5 answered: the dry run
    read a yield of 15 / 8 ("1.88 per prompt, observed") where the run itself goes on at 3, and planned 8 calls."""
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:local",
                             "stages": ["bootstrap"], "bootstrap.num_instructions": 30})
    run = RunDir(cfg.run_dir).ensure()
    write_jsonl_atomic(run.stage_file("bootstrap"), [Task(id=f"t{i}", instruction=f"Name fruit {i}.", round=i // 3,
                                                          stage="bootstrap") for i in range(15)])  # 3 a prompt
    log = ResponseCache(run.path / CACHE_FILE)
    for n in range(8):
        log.log_request("bootstrap", n, {"prompt": f"p{n}"}, done=range(n) if n <= 5 else ())
    try:
        est = estimate_run(cfg, Prompts(), [], run, log)
    finally:
        log.close()
    assert est["bootstrap_yield_per_call"] == 3.0 and est["yield_observed"]
    assert est["stages"]["bootstrap"]["calls"] == 5  # 15 to go at 3 a prompt (the 3 unanswered sent again)


def falling_teacher(server, yields):
    """Script the fake server's bootstrap replies: reply i holds yields[i] new instructions (then 1 each), and fills
    its five lines with instructions the pool holds already, which the ROUGE-L filter rejects: the yield falls as
    the pool fills, as a real teacher's does. Returns the instructions handed out."""
    from fakeserver import _novel_instructions

    novel, made, count = _novel_instructions(), [], iter(range(10**6))

    def reply(path, body):
        i = next(count)
        fresh = [next(novel) for _ in range(yields[i] if i < len(yields) else 1)]
        lines = fresh + made[:5 - len(fresh)]
        made.extend(fresh)
        return server.wrap(path, "Here you are:\n" + "\n".join(f"{n + 9}. {t}" for n, t in enumerate(lines)))

    for _ in range(60):
        server.enqueue(reply)
    return made


def test_the_dry_runs_bootstrap_estimate_carries_on_a_falling_yield(fake_openai, tmp_path):
    """A teacher whose yield fell as the pool filled: the dry run divided what was left by the yield of every prompt
    so far and said 3 prompts (the embedded teacher: 4) where the run went on to need 6 (9). The table now counts
    the most of the yield so far, that of the last prompts and the line of its fall carried on, and says all three."""
    falling_teacher(fake_openai, [4, 3, 3, 2, 2])
    flags = [*map(str, teacher_flags(fake_openai, tmp_path)), "--num-instructions", "20", "--set",
             'stages=["bootstrap"]', "--set", "teacher.concurrency=1"]
    result = CliRunner().invoke(cli, ["run", *flags, "--set", "bootstrap.max_requests=5"])
    run = RunDir(tmp_path / "r")
    assert result.exit_code == 5 and len(run.read_stage("bootstrap")) == 14, result.output  # 4+3+3+2+2 of 20
    result = CliRunner().invoke(cli, ["run", "--dry-run", *flags])
    assert result.exit_code == 0, result.output
    line = " ".join(result.output.split())
    assert ("bootstrap's yield is falling: 2.80 instructions kept per prompt so far, 2.00 over the last 2 prompts; "
            "prompts to go: 3 at the first, 3 at the second, 6 if it goes on falling as the pool fills. The table "
            "counts 6.") in line, line
    sent = len(fake_openai.history)
    assert CliRunner().invoke(cli, ["run", *flags]).exit_code == 0  # 1 kept a prompt from here: 6 to keep 6
    assert len(run.read_stage("bootstrap")) == 20 and len(fake_openai.history) - sent == 6


def test_the_dry_run_of_a_finished_run_counts_no_call_for_a_task_a_stage_rejected(tmp_path):
    """The measured bug: a finished run whose classify rejected one task and instances another was predicted
    a classify call and two instances calls; a resume sends none (a rejection is that stage's outcome)."""
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "teacher.spec": "openai:local",
                             "bootstrap.num_instructions": 4, "stages": ["bootstrap", "classify", "instances"]})
    run = RunDir(cfg.run_dir).ensure()
    tasks = [Task(id=f"t{i}", instruction=f"Name fruit number {i}.", origin="machine") for i in range(4)]
    write_jsonl_atomic(run.stage_file("bootstrap"), tasks)
    write_jsonl_atomic(run.stage_file("classify"), tasks[:3])
    write_jsonl_atomic(run.stage_file("instances"), tasks[:2])
    run.replace_rejected("classify", [tasks[3].rejected("unparseable_reply: maybe", "classify")])
    run.replace_rejected("instances", [tasks[2].rejected("no_instances: empty", "instances")])
    calls = {name: r["calls"] for name, r in estimate_run(cfg, Prompts(), [], run, None)["stages"].items()}
    assert calls == {"bootstrap": 0, "classify": 0, "instances": 0}
    (run.stage_file("instances")).write_text("")  # instances' two records lost: those two are asked again
    calls = {name: r["calls"] for name, r in estimate_run(cfg, Prompts(), [], run, None)["stages"].items()}
    assert calls == {"bootstrap": 0, "classify": 0, "instances": 2}


GENERATION = ["--set", 'stages=["bootstrap","classify","instances","filter","score"]']
PRICED = ["--set", 'budget.prices={"fake-model" = [0.15, 0.60]}']


def test_every_stage_is_priced_at_the_model_the_run_calls():
    cfg = load_config(None, {"teacher.spec": "openai:gpt-4o-mini", "teacher.batch": True,
                             "score.teacher.spec": "openai:gpt-4o", "eval.judge.spec": "openai:gpt-4.1"})
    every = [s.name for s in STEPS]
    assert stage_models(cfg, every) == {"bootstrap": "gpt-4o-mini@batch", "classify": "gpt-4o-mini@batch",
                                        "instances": "gpt-4o-mini@batch", "evolve": "gpt-4o-mini@batch",
                                        "score": "gpt-4o", "eval": "gpt-4.1"}
    assert stage_models(load_config(None, {"teacher.spec": "openai:x"}), ["filter", "score", "eval"]) == {"score": "x"}
    # the runner's steps that call the teacher or the judge are the ones priced here
    assert {s.name for s in STEPS if s.teacher} == {*GENERATION_STAGES, "score"}


def test_an_unpriced_judge_stops_the_run_before_generation_is_paid(fake_openai, tmp_path):
    flags = [*map(str, teacher_flags(fake_openai, tmp_path)), *GENERATION, *PRICED, "--num-instructions", "3"]
    result = CliRunner().invoke(cli, ["run", *flags, "--set", "score.teacher.spec=openai:mystery-judge",
                                      "--set", f"score.teacher.base_url={fake_openai.url}", "--max-cost", "5"])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "no price for model 'mystery-judge' (called by score); nothing was sent" in output
    assert "Fix: add [budget] prices" in output
    assert not fake_openai.history and not fake_openai.probes  # before: bootstrap to filter ran and were paid
    assert not (tmp_path / "r").exists()  # and no folder, manifest or cache.sqlite


def test_an_unpriced_teacher_leaves_a_finished_run_byte_identical_and_makes_no_folder(fake_openai, tmp_path):
    CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_openai, tmp_path)), *PRICED, "--num-instructions",
                             "3"], catch_exceptions=False)
    run = tmp_path / "r"
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    sent, outputs = len(fake_openai.history), []
    for name in ("r", "new"):  # before: a manifest with status failed, and a new run's folder with cache.sqlite
        flags = ["--teacher", "openai:smollm2", "--base-url", fake_openai.url, "--output-dir", str(tmp_path),
                 "--run-name", name, *PRICED, "--max-cost", "1"]
        outputs.append(CliRunner().invoke(cli, ["run", *flags]))
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    assert not (tmp_path / "new").exists() and len(fake_openai.history) == sent
    for result in outputs:
        assert result.exit_code == 2 and "no price for model 'smollm2' (called by bootstrap, classify, " \
            "instances)" in " ".join(result.output.split()), result.output


def test_the_dry_run_says_the_run_would_stop_at_an_unpriced_model(tmp_path):
    flags = ["run", "--dry-run", "--teacher", "openai:smollm2", "--output-dir", str(tmp_path), "--run-name", "r"]
    result = CliRunner().invoke(cli, [*flags, "--max-cost", "1"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output  # as the run would: a config error, found without sending anything
    assert "bootstrap" in output and "smollm2" in output  # the estimate is still printed
    assert "the run would stop before its first call (exit 2): max_cost is set but there is no price for model " \
        "'smollm2'" in output
    result = CliRunner().invoke(cli, flags)  # no --max-cost: the price is only missing from the estimate
    assert result.exit_code == 0 and "no price for model smollm2" in result.output and "would stop" not in result.output
    assert not (tmp_path / "r").exists()


def test_usage_summed_on_from_the_last_call_equals_the_whole_log(tmp_path):
    """The manifest asks for the run's usage every few seconds: summed on from the rows of the last call, it is
    the sum of the whole log, kinds in the order of their first row, rows of another connection included."""
    cache, other = ResponseCache(tmp_path / CACHE_FILE), ResponseCache(tmp_path / CACHE_FILE)
    seen = []
    for i, kind in enumerate(["bootstrap", "classify", "bootstrap", "instances", "classify", "score"] * 3):
        (other if i % 4 == 3 else cache).log_usage(f"s{i % 2}", kind, {"calls": 1, "prompt_tokens": 10 + i,
                                                                       "completion_tokens": i, "cached_tokens": i % 3})
        if i % 5 == 0:
            seen.append(cache.usage())
    fresh = ResponseCache(tmp_path / CACHE_FILE).usage()
    assert cache.usage() == fresh and list(cache.usage()) == list(fresh) == ["bootstrap", "classify", "instances",
                                                                            "score"]
    assert fresh["bootstrap"]["calls"] == 6 and fresh["bootstrap"]["prompt_tokens"] == sum(10 + i for i in (0, 2, 6, 8, 12, 14))
    assert seen[0] == {"bootstrap": {**dict.fromkeys(fresh["score"], 0), "calls": 1, "prompt_tokens": 10}}
    assert cache.usage(exclude_session="s1")["bootstrap"]["calls"] == 6  # every bootstrap row is session s0's


def test_the_dry_run_counts_the_seed_calibration_of_a_log_probability_classify(tmp_path):
    """An in-process teacher classifies by log-probability and first asks about every labelled seed once per run:
    175 calls, most of the quickstart's prompt tokens, which the dry run left out."""
    def estimate(**settings):
        cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "r", "bootstrap.num_instructions": 20,
                                 **settings})
        s = Session(cfg)
        return estimate_run(cfg, s.prompts, s.seeds, s.run, None)["stages"], s

    rows, s = estimate()  # the embedded teacher
    labelled = [t for t in s.seeds if t.is_classification is not None]
    assert list(rows) == ["bootstrap", "classify_calibration", "classify", "instances"]
    calibration = rows["classify_calibration"]
    assert calibration["calls"] == len(labelled) == 175 and calibration["max_completion_tokens"] == 175
    assert calibration["prompt_tokens"] == sum(math.ceil(len(s.prompts.render("classify.txt", instruction=t.instruction))
                                                         / 4) for t in labelled)
    assert rows["classify"]["calls"] == 20 and rows["classify"]["max_completion_tokens"] == 20  # one token each
    s.run.ensure()
    (s.run.path / "classify_calibration.json").write_text("{}")  # calibrated already: a re-run reads it back
    assert "classify_calibration" not in estimate()[0]
    rows, _ = estimate(**{"run_name": "server", "teacher.spec": "openai:gpt-4o-mini"})  # auto = text on a server
    assert "classify_calibration" not in rows and rows["classify"]["max_completion_tokens"] == 20 * ClassifyConfig().chat_max_tokens
    rows, _ = estimate(**{"run_name": "server", "teacher.spec": "openai:gpt-4o-mini", "classify.method": "logprobs"})
    calibration = rows["classify_calibration"]
    assert calibration["calls"] == 175 and calibration["max_cost_usd"] == pytest.approx(
        (calibration["prompt_tokens"] * MINI[0] + 175 * MINI[1]) / 1e6)
    rows, _ = estimate(**{"run_name": "off", "classify.calibrate": False})
    assert "classify_calibration" not in rows


def test_the_dry_run_counts_classify_at_the_max_tokens_of_the_api_the_run_uses(fake_openai, tmp_path):
    """The measured bug: with teacher.api auto, classify was counted at classify.chat_max_tokens (24) a call where the
    run sent completions of classify.max_tokens (3): an in-process teacher, or a server whose completions endpoint
    the run's preflight chose (recorded in the manifest), was estimated 8x too high."""
    c = ClassifyConfig()
    cfg = load_config(None, {"output_dir": str(tmp_path), "run_name": "hf", "bootstrap.num_instructions": 20,
                             "classify.method": "text"})
    s = Session(cfg)
    assert estimate_run(cfg, s.prompts, s.seeds, s.run, None)["stages"]["classify"]["max_completion_tokens"] == \
        20 * c.max_tokens  # the embedded teacher: api auto is completions in process
    fake_openai.completions_endpoint = True
    flags = [*map(str, teacher_flags(fake_openai, tmp_path)), "--num-instructions", "8"]
    result = CliRunner().invoke(cli, ["run", *flags, "--set", 'stages=["bootstrap"]'])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["teacher"]["api"] == "completions"
    result = CliRunner().invoke(cli, ["run", "--dry-run", *flags, "--set", 'stages=["bootstrap","classify"]'])
    assert result.exit_code == 0, result.output
    cells = next(x for x in result.output.splitlines() if x.strip("│ ").startswith("classify")).split("│")
    assert [cells[3].strip(), cells[6].strip()] == ["8", f"{8 * c.max_tokens}"], result.output  # calls, at most
    result = CliRunner().invoke(cli, ["run", "--dry-run", *flags, "--set", 'stages=["bootstrap","classify"]',
                                      "--run-name", "fresh"])  # not probed yet: a chat reply's room, the bound
    cells = next(x for x in result.output.splitlines() if x.strip("│ ").startswith("classify")).split("│")
    assert [cells[3].strip(), cells[6].strip()] == ["8", f"{8 * c.chat_max_tokens}"], result.output


def test_the_dry_run_stops_at_a_misspelt_stage_as_the_run_does(tmp_path):
    flags = ["run", "--output-dir", str(tmp_path), "--run-name", "r", "--set", 'stages=["bootstrap","clasify"]']
    for extra in (["--dry-run"], ["--teacher", "openai:m", "--base-url", "http://127.0.0.1:1/v1"]):
        result = CliRunner().invoke(cli, [*flags, *extra])  # before: the dry run listed bootstrap alone, exit 0
        assert result.exit_code == 2, result.output
        assert "unknown stage(s) ['clasify'] in 'stages'" in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags", [["--teacher", "hf:"], ["--teacher", "openai:"], ["--teacher", "bogus"],
                                   ["--teacher", "hf:/no/such/model.gguf"], ["--teacher", "hf:/no/such/folder"],
                                   ["--set", 'stages=["bootstrap","score"]', "--set", "score.teacher.spec=hf:"]])
def test_the_dry_run_refuses_a_bad_teacher_spec_with_the_runs_own_message(tmp_path, flags):
    """Before, `run --dry-run --teacher hf:` priced a model called "hf:" and exited 0; the run exits 2."""
    base = ["run", "--output-dir", str(tmp_path), "--run-name", "r", *flags]
    real, dry = (CliRunner().invoke(cli, [*base, *extra]) for extra in ([], ["--dry-run"]))
    assert real.exit_code == dry.exit_code == 2, dry.output
    assert "error:" in real.output and dry.output == real.output  # one check, one message
    assert "Dry run" not in dry.output and not (tmp_path / "r").exists()


def test_a_batch_requests_estimate_bounds_its_prompt_tokens_in_any_script(tiny_model):
    """A Batch API wave is paid before it is read, so --max-cost sizes it by each request at its most. At 4
    characters a token (the rule of thumb) a Chinese prompt, about a token a character, was a quarter of its
    tokens, and a wave of them passed the limit. The bound: a token per UTF-8 byte plus the chat template's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    budget = Budget(BudgetConfig(max_cost=1.0, prices={"m": [1.0, 1.0]}), {})
    system = "You are a helpful assistant."
    for prompt in ("List three prime numbers.", "列出三个质数，并解释为什么它们是质数。", "🙂🙃 " * 40,
                   "def f(x):\n    return {k: v for k, v in x.items() if v}\n" * 5, "Зачем нужны простые числа?"):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        real = len(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
        usd, tokens = budget.estimate("m", system + prompt, 0)
        assert tokens >= real, (prompt, tokens, real)
        assert usd == pytest.approx(tokens / 1e6)
    assert len("列出三个质数，并解释为什么它们是质数。") / 4 < len(tok("列出三个质数，并解释为什么它们是质数。")["input_ids"])


def test_a_budget_counts_the_requests_in_flight_and_stops_near_its_limit(fake_openai, tmp_path):
    """8 requests in flight finished after a $3 limit and spent $6.05 (a llama.cpp teacher priced at $1,000 per 1M
    tokens): a new request now goes out only while the spend plus those in flight, each at the mean of the calls so
    far, stays under the limit."""
    fake_openai.default_delay = 0.05  # the replies of a wave overlap, as a real server's do
    result = invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 400,
                    "--set", "teacher.concurrency=8", "--set", "bootstrap.yield_stop=0",
                    "--set", 'budget.prices={"fake-model"=[1000, 1000]}', "--max-cost", 0.5, expect=3)
    spend = json.loads((tmp_path / "r" / "manifest.json").read_text())["spend"]
    calls = len([h for h in fake_openai.history if h["path"].endswith("/completions") and h["body"].get("max_tokens") != 1])
    assert "budget reached" in result.output and calls > 8
    per_call = spend["cost_usd"] / calls
    assert spend["cost_usd"] < 0.5 + 2 * per_call, (spend, calls)  # before: up to 8 calls past the limit


def test_the_first_wave_is_projected_at_its_most_before_any_reply_is_counted(fake_openai, tmp_path):
    """Before a model's first reply there is no mean to project the requests in flight at: the whole first wave
    (teacher.concurrency requests) went out, and 8 of them spent several times a small --max-cost. Each request in
    flight is now counted at its most (its prompt's bytes and max_tokens) until the first reply is counted."""
    fake_openai.default_delay = 0.05
    result = invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 400,
                    "--set", "teacher.concurrency=8", "--set", "bootstrap.yield_stop=0",
                    "--set", 'budget.prices={"fake-model"=[1000, 1000]}', "--max-cost", 0.02, expect=3)
    spend = json.loads((tmp_path / "r" / "manifest.json").read_text())["spend"]
    calls = len([h for h in fake_openai.history if h["path"].endswith("/completions") and h["body"].get("max_tokens") != 1])
    assert "budget reached" in result.output
    assert calls < 8, calls  # before: the first wave, all 8
    assert spend["cost_usd"] < 0.02 + 2 * spend["cost_usd"] / calls, (spend, calls)


def test_a_judge_is_projected_at_its_own_calls_not_at_the_teachers_mean():
    """A dear judge after a cheap teacher: its requests in flight count at the judge's cost, not at the mean of the
    run's calls (mostly the teacher's), which let a wave of judge calls pass the limit."""
    cfg = BudgetConfig(max_cost=1.0, prices={"gpt-4o-mini": list(MINI), "gpt-4o": list(FOUR_O)})
    budget = Budget(cfg, {"gpt-4o-mini": {"bootstrap": dict(BOOTSTRAP)}})  # $0.21 over 50 calls
    judge = usage_of(100_000, 10_000)  # one judge call: $0.35 at gpt-4o
    budget.track("gpt-4o", judge)
    assert not budget.exhausted(1, "gpt-4o")  # $0.56 + one more at $0.35 = $0.91
    assert budget.exhausted(2, "gpt-4o")  # + two: $1.26 (the run's mean, $0.011 a call, saw $0.58)
    assert not budget.exhausted(2)  # without a model: the mean of all the run's calls, as before
