"""eval_generate.py: batched generation equals per-example generation; output format; reference NLL."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import al_datasets as D
import al_prompts as P
import al_utils as U
import eval_generate
from conftest import write_jsonl


@pytest.fixture(scope="module")
def talkative(loaded):
    """The tiny model answers everything with EOS at once; with EOS pushed down (-20 on its logit)
    it talks until a cap."""
    model, tok = loaded
    model = copy.deepcopy(model)
    eos = tok.eos_token_id
    model.lm_head.register_forward_hook(lambda m, i, o: o.index_add(-1, torch.tensor([eos]),
                                                                    torch.full_like(o[..., :1], -20.0)))
    recs = D.load_records(eval_generate.ALPACA_EVAL)[:8]
    prompts = [tok(P.format_prompt(r["instruction"], r["input"])).input_ids for r in recs]
    return model, tok, prompts


class StopAt:
    """The tokenizer with another token standing in for EOS."""

    def __init__(self, tok, stop):
        self.tok, self.eos_token_id = tok, stop
        self.pad_token_id, self.unk_token_id = tok.pad_token_id, tok.unk_token_id


def by_hand(model, prompt, cap, stop):
    seq = list(prompt)
    while len(seq) - len(prompt) < cap:
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        if nxt == stop:
            break
        seq.append(nxt)
    return seq[len(prompt):]


def test_deterministic_top_p_refused_on_cuda(monkeypatch):
    """--deterministic with top-p sampling on CUDA stops before loading anything, with what to do."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    base = ["--save_file_name", "x.json", "--deterministic"]
    with pytest.raises(U.InputError, match="--greedy or --top_p 1"):
        eval_generate.parse_args(base + ["--top_p", "0.9"])
    for ok in (["--top_p", "0.9", "--greedy"], ["--top_p", "1"], []):
        eval_generate.parse_args(base + ok)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CPU: always deterministic, nothing refused
    eval_generate.parse_args(base + ["--top_p", "0.9"])


def test_batched_greedy_equals_one_at_a_time(talkative):
    model, tok, prompts = talkative
    args = eval_generate.parse_args(["--save_file_name", "x.json", "--greedy", "--max_new_tokens", "12"])
    free = eval_generate.generate_answers(model, tok, prompts, args, progress=False)
    assert all(len(g) == 12 for g in free)
    # a stand-in EOS that ends some rows early, at different steps, and others not at all
    first = {t: [g.index(t) if t in g else 12 for g in free] for t in set(sum(free, []))}
    stop = max(sorted(first), key=lambda t: (min(first[t]) < 12 and max(first[t]) == 12, len(set(first[t]))))
    out = {}
    for bs in (1, 4):
        args.batch_size = bs
        out[bs] = eval_generate.generate_answers(model, StopAt(tok, stop), prompts, args, progress=False)
    assert out[1] == out[4]
    lens = [len(g) for g in out[4]]
    assert min(lens) < 12 and max(lens) == 12 and stop not in sum(out[4], [])  # rows stop at their own EOS
    assert out[4] == [by_hand(model, p, 12, stop) for p in prompts]


def test_each_row_capped_by_its_own_prompt(talkative):
    """New tokens = context - the row's own prompt length: rows of one batch with different prompt
    lengths get different caps, so batch size does not change any output (it did: the longest
    prompt of the batch set everyone's cap)."""
    model, tok, prompts = talkative
    ctx = 128
    prompts = [p if len(p) < ctx else p[:1] + p[len(p) - ctx + 2:] for p in prompts]  # room for one token
    args = eval_generate.parse_args(["--save_file_name", "x.json", "--greedy", "--model_context_length", str(ctx)])
    outs = {}
    for bs in (1, 3, 8):
        args.batch_size = bs
        outs[bs] = eval_generate.generate_answers(model, tok, prompts, args, progress=False)
    assert outs[1] == outs[3] == outs[8]
    caps = [ctx - len(p) for p in prompts]
    assert len(set(caps)) == 8
    assert [len(g) for g in outs[8]] == caps  # EOS is suppressed: every row runs to its own cap
    i = max(range(8), key=lambda j: caps[j])
    assert outs[8][i] == by_hand(model, prompts[i], caps[i], tok.eos_token_id)


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
    texts = [("Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.\n\n### Instruction:\nName a primary colour.\n\n### Response:", "Blue is a primary colour."),
             ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nSummarise.\n\n"
              "### Input:\nCats sleep a lot.\n\n### Response:", "Cats sleep.")]
    sums, counts = [], []
    for prompt, answer in texts:
        p = tok(prompt).input_ids
        full = tok(prompt + " " + answer).input_ids + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0]
        sums.append(F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(full[len(p):]), reduction="sum").item())
        counts.append(len(full) - len(p))
    assert abs(m["reference_nll"] - sum(sums) / sum(counts)) < 1e-5
    assert abs(m["reference_nll_per_example"] - float(np.mean(np.array(sums) / counts))) < 1e-5
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = np.mean([scorer.score(ref, r["output"])["rougeL"].fmeasure for (_, ref), r in zip(texts, rows)])
    assert abs(m["rougeL_f1"] - want) < 1e-12 and m["examples"] == m["reference_examples"] == 2
    assert m["output_tokens"]["max"] <= 8
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
