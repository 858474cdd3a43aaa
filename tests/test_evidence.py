"""What the evidence rests on: the --test_file loss, the cumulative answer cost per round, word
budgets (--budget_unit answer_words), and the experiment's seeded data split."""
import json
import os

import numpy as np
import pytest
import torch

import acquisition_AL
import al_datasets as D
import al_scoring as SC
import al_selection as SEL
import al_strategies as S
import al_utils as U
import fsdp_utils
from conftest import ROOT, hand_answer_nll, hand_ids, outputs, write_jsonl

FLAGS = ["--heldout_size", "10", "--epochs", "1", "--grad_accum", "4", "--train_max_length", "192",
         "--model_max_length", "192", "--lr", "1e-3", "--threads", "2", "--no_progress"]


def dolly(rows):
    return [{"instruction": r["instruction"], "input": r["context"], "output": r["response"]} for r in rows]


@pytest.fixture(scope="module")
def test_data(pool, tmp_path_factory):
    """A 100-record pool holding copies of 4 of the 12 test records."""
    d = tmp_path_factory.mktemp("evidence")
    rows = [json.loads(line) for line in open(pool)]
    more = [json.loads(line) for line in open(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))][300:312]
    return write_jsonl(d / "pool.jsonl", rows[:96] + more[:4]), write_jsonl(d / "test.jsonl", more), d


def run(pool, model, path, *extra):
    acquisition_AL.main(["--file_path", pool, "--init_checkpoint_path", model, "--model_path", str(path),
                         "--sampling_strategy", "forward_ppl", *FLAGS, *extra])


def test_test_loss_is_a_hand_computation_and_test_records_are_never_selected(tiny_model, test_data, tmp_path):
    pool, test, _ = test_data
    run(pool, tiny_model, tmp_path / "r", "--al_data_fraction", "60", "--num_acquisition_samples", "30",
        "--test_file", test)
    state = json.load(open(tmp_path / "r" / "state.json"))
    selected = json.load(open(tmp_path / "r" / "selected.json"))
    copies = {96, 97, 98, 99} - set(state["heldout_ids"])
    assert state["excluded_as_target"] == len(copies) and not copies & {r["id"] for r in selected}
    assert len(state["flags"]["test_file"]) == 64  # by content
    tok = fsdp_utils.load_tokenizer(tiny_model)
    model = fsdp_utils.load_model(str(tmp_path / "r_sharded"), torch.device("cpu")).eval()
    m = json.load(open(tmp_path / "r" / "rounds" / "1" / "metrics.json"))
    want = hand_answer_nll(model, tok, dolly(json.loads(line) for line in open(test)), 192)
    assert abs(m["test_loss"] - want) < 1e-5 and m["test_examples"] == 12
    assert state["round_log"][-1]["test_loss"] == m["test_loss"]
    # the cost of the labelled set: words of the answers, and their tokens without EOS
    assert m["answer_words"] == sum(len(r["output"].split()) for r in selected)
    assert m["answer_tokens"] == sum(len(hand_ids(tok, r)[1]) - 1 for r in selected)
    r0 = json.load(open(tmp_path / "r" / "rounds" / "0" / "metrics.json"))
    assert r0["answer_words"] == sum(len(r["output"].split()) for r in selected[:30])


def test_fill_to_cost_and_the_doubling_of_n():
    rows = [{"id": i, "score": float(10 - i)} for i in range(10)]
    cost = [3, 3, 3, 3, 1, 1, 1, 1, 1, 1].__getitem__
    assert [r["id"] for r in SEL.fill_to_cost(rows, 10, cost)] == [0, 1, 2]  # 12 > 10: stops, never skips ahead
    assert SEL.fill_to_cost(rows, 2, cost) == []
    cfg = SEL.SelectConfig("forward_ppl", "greedy", "top")
    calls = []

    def rng_of():
        calls.append(1)
        return np.random.default_rng(0)

    # n = 1, 2, 4: the 4th pick (12 words) does not fit, so the batch is the first 3
    picked, _ = S.select_by_cost(rows, 1, 10, cost, 1, cfg, SC.ScoreConfig(), rng_of)
    assert [r["id"] for r in picked] == [0, 1, 2] and len(calls) == 3
    # everything fits: n grows to every candidate and stops there
    picked, _ = S.select_by_cost(rows, 3, 100, cost, 1, cfg, SC.ScoreConfig(), rng_of)
    assert len(picked) == 10
    # a seeded random pick: the batch is what select gives for the final n with a fresh rng
    ucfg = SEL.SelectConfig("forward_ppl", "greedy", "uniform")
    picked, _ = S.select_by_cost(rows, 2, 7, cost, 1, ucfg, SC.ScoreConfig(), lambda: np.random.default_rng(5))
    full, _ = S.select(rows, 8, 1, ucfg, SC.ScoreConfig(), np.random.default_rng(5))
    assert picked == SEL.fill_to_cost(full, 7, cost) and sum(cost(r["id"]) for r in picked) <= 7


