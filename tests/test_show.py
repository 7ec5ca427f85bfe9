"""`seed2lora show`'s Counts table: each column means what its header says, on a fresh run and a resumed one."""

import json

from helpers import counts_row, invoke, read, teacher_flags


def test_last_session_columns_count_this_sessions_work(fake_openai, tmp_path):
    flags = teacher_flags(fake_openai, tmp_path)
    run = tmp_path / "r"
    invoke("bootstrap", *flags, "--num-instructions", 4)
    invoke("classify", *flags)
    assert counts_row(run, "classify") == ["4", "4", "4", "0", "0"]  # fresh: every task labelled this session
    invoke("bootstrap", *flags, "--num-instructions", 6)
    invoke("classify", *flags)  # a resume: reads all 6, labels the 2 new ones
    assert len(read(run / "classify.jsonl")) == 6
    assert counts_row(run, "classify") == ["6", "2", "2", "0", "0"]  # it said 6 generated, 2 kept
    records, generated, kept, rejected, _ = counts_row(run, "bootstrap")  # bootstrap's counted its session already
    assert (records, kept) == ("6", "2") and int(generated) == int(kept) + int(rejected)  # an over_target line, maybe
    stage = json.loads((run / "manifest.json").read_text())["stages"]["classify"]
    assert stage["input"] == 6 and stage["generated"] == stage["kept"] + stage["rejected"] == 2
    invoke("classify", *flags)  # nothing left: this session generated nothing
    assert counts_row(run, "classify") == ["6", "0", "0", "0", "0"]


def test_show_prints_records_and_reasons_as_written_not_as_markup(tmp_path):
    """Rich read a record's text as markup: "arr[i]" lost its "[i]" (italic on), a LowYield reason's "[filter]"
    vanished ("or looser  settings"), and a "[/b]" in a teacher's output stopped show with a MarkupError."""
    from pipeline.records import Instance, Task
    from pipeline.store import RunDir

    run = RunDir(tmp_path / "r").ensure()
    task = Task(id="m1", instruction="Explain what arr[i] means in [bold] Python.", origin="machine",
                stage="instances", instances=[Instance("x = arr[i]", "A [/b] tag, then [red]text[/red].")])
    (run.path / "instances.jsonl").write_text(json.dumps(task.to_dict()) + "\n")
    run.update_manifest(status="failed", stage="bootstrap", reason="LowYield: looser [filter] settings")
    text = invoke("show", run.path).output
    assert "looser [filter] settings" in text
    assert "Explain what arr[i] means in [bold] Python." in text and "x = arr[i]" in text
    assert "A [/b] tag, then [red]text[/red]." in text


def test_shows_seed_and_endpoint_lines_say_one_task_and_one_reply_in_the_singular():
    """`show` said "seeds: s.jsonl (1 tasks)" and "http://a 1 replies" of a one-task seed file and an endpoint."""
    from pipeline.show import endpoints_line, seeds_line

    assert seeds_line({"seed_file": "s.jsonl", "num_seeds": 1}) == "seeds: s.jsonl (1 task)"
    assert seeds_line({"seed_file": "s.jsonl", "num_seeds": 2}) == "seeds: s.jsonl (2 tasks)"
    line = endpoints_line({"endpoints": [{"url": "http://a", "replies": 1, "falls": 1}, {"url": "http://b", "replies": 3}]})
    assert line == "endpoints, last session: http://a 1 reply, left the rotation 1 time; http://b 3 replies", line
