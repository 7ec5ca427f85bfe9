"""The Python API: docs/python.md's example runs as written, against a fake teacher server (issue 19)."""

import json
import re

import pytest

from pipeline import Incomplete, Run, Seed2LoraError
from pipeline.config import load_config


def doc_example() -> str:
    from conftest import ROOT

    text = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)


def test_the_docs_example_runs_against_a_fake_server(fake_openai, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    exec(compile(doc_example(), "docs/python.md", "exec"), {})
    printed = capsys.readouterr()
    out = printed.out
    assert "tasks;" in out and "done" in out and "filter:" not in out  # each stage's line once, logged to stderr
    assert "filter:" in printed.err
    run = tmp_path / "outputs" / "notebook"
    assert json.loads((run / "manifest.json").read_text())["status"] == "done"
    assert (run / "export").is_dir()


def test_open_goes_on_with_the_recorded_config(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", name="r",
             output_dir=tmp_path, progress=False) as run:
        run.run(["bootstrap"])
    calls = len(fake_openai.history)
    again = Run.open(tmp_path / "r", progress=False)
    assert again.config.bootstrap.num_instructions == 3 and len(again.records("bootstrap")) == 3
    again.run(["bootstrap"])
    assert len(fake_openai.history) == calls  # resumed: nothing sent again
    again.close()
    # A Run(...) that leaves the target out raises before any request, naming the key and value
    with Run(teacher="openai:fake-model", name="r", output_dir=tmp_path, progress=False) as bare, \
            pytest.raises(Seed2LoraError, match="bootstrap.num_instructions=3 to go on"):
        bare.run(["bootstrap"])
    assert len(fake_openai.history) == calls


def test_bad_settings_and_folders_raise_with_the_fix():
    with pytest.raises(Seed2LoraError, match="concurrency"):
        Run(settings={"teacher.concurrency": 0}, progress=False)
    with pytest.raises(Seed2LoraError, match="not a seed2lora run"):
        Run.open("/nonexistent/run")


def test_every_public_name_loads_from_pipeline_with_a_docstring_and_the_faults_are_seed2lora_errors():
    import pipeline

    for name in (n for n in pipeline.__all__ if n != "__version__"):
        assert getattr(pipeline, name).__doc__, name
    from pipeline import BudgetReached, Incomplete, InputError, LowYield, TeacherUnavailable

    codes = {BudgetReached: 3, TeacherUnavailable: 4, Incomplete: 5, LowYield: 6}  # as docs/python.md says
    assert all(issubclass(c, Seed2LoraError) and c.exit_code == code for c, code in codes.items())
    assert issubclass(InputError, Seed2LoraError)
    from pipeline import TeacherError

    assert issubclass(TeacherUnavailable, TeacherError) and getattr(TeacherError, "exit_code", 2) == 2


def test_one_stage_name_runs_that_stage_and_a_misspelt_stage_is_an_error_not_an_empty_list(fake_openai, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", name="r",
             output_dir=tmp_path, progress=False) as run:
        (line,) = run.run("bootstrap")  # before: nine unknown stages, 'b', 'o', 'o', ...
        assert line.startswith("bootstrap:") and len(run.records("bootstrap")) == 3
        for read in (run.records, run.rejected):
            with pytest.raises(Seed2LoraError, match="unknown stage 'filters'. Fix: use one of .*filter"):
                read("filters")  # before: [], as if the stage had kept nothing
        assert run.records("ifd") == [] and run.rejected("export") == []
        folder = r"stage 'export' writes a folder, not records \(run.export\(\) returns its folder\)"
        with pytest.raises(Seed2LoraError, match=folder):
            run.records("export")  # before: "unknown stage 'export'", a stage the run had


def test_a_dict_as_config_or_a_list_as_settings_names_the_argument_and_the_fix():
    with pytest.raises(Seed2LoraError, match=r"config: expected a TOML file's path or a RunConfig, not dict\. "
                                             r'Fix: put settings in settings=\{"section.key": value\}'):
        Run(config={"bootstrap": {"num_instructions": 5}}, progress=False)  # before: a bare TypeError, deep inside
    with pytest.raises(Seed2LoraError, match=r'settings: expected a dict, not list\. Fix: give settings=\{'):
        Run(settings=[("bootstrap.num_instructions", 5)], progress=False)



def test_an_incomplete_names_why_the_teacher_failed_and_the_teachers_events_reach_the_log(fake_openai, tmp_path,
                                                                                          capsys):
    lines: list[str] = []
    with Run(settings={"bootstrap.num_instructions": 3, "teacher.max_retries": 1}, teacher="openai:fake-model",
             base_url=fake_openai.url, name="r", output_dir=tmp_path, progress=False, log=lines.append) as run:
        run.run("bootstrap")
        for _ in range(6):  # each of 3 tasks: a 500, retried once, then a 400, which is not retried
            fake_openai.enqueue({"error": {"message": "the backend is on fire"}}, status=500 if _ < 3 else 400)
        # before: "the teacher failed on 3 (see the errors above ...)", and no error said above it or in it
        with pytest.raises(Incomplete, match=r"failed on 3 \(the last error: .*400.*the backend is on fire"):
            run.run("classify")
    # before: Run took no log, and the teacher's retries were said nowhere
    assert any(line.startswith("teacher: retrying after") and "500" in line for line in lines), lines
    assert any(line.startswith("bootstrap:") for line in lines)  # each stage's line as it ends, as the CLI's
    for _ in range(3):
        fake_openai.enqueue({"error": {"message": "still on fire"}}, status=500)
    with Run.open(tmp_path / "r", {"teacher.max_retries": 0}, progress=False) as again, pytest.raises(Incomplete):
        again.run("classify")
    assert "still on fire" in capsys.readouterr().err  # the default log: stderr, as the CLI's console


def test_a_budget_stop_names_the_setting_to_raise_and_raising_it_from_python_goes_on(fake_openai, tmp_path):
    from pipeline import BudgetReached

    settings = {"bootstrap.num_instructions": 12, "budget.max_tokens_total": 60}
    with Run(settings=settings, teacher="openai:fake-model", base_url=fake_openai.url, name="r", output_dir=tmp_path,
             progress=False, log=lambda line: None) as run:
        # before: "Raise --max-tokens-total / --max-cost": flags of the CLI, which Python has no keyword for
        with pytest.raises(BudgetReached, match=r"Fix: raise budget\.max_tokens_total \(now 60\) .*settings= in Python"):
            run.run()
    with Run.open(tmp_path / "r", {"budget.max_tokens_total": 0}, progress=False, log=lambda line: None) as again:
        again.run()
        assert again.manifest()["status"] == "done" and len(again.records("filter")) == 12


def test_the_manifest_records_the_python_call_not_the_interpreters_command_line(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/home/me/.venv/lib/ipykernel_launcher.py", "-f", "/run/kernel-1.json"])
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", base_url=fake_openai.url,
             name="r", output_dir=tmp_path, progress=False, log=lambda line: None) as run:
        run.run()
        # before: "seed2lora -f /run/kernel-1.json", a command that never ran (and that a resume's error then quoted)
        assert run.manifest()["command"] == ("pipeline.Run.run(['bootstrap', 'classify', 'instances', 'filter']) in "
                                             "ipykernel_launcher.py")
        run.export()
        assert run.manifest()["command"] == "pipeline.Run.export() in ipykernel_launcher.py"


def test_a_low_yield_stop_names_settings_that_python_can_give(fake_openai, tmp_path):
    from pipeline import LowYield

    same = "Sure:\n9. Explain why volcanoes erupt under pressure.\n10. Explain why volcanoes erupt under pressure."
    fake_openai.default_reply = lambda path, body: fake_openai.wrap(path, same)
    with Run(settings={"bootstrap.num_instructions": 20, "teacher.concurrency": 1}, teacher="openai:fake-model",
             base_url=fake_openai.url, name="r", output_dir=tmp_path, progress=False, log=lambda line: None) as run:
        # before: "--api completions", a flag of the CLI's only: Python's settings= takes teacher.api
        with pytest.raises(LowYield, match=r"bootstrap\.yield_stop is 0\.05.*teacher\.api = completions"):
            run.run("bootstrap")


def test_a_run_folder_given_as_config_says_it_is_a_folder_and_names_run_open(tmp_path):
    with pytest.raises(Seed2LoraError, match=r"is a folder, not a TOML file\. Fix: .*Run\.open\(path\)"):
        Run(tmp_path, progress=False)  # before: "does not exist", of a folder that is there
    with pytest.raises(Seed2LoraError, match=r"does not exist\. Fix: .*config= in Python"):
        Run(tmp_path / "run.toml", progress=False)


def test_a_keyboard_interrupt_while_the_preflight_waits_carries_what_is_pending(fake_openai, tmp_path):
    import _thread
    import threading

    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", base_url=fake_openai.url,
             name="r", output_dir=tmp_path, progress=False, log=lambda line: None) as run:
        run.run("bootstrap")
    fake_openai.go_down()
    with Run.open(tmp_path / "r", {"teacher.connect_window_s": 30}, progress=False, log=lambda line: None) as run:
        timer = threading.Timer(1.0, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt) as stop:
            run.run(["bootstrap", "classify"])  # waits up to 30 s for the server in its preflight
        timer.cancel()
    # before: a KeyboardInterrupt with no `pending` at all (AttributeError), as docs/python.md promises it
    assert stop.value.pending == "pending: classify 3 tasks"


