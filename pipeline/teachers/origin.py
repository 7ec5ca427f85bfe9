"""Where a teacher's settings come from, so that its messages name what the user can change.

The same teacher code serves the run's [teacher], score's judge ([score.teacher]) and eval's judge ([eval.judge]),
each built by a command with flags of its own: `run` takes --teacher and --base-url, `score` takes --judge and
--judge-base-url, `eval` only --judge. A judge's "check --base-url" sent its user to a flag that `score` refuses
("No such option"), and "(teacher.connect_window_s)" to a setting of another table. A teacher carries its Origin
(pipeline/context.py builds it from the table and the command's flags) and every message asks it for the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# What the events of a teacher from each table are prefixed with on the console ("judge: endpoint down: ...").
ROLES = {"teacher": "teacher", "score.teacher": "judge", "eval.judge": "eval judge"}


@dataclass(frozen=True)
class Origin:
    """A teacher's config table and the flags, by setting, that the command which built it takes for that table."""

    table: str = "teacher"
    flags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def role(self) -> str:
        return ROLES.get(self.table, self.table)

    def key(self, name: str) -> str:
        """The setting's dotted name: teacher.connect_window_s, score.teacher.connect_window_s."""
        return f"{self.table}.{name}"

    def flag(self, name: str, value: str) -> str:
        """The flag that sets it (--base-url), else the --set that does (--set score.teacher.base_url=URL)."""
        return self.flags.get(name) or f"--set {self.key(name)}={value}"

    def give(self, name: str, value: str) -> str:
        """The setting given `value`: --judge openai:MODEL, else --set eval.judge.spec=openai:MODEL."""
        flag = self.flags.get(name)
        return f"{flag} {value}" if flag else f"--set {self.key(name)}={value}"

    def where(self, name: str) -> str:
        """Where it is set, for a parenthesis: "--base-url, teacher.base_url", or "score.teacher.base_url"."""
        flag = self.flags.get(name)
        return f"{flag}, {self.key(name)}" if flag else self.key(name)

    def switch(self, name: str) -> str:
        """A boolean setting turned on: "--batch (or --set teacher.batch=true)", else "--set ...=true"."""
        flag = self.flags.get(name)
        on = f"--set {self.key(name)}=true"
        return f"{flag} (or {on})" if flag else on


# The run's teacher as `run` and the generation commands build it: the text its messages have always had.
RUN_TEACHER = Origin("teacher", MappingProxyType({"spec": "--teacher", "base_url": "--base-url", "api": "--api",
                                                  "batch": "--batch"}))
# Score's judge as `score` builds it: the flags that name a judge ([score.teacher] has no others).
SCORE_JUDGE = Origin("score.teacher", MappingProxyType({"spec": "--judge", "base_url": "--judge-base-url"}))


def origin_of(table: str, flags: Mapping[str, str] | None = None) -> Origin:
    """The Origin of a teacher from `table` ("teacher", "score.teacher", "eval.judge"), built by a command whose
    flags are `flags` (dotted setting -> flag: {"score.teacher.base_url": "--judge-base-url"}). None: the command
    did not say; the run's teacher then has the flags of `run`, a judge none (only --set reaches it there)."""
    if flags is None:
        return RUN_TEACHER if table == "teacher" else Origin(table)
    prefix = f"{table}."
    own = {k[len(prefix):]: f for k, f in flags.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
    return Origin(table, MappingProxyType(own))
