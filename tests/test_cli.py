"""End to end through the CLI against the fake OpenAI-compatible server."""

import gc
import json
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from fakeserver import FakeOpenAI
from helpers import invoke, read, teacher_flags

from pipeline.cli import cli

SECRET = "sk-test-PLANTED-SECRET-0123456789"


def test_full_run_writes_every_stage_and_resumes_without_new_calls(fake_openai, tmp_path):
    # One request at a time: which of the fake teacher's tasks are kept must not depend on reply order.
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 7, "--set", "teacher.concurrency=1")
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
    out = invoke("filter", "--output-dir", tmp_path, "--run-name", "s").output  # filter sends no prompt: no teacher flags
    assert "kept" in out
    shown = invoke("show", tmp_path / "s").output
    assert "Counts" in shown and "bootstrap" in shown and "Instruction:" in shown
    lines = invoke("show", tmp_path / "s", "--jsonl", "--sample", 0).output.splitlines()
    assert len(lines) == len(read(tmp_path / "s" / "filter.jsonl"))
    rejected = invoke("show", tmp_path / "s", "--stage", "rejected", "--jsonl", "--sample", 2).output
    assert all("reject_reason" in json.loads(x) for x in rejected.splitlines())


def test_show_counts_what_bootstrap_generated_in_the_last_session(fake_openai, tmp_path):
    """The measured bug: the "last session: generated" column showed "-" for bootstrap, which had generated."""
    flags = teacher_flags(fake_openai, tmp_path, "s")
    invoke("bootstrap", *flags, "--num-instructions", 4)
    counts = json.loads((tmp_path / "s" / "manifest.json").read_text())["stages"]["bootstrap"]
    kept, rejected = len(read(tmp_path / "s" / "bootstrap.jsonl")), len(read(tmp_path / "s" / "rejected.jsonl"))
    assert counts["generated"] == kept + rejected and counts["kept"] == kept == 4
    shown = invoke("show", tmp_path / "s").output
    row = next(line for line in shown.splitlines() if line.strip("│┃ ").startswith("bootstrap "))
    assert [c.strip() for c in row.strip("│┃").split("│")] == ["bootstrap", "4", str(kept + rejected), "4",
                                                              str(rejected), "0"], shown


def test_run_and_export_say_the_origins_of_the_exported_tasks(fake_openai, tmp_path):
    """`run` with export and the `export` command go through one door and print the same line, origins included
    (run used to read them where export does not keep them, and printed "()")."""
    flags = teacher_flags(fake_openai, tmp_path)
    out = invoke("run", *flags, "--num-instructions", 4, "--set", "teacher.concurrency=1",
                 "--set", 'stages=["bootstrap","classify","instances","filter","export"]').output
    info = json.loads((tmp_path / "r" / "export" / "export.json").read_text())
    machine = info["counts"]["tasks_by_origin"]["machine"]
    assert machine > 0 and f"export: {tmp_path / 'r' / 'export'}" in out, out
    assert f"from {info['counts']['tasks']} generated + {info['counts']['seed_tasks']} seed tasks; generated tasks by origin: {machine} machine;" \
        in out.replace("\n", ""), out
    assert "()" not in out
    again = invoke("export", tmp_path / "r", "--formats", "alpaca").output
    assert "exported:" in again and f"generated tasks by origin: {machine} machine;" in again.replace("\n", ""), again