def test_a_run_stopped_by_ctrl_c_leaves_no_unclosed_event_loop_at_exit(fake_openai, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    fake_openai.default_delay = 0.3
    script = f"""
import _thread, gc, threading
from pipeline import Run
run = Run(settings={{"bootstrap.num_instructions": 30, "teacher.concurrency": 8}}, teacher="openai:fake-model",
          base_url={fake_openai.url!r}, name="r", output_dir={str(tmp_path)!r}, progress=False, log=lambda line: None)
threading.Timer(1.5, _thread.interrupt_main).start()
try:
    run.run()
except KeyboardInterrupt:
    print("interrupted")
del run
gc.collect()
"""
    done = subprocess.run([sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert "interrupted" in done.stdout, done.stderr[-2000:]
    # before: "ResourceWarning: unclosed event loop <_UnixSelectorEventLoop ...>" printed as the interpreter exited
    assert "unclosed" not in done.stderr and "Warning" not in done.stderr, done.stderr[-2000:]


def test_run_config_changed_between_calls_is_checked_as_settings_are(fake_openai, tmp_path):
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", base_url=fake_openai.url,
             name="r", output_dir=tmp_path, progress=False, log=lambda line: None) as run:
        run.run("bootstrap")
        run.config.bootstrap.num_instructions = 5  # a stage setting: goes on with it
        run.run("bootstrap")
        assert len(run.records("bootstrap")) == 5
        calls = len(fake_openai.history)
        run.config.bootstrap.num_instructions = -1
        # before: -1 ran and went into manifest.json, which Run.open then refused ("-1 is out of range")
        with pytest.raises(Seed2LoraError, match=r"bootstrap\.num_instructions: -1 is out of range"):
            run.run("bootstrap")
        run.config.bootstrap.num_instructions = 5
        run.config.teacher.concurrency = 2  # before: ignored, the teacher was built with the first value
        with pytest.raises(Seed2LoraError, match=r"run\.config\.teacher\.concurrency: was changed to 2 after this Run "
                                                 r"was made from 8.*Fix: make a new Run for it, e.g. Run\.open\(run\.path"):
            run.run("bootstrap")
        assert len(fake_openai.history) == calls
    with Run.open(tmp_path / "r", {"teacher.concurrency": 2}, progress=False) as again:
        assert again.config.bootstrap.num_instructions == 5 and again.config.teacher.concurrency == 2


def test_a_stage_setting_changed_on_an_opened_runs_config_goes_on(fake_openai, tmp_path):
    """docs/python.md: a stage setting changed on run.config between calls goes on. On a Run.open it was refused as
    left out: "this command leaves it out: it would go on with bootstrap.num_instructions = 5, the default"."""
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", base_url=fake_openai.url,
             name="r", output_dir=tmp_path, progress=False, log=lambda line: None) as run:
        run.run("bootstrap")
    with Run.open(tmp_path / "r", progress=False, log=lambda line: None) as again:
        again.run("bootstrap")  # as made: nothing to do
        again.config.bootstrap.num_instructions = 5
        again.run("bootstrap")
        assert len(again.records("bootstrap")) == 5
        assert again.manifest()["config"]["bootstrap"]["num_instructions"] == 5
    with Run(teacher="openai:fake-model", base_url=fake_openai.url, name="r", output_dir=tmp_path, progress=False,
             log=lambda line: None) as other:  # a new Run that leaves it out is still stopped
        with pytest.raises(Seed2LoraError, match=r"made with bootstrap\.num_instructions = 5 .* leaves it out"):
            other.run("bootstrap")


def test_two_runs_of_one_folder_in_one_process_say_the_other_is_in_this_process(fake_openai, tmp_path):
    import threading

    fake_openai.default_delay = 0.5  # the first to take the folder holds it for a second at least
    runs = [Run(settings={"bootstrap.num_instructions": 6}, teacher="openai:fake-model", base_url=fake_openai.url,
                name="r", output_dir=tmp_path, progress=False, log=lambda line: None) for _ in range(2)]
    errors: list[BaseException] = []

    def go(run: Run) -> None:
        try:
            run.run("bootstrap")
        except Seed2LoraError as e:
            errors.append(e)

    threads = [threading.Thread(target=go, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # before: "is being written by seed2lora pid N", this very process, read as another program's
    (error,) = errors
    assert "(this process: another Run of it, on another thread, is running it)" in str(error)
    assert len(runs[0].records("bootstrap")) == 6
    for run in runs:
        run.close()


def test_relative_seeds_and_adapter_folder_are_the_same_files_when_the_run_is_opened_from_elsewhere(fake_openai,
                                                                                                  tmp_path, monkeypatch):
    from conftest import ROOT

    seeds = (ROOT / "seeds" / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    for folder, lines in (("here", seeds[:20]), ("elsewhere", seeds[30:61])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "myseeds.jsonl").write_text("".join(lines), encoding="utf-8")
    monkeypatch.chdir(tmp_path / "here")
    settings = {"bootstrap.num_instructions": 3, "train.output_dir": "adapters/a1", "seed_tasks": "myseeds.jsonl"}
    with Run(settings=settings, teacher="openai:fake-model", base_url=fake_openai.url, name="r",
             output_dir="outputs", progress=False, log=lambda line: None) as run:
        run.run("bootstrap")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with Run.open(tmp_path / "here" / "outputs" / "r", {"bootstrap.num_instructions": 6}, progress=False,
                  log=lambda line: None) as again:
        # before: "adapters/a1", which train then wrote (and eval sought) under the directory of each later call
        assert again.config.train.output_dir == str(tmp_path / "here" / "adapters" / "a1")
        again.run("bootstrap")
        # before: 31, the other folder's myseeds.jsonl, taken without a word
        assert again.manifest()["num_seeds"] == 20


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes are Python 3.11+")
def test_a_fault_whose_fix_names_the_cli_carries_a_note_of_the_python_calls(fake_openai, tmp_path):
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", base_url=fake_openai.url,
             name="r", output_dir=tmp_path, progress=False, log=lambda line: None) as run:
        with pytest.raises(Seed2LoraError, match="run `seed2lora filter`") as fault:
            run.export()
        # before: no note, only "run `seed2lora filter` ... first", a command a notebook has no prompt for
        assert 'run.run("STAGE")' in fault.value.__notes__[0] and 'settings={"KEY": VALUE}' in fault.value.__notes__[0]
        run.run("bootstrap")
        with pytest.raises(Seed2LoraError, match="unknown stage") as plain:
            run.run("filtr")
        assert not getattr(plain.value, "__notes__", None)  # a message with nothing of the CLI in it gets none


def test_relative_eval_decontamination_and_cost_paths_are_recorded_whole(fake_openai, tmp_path, monkeypatch):
    """eval.data, export/select.decontaminate.against and cost.adapter were recorded as given: a later command, or
    Run.open, in another directory read another folder's file there (the eval set's name is not a path)."""
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    settings = {"bootstrap.num_instructions": 3, "eval.data": "held_out.jsonl",
                "export.decontaminate.against": "evals/a.jsonl", "select.decontaminate.against": "evals/b.jsonl",
                "cost.adapter": "adapters/a1"}
    with Run(settings=settings, teacher="openai:fake-model", base_url=fake_openai.url, name="r",
             output_dir="outputs", progress=False, log=lambda line: None) as run:
        run.run("bootstrap")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with Run.open(tmp_path / "here" / "outputs" / "r", progress=False, log=lambda line: None) as again:
        cfg = again.config
        assert cfg.eval.data == str(tmp_path / "here" / "held_out.jsonl")  # before: "held_out.jsonl"
        assert cfg.export.decontaminate.against == str(tmp_path / "here" / "evals" / "a.jsonl")
        assert cfg.select.decontaminate.against == str(tmp_path / "here" / "evals" / "b.jsonl")
        assert cfg.cost.adapter == str(tmp_path / "here" / "adapters" / "a1")
    assert load_config(None, {"eval.data": "user-oriented"}).eval.data == "user-oriented"


def test_a_mistyped_teacher_is_named_when_the_run_is_made_with_the_spec_meant(tmp_path):
    """Run(teacher="opnai:...") was accepted and refused only at run(), with no word of "openai"."""
    with pytest.raises(Seed2LoraError, match=r"unknown teacher 'opnai:gpt-4o-mini'\. Fix: did you mean "
                                             r"'openai:gpt-4o-mini'\? Use embedded, openai:MODEL or hf:PATH_OR_ID"):
        Run(teacher="opnai:gpt-4o-mini", output_dir=tmp_path)
    with pytest.raises(Seed2LoraError, match=r"unknown teacher 'gpt4'\. Fix: use embedded"):
        Run(teacher="gpt4", output_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing made
    Run(teacher="openai:gpt-4o-mini", output_dir=tmp_path)  # a good spec needs no server to be made


def test_one_run_config_given_to_two_runs_makes_two_runs_and_is_left_as_it_was(tmp_path):
    """The RunConfig was the Runs' own: the second Run's name= set it on the first Run and the caller's config, and
    the first Run's next call raised "run.config.run_name: was changed to 'b'", a change its user never made."""
    cfg = load_config(None, {"output_dir": str(tmp_path), "bootstrap.num_instructions": 3})
    a, b = Run(cfg, name="a", progress=False), Run(cfg, name="b", settings={"bootstrap.num_instructions": 4},
                                                   progress=False)
    assert (a.path, b.path) == (tmp_path / "a", tmp_path / "b")
    assert (a.config.bootstrap.num_instructions, b.config.bootstrap.num_instructions) == (3, 4)
    assert cfg.run_name != "b" and cfg.bootstrap.num_instructions == 3
    with pytest.raises(Seed2LoraError, match="neither filter.jsonl nor evolve.jsonl"):  # not "run_name was changed"
        a.export()
    a.close()
    b.close()


def test_a_finished_run_opened_with_other_seeds_keeps_its_manifest_until_a_record_is_made_with_them(fake_openai,
                                                                                                     tmp_path):
    """Run.open(run, {"seed_tasks": other}).run() on a finished run made nothing, and the manifest then said the run
    was made from the other file (seed_tasks, seed_file, num_seeds). As the CLI takes a setting named on purpose,
    it goes on: recorded once a step makes records with it (filter, run whole against the other seeds)."""
    from conftest import ROOT

    seeds = (ROOT / "seeds" / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "other.jsonl").write_text("".join(seeds[:20]), encoding="utf-8")
    with Run(settings={"bootstrap.num_instructions": 3}, teacher="openai:fake-model", base_url=fake_openai.url,
             name="r", output_dir=tmp_path, progress=False, log=lambda line: None) as run:
        run.run()
        made = run.manifest()

    def as_made(m):
        return m["config"], m["seed_file"], m["num_seeds"], m["prompts"], m["teacher"]

    other = {"seed_tasks": str(tmp_path / "other.jsonl")}
    with Run.open(tmp_path / "r", other, progress=False, log=lambda line: None) as again:
        assert len(again.records("bootstrap")) == 3
        again.run(["bootstrap", "classify", "instances"])  # nothing left to make
        assert as_made(again.manifest()) == as_made(made)
        again.run("filter")
        now = again.manifest()
    assert (now["config"]["seed_tasks"], now["num_seeds"]) == (other["seed_tasks"], 20)


def test_a_short_eval_cap_note_names_what_a_run_sets_from_python_not_the_cli_flag(tmp_path):
    """The measured bug: run.eval() at eval.max_new_tokens = 128 said "run eval again with --max-new-tokens 256", a
    flag a notebook has nowhere to give. A Run's context is marked as the Python API's, and the note names its
    setting; the CLI's keeps the flag."""
    from pathlib import Path

    from pipeline.runner import Session
    from pipeline.train.eval import short_cap_note

    with Run(teacher="openai:fake-model", name="r", output_dir=tmp_path, progress=False) as run:
        assert run._session.ctx.python
    assert not Session(load_config(None, {"output_dir": str(tmp_path), "run_name": "c"})).ctx.python
    sampling = Path("adapter/sampling.json")
    said = short_cap_note(sampling, 128, python=True)
    assert "now caps answers at 128 tokens" in said and "--max-new-tokens" not in said
    assert "set run.config.eval.max_new_tokens = 256 (the default) or more and call run.eval() again" in said
    assert "run eval again with --max-new-tokens 256 (the default) or more" in short_cap_note(sampling, 128)
    assert short_cap_note(sampling, 256, python=True) == short_cap_note(sampling, 300) == ""