def test_word_budget_fills_batches_as_specified_and_resumes(tiny_model, test_data, tmp_path):
    pool, _, _ = test_data
    words = ["--budget_unit", "answer_words", "--al_data_fraction", "2500", "--num_acquisition_samples", "1000",
             "--stratification_strategy", "greedy", "--pick_samples_from", "top"]
    run(pool, tiny_model, tmp_path / "w", *words)
    state = json.load(open(tmp_path / "w" / "state.json"))
    recs = {r["id"]: r for r in D.load_records(pool)}
    n_words = {i: len(r["output"].split()) for i, r in recs.items()}
    # round 0: the seeded order (held-out slice first) up to the first record that would pass 1000 words
    perm = [int(i) for i in U.round_rng(42, 0, 0).permutation(100)][10:]  # --seed 42, the default
    sel0 = [json.loads(line)["id"] for line in open(tmp_path / "w" / "rounds" / "0" / "selected.jsonl")]
    k = len(sel0)
    assert sel0 == perm[:k] and sum(n_words[i] for i in sel0) <= 1000 < sum(n_words[i] for i in perm[:k + 1])
    # round 1 (greedy top): the candidates by score, up to the first that would pass min(1000, left)
    scores = [json.loads(line) for line in open(tmp_path / "w" / "rounds" / "1" / "scores.jsonl")]
    order = [r["id"] for r in sorted(scores, key=lambda r: -r["score"])]
    sel1 = [json.loads(line)["id"] for line in open(tmp_path / "w" / "rounds" / "1" / "selected.jsonl")]
    spent = sum(n_words[i] for i in sel0)
    want = min(1000, 2500 - spent)
    assert sel1 == order[: len(sel1)] and sum(n_words[i] for i in sel1) <= want
    assert sum(n_words[i] for i in order[: len(sel1) + 1]) > want
    log = state["round_log"]
    assert [r["answer_words"] for r in log][:2] == [spent, spent + sum(n_words[i] for i in sel1)]
    assert log[-1]["answer_words"] <= 2500 and state["budget"] == 2500
    # interrupted after round 1 and resumed: the same files
    run(pool, tiny_model, tmp_path / "s", *words, "--stop_after_round", "1")
    run(pool, tiny_model, tmp_path / "s", *words, "--resume")
    assert outputs(tmp_path / "s") == outputs(tmp_path / "w")


@pytest.mark.parametrize("extra, error", [
    (["--budget_unit", "answer_words", "--annotate_out", "{d}/b.jsonl"],
     "--budget_unit: answer_words counts answers before they are labelled; with annotators they are not known "
     "then (use examples)"),
    (["--budget_unit", "answer_words", "--al_data_fraction", "10"],
     "--al_data_fraction: budget 10 is below the seed set (--num_acquisition_samples 30)"),
    (["--test_file", "{d}/no_answer.jsonl"],
     "{d}/no_answer.jsonl:2: output: empty or missing (--test_file measures the loss on its answers)"),
])
def test_bad_evidence_input(tiny_model, test_data, tmp_path, capsys, extra, error):
    pool, _, d = test_data
    write_jsonl(d / "no_answer.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    argv = ["--file_path", pool, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "r"),
            "--al_data_fraction", "60", "--num_acquisition_samples", "30", "--sampling_strategy", "random", *FLAGS]
    argv = [a for a in argv if a != "--heldout_size" and a != "10"] if "--annotate_out" in extra else argv
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: acquisition_AL.main(argv + [a.format(d=d) for a in extra]))
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: " + error.format(d=d) + "\n"
    assert not (tmp_path / "r").exists()


