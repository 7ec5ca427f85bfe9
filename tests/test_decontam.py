"""Decontamination (select and export against an eval set) and the eval set: found, downloaded once, or named absent."""

import dataclasses
import http.server
import json
import threading
from pathlib import Path

import pytest
from fakeserver import QueuedServer
from helpers import filtered_file_run

from pipeline import evalsets, usercache
from pipeline.config import DecontamConfig, ExportConfig, SelectConfig, load_section, parse_overrides
from pipeline.decontam import Contamination, EvalText, contamination, drop_contaminated, load_eval_texts
from pipeline.errors import Seed2LoraError
from pipeline.records import Instance, Task, task_rows
from pipeline.stages.export import dataset_card, export_run
from pipeline.stages.select import select_rows, select_run
from pipeline.store import RunDir
from pipeline.train import eval as eval_mod
from tests.test_export import make_run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EVAL_TASK = ("The sentence you are given might be too wordy, complicated, or unclear. Rewrite the sentence and make "
             "your writing clearer by keeping it concise.")


def eval_file(tmp_path, tasks=None):
    """An eval set in the user-oriented format: {id, motivation_app, instruction, instances}."""
    tasks = tasks or [
        {"id": "uo_0", "motivation_app": "Grammarly", "instruction": EVAL_TASK,
         "instances": [{"input": "If you have any questions about my rate, please let me know.", "output": "x"}]},
        {"id": "uo_1", "motivation_app": "Gmail", "instruction": "Write a polite email declining a wedding invitation "
         "from an old friend.", "instances": [{"input": "", "output": "y"}]},
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def contam(tmp_path, **kw):
    c, note = contamination(DecontamConfig(against=str(eval_file(tmp_path)), **kw))
    assert c is not None and "2 eval items of eval.jsonl" in note
    return c


def test_a_shared_13_gram_is_contamination_and_names_the_eval_item(tmp_path):
    c = contam(tmp_path)
    hit = c.check("It is unclear. Rewrite the sentence and make your writing clearer by keeping it concise, please.")
    assert hit["eval_id"] == "uo_0" and hit["method"] == "ngram"
    assert hit["match"] == "unclear rewrite the sentence and make your writing clearer by keeping it concise"
    assert c.reason(hit).startswith("contaminated: 13-gram '") and c.reason(hit).endswith("of uo_0")
    # 12 words in a row in common is not enough; the same words in another order are not a run
    assert c.check("Rewrite the sentence and make your writing clearer by keeping it concise.") is None
    assert c.check("Concise keeping by clearer writing your make and sentence the rewrite.") is None


def test_a_short_eval_text_counts_only_whole_and_only_from_min_ngram_words(tmp_path):
    # "Write a polite email declining a wedding invitation from an old friend." is 12 words: matched whole
    c = contam(tmp_path)
    hit = c.check("Task: write a polite email declining a wedding invitation from an old friend, in French.")
    assert hit["eval_id"] == "uo_1" and c.reason(hit).startswith("contaminated: whole eval text")
    assert c.check("Write a polite email declining a wedding invitation from a colleague.") is None
    tiny = Contamination(DecontamConfig(), "x", [EvalText("t", "Tell me a joke.")])
    assert tiny.check("Tell me a joke.") is None  # 4 words < min_ngram 8: a stock phrase, never a leak


def test_rouge_catches_a_reworded_copy_that_shares_no_13_gram(tmp_path):
    text = "Write a polite email that declines a wedding invitation from an old friend."
    assert contam(tmp_path).check(text) is None
    hit = contam(tmp_path, method="rouge").check(text)
    assert hit["method"] == "rouge" and hit["eval_id"] == "uo_1" and hit["score"] > 0.7
    both = contam(tmp_path, method="both")
    assert both.check(text)["method"] == "rouge"
    assert contam(tmp_path, method="rouge", rouge_threshold=0.95).check(text) is None


def test_rows_dropped_become_rejected_records_with_the_match(tmp_path):
    c = contam(tmp_path)
    tasks = [Task(id="a", instruction=EVAL_TASK, instances=[Instance("Some other input.", "out")]),
             Task(id="b", instruction="Name three rivers in Europe.", instances=[Instance("", "Rhine")])]
    rows, rejected = drop_contaminated(task_rows(tasks), c, "export")
    assert [r["id"] for r in rows] == ["b-0"]
    (r,) = rejected
    assert (r.id, r.stage, r.meta["row_of"]) == ("a-0", "export", "a")
    assert r.meta["contaminated_by"]["eval_id"] == "uo_0" and r.meta["contaminated_by"]["eval_text"].startswith(EVAL_TASK)
    assert r.reject_reason.startswith("contaminated: 13-gram")


def test_select_drops_contaminated_rows_first_and_says_so(tmp_path):
    c = contam(tmp_path)
    tasks = [Task(id="a", instruction=EVAL_TASK, instances=[Instance("x", "out")]),
             *[Task(id=f"t{i}", instruction=f"Name {i} rivers in country number {i}.", instances=[Instance("", "R")])
               for i in range(3)]]
    sel = select_rows(tasks, SelectConfig(by="all"), scores={}, ifd={}, contam=c)
    assert sel.summary["contaminated"] == 1 and sel.summary["kept_rows"] == 3
    assert [t.id for t in sel.rejected] == ["a-0"] and sel.rejected[0].stage == "select"
    assert any(d["why"].startswith("contaminated:") for d in sel.summary["dropped"])


def test_select_run_and_export_record_rejections_counts_and_the_card(tmp_path):
    run = make_run(tmp_path)
    tasks = RunDir(run).read_stage("filter")
    tasks[0].instruction = EVAL_TASK  # t0's two rows copy an eval task
    from pipeline.store import write_jsonl_atomic
    write_jsonl_atomic(RunDir(run).stage_file("filter"), tasks)
    against = str(eval_file(tmp_path))
    cfg = SelectConfig(by="all", decontaminate=DecontamConfig(against=against))
    s = select_run(RunDir(run), cfg, ["self-instruct"]).summary
    assert s["contaminated"] == 2 and "decontaminated (ngram)" in s["decontaminate"]["note"]
    info = export_run(run, tmp_path / "out", ExportConfig(seed=1, decontaminate=DecontamConfig(against=against)))
    assert info["counts"]["contaminated"] == 2 and info["counts"]["rows"] == 22
    rejected = RunDir(run).read_rejected()
    assert {(t.stage, t.id) for t in rejected if t.meta.get("contaminated_by")} == {
        ("select", "t0-0"), ("select", "t0-1"), ("export", "t0-0"), ("export", "t0-1")}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- Decontamination: decontaminated (ngram) against 2 eval items of eval.jsonl" in card
    assert "a shared 13-gram" in card and "(rows dropped: 2, each in the run's rejected.jsonl" in card
    # re-run: the stage's rejections are replaced, not appended
    export_run(run, tmp_path / "out", ExportConfig(seed=1, decontaminate=DecontamConfig(against=against)))
    assert sum(1 for t in RunDir(run).read_rejected() if t.stage == "export") == 2


def test_an_absent_default_eval_set_is_said_not_silent(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.decontam.find_user_oriented", lambda: None)
    monkeypatch.setenv(usercache.CACHE_ENV, str(tmp_path / "cache"))
    c, note = contamination(DecontamConfig())
    assert c is None and note.startswith("not decontaminated: no eval set given and the user-oriented set is absent")
    assert "--data user-oriented" in note and str(tmp_path / "cache") in note
    info = export_run(make_run(tmp_path), tmp_path / "out", ExportConfig(seed=1))
    assert info["counts"]["contaminated"] == 0 and info["decontaminate"]["note"] == note
    assert "- Decontamination: not decontaminated" in (tmp_path / "out" / "README.md").read_text()
    off = dataset_card({**info, "decontaminate": {**info["decontaminate"], "method": "off"}})
    assert "- Decontamination: off" in off
    with pytest.raises(Seed2LoraError, match="decontaminate.against"):
        contamination(DecontamConfig(against=str(tmp_path / "missing.jsonl")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(Seed2LoraError, match="holds no eval tasks"):
        contamination(DecontamConfig(against=str(tmp_path / "empty.jsonl")))


def test_config_takes_the_method_alone_or_the_table():
    assert parse_overrides(["export.decontaminate=rouge"], ExportConfig, "export") == {"decontaminate.method": "rouge"}
    cfg = load_section(SelectConfig, None, "select", {"decontaminate.method": "off", "decontaminate.ngram": 8})
    assert dataclasses.asdict(cfg.decontaminate)["method"] == "off" and cfg.decontaminate.ngram == 8
    with pytest.raises(Exception, match="ngram"):
        parse_overrides(["export.decontaminate.ngram=0"], ExportConfig, "export")


def test_eval_texts_load_from_rows_and_tasks_and_name_a_bad_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Say hi.", "input": "to Bob", "output": "Hi Bob"}) + "\n")
    assert [(t.id, t.text) for t in load_eval_texts(rows)] == [("rows-1", "Say hi.\nto Bob")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "ok"}) + "\n" + json.dumps({"prompt": "no instruction"}) + "\n")
    with pytest.raises(Exception, match="bad.jsonl:2"):
        load_eval_texts(bad)


@pytest.mark.skipif(not (SHARED / "user_oriented_instructions.jsonl").is_file(), reason="no ../shared/data")
def test_the_252_user_oriented_tasks_are_the_default_and_never_flag_the_seeds():
    c, note = contamination(DecontamConfig(method="both"))
    assert "252 eval items of user_oriented_instructions.jsonl" in note
    seeds = [json.loads(line) for line in (SHARED / "self_instruct_seed_tasks.jsonl").read_text().splitlines()]
    flagged = [s["id"] for s in seeds if c.check(s["instruction"])]
    assert not flagged  # the paper wrote its eval tasks apart from its seeds
    user = json.loads((SHARED / "user_oriented_instructions.jsonl").read_text().splitlines()[7])
    assert c.check(user["instruction"] + "\n" + user["instances"][0]["input"])["eval_id"] == user["id"]


# ---------------------------------------------------------------- the eval set: found, downloaded once, or absent


class _Files(http.server.BaseHTTPRequestHandler):
    body: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 - the http.server name
        data = self.body.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.end_headers()
        self.wfile.write(data or b"not here")

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    server = QueuedServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/self-instruct/human_eval"
    server.shutdown()


def test_download_on_first_use_into_the_cache_then_found_without_network(tmp_path, monkeypatch, file_server):
    server, base = file_server
    monkeypatch.setattr(evalsets, "shared_copy", lambda: None)
    monkeypatch.setenv(usercache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(evalsets.BASE_URL_ENV, base)
    task = {"id": "u0", "motivation_app": "X", "instruction": "Do it.", "instances": [{"input": "", "output": "ok"}]}
    _Files.body = {"/self-instruct/human_eval/user_oriented_instructions.jsonl": (json.dumps(task) + "\n").encode()}
    assert evalsets.find_user_oriented() is None
    with pytest.raises(Seed2LoraError, match="not on this machine.*--data user-oriented"):
        evalsets.user_oriented(download=False)
    path = evalsets.user_oriented(download=True)
    assert path == tmp_path / "cache" / "evalsets" / "user_oriented_instructions.jsonl" and path.is_file()
    server.shutdown()  # from now on the network is gone: the cached copy is found
    assert evalsets.find_user_oriented() == path
    data, why = eval_mod.default_eval_data(tmp_path, "user-oriented")
    assert data == str(path) and "Apache-2.0" in why


def test_a_failed_download_names_the_url_and_the_fixes(tmp_path, monkeypatch, file_server):
    _, base = file_server
    monkeypatch.setenv(usercache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(evalsets.BASE_URL_ENV, base + "/missing")
    with pytest.raises(Seed2LoraError, match=r"could not download .*/missing/user_oriented_instructions.jsonl: "
                                             r"Not Found\. Fix: .*by hand into .*--data FILE"):
        evalsets.fetch_user_oriented()
    _Files.body = {"/bad/user_oriented_instructions.jsonl": b"<html>a login page</html>\n"}
    monkeypatch.setenv(evalsets.BASE_URL_ENV, base.rsplit("/self-instruct", 1)[0] + "/bad")
    with pytest.raises(Seed2LoraError, match="line 1 is not JSON"):
        evalsets.fetch_user_oriented()
    assert not (tmp_path / "cache" / "evalsets" / "user_oriented_instructions.jsonl").exists()
    monkeypatch.setenv(evalsets.BASE_URL_ENV, "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(Seed2LoraError, match="could not download"):
        evalsets.fetch_user_oriented(timeout_s=5)


def test_eval_says_when_too_few_tasks_were_evaluated_to_mean_much():
    """The measured bug: eval on a held-out split of 2 rows said nothing of how little 2 tasks can show."""
    line = eval_mod.eval_message("heldout:/runs/r/export", "", 2, 2, 0)
    assert "only 2 tasks: too few for the comparison to mean much" in line and "±69 points" in line
    assert "Fix: pass --data user-oriented" in line and "train.eval_fraction" in line
    few = eval_mod.FEW_EVAL_TASKS
    assert "too few" in eval_mod.eval_message("mine.jsonl", "", few - 1, few - 1, 0)
    assert "too few" not in eval_mod.eval_message("mine.jsonl", "", few, few, 0)
    assert "too few" not in eval_mod.eval_message("mine.jsonl", "", 3 * few, few, 0)  # prompts are not tasks
    assert "Fix: raise --limit" in eval_mod.few_tasks_note("user-oriented.jsonl", 5, 5)


def test_without_the_set_eval_says_how_many_prompts_and_why(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_mod, "find_user_oriented", lambda: None)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (tmp_path / "export").mkdir()  # the adapter's training data, there (a summary naming a folder gone stops)
    (adapter / "training_summary.json").write_text(json.dumps({"data": str(tmp_path / "export")}))
    data, why = eval_mod.default_eval_data(adapter)
    assert data == "heldout:" + str(tmp_path / "export")
    assert why.startswith("the adapter's held-out split, because the user-oriented set is not on this machine")
    line = eval_mod.eval_message(data, why, 4, 4, 50)
    assert line.startswith("eval: 4 prompts (4 tasks) from heldout:") and "--data user-oriented" in line
    assert line.endswith("--limit 50 asked for more tasks than the 4 there are")
    assert eval_mod.default_eval_data(adapter, "mine.jsonl") == ("mine.jsonl", "")
    (adapter / "training_summary.json").unlink()
    with pytest.raises(Seed2LoraError, match="no eval data.*--data FILE.jsonl"):
        eval_mod.default_eval_data(adapter)


def test_rows_given_to_a_stage_with_input_are_the_runs_records_not_its_seeds(tmp_path):
    """`filter --input ROWS.jsonl` on Alpaca-style rows: kept as origin machine, so export splits and counts them."""
    run, _ = filtered_file_run(tmp_path, [
        "Name three rivers in Europe.", "Explain why leaves change colour in autumn.",
        "Translate 'good night' into Spanish please.", "Give two reasons to learn chess as a child.",
        "Summarize the plot of Hamlet briefly.", "Convert 100 degrees Fahrenheit to Celsius now.",
        "Suggest a name for a bakery in Paris.", "List the planets of our solar system in order."], "rows.jsonl")
    kept = RunDir(run).read_stage("filter")
    assert len(kept) >= 6 and {t.origin for t in kept} == {"machine"}
    info = export_run(run, tmp_path / "exp", ExportConfig(seed=1, include_seeds=False,
                                                                             decontaminate=DecontamConfig(method="off")))
    assert info["counts"]["seed_tasks"] == 0 and info["counts"]["eval_rows"] >= 1


def test_training_on_a_run_directory_leaves_out_what_export_would_drop(tmp_path, monkeypatch, tiny_model):
    from pipeline.train.data import load_rows
    from pipeline.train.trainer import prepare
    from tests.test_train import quick_config

    run = make_run(tmp_path)
    tasks = RunDir(run).read_stage("filter")
    tasks[0].instruction = EVAL_TASK  # t0's two rows copy an eval task
    from pipeline.store import write_jsonl_atomic
    write_jsonl_atomic(RunDir(run).stage_file("filter"), tasks)
    monkeypatch.setattr("pipeline.decontam.find_user_oriented", lambda: eval_file(tmp_path))  # export's default set
    rows = load_rows(run)
    assert not [r for r in rows.train if r["task_id"] == "t0"] and len(rows.contaminated) == 2
    assert len(rows.train) == export_run(run, tmp_path / "out", ExportConfig())["counts"]["rows"]
    assert rows.decontaminated.startswith("decontaminated (ngram) against 2 eval items")
    RunDir(run).replace_rejected("export", [])  # what export recorded goes; training records it again
    said = []
    prepared = prepare(run, quick_config(tiny_model, tmp_path / "adapter", quant=False), log=said.append)
    assert sum(len(r) for r in (prepared.rows.train, prepared.rows.eval or [])) == len(rows.train)
    assert any(m.startswith("2 row(s) overlapping the eval set left out (decontaminated (ngram)") for m in said), said
    assert {(t.stage, t.id) for t in RunDir(run).read_rejected() if t.meta.get("contaminated_by")} == {
        ("export", "t0-0"), ("export", "t0-1")}
