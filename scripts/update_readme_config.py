"""Rewrite the config reference block of README.md from `seed2lora config` (tests check they agree)."""

import re
from pathlib import Path

from pipeline.config import default_toml

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text(encoding="utf-8")
new, n = re.subn(r"(## Config reference\n.*?```toml\n).*?(```)", lambda m: m.group(1) + default_toml() + m.group(2),
                 text, count=1, flags=re.S)
assert n == 1, "README.md has no '## Config reference' toml block"
readme.write_text(new, encoding="utf-8")