def test_split_is_seeded_and_disjoint(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("split_target", os.path.join(ROOT, "scripts", "split_target.py"))
    split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(split)
    for out in ("a", "b"):
        split.main(["--out", str(tmp_path / out), "--pool", os.path.join(ROOT, "data", "dolly-1.5k.jsonl"),
                    "--alpaca", os.path.join(ROOT, "data", "alpaca_eval_text_davinci_003.json")])
    files = sorted(os.path.relpath(os.path.join(dp, f), tmp_path / "a") for dp, _, fs in os.walk(tmp_path / "a")
                   for f in fs)
    assert files == ["alpaca_eval/target.jsonl", "alpaca_eval/test.jsonl", "summarization/pool.jsonl",
                     "summarization/target.jsonl", "summarization/test.jsonl"]
    for f in files:  # the same flags give the same bytes
        assert open(tmp_path / "a" / f, "rb").read() == open(tmp_path / "b" / f, "rb").read()

    def ids(name):
        return [json.loads(line)["id"] for line in open(tmp_path / "a" / name)]

    pool, target, test = ids("summarization/pool.jsonl"), ids("summarization/target.jsonl"), \
        ids("summarization/test.jsonl")
    assert (len(target), len(test), len(pool)) == (30, 50, 1502 - 80)
    assert not set(target) & set(test) and not (set(target) | set(test)) & set(pool)
    cats = {r["id"]: r.get("category") for r in D.load_records(str(tmp_path / "a" / "summarization/pool.jsonl"))}
    assert sum(c == "summarization" for c in cats.values()) == 136 - 80  # the rest of it stays in the pool
    for name in ("summarization/target.jsonl", "summarization/test.jsonl"):
        assert {r["category"] for r in D.load_records(str(tmp_path / "a" / name))} == {"summarization"}
    a_t, a_s = ids("alpaca_eval/target.jsonl"), ids("alpaca_eval/test.jsonl")
    assert (len(a_t), len(a_s)) == (100, 300) and not set(a_t) & set(a_s)
    # another seed, another split
    split.main(["--out", str(tmp_path / "c"), "--seed", "1"])
    assert ids("summarization/target.jsonl") != [json.loads(line)["id"]
                                                for line in open(tmp_path / "c" / "summarization/target.jsonl")]


def test_per_seed_splits_are_deterministic_disjoint_and_differ(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("split_target", os.path.join(ROOT, "scripts", "split_target.py"))
    split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(split)
    seen = {}
    for seed in (1, 2, 3, 4, 5):
        for again in ("a", "b"):
            split.main(["--out", str(tmp_path / f"{seed}{again}"), "--seed", str(seed), "--category", "summarization",
                        "brainstorming"])
        for name in ("summarization", "brainstorming", "alpaca_eval"):
            files = ("target", "test") + (("pool",) if name != "alpaca_eval" else ())
            got = {f: open(tmp_path / f"{seed}a" / name / f"{f}.jsonl", "rb").read() for f in files}
            assert got == {f: open(tmp_path / f"{seed}b" / name / f"{f}.jsonl", "rb").read() for f in files}
            ids = {f: {json.loads(line)["id"] for line in got[f].decode().splitlines()} for f in files}
            assert not ids["target"] & ids["test"] and len(ids["target"]) in (30, 100)
            if name != "alpaca_eval":
                assert not (ids["target"] | ids["test"]) & ids["pool"] and len(ids["pool"]) == 1502 - 80
                cats = {r["category"] for f in ("target", "test")
                        for r in D.load_records(str(tmp_path / f"{seed}a" / name / f"{f}.jsonl"))}
                assert cats == {name}
            seen.setdefault(name, []).append(frozenset(ids["target"]))
    assert all(len(set(v)) == 5 for v in seen.values())  # every seed its own target set


def test_selection_mix_counts_finished_rounds_by_shape_and_category(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("selection_mix", os.path.join(ROOT, "scripts", "selection_mix.py"))
    mix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mix)
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": f"q{k}", "input": "text" if k < 4 else "", "output": "a", "category": "s" if k < 2 else "o"}
        for k in range(10)])
    run = tmp_path / "run"
    for r, ids in ((0, [9]), (1, [0, 2, 5, 6]), (2, [1, 3]), (3, [7])):  # round 3 was cut short
        (run / "rounds" / str(r)).mkdir(parents=True)
        write_jsonl(run / "rounds" / str(r) / "selected.jsonl", [{"id": i} for i in ids])
    flags = {"sampling_strategy": "bm25", "stratification_strategy": "greedy", "pick_samples_from": "top"}
    json.dump({"flags": flags, "rounds_done": 2}, open(run / "state.json", "w"))
    mix.main([str(run), "--pool", pool, "--category", "s"])
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| (pool pool.jsonl) | 40% | 20% | | |"
    assert out[3] == "| bm25 greedy/top | 67% | 33% | 6 | 1 |"  # ids 0 2 5 6 1 3: 4 with input, 2 in s
