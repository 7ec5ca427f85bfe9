"""A resume or a later step that leaves out a setting the run was made with stops before anything is written
(context.check_left_out), and a command records only the tables of the steps it runs (RunContext.kept_tables)."""
import json
import shlex

from helpers import invoke, read, teacher_flags

FIRST = ["--num-instructions", "8", "--set", 'stages=["bootstrap", "classify"]', "--set", "classify.chat_max_tokens=30"]


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


def test_a_resume_that_leaves_out_the_target_stops_naming_the_set_that_goes_on(fake_openai, tmp_path):
    flags = teacher_flags(fake_openai, tmp_path)
    invoke("run", *flags, *FIRST)
    run = tmp_path / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    sent = len(fake_openai.history)
    out = invoke("run", *flags, "--set", 'stages=["bootstrap", "classify"]', expect=2).output
    assert "bootstrap.num_instructions = 8" in out and "bootstrap.num_instructions = 100" in out, out
    assert "classify.chat_max_tokens = 30" in out and "manifest.json" in out
    assert "(its last command: seed2lora " in out  # the command to repeat, its flags as given
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before and len(fake_openai.history) == sent  # nothing written, nothing sent
    dry = invoke("run", *flags, "--set", 'stages=["bootstrap", "classify"]', "--dry-run", expect=2).output
    assert "the run would stop before its first call (exit 2)" in dry and "bootstrap.num_instructions = 8" in dry
    # The fix it names, pasted as printed, goes on as the run was made
    fix = " ".join(out.split("Fix: give ", 1)[1].split(" to go on as")[0].split())
    # run's own flag where it has one (--num-instructions, as typed at first), --set for the rest
    assert fix == "--num-instructions 8 --set classify.chat_max_tokens=30", fix
    invoke("run", *flags, "--set", 'stages=["bootstrap", "classify"]', *shlex.split(fix))
    assert len(read(run / "bootstrap.jsonl")) == 8
    # A value named on purpose is a change, not an omission
    invoke("run", *flags, "--set", 'stages=["bootstrap", "classify"]', "--num-instructions", "10",
           "--set", "classify.chat_max_tokens=30")
    assert len(read(run / "bootstrap.jsonl")) == 10


def test_a_later_step_keeps_the_tables_of_the_steps_it_does_not_run(fake_openai, tmp_path):
    """`instances R` after a run made with --num-instructions 8 wrote the default target of 100 into the manifest's
    config, so the config no longer said how bootstrap's records were made, and a later resume went on to 100."""
    flags = teacher_flags(fake_openai, tmp_path)
    invoke("run", *flags, *FIRST)
    run = tmp_path / "r"
    invoke("instances", *flags, "--set", "instances.max_instances=3")
    config = manifest(run)["config"]
    assert config["bootstrap"]["num_instructions"] == 8 and config["classify"]["chat_max_tokens"] == 30
    assert config["instances"]["max_instances"] == 3  # the table of the step it ran is its own
    # Settings that change no record may differ: when bootstrap warns, a teacher's concurrency
    invoke("run", *flags, *FIRST, "--set", "bootstrap.yield_warn=0.1")
    invoke("run", *flags, "--num-instructions", "8", "--set", 'stages=["bootstrap", "classify"]',
           "--set", "classify.chat_max_tokens=30", "--set", "teacher.concurrency=2")


def test_a_resume_that_leaves_out_the_server_stops(fake_openai, tmp_path):
    """The same teacher without its --base-url would go to another server (OpenAI's, with the key in the
    environment): stop, naming it."""
    invoke("run", *teacher_flags(fake_openai, tmp_path), *FIRST)
    out = invoke("run", "--teacher", "openai:fake-model", "--output-dir", tmp_path, "--run-name", "r", *FIRST,
                 expect=2).output
    assert f"teacher.base_url = \"{fake_openai.url}\"" in out and "teacher.base_url = \"\"" in out, out
