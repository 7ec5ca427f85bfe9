"""The eval judge is a teacher like any other: [eval.judge] takes [teacher]'s keys, and in a run directory it
shares the run's response cache, usage log and budget. Against the fake OpenAI server; no model is loaded."""

import json
import random

import pytest

from pipeline.budget import BudgetReached
from pipeline.cache import CACHE_FILE, ResponseCache
from pipeline.config import EvalConfig, TeacherConfig, load_config, load_section, parse_overrides
from pipeline.store import RunDir
from pipeline.train.eval import (
    EvalItem,
    check_judge_budget,
    find_run_dir,
    judge_pairwise,
    judge_teacher,
    report_settings,
)


def items(n):
    return [EvalItem(id=str(i), category="", messages=[{"role": "user", "content": f"Question {i}?"}], reference="r",
                     base=f"base answer {i}", adapter=f"tuned answer {i}") for i in range(n)]


def make_run(tmp_path, budget=None):
    run = RunDir(tmp_path / "run").ensure()
    run.update_manifest(config={"budget": budget or {}})
    return run


def test_judge_is_a_teacher_table_and_the_old_string_still_means_the_spec(tmp_path):
    assert EvalConfig().judge == TeacherConfig(spec="")  # no judge: ROUGE-L only
    assert EvalConfig(judge="openai:gpt-4o-mini").judge.spec == "openai:gpt-4o-mini"
    old = tmp_path / "old.toml"
    old.write_text('[eval]\njudge = "openai:gpt-4o-mini"\n')
    assert load_config(old).eval.judge.spec == "openai:gpt-4o-mini"
    assert load_section(EvalConfig, old, "eval", {}).judge.spec == "openai:gpt-4o-mini"
    table = tmp_path / "table.toml"
    table.write_text('[eval.judge]\nspec = "openai:judge"\nbase_url = "http://127.0.0.1:9/v1"\nconcurrency = 2\n')
    judge = load_section(EvalConfig, table, "eval", {}).judge
    assert (judge.spec, judge.base_url, judge.concurrency, judge.api) == ("openai:judge", "http://127.0.0.1:9/v1", 2, "auto")
    assert parse_overrides(["judge=embedded", "judge.api=chat"], EvalConfig, "eval") == {"judge.spec": "embedded",
                                                                                         "judge.api": "chat"}
    assert load_config(None, parse_overrides(["eval.judge=embedded"])).eval.judge.spec == "embedded"
    with pytest.raises(Exception, match=r"unknown key 'nope' in \[eval.judge\]"):
        parse_overrides(["eval.judge.nope=1"])


def test_report_settings_are_json_with_the_judge_key_masked():
    settings = report_settings(EvalConfig(data="x.jsonl", judge=TeacherConfig(spec="openai:j", api_key="sk-PLANTED-0123456789")))
    assert "data" not in settings and settings["judge"]["spec"] == "openai:j" and settings["judge"]["api_key"] == "***"
    assert json.loads(json.dumps(settings)) == settings


def test_the_run_an_adapter_belongs_to(tmp_path):
    run = make_run(tmp_path)
    assert find_run_dir(run.path / "adapter") == run.path
    elsewhere = tmp_path / "adapters" / "a"
    elsewhere.mkdir(parents=True)
    assert find_run_dir(elsewhere) is None
    (elsewhere / "training_summary.json").write_text(json.dumps({"data": str(run.path / "export")}))
    assert find_run_dir(elsewhere) == run.path  # trained on the run's export


def test_judge_uses_its_base_url_and_the_runs_cache_and_usage_log(fake_openai, tmp_path):
    run = make_run(tmp_path)
    cfg = TeacherConfig(spec="openai:fake-model", base_url=fake_openai.url, concurrency=1)
    for verdict in ("A", "B", "tie"):
        fake_openai.enqueue(verdict)
    with judge_teacher(cfg, run.path, seed=0) as judge:
        result = judge_pairwise(judge, items(3), random.Random(0))
    assert len(fake_openai.history) == 3 and result["judged"] == 3 and result["cached"] == 0
    assert all(h["body"]["max_tokens"] == 8 for h in fake_openai.history)
    cache = ResponseCache(run.path / CACHE_FILE)
    assert len(cache) == 3 and cache.usage()["judge"]["calls"] == 3  # spend is in the run's durable usage log
    cache.close()
    again = items(3)
    with judge_teacher(cfg, run.path, seed=0) as judge:  # the same eval again: every verdict from the cache
        repeat = judge_pairwise(judge, again, random.Random(0))
    assert len(fake_openai.history) == 3 and repeat["cached"] == 3 and repeat["win_rate"] == result["win_rate"]
    with judge_teacher(TeacherConfig(spec=""), run.path) as judge:
        assert judge is None


def test_judge_stops_at_the_runs_budget_counting_earlier_sessions(fake_openai, tmp_path):
    run = make_run(tmp_path, budget={"max_tokens_total": 40})
    cache = ResponseCache(run.path / CACHE_FILE)
    cache.log_usage("the-run", "bootstrap", {"calls": 1, "prompt_tokens": 20})  # spent by the run's own teacher
    cache.close()
    cfg = TeacherConfig(spec="openai:fake-model", base_url=fake_openai.url, concurrency=1)
    with judge_teacher(cfg, run.path) as judge:  # each fake reply costs 12 tokens: 20 + 12 < 40 <= 20 + 24
        result = judge_pairwise(judge, items(5), random.Random(0))
        assert len(fake_openai.history) == 2 and result["not_sent"] == 3
        with pytest.raises(BudgetReached, match="3 of 5 verdicts not asked") as e:
            check_judge_budget(judge, result, run.path)
    assert e.value.exit_code == 3 and "are cached" in str(e.value)


def test_a_dead_judge_fails_before_anything_is_generated(tmp_path):
    from pipeline.errors import TeacherUnavailable

    cfg = TeacherConfig(spec="openai:fake-model", base_url="http://127.0.0.1:9/v1", connect_window_s=0.2)
    with pytest.raises(TeacherUnavailable, match="127.0.0.1:9"):
        with judge_teacher(cfg, None):
            pass
