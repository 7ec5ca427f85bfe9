"""docs/ and README.md keep working: every command's --help runs, every relative link resolves, every flag
written after `seed2lora COMMAND` in them is one that command takes, every setting they name exists, and a default
quoted beside its setting is the default."""

import dataclasses
import re
import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the CLI as its argv path, subcommands of groups included."""
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def command_lines(text: str) -> list[str]:
    """Each `seed2lora ...` invocation in a page: code-block lines (continuations joined) and inline code."""
    text = text.replace("\\\n", " ")
    spans = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    spans += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = []
    for span in spans:
        for line in span.splitlines():
            line = re.split(r"\s#\s", line)[0]  # a trailing shell comment
            for part in re.split(r"&&|\|\||[|;]", line):
                words = part.replace("[", " ").replace("]", " ").split()
                if len(words) > 1 and words[0] == "seed2lora":
                    lines.append(" ".join(words))
    return lines


def option_names(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def test_the_cli_has_commands():
    assert len(command_paths()) >= 13


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_command_has_working_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file(page):
    targets = [t for t in LINK.findall(page.read_text(encoding="utf-8")) if not re.match(r"^[a-z]+:|^#", t)]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert missing == [], f"{page.relative_to(ROOT)} links to missing files"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_documented_flag_exists(page):
    wrong = []
    for line in command_lines(page.read_text(encoding="utf-8")):
        command = cli.commands.get(line.split()[1])
        if command is None:  # test_readme checks the command names themselves
            continue
        flags = {w.split("=")[0] for w in line.split()[2:] if w.startswith("-") and not w.startswith("---")}
        wrong += [f"{line}: {f}" for f in sorted(flags - option_names(command)) if re.match(r"^--?[a-z]", f)]
    assert wrong == []


def test_the_flag_check_sees_what_it_should():
    text = "```bash\nseed2lora run --config a.toml --set x=1 \\\n  --bogus 2 && seed2lora show out  # see --x\n```\n" \
           "Inline `seed2lora export DIR --no-seed-tasks`."
    assert command_lines(text) == ["seed2lora run --config a.toml --set x=1 --bogus 2", "seed2lora show out",
                                   "seed2lora export DIR --no-seed-tasks"]


def config_paths(cls: type = RunConfig, prefix: str = "") -> dict[str, object]:
    """Every setting and table of the config as its dotted path, with its default (a table: its dataclass)."""
    paths: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        path, kind = f"{prefix}{f.name}", typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            paths[path] = kind
            paths.update(config_paths(kind, f"{path}."))
        else:
            paths[path] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return paths


CONFIG = config_paths()
TABLES = {p.split(".")[0] for p in CONFIG if "." in p}
FILE_SUFFIX = re.compile(r"\.(jsonl?|txt|png|md|py|toml|csv|gguf|safetensors|sqlite|html)$")
# Dotted names in the docs that start like a config table but are something else: manifest keys and code.
NOT_SETTINGS = {"stages.filter.input_file", "teacher.endpoints", "teacher.stream", "classify.classify_map",
                "instances.instances_map"}


def setting_of(name: str) -> str | None:
    """The setting a dotted name in the docs means: itself, or a command's table key (`judge.base_url` on eval)."""
    return next((p for p in (name, *(f"{t}.{name}" for t in TABLES)) if p in CONFIG), None)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_setting_the_docs_name_exists(page):
    text = page.read_text(encoding="utf-8")
    named = re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`", text) + re.findall(r"--set\s+'?([a-z_][a-z_0-9.]*)=", text)
    wrong = sorted({n for n in named if n.split(".")[0] in TABLES and not FILE_SUFFIX.search(n)
                    and n not in NOT_SETTINGS and setting_of(n) is None})
    assert wrong == [], f"{page.relative_to(ROOT)} names settings pipeline/config.py does not have"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_default_quoted_beside_its_setting_is_its_default(page):
    """`teacher.connect_window_s` (20 s), `teacher.max_wait_s`, 60 s: the number right after a setting is its default."""
    quoted = re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`(?:\s*\(|,\s+)(\d[\d,]*(?:\.\d+)?)", page.read_text(encoding="utf-8"))
    stale = [f"{key} ({number}), default {CONFIG[key]}" for key, number in quoted
             if key in CONFIG and float(number.replace(",", "")) != CONFIG[key]]
    assert stale == []


def test_the_setting_checks_see_what_they_should():
    assert setting_of("teacher.connect_window_s") and setting_of("judge.base_url") == "eval.judge.base_url"
    assert setting_of("teacher.conect_window_s") is None and "bootstrap" in TABLES
    assert CONFIG["bootstrap.yield_stop"] == 0.05 and dataclasses.is_dataclass(CONFIG["evolve.weights"])


def heading_anchors(page: Path) -> set[str]:
    """The #anchors GitHub gives a page's headings: lower case, punctuation out, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", [*PAGES, ROOT / "benchmarks" / "RESULTS.md"], ids=lambda p: p.name)
def test_every_link_to_a_section_names_a_heading_there(page):
    wrong = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        linked = page.parent / path if path else page
        if anchor and not re.match(r"^[a-z]+:", target) and linked.suffix == ".md" and linked.exists():
            wrong += [target] if anchor not in heading_anchors(linked) else []
    assert wrong == []


def test_heading_anchors_are_githubs():
    assert "faults-and-exit-codes" in heading_anchors(ROOT / "README.md")
    assert "bases-llama-mistral-qwen-gemma-2-and-3-phi-3" in heading_anchors(ROOT / "docs" / "adapters.md")


def test_the_commands_config_md_says_refuse_set_are_those_without_it():
    text = " ".join((ROOT / "docs" / "config.md").read_text(encoding="utf-8").split())
    named = re.search(r"takes `--set section\.key=value` \(all but (.*?)\)", text).group(1)
    without = {name for name, command in cli.commands.items() if "--set" not in option_names(command)}
    assert set(re.findall(r"`([\w-]+)`", named)) == without


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_an_eval_example_under_the_default_cap_explains_the_note_it_gets(page):
    """docs/training.md's `seed2lora eval ... --max-new-tokens 128` always ends with eval's note that sampling.json
    now caps served answers at 128 tokens, which the page never mentioned. An example under the default says why."""
    from pipeline.config import EvalConfig

    text = page.read_text(encoding="utf-8")
    short = [int(n) for n in re.findall(r"seed2lora eval [^\n]*--max-new-tokens (\d+)", text)
             if int(n) < EvalConfig().max_new_tokens]
    assert not short or "sampling.json" in text, f"{page.name}: eval with --max-new-tokens {short} says nothing of " \
                                                 "the note it gets (sampling.json caps served answers)"
