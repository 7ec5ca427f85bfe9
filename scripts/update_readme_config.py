"""Rewrite the config reference block of docs/config.md from `seed2lora config` (tests/test_readme.py checks they agree)."""

import re
from pathlib import Path

from pipeline.config import default_toml

page = Path(__file__).resolve().parent.parent / "docs" / "config.md"
text = page.read_text(encoding="utf-8")
new, n = re.subn(r"(```toml\n).*?(```)", lambda m: m.group(1) + default_toml() + m.group(2), text, count=1, flags=re.S)
assert n == 1, "docs/config.md has no ```toml block"
page.write_text(new, encoding="utf-8")
