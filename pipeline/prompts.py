"""Prompt templates: plain-text files with $var placeholders, one file per prompt.

The bundled templates live in the repository's prompts/ folder (copied into the wheel
as pipeline/_prompts). A user can point `prompts_dir` at a copy and edit them; each
file must use exactly the variables its stage supplies, which `render` checks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from string import Template

from .errors import InputError

# The variables each stage supplies; a template must use all of them and no others.
PROMPT_VARS: dict[str, set[str]] = {
    "bootstrap.txt": {"tasks", "next_number", "max_number"},
    "bootstrap_clf.txt": {"tasks", "next_number", "max_number"},
    "alpaca.txt": {"tasks", "next_number", "num_tasks"},
    "classify.txt": {"instruction"},
    "instances_gen.txt": {"instruction"},
    "instances_clf.txt": {"instruction"},
    "judge_pairwise.txt": {"request", "reference", "answer_a", "answer_b"},  # seed2lora eval --judge
    "score.txt": {"instruction", "input", "output"},  # seed2lora score: the judge's rubric
    "score_yesno.txt": {"instruction", "input", "output"},  # seed2lora score with score.method logprobs
    "evol_constraints.txt": {"instruction", "min_added_words", "max_added_words"},
    "evol_deepen.txt": {"instruction", "min_added_words", "max_added_words"},
    "evol_concretize.txt": {"instruction", "min_added_words", "max_added_words"},
    "evol_reasoning.txt": {"instruction", "min_added_words", "max_added_words"},
    "evol_complicate_input.txt": {"instruction", "min_added_words", "max_added_words"},
    "evol_breadth.txt": {"instruction"},
    "evol_equal.txt": {"first", "second"},
    "evol_answer.txt": {"instruction"},
}


def bundled_prompts_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("bundled prompts/ folder not found; reinstall seed2lora")


class Prompts:
    def __init__(self, directory: str | Path | None = None):
        self.dir = Path(directory) if directory else bundled_prompts_dir()
        # Each template is read and checked once: a stage renders thousands of prompts, and the manifest's
        # hashes describe the files as the run started.
        self._templates: dict[str, Template] = {}

    def path(self, name: str) -> Path:
        p = self.dir / name
        if not self.dir.is_dir():  # "bootstrap.txt is missing. Fix: copy it there" named no folder's typo
            raise InputError(self.dir, None, "prompts_dir is not a folder" if self.dir.exists() else
                             "prompts_dir does not exist", f"give prompts_dir a folder of templates (copy "
                             f"{bundled_prompts_dir()} and edit it), or leave it empty to use the bundled prompts")
        if not p.is_file():
            bundled = bundled_prompts_dir() / name
            raise InputError(p, None, "prompt template is missing",
                             f"copy {bundled} there, or leave prompts_dir empty to use the bundled prompts")
        return p

    def template(self, name: str, variables: set[str] | None = None) -> Template:
        """The template `name`, read and checked once: it must use exactly the variables its stage supplies."""
        template = self._templates.get(name)
        if template is None:
            p = self.path(name)
            text = p.read_text(encoding="utf-8")
            for m in Template.pattern.finditer(text):
                if m.group("invalid") is not None:  # "$5", an unclosed "${": Template.substitute raises mid-run
                    snippet = text[m.start():m.start() + 16].split("\n")[0]
                    raise InputError(p, text.count("\n", 0, m.start()) + 1, f"has a '$' that starts no variable "
                                     f"({snippet!r})", "write $$ for a literal dollar sign, $name or ${name} for a "
                                     "variable")
            used = {m.group("named") or m.group("braced") for m in Template.pattern.finditer(text)} - {None}
            expected = PROMPT_VARS.get(name, variables if variables is not None else used)
            if used != expected:
                missing, extra = sorted(expected - used), sorted(used - expected)
                raise InputError(p, None, f"template variables do not match (missing {missing}, unknown {extra})",
                                 f"use exactly {', '.join('$' + v for v in sorted(expected))}")
            template = self._templates[name] = Template(text)
        return template

    def check(self) -> None:
        """Every template of the folder that a stage renders, checked before a command writes anything: an edited
        classify.txt with a misspelt variable stopped the run (exit 2) only after bootstrap had paid and written."""
        for name in PROMPT_VARS:
            if (self.dir / name).is_file():
                self.template(name)

    def render(self, name: str, **variables: object) -> str:
        template = self.template(name, set(variables))
        # Files end with a newline by convention; a completion prompt must end right after
        # "9." or "Input:" so that the model continues that line.
        return template.substitute({k: str(v) for k, v in variables.items()}).rstrip("\n")

    def hashes(self) -> dict[str, str]:
        """sha256 of every template, for the manifest."""
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(self.dir.glob("*.txt"))}


def changed_note(recorded: dict[str, str], now: dict[str, str]) -> str:
    """A note naming the templates whose hash differs from the run's manifest ("" if none): a resume after an edit
    went on with the new text, silently, and the records of the earlier sessions came from the old one."""
    changed = sorted(name for name, digest in now.items() if recorded.get(name) not in (None, digest))
    if not changed:
        return ""
    return (f"note: {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from the one{'s' * (len(changed) > 1)} "
            "this run's manifest recorded: records already written keep what the old text made, and the manifest "
            "will hash the new")