def test_classify_an_arbitrary_user_file(fake_openai, tmp_path):
    user = tmp_path / "mine.jsonl"
    user.write_text('{"instruction": "Compare two sorting algorithms for small lists."}\n'
                    '{"instruction": "Suggest a name for a bakery."}\n')
    invoke("classify", *teacher_flags(fake_openai, tmp_path, "u"), "--input", user)
    labels = {t["instruction"]: t["is_classification"] for t in read(tmp_path / "u" / "classify.jsonl")}
    # Replies are written as they arrive, so the file's order is the order of completion.
    assert labels == {"Compare two sorting algorithms for small lists.": True, "Suggest a name for a bakery.": False}
    stage = json.loads((tmp_path / "u" / "manifest.json").read_text())["stages"]["classify"]
    assert stage["input"] == 2 and stage["input_file"]["path"] == str(user.resolve())  # the count, and the file beside it


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
    (["--set", "bootstrap.nope=1"], "--set bootstrap.nope=1: unknown key 'nope' in [bootstrap]"),
    (["--teacher", "gpt4"], "unknown teacher 'gpt4'"),
    (["--teacher", "hf:/no/such/model.gguf"], "no such GGUF file"),
    (["--teacher", "hf:/no/such/folder"], "no model folder at /no/such/folder. Fix: give the folder holding config"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["bootstrap", "--output-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")


def test_a_teacher_that_refuses_every_prompt_is_named_with_its_error_not_blamed_on_the_filter(fake_openai, tmp_path):
    """A llama.cpp server whose context is shorter than the prompt answers each with a 400: the run said "no usable
    instruction in 10 prompts (0 rejected) ... loosen [filter] settings", the cause said nowhere. Refusals kept
    below teacher.max_consecutive_refusals, bootstrap's own line names it."""
    too_long = {"error": {"message": "This model's maximum context length is 512 tokens", "type": "invalid_request_error",
                          "code": "context_length_exceeded"}}
    for _ in range(50):
        fake_openai.enqueue(too_long, status=400)
    result = CliRunner().invoke(cli, ["bootstrap", *map(str, teacher_flags(fake_openai, tmp_path)),
                                      "--num-instructions", "3", "--set", "bootstrap.max_requests=10",
                                      "--set", "teacher.max_consecutive_refusals=50"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "no usable instruction in 10 prompts: 10 got no reply (the last: prompt longer than the model's context" \
        in text and "[filter]" not in text


TOO_LONG = "request (600 tokens) exceeds the available context size (512 tokens)"  # llama.cpp's words


def test_a_teacher_that_refuses_every_prompt_stops_the_run_after_a_few(fake_openai, tmp_path):
    """Every prompt over a small server's context: bootstrap sent its 200 prompts 4 times each (max_tokens halved),
    800 requests, before bootstrap.max_requests ended it; now teacher.max_consecutive_refusals (5) refusals in a
    row stop it, in the server's words, with what is pending."""
    fake_openai.refuse = lambda prompt: TOO_LONG
    result = CliRunner().invoke(cli, ["bootstrap", *map(str, teacher_flags(fake_openai, tmp_path)),
                                      "--num-instructions", "10"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert f"error: 5 bootstrap requests in a row were refused by {fake_openai.url}, with no reply between (the " \
           f"last: HTTP 400 BadRequestError: Error code: 400 - {TOO_LONG}). Fix: the prompts are longer" in text, text
    assert "pending: bootstrap 10 of 10 instructions to go" in text
    assert len(fake_openai.history) <= 5 + 8  # the 5 refused and those in flight (teacher.concurrency 8), no more


def test_a_stage_whose_prompts_are_all_refused_stops_though_another_is_answered(fake_openai, tmp_path):
    """classify's prompts refused while bootstrap's, in the same stream, are answered: each classify prompt was
    sent and refused in turn, whatever the number of tasks, the replies to bootstrap resetting any count."""
    fake_openai.refuse = lambda prompt: None if "numbered list of" in prompt else TOO_LONG
    result = CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_openai, tmp_path)),
                                      "--num-instructions", "40"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "error: 5 classify requests in a row were refused" in text, text
    assert "classify" in text.split("pending:")[1]
    refused = [h for h in fake_openai.history if "numbered list of" not in FakeOpenAI.prompt_of(h["body"])]
    assert 5 <= len(refused) <= 5 + 8, len(refused)


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


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_bad_values_exit_2_name_flag_and_key_and_change_no_file(fake_openai, tmp_path):
    flags = [str(f) for f in teacher_flags(fake_openai, tmp_path)]
    invoke("run", *flags, "--num-instructions", 3)  # a finished run whose bytes must not change
    run = str(tmp_path / "r")
    gc.collect()  # the in-process run's SQLite cache closes (folding in its WAL) now, not in the middle of the checks
    before = _snapshot(tmp_path)
    cases = [
        (["run", *flags, "--set", "bootstrap.num_instructions=eight"],
         "--set bootstrap.num_instructions=eight: expected an integer. Fix: give an integer, "
         "e.g. --set bootstrap.num_instructions=100."),
        (["bootstrap", *flags, "--set", "filter.rouge_threshold=high"], "--set filter.rouge_threshold=high: expected a number"),
        (["evolve", *flags, "--set", "evolve.rounds=[1]"], "--set evolve.rounds=[1]: expected an integer"),
        (["filter", "--output-dir", str(tmp_path), "--run-name", "r", "--set", "filter.require_instances=maybe"],
         "--set filter.require_instances=maybe: expected true or false"),
        (["run", *flags, "--set", "teacher=openai:gpt-4o"], "--set teacher=openai:gpt-4o: [teacher] is a section, not a value"),
        (["run", *flags, "--set", "bootstrap.num_instrucions=8"],
         "--set bootstrap.num_instrucions=8: unknown key 'num_instrucions' in [bootstrap]. Fix: did you mean 'num_instructions'? The keys here:"),
        (["run", *flags, "--num-instructions", "eight"], "'--num-instructions': 'eight' is not a valid integer"),
        (["export", run, "--set", "eval_fraction=lots"], "--set eval_fraction=lots: expected a number"),
        (["train", run, "--set", "lora_r=big"], "--set lora_r=big: expected an integer"),
        (["train", run, "--set", "train.nope=1"], "--set train.nope=1: unknown key 'nope' in [train]"),
        (["eval", run, "--set", "limit=all"], "--set limit=all: expected an integer"),
        (["classify", "--output-dir", str(tmp_path), "--run-name", "r", "--set", "classify.method=logits"],
         "--set classify.method=logits: expected one of auto, logprobs, text"),
        (["run", *flags, "--set", "select.by=best"], "--set select.by=best: expected one of judge, ifd, random, all"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, args)
        output = _one_line(result.output)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.output)
        assert message in output and "Traceback" not in output, (args, result.output)
        assert _snapshot(tmp_path) == before, args


def test_a_key_given_on_the_command_line_stays_out_of_the_manifest(fake_openai, tmp_path):
    import subprocess
    import sys

    planted = "my-PLANTED-key-0123456789"  # not sk-...: masked for its setting's name, not its look
    args = [*map(str, teacher_flags(fake_openai, tmp_path)), "--num-instructions", "2",
            "--set", f"teacher.api_key={planted}"]
    done = subprocess.run([sys.executable, "-m", "pipeline", "bootstrap", *args], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sent = {k.lower(): v for k, v in fake_openai.history[0]["headers"].items()}
    assert sent["authorization"] == f"Bearer {planted}"  # the key was used ...
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert "--set teacher.api_key=*** " in manifest["command"] + " "  # ... and is recorded nowhere
    assert manifest["config"]["teacher"]["api_key"] == "***"
    assert manifest["config"]["teacher"]["api_key_env"] == "OPENAI_API_KEY"  # a variable's name is no secret
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert planted not in f.read_text(errors="replace"), f
    assert planted not in done.stdout + done.stderr


def _help(command: str) -> str:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    return _one_line(result.output)


def test_help_shows_every_default_from_the_config_and_examples():
    from pipeline.config import RunConfig, TrainConfig

    d, t = RunConfig(), TrainConfig()
    teacher = [f"--teacher SPEC embedded | openai:MODEL | hf:PATH_OR_ID (default {d.teacher.spec})",
               f"(default {d.seed})", "--api [auto|chat|completions]", "(default: $OPENAI_BASE_URL, else OpenAI)"]
    expected = {
        "run": [*teacher, f"(default {d.bootstrap.num_instructions})", "default: the bundled seeds/seed_tasks.jsonl",
                f"(default {d.run_name})", f"(default {d.output_dir})", "Examples: seed2lora run"],
        "bootstrap": [*teacher, f"(default {d.bootstrap.num_instructions})", "bundled seeds/seed_tasks.jsonl"],
        "evolve": [*teacher, "bundled seeds/seed_tasks.jsonl"],
        "export": ["--seed-tasks / --no-seed-tasks", "(default RUN_DIR/export)", "Examples: seed2lora export"],
        "train": [f"Epochs (default {t.epochs:g})", f"(default {t.max_seq_len})", f"(default {t.optim})",
                  "--out DIR Adapter folder (default:", "Examples: seed2lora train", "--set train.lora_r=16"],
    }
    for command, wanted in expected.items():
        text = _help(command)
        for want in wanted:
            assert want in text, (command, want)
        for option in cli.commands[command].params:  # every option with a value says what it is without one
            if isinstance(option, click.Option) and not option.is_flag and option.name != "sets" and not option.hidden:
                assert "default" in (option.help or "") or option.show_default, (command, option.name)
    assert "--no-seeds" not in _help("export") and "--output-dir" not in _help("train")  # old spellings: hidden ...
    for command in ("bootstrap", "evolve", "classify", "instances", "filter"):
        assert "Examples:" not in _help(command) or command == "run"


def test_commands_list_only_the_options_they_use():
    filter_help = _help("filter")
    for unused in ("--max-cost", "--num-instructions", "--teacher", "--base-url", "--max-tokens-total", "--seed "):
        assert unused not in filter_help
    assert "--num-instructions" not in _help("classify") and "--num-instructions" not in _help("evolve")
    for command in ("run", "bootstrap", "classify", "instances", "filter", "evolve"):
        assert "--output-dir DIR" in _help(command)


def test_renamed_options_keep_their_old_spelling(tmp_path):
    export = cli.commands["export"].make_context("export", [str(tmp_path), "--no-seeds", "--out", "x"])
    assert export.params["include_seeds"] is False and export.params["out_dir"] == "x"
    assert cli.commands["export"].make_context("export", [str(tmp_path), "--no-seed-tasks"]).params["include_seeds"] is False
    for command, name in (("train", "output_dir"), ("merge", "out_dir"), ("eval", "out_dir")):
        assert cli.commands[command].make_context(command, [str(tmp_path), "--out", "x"]).params[name] == "x"


def test_a_run_continued_with_another_teacher_says_so(fake_openai, tmp_path):
    """`seed2lora run RUN_DIR` or a later stage without the run's --teacher used the default teacher silently."""
    invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2)
    again = invoke("bootstrap", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 3)
    assert "note:" not in again.output  # the same teacher: nothing to say
    flags = ["--base-url", fake_openai.url, "--output-dir", tmp_path, "--run-name", "r", "--num-instructions", 4]
    other = invoke("bootstrap", "--teacher", "openai:other-model", *flags)
    text = " ".join(other.output.split())
    assert "was made with teacher openai:fake-model (manifest.json) and this command uses openai:other-model" in text
    assert f"give --set teacher.spec=openai:fake-model --set teacher.base_url={fake_openai.url} (run and evolve take " \
           f"--teacher openai:fake-model --base-url {fake_openai.url} too) again" in text


def test_a_run_continued_without_its_teacher_stops_and_writes_nothing(fake_openai, tmp_path):
    """A resume or a later stage that leaves out --teacher went on with the embedded default, mixing its lines
    into a run a hosted teacher made; now it stops (exit 2) before any request, naming the fix."""
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2)
    run = tmp_path / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    calls = len(fake_openai.history)
    for args in (("run", run, "--num-instructions", 3), ("bootstrap", run, "--num-instructions", 3),
                 ("evolve", run), ("classify", run, "--set", "teacher.concurrency=2")):
        text = " ".join(invoke(*args, expect=2).output.split())
        assert "was made with teacher openai:fake-model (manifest.json), and this command names no teacher" in text
        assert f"give --set teacher.spec=openai:fake-model --set teacher.base_url={fake_openai.url} (run and evolve " \
               f"take --teacher openai:fake-model --base-url {fake_openai.url} too) to go on with it" in text
        assert "name another teacher explicitly (--set teacher.spec, or --teacher in run and evolve) to mix" in text
    assert len(fake_openai.history) == calls  # not one request
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # byte-identical
    config = tmp_path / "run.toml"  # a config file that names the teacher names it: no stop
    config.write_text(f'[teacher]\nspec = "openai:fake-model"\nbase_url = "{fake_openai.url}"\n')
    invoke("bootstrap", run, "--config", config, "--num-instructions", 3)


def test_a_bare_resume_names_the_teacher_and_the_left_out_settings_in_one_fix(fake_openai, tmp_path):
    """`run RUN_DIR` alone on a run made with a hosted teacher and --set's: the teacher's stop named only the teacher,
    and its fix, pasted, stopped again naming the settings; now one fix names both, and it goes on."""
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--api", "chat",
           "--set", "filter.rouge_threshold=0.6")
    run = tmp_path / "r"
    text = " ".join(invoke("run", run, expect=2).output.split())
    calls = len(fake_openai.history)
    fix = (f"--set teacher.spec=openai:fake-model --set teacher.base_url={fake_openai.url} --set 'teacher.api=\"chat\"' "
           "--set bootstrap.num_instructions=2 --set filter.rouge_threshold=0.6")  # as a shell takes it, quoted
    assert f"give {fix} to go on as the run was made" in text and "names no teacher" in text
    assert f"--teacher openai:fake-model --base-url {fake_openai.url} in place of the teacher's --set" in text
    invoke("run", run, *shlex.split(fix))  # the fix as pasted goes on: nothing left to do
    flags = ["--teacher", "openai:fake-model", "--base-url", fake_openai.url]
    invoke("run", run, *flags, *shlex.split(fix)[4:])  # the flags in place of the teacher's --set
    assert len(fake_openai.history) == calls  # nothing was left to ask: both went on as the run was made


def test_the_fix_a_kept_teacher_or_judge_names_works_in_the_command_that_stopped(fake_openai, tmp_path):
    """The stop named --judge to `run` (a run with a score stage over a run another judge scored) and --teacher to
    `score --config` (a config naming no teacher): neither command takes that flag ("No such option"). The fix it
    names now goes through, copied as it is."""
    import shlex

    def fix(result):
        text = " ".join(result.output.split())
        return shlex.split(text.split("Fix: give ", 1)[1].split(" (", 1)[0])

    rated = '{"rating": 4, "reason": "fine"}'
    fake_openai.default_reply = lambda path, body, plain=fake_openai.default_reply: (
        fake_openai.wrap(path, rated) if "Rate the response" in fake_openai.prompt_of(body) else plain(path, body))
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2)
    run = tmp_path / "r"
    config = tmp_path / "plain.toml"
    config.write_text("seed = 42\n")  # names no teacher: the default by omission
    stopped = invoke("score", run, "--config", config, expect=2)
    assert "names no teacher" in stopped.output
    invoke("score", run, "--config", config, *fix(stopped))
    invoke("score", run, "--judge", "openai:judge-model", "--judge-base-url", fake_openai.url, "--rescore")
    stages = 'stages=["bootstrap", "classify", "instances", "filter", "score"]'
    again = ["run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2, "--set", stages]
    stopped = invoke(*again, expect=2)
    assert fix(stopped) == ["--set", "score.teacher.spec=openai:judge-model", "--set",
                            f"score.teacher.base_url={fake_openai.url}"]
    invoke(*again, *fix(stopped))


def test_commands_that_use_no_teacher_keep_the_runs_recorded_teacher(fake_openai, tmp_path):
    """`filter RUN` (no teacher) wrote the default teacher into the manifest's config over the run's own, so a plain
    `score RUN`, which reads that config, stopped asking for a --teacher it does not take; export.json said embedded."""
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2)
    run = tmp_path / "r"

    def recorded():
        m = json.loads((run / "manifest.json").read_text())
        return m["config"]["teacher"]["spec"], m["config"]["teacher"]["base_url"], m["teacher"]["name"]

    made = ("openai:fake-model", fake_openai.url, "openai:fake-model")
    assert recorded() == made
    invoke("filter", run, "--set", "filter.rouge_threshold=0.6")
    assert recorded() == made
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["filter"]["rouge_threshold"] == 0.6  # filter's own settings are recorded
    assert manifest["status"] == "done" and manifest["command"].startswith("seed2lora") and "filter" in manifest["stages"]
    invoke("export", run)
    assert json.loads((run / "export" / "export.json").read_text())["config"]["teacher"]["spec"] == made[0]
    assert recorded() == made
    calls = len(fake_openai.history)
    text = " ".join(invoke("evolve", run, expect=2).output.split())  # names no teacher: stops, naming the run's
    assert "was made with teacher openai:fake-model (manifest.json), and this command names no teacher" in text
    assert f"take --teacher openai:fake-model --base-url {fake_openai.url} in place of" in text and "default, embedded," in text
    assert "--set filter.rouge_threshold=0.6 to go on as the run was made" in text  # evolve's filter, left out too
    assert len(fake_openai.history) == calls
    rated = '{"rating": 4, "reason": "fine"}'
    fake_openai.default_reply = lambda path, body, plain=fake_openai.default_reply: (
        fake_openai.wrap(path, rated) if "Rate the response" in fake_openai.prompt_of(body) else plain(path, body))
    invoke("score", run)  # the recorded config still names the run's teacher: it judges, no flag needed
    assert json.loads((run / "manifest.json").read_text())["judge"]["name"] == "openai:fake-model"
    assert len(fake_openai.history) > calls
    again = ["evolve", run, "--teacher", "openai:fake-model", "--base-url", fake_openai.url, "--rounds", 1]
    # evolve checks its lines with the filter's settings: filter's 0.6, left out here, stops it (check_left_out)
    assert "--set filter.rouge_threshold=0.6 to go on" in invoke(*again, expect=2).output
    invoke(*again, "--set", "filter.rouge_threshold=0.6")
    assert recorded() == made and (run / "evolve.jsonl").exists()


