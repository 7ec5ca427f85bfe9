"""Option spellings and help of export and report: --out for what a command writes (old spellings hidden; --output-dir
is the folder of runs), defaults read from the config."""

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import ExportConfig


def _help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_export_and_report_write_to_out_and_keep_the_old_spellings_hidden(tmp_path):
    for command, spellings in (("export", ("--out",)), ("report", ("--out", "--output"))):
        for spelling in spellings:
            ctx = cli.commands[command].make_context(command, [str(tmp_path), spelling, "x"])
            assert ctx.params["out_dir"] == "x", (command, spelling)
        text = _help(command)
        assert "--out DIR" in text and "--output " not in text and "--output-dir" not in text, command


def test_export_help_reads_its_defaults_from_export_config():
    d, text = ExportConfig(), _help("export")
    for want in (f"held out for eval (default {d.eval_fraction})", f"train/eval split (default {d.seed})",
                 f"(default {d.formats})", f"per task (default {d.rows})", "--seed-tasks / --no-seed-tasks"):
        assert want in text, want
    assert "--no-seeds" not in text


def test_eval_judge_flag_sets_the_judge_spec(tmp_path):
    """--judge SPEC is [eval.judge] spec; the rest of the judge's table comes from --set eval.judge.KEY or the config."""
    text = _help("eval")
    assert "--judge SPEC" in text and "--set eval.judge.base_url=URL" in text


def test_set_values_survive_flags_that_were_not_given():
    """`train DATA --set max_steps=1`: the command's flags default to None, which must not undo --set."""
    from pipeline.config import TrainConfig, flag_overrides, load_section

    flags = {"max_steps": None, "epochs": None, "resume": None, "lora_r": 8}
    cfg = load_section(TrainConfig, None, "train",
                       flag_overrides(flags, ["max_steps=1", "train.epochs=0.5", "resume=false"], TrainConfig, "train"))
    assert (cfg.max_steps, cfg.epochs, cfg.resume, cfg.lora_r) == (1, 0.5, False, 8)
    # Both given: --set wins, as it does for `seed2lora run` (the file, then the flags, then --set).
    assert flag_overrides({"lora_r": 8}, ["lora_r=16"], TrainConfig, "train") == {"lora_r": 16}


def test_a_repeated_server_url_flag_gives_every_url_as_an_endpoint(tmp_path):
    """--base-url A --base-url B is --base-url A,B (failover endpoints); click kept B alone and dropped A unsaid. So
    in every command that takes --base-url or --judge-base-url, and a single one stays as it was."""
    from pipeline.cli import build_config

    found = set()
    for name, command in cli.commands.items():
        for param in command.params:
            flag = next((o for o in param.opts if o in ("--base-url", "--judge-base-url")), None)
            if flag is None:
                continue
            found.add((name, flag))
            urls = [str(tmp_path), flag, "http://a/v1", flag, "http://b/v1,http://c/v1"]
            ctx = command.make_context(name, urls)
            assert ctx.params[param.name] == "http://a/v1,http://b/v1,http://c/v1", (name, flag)
            assert command.make_context(name, [str(tmp_path), flag, "http://a/v1"]).params[param.name] == "http://a/v1"
            assert command.make_context(name, [str(tmp_path)]).params[param.name] is None, (name, flag)
    assert {("run", "--base-url"), ("classify", "--base-url"), ("score", "--judge-base-url")} <= found, found
    params = cli.commands["run"].make_context("run", [str(tmp_path), "--base-url", "http://a/v1", "--base-url",
                                                      "http://b/v1"]).params
    assert build_config(None, **params_of(params)).teacher.base_url == "http://a/v1,http://b/v1"


def params_of(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in ("config_path", "sets", "dry_run")}


def test_a_repeated_set_of_a_server_url_gives_every_url_as_an_endpoint_as_the_flag_does(tmp_path):
    """`--set teacher.base_url=A --set teacher.base_url=B` kept B alone, silently, while `--base-url A --base-url B`
    gives both endpoints (docs/teachers.md: several URLs share the load and fail over). Now the --set form gives
    both too, for every server URL key; another key repeated is still the last one given."""
    from pipeline.config import load_config, parse_overrides

    sets = ["teacher.base_url=http://a/v1", "teacher.base_url=http://b/v1,http://c/v1",
            "score.teacher.base_url=http://j/v1", "score.teacher.base_url=http://k/v1",
            "bootstrap.num_instructions=5", "bootstrap.num_instructions=8"]
    out = parse_overrides(sets)
    assert out["teacher.base_url"] == "http://a/v1,http://b/v1,http://c/v1"
    assert out["score.teacher.base_url"] == "http://j/v1,http://k/v1" and out["bootstrap.num_instructions"] == 8
    assert load_config(None, out).teacher.base_url == "http://a/v1,http://b/v1,http://c/v1"
    assert parse_overrides(["eval.judge.base_url=http://e/v1", "eval.judge.base_url=http://f/v1"]) == {
        "eval.judge.base_url": "http://e/v1,http://f/v1"}
    params = cli.commands["run"].make_context("run", [str(tmp_path), "--set", sets[0], "--set", sets[1]]).params
    from pipeline.cli import build_config

    assert build_config(None, params["sets"], **params_of(params)).teacher.base_url == "http://a/v1,http://b/v1,http://c/v1"
