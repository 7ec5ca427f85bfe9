"""export --push-to-hub and export-adapter --push-to-hub, against a local stand-in of the Hub's HTTP API.

No real Hub is reachable here: tests/fakehub.py answers the endpoints huggingface_hub's create_repo and
create_commit call, refuses a missing or wrong token with 401 as the Hub does, and keeps what was committed,
so each test reads back the files and the card that reached it. The secrets side (the token in no file, log
or manifest) is in tests/test_secrets.py.
"""

import pipeline.train  # noqa: F401, I001 -- first: sets OMP_WAIT_POLICY before torch loads
import json

import pytest
from click.testing import CliRunner

from fakehub import FakeHub
from pipeline.cli import cli
from test_export import make_run

TOKEN = "hf_PLANTEDtokenForTheStandIn0123456789"
pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub(TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_export_pushes_every_file_and_the_dataset_card(hub, tmp_path):
    run = make_run(tmp_path)
    result = invoke("export", run, "--formats", "alpaca,messages,parquet", "--push-to-hub", "me/cats")
    assert result.exit_code == 0, result.output
    files = hub.repos[("dataset", "me/cats")]
    local = run / "export"
    assert set(files) == {"README.md", "export.json", "alpaca/train.json", "alpaca/eval.json", "messages/train.jsonl",
                          "messages/eval.jsonl", "parquet/train.parquet", "parquet/eval.parquet"}
    for name, content in files.items():  # byte for byte what export wrote, the card included
        assert (local / name).read_bytes() == content, name
    assert files["README.md"].startswith(b"---\nconfigs:") and json.loads(files["export.json"])["counts"]["rows"] > 0
    assert hub.commits[0]["header"]["summary"] == "seed2lora export of run"
    assert f"{hub.url}/datasets/me/cats" in " ".join(result.output.split())
    again = invoke("export", run, "--formats", "alpaca", "--push-to-hub", "me/cats")  # the repo exists: 409 is fine
    assert again.exit_code == 0 and len(hub.commits) == 2, again.output


def test_a_refused_token_exits_non_zero_names_the_cause_and_keeps_the_export(hub, tmp_path, monkeypatch):
    run = make_run(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_wrongTokenWrongTokenWrong000000")
    result = invoke("export", run, "--formats", "alpaca", "--push-to-hub", "me/cats")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "HTTP 401" in text and "Invalid credentials" in text, text
    assert "is intact" in text and "check that HF_TOKEN holds a valid token" in text
    assert ((run / "export") / "alpaca" / "train.json").is_file() and ((run / "export") / "README.md").is_file()
    assert not hub.repos and all(h["headers"].get("authorization") != f"Bearer {TOKEN}" for h in hub.history)


def test_a_hub_outage_during_the_commit_is_named_and_the_export_kept(hub, tmp_path):
    run = make_run(tmp_path)
    hub.fail_commit = 10  # huggingface_hub retries a 500 a few times; every try fails
    result = invoke("export", run, "--formats", "alpaca", "--push-to-hub", "me/cats")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "HTTP 500" in text and "Internal Error" in text, text
    assert ((run / "export") / "alpaca" / "train.json").is_file() and hub.repos[("dataset", "me/cats")] == {}


def test_no_token_or_a_bad_name_stops_before_the_export(hub, tmp_path, monkeypatch):
    run = make_run(tmp_path)
    bad = invoke("export", run, "--push-to-hub", "not a repo")
    assert bad.exit_code == 2 and "USER/NAME" in bad.output
    monkeypatch.delenv("HF_TOKEN")
    result = invoke("export", run, "--push-to-hub", "me/cats")
    assert result.exit_code == 2 and "export HF_TOKEN=" in " ".join(result.output.split())
    assert not (run / "export").exists() and not hub.history


def test_a_hub_that_cannot_be_reached_is_named(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path)
    result = invoke("export", run, "--formats", "alpaca", "--push-to-hub", "me/cats")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Connect" in text and "check the network and HF_ENDPOINT" in text, text
    assert ((run / "export") / "alpaca" / "train.json").is_file()


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A tiny random Gemma 3 base (with a base GGUF and a tokenizer) and a PEFT adapter on it, in seconds."""
    from gguf_bases import base_gguf, random_adapter, tiny_model

    root = tmp_path_factory.mktemp("hub-adapter")
    hf = tiny_model("gemma3", root / "hf")
    adapter = random_adapter(hf, root / "adapter")
    for folder in ("checkpoint-5", "checkpoints/checkpoint-5"):
        (adapter / folder).mkdir(parents=True)
        (adapter / folder / "optimizer.pt").write_bytes(b"not pushed")
    return {"adapter": adapter, "gguf": base_gguf(hf, root / "base.gguf")}


def test_export_adapter_pushes_peft_files_the_gguf_and_a_model_card(hub, tiny_adapter):
    a = tiny_adapter["adapter"]
    result = invoke("export-adapter", a, "--base-gguf", tiny_adapter["gguf"], "--push-to-hub", "me/tiny-lora",
                    "--private")
    assert result.exit_code == 0, result.output
    files = hub.repos[("model", "me/tiny-lora")]
    assert hub.private[("model", "me/tiny-lora")]
    assert {"adapter_config.json", "adapter_model.safetensors", "adapter.gguf", "README.md"} <= set(files)
    assert not any(n.startswith(("checkpoint", "Modelfile")) for n in files)  # local-only files stay local
    assert files["adapter.gguf"] == (a / "adapter.gguf").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\ntags:\n")  # no base_model: "hf" is a local folder
    assert "Gemma3ForCausalLM" in card and "rank 4, alpha 8" in card and "| seed2lora_version |" in card
    assert "`adapter.gguf`" in card and "--lora adapter.gguf" in card
    assert "Model Card for Model ID" not in card  # PEFT's own boilerplate README is replaced, locally kept
    assert (a / "README.md").read_text().startswith("---") and "pushed:" in result.output


def test_the_card_names_a_hub_base_only_by_its_hub_id():
    from pipeline.train.model_card import hub_id

    assert hub_id({}, "SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id({"_name_or_path": "google/gemma-3-270m"}, "gemma-3-270m") == "google/gemma-3-270m"
    assert hub_id({"_name_or_path": "/models/qwen"}, "qwen") == "" and hub_id({}, "my-base") == ""


def test_the_cards_use_snippet_loads_a_base_that_exists(tmp_path):
    """The folder card of an adapter trained on the embedded teacher said from_pretrained("SmolLM2-135M-Instruct"):
    no Hub repository and no folder by that name. The folder's card names the base it was trained on; a Hub card its
    Hub id, else its name."""
    from pipeline.train.model_card import model_card

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/cache/SmolLM2-135M-Instruct",
                                                              "r": 8, "lora_alpha": 16}))
    prov = {"run": "r", "base_model": "SmolLM2-135M-Instruct"}
    folder = model_card(tmp_path, prov, {})
    assert 'from_pretrained("/cache/SmolLM2-135M-Instruct")' in folder
    hub = model_card(tmp_path, prov, {}, files={})
    assert 'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in hub
    assert 'from_pretrained("my-base")' in model_card(tmp_path, {**prov, "base_model": "my-base"}, {}, files={})


def test_private_creates_a_private_repository_and_never_pushes_into_a_public_one(hub, tmp_path):
    run = make_run(tmp_path)
    result = invoke("export", run, "--formats", "alpaca", "--push-to-hub", "me/secret", "--private")
    assert result.exit_code == 0, result.output
    assert hub.private[("dataset", "me/secret")] and len(hub.commits) == 1
    assert invoke("export", run, "--formats", "alpaca", "--push-to-hub", "me/open").exit_code == 0
    assert hub.private[("dataset", "me/open")] is False  # the Hub's default, as before
    refused = CliRunner().invoke(cli, ["export", str(run), "--formats", "alpaca", "--push-to-hub", "me/open",
                                       "--private"])
    assert refused.exit_code == 2 and len(hub.commits) == 2  # nothing went into the public repository
    said = " ".join(refused.output.split())
    assert "already exists and is public; nothing was pushed" in said and "Fix:" in said
    alone = CliRunner().invoke(cli, ["export", str(run), "--private"])
    assert alone.exit_code == 2 and "--private applies to --push-to-hub" in alone.output