def test_log_lines_and_paths_print_as_written_not_as_markup(fake_openai, tmp_path, capsys):
    """rich read "[a]" in a path and "[filter]" in a reason as tags and dropped them, and a stray "[/b]" (a
    teacher's text in a message) raised a MarkupError in the middle of a run."""
    from pipeline.cli import log_line

    log_line("runs/[a]/x: looser [filter] settings; a teacher wrote [/b]")
    assert "runs/[a]/x: looser [filter] settings; a teacher wrote [/b]" in capsys.readouterr().err
    out = tmp_path / "[a]"
    result = CliRunner().invoke(cli, ["run", *map(str, teacher_flags(fake_openai, out)), "--num-instructions", "2",
                                      "--set", 'stages=["bootstrap"]'])
    assert result.exit_code == 0, result.output
    assert f"done: {out / 'r'}" in result.output


def test_a_bad_line_100_is_named_as_line_100_not_as_an_emoji(tmp_path, capsys):
    """rich turned ":100:" into an emoji, so "seeds.jsonl:100: has no ..." printed as "seeds.jsonl💯 has no ...",
    and a teacher named openai:m started its line "openaiⓂ": the console prints text as written."""
    from pipeline.cli import log_line
    from pipeline.progress import stderr_console
    from pipeline.show import stdout_console

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Fine task here."}\n' * 99 + '{"instruction": 5}\n')
    result = CliRunner().invoke(cli, ["run", "--seeds", str(seeds), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"{seeds}:100: has no 'instruction'" in result.output.replace("\n", "")
    log_line("openai:m: api auto: chat")
    assert "openai:m: api auto: chat" in capsys.readouterr().err
    for console in (stderr_console(), stdout_console()):
        with console.capture() as captured:
            console.print("a task about :smile: and :100:", markup=False)
        assert "a task about :smile: and :100:" in captured.get()


@pytest.mark.parametrize("row", ['{"prompt": "Name a fruit."}', '{"instruction": 3}', '{"messages": "Hi"}'])
def test_generate_refuses_an_input_row_it_cannot_read_naming_the_line(tmp_path, row):
    """A row with no instruction was answered as an empty prompt ("prompt": "" in the output), with no word."""
    rows = tmp_path / "prompts.jsonl"
    rows.write_text('{"instruction": "Add 2 and 3."}\n' + row + "\n")
    result = CliRunner().invoke(cli, ["generate", str(tmp_path), "--input", str(rows)])
    assert result.exit_code == 2 and f"{rows}:2: " in result.output.replace("\n", "")


def test_an_edited_template_with_a_wrong_variable_stops_the_run_before_anything_is_paid(fake_openai, tmp_path):
    """A copied prompts folder whose classify.txt misspelt $instruction stopped with exit 2 only when classify first
    rendered it, after bootstrap had sent its prompts and written the run; the README says exit 2 writes nothing."""
    import shutil

    from pipeline.prompts import bundled_prompts_dir

    prompts = tmp_path / "my_prompts"
    shutil.copytree(bundled_prompts_dir(), prompts)
    (prompts / "classify.txt").write_text((prompts / "classify.txt").read_text().replace("$instruction", "$instructon"))
    flags = [str(f) for f in teacher_flags(fake_openai, tmp_path / "out")]
    result = CliRunner().invoke(cli, ["run", *flags, "--num-instructions", "2", "--set", f"prompts_dir={prompts}"])
    assert result.exit_code == 2, result.output
    assert "classify.txt: template variables do not match (missing ['instruction'], unknown ['instructon'])" in \
        result.output.replace("\n", "")
    assert fake_openai.history == [] and not (tmp_path / "out").exists()


def test_a_run_killed_before_its_teacher_was_recorded_still_keeps_its_teacher(fake_openai, tmp_path):
    """kill -9 in a run's first step leaves a manifest with its config but no `teacher` entry (written when a step
    ends); a resume without --teacher then went on with the embedded default, mixing its lines into the run."""
    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2)
    run = tmp_path / "r"
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["teacher"]
    manifest["status"] = "running"  # as a kill -9 leaves it
    (run / "manifest.json").write_text(json.dumps(manifest))
    calls = len(fake_openai.history)
    text = " ".join(invoke("run", run, "--num-instructions", 2, expect=2).output.split())
    assert "was made with teacher openai:fake-model (manifest.json), and this command names no teacher" in text
    assert f"--set teacher.spec=openai:fake-model --set teacher.base_url={fake_openai.url}" in text
    assert len(fake_openai.history) == calls


def test_a_run_folder_that_cannot_be_written_stops_with_exit_2_before_the_teacher_is_probed(fake_openai, tmp_path,
                                                                                           monkeypatch):
    """`run --output-dir X` where X is a file, or a read-only folder, went through the teacher's preflight and then
    died with a traceback (NotADirectoryError, PermissionError) at the run's lock: exit 1, as a bug."""
    import os

    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "afile" / "r"), "--teacher", "openai:fake-model", "--base-url",
                                      fake_openai.url, "--num-instructions", "2"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and result.exception is not None and isinstance(result.exception, SystemExit), text
    assert f"{tmp_path / 'afile' / 'r'}: the run's folder cannot be made: {tmp_path / 'afile'} is a file, not a " \
           "folder. Fix: give RUN_DIR (or --output-dir) a folder you can write to" in text
    assert fake_openai.probes == [] and fake_openai.history == []

    invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 2)
    run = tmp_path / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    calls = len(fake_openai.history)
    real_access = os.access  # as root, chmod cannot make a folder read-only: say the folder refuses writes
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (Path(path) != run or not mode & os.W_OK)
                        and real_access(path, mode, **kw))
    text = " ".join(invoke("run", run, "--teacher", "openai:fake-model", "--base-url", fake_openai.url,
                           "--num-instructions", 4, expect=2).output.split())
    assert f"{run}: the run's folder cannot be written. Fix:" in text
    assert len(fake_openai.history) == calls and {p.name: p.read_bytes() for p in run.iterdir()} == before
