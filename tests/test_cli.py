"""End to end through the CLI against the fake OpenAI-compatible server."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import invoke, read, teacher_flags

from pipeline.cli import cli

SECRET = "sk-test-PLANTED-SECRET-0123456789"


def test_full_run_writes_every_stage_and_resumes_without_new_calls(fake_openai, tmp_path):
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 7)
    run = tmp_path / "r"
    boot, clf, inst, final = (read(run / f"{s}.jsonl") for s in ("bootstrap", "classify", "instances", "filter"))
    assert len(boot) == 7 and len(clf) == 7 and len(inst) == 7
    seeds = {json.loads(line)["instruction"] for line in open(Path(__file__).parents[1] / "seeds/seed_tasks.jsonl")}
    assert final and all(t["instruction"] not in seeds and t["origin"] == "machine" for t in final)
    assert all(t["teacher"] == "openai:fake-model" and t["prompt"].startswith("bootstrap.txt") for t in final)
    assert all(len(t["most_similar_instructions"]) == 10 and t["avg_similarity_score"] > 0 for t in final)
    types = {t["is_classification"] for t in final}
    assert types == {True, False}  # the fake teacher says Yes to "Compare ..." tasks
    clf_task = next(t for t in final if t["is_classification"])
    assert [i["output"] for i in clf_task["instances"]] == ["First", "Second"]  # output-first parse
    gen_task = next(t for t in final if not t["is_classification"])
    assert gen_task["instances"][1]["input"] == ""  # <noinput> becomes empty input

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["filter"] == len(final) and manifest["status"] == "done"
    assert manifest["usage"]["bootstrap"]["calls"] >= 3 and manifest["usage"]["classify"]["calls"] == 7
    assert set(manifest["prompts"]) >= {"bootstrap.txt", "classify.txt"} and manifest["teacher"]["model"] == "fake-model"

    calls = len(fake_openai.history)
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 7)  # again: all done
    assert len(fake_openai.history) == calls
    assert len(read(run / "bootstrap.jsonl")) == 7 and len(read(run / "instances.jsonl")) == 7

    for f in run.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f


def test_stage_by_stage_and_show(fake_openai, tmp_path):
    flags = teacher_flags(fake_openai, tmp_path, "s")
    invoke("bootstrap", *flags, "--num-instructions", 4)
    invoke("classify", *flags)
    invoke("instances", *flags)
    out = invoke("filter", *flags).output
    assert "kept" in out
    shown = invoke("show", tmp_path / "s").output
    assert "Counts" in shown and "bootstrap" in shown and "Instruction:" in shown
    lines = invoke("show", tmp_path / "s", "--jsonl", "--sample", 0).output.splitlines()
    assert len(lines) == len(read(tmp_path / "s" / "filter.jsonl"))
    rejected = invoke("show", tmp_path / "s", "--stage", "rejected", "--jsonl", "--sample", 2).output
    assert all("reject_reason" in json.loads(x) for x in rejected.splitlines())


def test_classify_an_arbitrary_user_file(fake_openai, tmp_path):
    user = tmp_path / "mine.jsonl"
    user.write_text('{"instruction": "Compare two sorting algorithms for small lists."}\n'
                    '{"instruction": "Suggest a name for a bakery."}\n')
    invoke("classify", *teacher_flags(fake_openai, tmp_path, "u"), "--input", user)
    labels = {t["instruction"]: t["is_classification"] for t in read(tmp_path / "u" / "classify.jsonl")}
    # Replies are written as they arrive, so the file's order is the order of completion.
    assert labels == {"Compare two sorting algorithms for small lists.": True, "Suggest a name for a bakery.": False}


def test_alpaca_mode(fake_openai, tmp_path):
    from fakeserver import TOPICS

    def alpaca_reply(path, body):
        n = len(fake_openai.history)
        return fake_openai.wrap(path, f"Sure!\n\n###\n4. Instruction: Tell a curious reader about {TOPICS[2 * n]}.\n"
                                      f"4. Input:\n<noinput>\n4. Output:\nSome facts, number {n}.\n###\n"
                                      f"5. Instruction: Quiz me on {TOPICS[2 * n + 1]} with the answers shown.\n"
                                      f"5. Input:\n{n} questions\n5. Output:\nQuestion one, answer one.")
    for _ in range(3):
        fake_openai.enqueue(alpaca_reply)
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path, "a"), "--num-instructions", 5,
           "--set", "bootstrap.mode=alpaca", "--set", "teacher.concurrency=1")
    boot = read(tmp_path / "a" / "bootstrap.jsonl")
    assert len(boot) == 5 and all(t["instances"] and t["prompt"] == "alpaca.txt" for t in boot)
    sent = fake_openai.history[0]["body"]["messages"][-1]["content"]
    assert sent.count("Instruction:") == 4 and sent.rstrip().endswith("4. Instruction:")  # 3 seeds + the open slot


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.toml"], "missing.toml: does not exist"),
    (["--set", "bootstrap.nope=1"], "unknown setting 'bootstrap.nope'"),
    (["--teacher", "gpt4"], "unknown teacher 'gpt4'"),
    (["--teacher", "hf:/no/such/model.gguf"], "no such GGUF file"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["bootstrap", "--output-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")


def test_bad_seed_file_names_the_line_and_writes_nothing(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Fine task here."}\n{"instruction": 5}\n')
    result = CliRunner().invoke(cli, ["run", "--seeds", str(seeds), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{seeds}:2" in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_a_teacher_whose_output_is_all_rejected_stops_with_a_message(fake_openai, tmp_path):
    for _ in range(10):
        fake_openai.enqueue("1. Draw a picture of a cat.\n2. Plot the monthly sales data for me.")
    result = CliRunner().invoke(cli, ["bootstrap", *map(str, teacher_flags(fake_openai, tmp_path)),
                                      "--num-instructions", "3", "--set", "bootstrap.max_requests=10"])
    assert result.exit_code == 2 and "gave no usable instruction in 10 prompts" in result.output.replace("\n", " ")
    assert {json.loads(x)["reject_reason"].split(":")[0] for x in open(tmp_path / "r" / "rejected.jsonl")} == {"blacklist"}
