"""Secrets are masked wherever they could be written: the manifest's command and config, messages, logs."""

import pytest

from pipeline.config import RunConfig
from pipeline.errors import is_secret_name, mask_dict, mask_secrets, masked_argv


@pytest.mark.parametrize("name, secret", [
    ("api_key", True), ("teacher.api_key", True), ("--api-key", True), ("HF_TOKEN", True), ("apiKey", True),
    ("client_secret", True), ("password", True),
    ("api_key_env", False), ("max_tokens", False), ("max_tokens_total", False), ("monkey", False), ("spec", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


@pytest.mark.parametrize("text, masked", [
    ("--set teacher.api_key=plain-value-1", "--set teacher.api_key=***"),
    ("seed2lora run --api-key hunter22 --max-tokens-total 5", "seed2lora run --api-key *** --max-tokens-total 5"),
    ("--api-key=abc", "--api-key=***"),
    ('api_key = "abc"', 'api_key = "***"'),
    ('{"api_key": "abc", "api_key_env": "OPENAI_API_KEY"}', '{"api_key": "***", "api_key_env": "OPENAI_API_KEY"}'),
    ("Authorization: Bearer abcdefghij", "Authorization: Bearer ***"),
    ("https://user:pw123@host/v1", "https://user:***@host/v1"),
    ("key sk-test-PLANTED-SECRET-0123456789 used", "key sk-test*** used"),
    ("hf_abcdefghijklmnopqrstuv", "hf_***"),
    ("password=hunter2&x=1", "password=***&x=1"),
    ("max_tokens=5 api_key_env=OPENAI_API_KEY monkey=3", "max_tokens=5 api_key_env=OPENAI_API_KEY monkey=3"),
    ("Fix: export OPENAI_API_KEY=sk-... and run again", "Fix: export OPENAI_API_KEY=sk-... and run again"),
])
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


def test_mask_secrets_hides_the_value_of_a_secret_variable(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "opaque-value-42")
    assert mask_secrets("sent opaque-value-42 to the server") == "sent *** to the server"


def test_masked_argv_masks_one_argument_at_a_time():
    argv = ["seed2lora", "run", "--set", "teacher.api_key=a secret phrase", "--api-key", "two words",
            "--set=teacher.api_key=q", "--api-key=z", "--teacher", "openai:m", "--max-tokens-total", "5"]
    assert masked_argv(argv) == ["seed2lora", "run", "--set", "teacher.api_key=***", "--api-key", "***",
                                 "--set=teacher.api_key=***", "--api-key=***", "--teacher", "openai:m",
                                 "--max-tokens-total", "5"]


def test_config_to_dict_masks_every_secret_field():
    cfg = RunConfig()
    cfg.teacher.api_key = "plain-PLANTED-1"
    cfg.teacher.system_prompt = "Use key sk-PLANTED-abcdefghijkl please."
    d = cfg.to_dict()
    assert d["teacher"]["api_key"] == "***" and d["teacher"]["api_key_env"] == "OPENAI_API_KEY"
    assert "PLANTED" not in repr(d) and d["bootstrap"]["max_tokens"] == 1024
    assert RunConfig().to_dict()["teacher"]["api_key"] == ""  # nothing to hide: left as it is
    assert mask_dict({"a": [{"token": "x"}], "n": 3}) == {"a": [{"token": "***"}], "n": 3}
