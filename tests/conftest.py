"""Shared fixtures: a 200-record slice of the embedded pool and a tiny Llama built from it."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(2)

import build_default_model  # noqa: E402

TINY = ["--vocab_size", "512", "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2",
        "--num_attention_heads", "2", "--num_key_value_heads", "1", "--warmup_steps", "40",
        "--warmup_seq_len", "64", "--warmup_batch", "8", "--warmup_lr", "3e-3", "--threads", "2"]


@pytest.fixture(scope="session")
def pool(tmp_path_factory) -> str:
    """First 200 records of the embedded dolly slice, as .jsonl."""
    path = tmp_path_factory.mktemp("data") / "pool200.jsonl"
    with open(os.path.join(ROOT, "data", "dolly-1.5k.jsonl")) as f:
        lines = [next(f) for _ in range(200)]
    path.write_text("".join(lines))
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(pool, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "tiny")
    build_default_model.main(["--file_path", pool, "--save_path", path, *TINY])
    return path


@pytest.fixture(scope="session")
def loaded(tiny_model):
    import fsdp_utils

    tok = fsdp_utils.load_tokenizer(tiny_model)
    model = fsdp_utils.load_model(tiny_model, torch.device("cpu")).eval()
    return model, tok


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)
