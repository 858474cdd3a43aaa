"""Shared fixtures: a 200-record slice of the embedded pool and a tiny Llama built from it."""
import glob
import json
import os
import subprocess
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


def torchrun(*args: str) -> None:
    """A 2-rank launch on CPU (gloo), one thread per rank, from the repo root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", *args],
                   check=True, env=env, cwd=ROOT, timeout=300)


def outputs(path) -> dict:
    """What 'same result' compares, file by file: the selected set, every round's scores and
    selections, and every round's metrics (training and held-out numbers; timings aside)."""
    files = [os.path.join(path, "selected.json")]
    files += sorted(glob.glob(os.path.join(path, "rounds", "*", "s*.jsonl")))
    out = {os.path.relpath(f, path): open(f).read() for f in files}
    for f in sorted(glob.glob(os.path.join(path, "rounds", "*", "metrics.json"))):
        m = json.load(open(f))
        m.pop("seconds"), m["train"].pop("seconds")
        out[os.path.relpath(f, path)] = m
    return out


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


# ----------------------------------------------------------------------------------------------
# hand computations: the template spelled out here and plain tokenizer/model calls, never the
# project's own encoding, so a test compares the code with something it did not compute itself

NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{}\n\n### Response:")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Input:\n{}"
              "\n\n### Response:")


def prompt_text(r: dict) -> str:
    return WITH_INPUT.format(r["instruction"], r["input"]) if r["input"].strip() else NO_INPUT.format(r["instruction"])


def hand_ids(tok, r: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids + EOS): the answer is the tail of tokenising prompt + " " + answer."""
    p = tok(prompt_text(r)).input_ids
    full = tok(prompt_text(r) + " " + r["output"]).input_ids
    assert full[: len(p)] == p
    return p, full[len(p):] + [tok.eos_token_id]


def keep_tail(ids: list[int], n: int) -> list[int]:
    """BOS and the last n - 1 tokens."""
    return ids if len(ids) <= n else ids[:1] + ids[len(ids) - n + 1:]


def fit_pair(p: list[int], a: list[int], n: int) -> tuple[list[int], list[int]]:
    """The documented training truncation: the prompt keeps BOS + its tail, down to half the
    context; the answer is cut at the end."""
    if len(p) + len(a) <= n:
        return p, a
    keep_p = min(len(p), max(n - len(a), n // 2))
    return keep_tail(p, keep_p), a[: n - keep_p]


def hand_answer_nll(model, tok, records: list[dict], max_len: int) -> float:
    """Token-weighted mean NLL of the answers after their prompts, one unbatched forward each."""
    import torch.nn.functional as F

    total, count = 0.0, 0
    for r in records:
        p, a = fit_pair(*hand_ids(tok, r), max_len)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + a])).logits[0]
        total += F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(a), reduction="sum").item()
        count += len(a)
    return total / count


# the targeted tests' loop settings and data (test_targeted, test_target_rules)
TARGET_FLAGS = ["--num_acquisition_samples", "30", "--heldout_size", "10", "--epochs", "1", "--grad_accum", "4",
                "--train_max_length", "192", "--model_max_length", "192", "--lr", "1e-3", "--threads", "2",
                "--no_progress"]


@pytest.fixture(scope="module")
def target_data(pool, tmp_path_factory):
    """(target file, pool file, folder): 8 summarization/open_qa targets from past the pool's 200
    records, and a 103-record pool holding copies of 3 of them."""
    d = tmp_path_factory.mktemp("target")
    rows = [json.loads(line) for line in open(pool)]
    full = [json.loads(line) for line in open(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))]
    target = [r for r in full[200:] if r["category"] in ("summarization", "open_qa")][:8]
    pool_t = write_jsonl(d / "pool.jsonl", rows[:100] + target[:3])  # 3 pool records equal to targets
    return write_jsonl(d / "target.jsonl", target), pool_t, d
