"""eval_generate.py: batched generation equals per-example generation; output format; reference NLL."""
import json

import numpy as np
import torch
import torch.nn.functional as F

import al_utils as U
import eval_generate
from conftest import write_jsonl


def test_batched_greedy_equals_one_at_a_time(loaded):
    model, tok = loaded
    recs = U.load_records(eval_generate.ALPACA_EVAL)[:8]
    prompts = [tok(U.format_prompt(r["instruction"], r["input"])).input_ids for r in recs]
    args = eval_generate.parse_args(["--save_file_name", "x.json", "--greedy", "--max_new_tokens", "12"])
    args.batch_size = 4
    batched = eval_generate.generate(model, tok, prompts, args, progress=False)
    args.batch_size = 1
    single = eval_generate.generate(model, tok, prompts, args, progress=False)
    assert batched == single
    assert all(len(g) <= 12 and tok.eos_token_id not in g for g in batched)
    assert any(len(g) < 12 for g in batched)  # some row stopped at EOS (and stays stopped in its batch)
    # by hand: the first row's greedy continuation
    seq = list(prompts[0])
    for _ in range(len(single[0])):
        with torch.no_grad():
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert seq[len(prompts[0]):] == single[0]


def test_output_file_and_reference_nll(tiny_model, tmp_path):
    pool = write_jsonl(tmp_path / "two.jsonl", [
        {"instruction": "Name a primary colour.", "output": "Blue is a primary colour."},
        {"instruction": "Summarise.", "input": "Cats sleep a lot.", "output": "Cats sleep."}])
    out = tmp_path / "sub" / "out.json"
    eval_generate.main(["--model_path", tiny_model, "--file_path", pool, "--save_file_name", str(out),
                        "--metrics", "--max_new_tokens", "8", "--seed", "1", "--no_progress"])
    rows = json.load(open(out))
    assert [r["instruction"] for r in rows] == ["Name a primary colour.", "Summarise."]
    assert all(set(r) == {"instruction", "output", "generator", "dataset"} for r in rows)
    assert rows[0]["generator"] == "tiny" and rows[0]["dataset"] == "two.jsonl"
    m = json.load(open(tmp_path / "sub" / "out.metrics.json"))
    # reference NLL by hand: answer tokens (+EOS) given the templated prompt
    import fsdp_utils

    tok = fsdp_utils.load_tokenizer(tiny_model)
    model = fsdp_utils.load_model(tiny_model, torch.device("cpu"))
    enc = U.encode_records(tok, U.load_records(pool))
    sums, counts = [], []
    for e in enc.values():
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([e.prompt + e.answer])).logits[0]
        sums.append(F.cross_entropy(logits[len(e.prompt) - 1:-1], torch.tensor(e.answer), reduction="sum").item())
        counts.append(len(e.answer))
    assert abs(m["reference_nll"] - sum(sums) / sum(counts)) < 1e-5
    assert abs(m["reference_nll_per_example"] - float(np.mean(np.array(sums) / counts))) < 1e-5
    assert 0 <= m["rougeL_f1"] <= 1 and m["examples"] == 2
    # the same seed samples the same outputs; --debug keeps the first 4 of AlpacaEval
    eval_generate.main(["--model_path", tiny_model, "--file_path", pool, "--save_file_name", str(tmp_path / "b.json"),
                        "--max_new_tokens", "8", "--seed", "1", "--no_progress"])
    assert json.load(open(tmp_path / "b.json")) == rows
    eval_generate.main(["--model_path", tiny_model, "--save_file_name", str(tmp_path / "d.json"), "--debug",
                        "--max_new_tokens", "4", "--no_progress"])
    d = json.load(open(tmp_path / "d.json"))
    ref = json.load(open(eval_generate.ALPACA_EVAL))[:4]
    assert [r["instruction"] for r in d] == [r["instruction"] for r in ref]
    assert [r["dataset"] for r in d] == [r["dataset"] for r in ref]
