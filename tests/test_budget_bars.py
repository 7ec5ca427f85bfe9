"""A run stopped by its budget: the bars of the steps it left short end "stopped", not "done" (seen on a llama.cpp
teacher with --max-cost: "instances: 0/15 (0%), done in 27s" above "stopped: budget reached in classify")."""

import re

from helpers import invoke, teacher_flags


def test_the_bars_of_steps_a_spent_budget_left_short_say_stopped_not_done(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("SEED2LORA_PROGRESS_EVERY_S", "300")  # only the start and end lines
    result = invoke("run", *teacher_flags(fake_openai, tmp_path), "--num-instructions", 8,
                    "--max-tokens-total", 150, "--set", "teacher.concurrency=1", expect=3)
    ends = {m.group(1): m.group(2) for m in re.finditer(r"^(\w+): .*, (done|stopped|ended) in ", result.output, re.M)}
    assert "budget reached" in result.output
    assert ends["instances"] == "stopped", result.output  # none of its 8 tasks written
    assert ends["bootstrap"] == "done"  # its target was reached before the budget ran out
