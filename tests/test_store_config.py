import json
import math

import pytest

from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.records import Instance, Task
from pipeline.store import JsonlWriter, RunDir, read_jsonl, read_tasks, write_jsonl_atomic


def test_task_round_trips_through_json():
    t = Task(id="t1", instruction="Do it.", instances=[Instance("a", "b")], is_classification=True,
             most_similar_instructions={"x": 0.5}, avg_similarity_score=0.1, meta={"name": "n"})
    back = Task.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t
    assert "reject_reason" not in t.to_dict()
    assert t.rejected("why", "filter").to_dict()["reject_reason"] == "why"


def test_writer_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a", "instruction": "x"}\n{"id": "b", "instr')
    assert [t.id for t in read_tasks(path)] == ["a"]  # torn tail skipped when reading our own file
    with JsonlWriter(path) as w:
        w.write(Task(id="c", instruction="y"))
    assert [t.id for t in read_tasks(path)] == ["a", "c"]
    assert path.read_text().endswith("\n")


def test_strict_reader_names_file_and_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "ok"}\n\n{"instruction": oops}\n')
    with pytest.raises(InputError) as e:
        list(read_jsonl(path))
    assert f"{path}:3" in str(e.value) and "Fix:" in str(e.value)


def test_non_utf8_file_is_reported_with_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"seeds.jsonl:2: is not UTF-8"):
        list(read_jsonl(path))


def test_manifest_counts_and_rejected_replacement(tmp_path):
    run = RunDir(tmp_path / "r").ensure()
    with JsonlWriter(run.stage_file("bootstrap")) as w:
        w.write(Task(id="a", instruction="x"))
    with JsonlWriter(run.rejected_file) as w:
        w.write(Task(id="b", instruction="y").rejected("blacklist: image", "bootstrap"))
        w.write(Task(id="c", instruction="z").rejected("too_short: 1 words", "filter"))
    run.replace_rejected("filter", [Task(id="d", instruction="w").rejected("rouge_l: 0.9", "filter")])
    m = run.update_manifest(note="hi")
    assert m["counts"]["bootstrap"] == 1
    assert m["counts"]["rejected_by_reason"] == {"bootstrap: blacklist": 1, "filter: rouge_l": 1}


def test_config_defaults_are_the_papers():
    cfg = load_config(None)
    assert cfg.bootstrap.num_prompt_instructions == 8 and cfg.bootstrap.num_machine_instructions == 2
    assert cfg.bootstrap.max_list_number == 16
    assert cfg.filter.rouge_threshold == 0.7 and cfg.instances.max_instances == 5
    assert {"image", "graph", "picture", "file", "map", "draw", "plot", "go to", "video", "diagram"} <= set(cfg.filter.blacklist)


def test_config_unknown_key_names_line_and_valid_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('run_name = "x"\n\n[bootstrap]\nnum_instructions = 5\nnum_instrucions = 7\n')
    with pytest.raises(InputError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"{path}:5" in msg and "num_instrucions" in msg and "did you mean 'num_instructions'?" in msg
    with pytest.raises(InputError, match=r"unknown key 'batch_sise' in \[train\]\. Fix: did you mean 'batch_size'\?"):
        load_config(None, {"train.batch_sise": 4})  # a --set too
    with pytest.raises(InputError, match=r"unknown key 'zzz' in \[teacher\]\. Fix: use one of: api, "):
        load_config(None, {"teacher.zzz": 4})  # nothing near: the keys only


def test_config_wrong_type_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[filter]\nrouge_threshold = "high"\n')
    with pytest.raises(InputError, match=r'run.toml:2: \[filter\] rouge_threshold = "high": expected a number\. Fix: give a number, e.g\. rouge_threshold = 0\.7'):
        load_config(path)
    path.write_text('seed = 3\n[filter]\nrouge_threshold = 1\n')
    cfg = load_config(path, {"teacher.spec": "openai:m", "bootstrap.num_instructions": 9})
    assert cfg.seed == 3 and cfg.filter.rouge_threshold == 1.0 and isinstance(cfg.filter.rouge_threshold, float)
    assert cfg.teacher.spec == "openai:m" and cfg.bootstrap.num_instructions == 9
    with pytest.raises(InputError, match=r"unknown key 'nope' in \[bootstrap\]\. Fix: use one of: .*num_instructions"):
        load_config(None, {"bootstrap.nope": 1})


def test_every_bundled_config_loads():
    from pathlib import Path

    from pipeline.config import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        cfg = load_config(path)
        assert cfg.teacher.spec == "embedded", path
    full = load_config(Path(__file__).resolve().parents[1] / "configs" / "seed_to_adapter.toml")
    assert full.stages[-3:] == ["export", "train", "eval"] and full.train.packing and full.eval.limit == 50


@pytest.mark.parametrize("item, message", [
    ("bootstrap.num_instructions=eight",
     "--set bootstrap.num_instructions=eight: expected an integer. Fix: give an integer, "
     "e.g. --set bootstrap.num_instructions=100."),
    ("filter.rouge_threshold=high", "--set filter.rouge_threshold=high: expected a number."),
    ("bootstrap.use_clf_seed_tasks_only=yes", "expected true or false"),
    ("filter.blacklist=[1, 2]", "expected a list of strings"),
    ("teacher=x", "--set teacher=x: [teacher] is a section, not a value. Fix: set one of its keys, "
                  "e.g. --set teacher.spec=VALUE"),
    ("evolve.weights=2", "[evolve.weights] is a section"),
    ("seed.x=1", "'seed' is a value, not a section"),
    ("bootstrap.nope=1", "--set bootstrap.nope=1: unknown key 'nope' in [bootstrap]. Fix: use one of: "
                         "alpaca_max_tokens, "),
    ("nope=1", "unknown key 'nope'. Fix: use one of: bootstrap, budget, classify, cost, eval,"),
    ("no_equals_sign", "--set no_equals_sign: is not KEY=VALUE"),
])
def test_set_values_are_checked_like_the_toml_file(item, message):
    from pipeline.config import parse_overrides

    with pytest.raises(InputError) as e:
        parse_overrides([item])
    assert message in str(e.value)


def test_set_values_parse_as_toml_and_bare_words_only_for_strings():
    from pipeline.config import TrainConfig, parse_overrides

    got = parse_overrides(["filter.rouge_threshold=1", "run_name=2024", "teacher.system_prompt=Be brief.",
                           "filter.blacklist=['chart', 'photo']", "budget.prices={m = [1, 2]}",
                           "evolve.weights.breadth=2", 'seed_tasks="my seeds.jsonl"', "filter.require_instances=false"])
    assert got == {"filter.rouge_threshold": 1.0, "run_name": "2024", "teacher.system_prompt": "Be brief.",
                   "filter.blacklist": ["chart", "photo"], "budget.prices": {"m": [1, 2]},
                   "evolve.weights.breadth": 2.0, "seed_tasks": "my seeds.jsonl", "filter.require_instances": False}
    assert isinstance(got["filter.rouge_threshold"], float)  # a float setting takes an int
    assert parse_overrides(["train.lora_r=16", "epochs=1"], TrainConfig, "train") == {"lora_r": 16, "epochs": 1.0}
    with pytest.raises(InputError, match=r"unknown key 'lora' in \[train\]\. Fix: did you mean 'lora_r'\? The keys here: .*lora_alpha"):
        parse_overrides(["lora=16"], TrainConfig, "train")
    cfg = load_config(None, got)
    assert cfg.evolve.weights.breadth == 2.0 and cfg.filter.blacklist == ["chart", "photo"]


def test_flag_overrides_and_sections_are_checked_too(tmp_path):
    from pipeline.config import TrainConfig, load_section

    with pytest.raises(InputError, match=r"bootstrap\.num_instructions: expected an integer"):
        load_config(None, {"bootstrap.num_instructions": "8"})
    with pytest.raises(InputError, match=r"\[teacher\] is a section"):
        load_config(None, {"teacher": "x"})
    path = tmp_path / "run.toml"
    path.write_text('[train]\nlora_r = "big"\n')
    with pytest.raises(InputError, match=r'run.toml:2: \[train\] lora_r = "big": expected an integer'):
        load_section(TrainConfig, path, "train", {})
    path.write_text('train = 3\n')
    with pytest.raises(InputError, match=r"run.toml:1: 'train' must be a \[train\] table"):
        load_section(TrainConfig, path, "train", {})
    path.write_text('[evolve]\nweights = 3\n')
    with pytest.raises(InputError, match=r"run.toml:2: 'evolve.weights' must be a \[evolve.weights\] table"):
        load_config(path)
    path.write_text('[evolve.weights]\nbreadth = "x"\n')
    with pytest.raises(InputError, match=r'run.toml:2: \[evolve.weights\] breadth = "x": expected a number'):
        load_config(path)
    assert load_section(TrainConfig, None, "train", {"train.lora_r": 8, "epochs": None}).lora_r == 8


def test_the_printed_default_config_loads_back_to_the_defaults_nested_tables_included(tmp_path):
    from pipeline.config import RunConfig, default_toml

    text = default_toml()
    assert "[evolve.weights]" in text and "[eval.judge]" in text
    path = tmp_path / "default.toml"
    path.write_text(text)
    assert load_config(path) == RunConfig()


def full(run):
    """bootstrap's lines, the rejections and their reasons, from reading every file whole."""
    rejected = [Task.from_dict(o) for _, o in read_jsonl(run.rejected_file, strict=False)]
    return (sum(1 for _ in read_jsonl(run.stage_file("bootstrap"), strict=False)), len(rejected),
            sorted(f"{r.stage}: {r.reject_reason.split(':')[0]}" for r in rejected))


def counted(run):
    """The same from the manifest's counts (RunDir.counts)."""
    c = run.counts()
    return c["bootstrap"], c["rejected"], sorted(k for k, n in c["rejected_by_reason"].items() for _ in range(n))


def test_counts_read_on_from_the_last_count_and_match_a_full_read(tmp_path):
    """The manifest's counts are refreshed while a stage runs: appended lines, a torn last line (counted once
    whole), a file rewritten (replace_rejected) and one cut back all give what reading every file gives."""
    run = RunDir(tmp_path)

    with JsonlWriter(run.stage_file("bootstrap")) as out:
        out.write(Task(id="a", instruction="A"))
    with JsonlWriter(run.rejected_file) as out:
        out.write(Task(id="r", instruction="R").rejected("rouge_l: 0.9 > 0.7", "filter"))
    assert counted(run) == full(run) == (1, 1, ["filter: rouge_l"])
    with run.stage_file("bootstrap").open("a", encoding="utf-8") as f:
        f.write('{"id": "b", "instruction": "B"}\n{"id": "c", "instr')  # a torn tail: not counted yet
    assert counted(run) == full(run) and counted(run)[0] == 2
    with run.stage_file("bootstrap").open("a", encoding="utf-8") as f:
        f.write('uction": "C"}\n')
    assert counted(run) == full(run) and counted(run)[0] == 3
    run.replace_rejected("filter", [Task(id="s", instruction="S").rejected("blacklist: image", "filter")] * 2)
    assert counted(run) == full(run) == (3, 2, ["filter: blacklist", "filter: blacklist"])
    run.stage_file("bootstrap").write_text('{"id": "a", "instruction": "A"}\n', encoding="utf-8")  # cut back
    assert counted(run) == full(run) and counted(run)[0] == 1


def test_counts_take_the_lines_this_process_wrote_without_decoding_them_and_read_any_changed_since(tmp_path,
                                                                                                     monkeypatch):
    """A manifest refresh decoded every record a stage had just written (issue 20): what JsonlWriter appended is
    counted from its spans, rejections by reason included; a line written by another hand, or a span whose bytes
    changed in place (same length), is decoded, and every count matches a full read."""
    import pipeline.store as store

    run = RunDir(tmp_path)
    decoded = []
    loads = store.json.loads
    monkeypatch.setattr(store.json, "loads", lambda text, *a, **k: decoded.append(text) or loads(text, *a, **k))

    kept, rejected = JsonlWriter(run.stage_file("bootstrap"), hold_s=math.inf), JsonlWriter(run.rejected_file)
    for i in range(3):
        kept.write(Task(id=f"k{i}", instruction=f"Kept {i} é"))
        rejected.write(Task(id=f"r{i}", instruction="R").rejected(f"rouge_l: 0.{i}", "bootstrap"))
    kept.flush()
    rejected.write({"id": "d", "instruction": "a dict", "stage": "filter", "reject_reason": "length: 2"})
    decoded.clear()
    assert counted(run)[:2] == (3, 4) and decoded == ['{"id": "d", "instruction": "a dict", "stage": "filter", '
                                                   '"reject_reason": "length: 2"}\n']
    decoded.clear()
    assert counted(run) == full(run) == (3, 4, ["bootstrap: rouge_l"] * 3 + ["filter: length"])
    with run.stage_file("bootstrap").open("a", encoding="utf-8") as f:  # another hand's line, then ours again
        f.write('{"id": "x", "instruction": "X"}\n')
    kept.write(Task(id="k3", instruction="Kept 3"))
    kept.close()
    decoded.clear()
    assert counted(run)[0] == 5 and decoded == ['{"id": "x", "instruction": "X"}\n']  # the foreign line only
    assert counted(run) == full(run)
    rejected.close()
    data = run.rejected_file.read_bytes()  # rouge_l -> rouge_x in place: same length, other bytes
    run.rejected_file.write_bytes(data.replace(b'"rouge_l: 0.1"', b'"rouge_x: 0.1"'))
    run = RunDir(tmp_path)  # a count from the start (another RunDir): the changed span is decoded, the others not
    decoded.clear()
    assert counted(run) == (5, 4, ["bootstrap: rouge_l"] * 2 + ["bootstrap: rouge_x", "filter: length"])
    assert sorted(decoded) == sorted(['{"id": "x", "instruction": "X"}\n', data.decode().splitlines(True)[1].replace(
        "rouge_l", "rouge_x"), '{"id": "d", "instruction": "a dict", "stage": "filter", "reject_reason": "length: 2"}\n'])
    assert counted(run) == full(run)


def test_a_second_writer_of_a_run_stops_and_show_tells_a_killed_run_from_a_running_one(tmp_path):
    """Two runs on one folder kept 5 unique of 10 bootstrap lines and both said done; after kill -9, show said
    "running" for ever."""
    import json as _json

    from helpers import invoke

    run = RunDir(tmp_path / "s")
    texts = ["Write a short poem about a river at night.", "Sort these numbers from the smallest to the largest.",
             "Explain why the sky looks blue to people on a clear day."]
    write = [Task(id=f"t{i}", instruction=text, origin="machine", stage="instances",
                  instances=[Instance("", f"An answer {i}.")]) for i, text in enumerate(texts)]
    run.ensure()
    (run.path / "instances.jsonl").write_text("".join(_json.dumps(t.to_dict()) + "\n" for t in write))
    other = run.lock()  # another process writing this run (a second descriptor conflicts as one would)
    try:
        result = invoke("filter", "--output-dir", tmp_path, "--run-name", "s", expect=2)
        assert "is being written by seed2lora pid" in result.output and "--run-name" in result.output
        # score takes no --run-name: the fix names the folder first (it said "use another --run-name")
        text = " ".join(invoke("score", run.path, expect=2).output.split())
        assert "or name another run folder (RUN_DIR, or --run-name where the command has it)" in text
        assert not run.stage_file("filter").exists() and not run.manifest_file.exists()  # nothing written
        run.update_manifest(status="running", stage="filter")
        assert "status: running" in invoke("show", run.path).output
    finally:
        other.release()
    shown = invoke("show", run.path).output  # "running", and nobody holds the run: it was killed
    assert "status: stopped" in shown and "run the same command to resume" in shown
    invoke("filter", "--output-dir", tmp_path, "--run-name", "s")  # free again: the run goes on
    assert len(run.read_stage("filter")) == 3 and run.manifest()["status"] == "done"


def test_each_session_records_its_teacher_whole(tmp_path):
    """A run made with a server teacher, then resumed with another: the manifest names the new teacher with none of
    the old one's settings (before, an embedded teacher kept the server's base_url and api under its name)."""
    run = RunDir(tmp_path / "r").ensure()
    run.update_manifest(teacher={"name": "openai:m", "kind": "openai", "base_url": "http://127.0.0.1:8765/v1",
                                 "api_choice": "auto: completions"}, stages={"bootstrap": {"kept": 3}})
    m = run.update_manifest(teacher={"name": "embedded", "kind": "hf"}, stages={"classify": {"kept": 2}})
    assert m["teacher"] == {"name": "embedded", "kind": "hf"}
    assert m["stages"] == {"bootstrap": {"kept": 3}, "classify": {"kept": 2}}  # other tables still merge
    assert json.loads(run.manifest_file.read_text())["teacher"] == {"name": "embedded", "kind": "hf"}


def test_pending_follows_tasks_through_the_stages_of_one_command(tmp_path):
    """Instances' pending counted only classify's kept tasks: a stop with classify half done (or its file empty)
    said nothing of the tasks instances would get next."""
    run = RunDir(tmp_path)
    tasks = [Task(id=f"t{i}", instruction=f"Task {i}") for i in range(10)]
    write_jsonl_atomic(run.stage_file("bootstrap"), tasks)
    write_jsonl_atomic(run.stage_file("classify"), tasks[:3])
    write_jsonl_atomic(run.rejected_file, [tasks[3].rejected("unparseable_reply: no label", "classify")])
    write_jsonl_atomic(run.stage_file("instances"), tasks[:2])
    flow = run.pending(["bootstrap", "classify", "instances"], 12)
    assert flow == {"bootstrap": 2, "classify": 6, "instances": 7}  # 10 but t3 (dropped) and t0, t1 (done)
    assert run.pending(["instances"], 12) == {"instances": 1}  # instances alone: classify's file is its input


def test_a_default_teacher_table_an_older_filter_wrote_is_not_read_as_the_runs(fake_openai, tmp_path):
    """Before filter kept the recorded teacher tables it wrote the default [teacher] (spec "embedded") over the run's
    own, and the manifest's teacher entry kept naming the teacher that made the records. That stale table went on
    into export.json, Run.open and every later command as the run's teacher."""
    from helpers import invoke, teacher_flags

    from pipeline.api import Run

    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", "teacher.concurrency=1")
    run = tmp_path / "r"
    m = json.loads((run / "manifest.json").read_text())
    m["config"]["teacher"] = {**m["config"]["teacher"], "spec": "embedded", "base_url": ""}  # an older filter's
    (run / "manifest.json").write_text(json.dumps(m))
    made = {"spec": "openai:fake-model", "base_url": fake_openai.url}
    assert RunDir(run).manifest()["config"]["teacher"] == made
    with Run.open(run, progress=False) as opened:
        assert opened.config.teacher.spec == "openai:fake-model" and "embedded" not in repr(opened)
    invoke("export", run)
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["config"]["teacher"] == made and info["teacher"]["name"] == "openai:fake-model"
    invoke("filter", run)  # writes the manifest, keeping the teacher table it builds nothing from: the mended one
    assert json.loads((run / "manifest.json").read_text())["config"]["teacher"] == made
    # A run the embedded teacher made keeps its table whole
    m["teacher"], m["config"]["teacher"]["base_url"] = {"name": "embedded", "kind": "hf"}, ""
    (run / "manifest.json").write_text(json.dumps(m))
    assert RunDir(run).manifest()["config"]["teacher"] == m["config"]["teacher"]


def test_a_per_task_stage_reads_its_done_files_once_at_start(tmp_path, monkeypatch):
    """The loop's bar (map_progress) and the stage's TaskMap each asked which tasks were done, and each read and
    parsed classify.jsonl and rejected.jsonl whole: twice at every start. Now once, and again when either changes."""
    import os
    from collections import Counter
    from pathlib import Path
    from types import SimpleNamespace

    from pipeline import store
    from pipeline.context import Records
    from pipeline.stages.common import TaskMap, map_progress
    from pipeline.store import JsonlWriter
    from pipeline.teachers import GenParams

    run = RunDir(tmp_path / "r").ensure()
    tasks = [Task(id=f"t{i}", instruction=f"Task {i}.", stage="bootstrap") for i in range(5)]
    write_jsonl_atomic(run.stage_file("classify"), [Task(id=f"t{i}", instruction="x", stage="classify").to_dict()
                                                    for i in range(3)])
    write_jsonl_atomic(run.rejected_file, [Task(id="t3", instruction="x", stage="classify").to_dict(),
                                           Task(id="t4", instruction="x", stage="instances").to_dict()])
    reads, real = Counter(), store.read_jsonl
    monkeypatch.setattr(store, "read_jsonl", lambda path, **kw: (reads.update([Path(path).name]), real(path, **kw))[1])
    assert map_progress(SimpleNamespace(run=run), "classify", Records(tasks, "bootstrap")) == ("classify", 5, 4)
    with TaskMap(run, "classify", GenParams(max_tokens=8), prompt_for=lambda t: "p", finish=lambda t, r, last: t,
                 max_retries=0) as task_map:
        assert task_map.done == {"t0", "t1", "t2", "t3"}
    assert reads == {"classify.jsonl": 1, "rejected.jsonl": 1}, reads
    with JsonlWriter(run.stage_file("classify")) as w:  # a record written since: read again
        w.write(Task(id="t4", instruction="x", stage="classify").to_dict())
    assert run.outcomes("classify") == {"t0", "t1", "t2", "t3", "t4"} and reads["classify.jsonl"] == 2
    kept = tmp_path / "kept.jsonl"  # the file replaced by one of the same size (a filter's rewrite): read again
    write_jsonl_atomic(kept, [Task(id=f"u{i}", instruction="x", stage="classify").to_dict() for i in range(4)])
    os.replace(kept, run.stage_file("classify"))
    assert run.outcomes("classify") == {"u0", "u1", "u2", "u3", "t3"} and reads["classify.jsonl"] == 3
