"""scripts/run_al.sh end to end with tiny settings: two chained budgets, eval after each, report;
every benchmark still imports what it uses."""
import glob
import importlib.util
import json
import os
import subprocess

import pytest
import torch

import al_datasets as D
import eval_generate
import fsdp_utils
import report_AL
from conftest import ROOT, hand_answer_nll


def test_run_al_sh_two_budgets(pool, tiny_model, tmp_path):
    env = {**os.environ, "POOL": pool, "MODEL": tiny_model, "OUT": str(tmp_path), "BUDGETS": "50 100",
           "PER_ROUND": "50", "HELDOUT": "20", "EVAL_ITEMS": "3",
           "EVAL_FLAGS": "--max_new_tokens 4 --no_progress --model_context_length 256",
           "TRAIN_FLAGS": "--lr 1e-3 --epochs 1 --grad_accum 4 --train_max_length 256 --model_max_length 256 "
                          "--no_progress"}
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_al.sh")], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    state = json.load(open(tmp_path / "RUN_100" / "state.json"))
    assert state["rounds_done"] == 1 and state["chained_from"].endswith("RUN_50")
    assert len(json.load(open(tmp_path / "eval" / "RUN_100.json"))) == 3
    m = json.load(open(tmp_path / "eval" / "RUN_100.metrics.json"))
    assert m["heldout_examples"] == 20 and m["reference_examples"] == 3
    # by hand, from the RUN_100 checkpoint: the reference NLL of the 3 AlpacaEval items (context 256)
    # and the held-out loss, which eval and the loop both report (same slice, same truncation)
    tok = fsdp_utils.load_tokenizer(tiny_model)
    model = fsdp_utils.load_model(str(tmp_path / "RUN_100_sharded"), torch.device("cpu"))
    alpaca = D.load_records(eval_generate.ALPACA_EVAL)[:3]
    assert abs(m["reference_nll"] - hand_answer_nll(model, tok, alpaca, 256)) < 1e-5
    by_id = {r["id"]: r for r in D.load_records(pool)}
    held = hand_answer_nll(model, tok, [by_id[i] for i in state["heldout_ids"]], 256)
    assert abs(m["heldout_loss"] - held) < 1e-5 and abs(state["round_log"][-1]["heldout_loss"] - held) < 1e-5
    report_AL.main([str(tmp_path / "RUN_100"), "--out", str(tmp_path / "rep")])
    assert "| forward_ppl bucket/top |" in open(tmp_path / "rep.md").read()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))),
                         ids=os.path.basename)
def test_benchmark_imports(path, monkeypatch):
    """A benchmark is run by hand, rarely: a helper moved or renamed must fail here, not months later."""
    monkeypatch.syspath_prepend(os.path.dirname(path))  # as `python benchmarks/X.py` would have it
    spec = importlib.util.spec_from_file_location("bench_under_test", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # not __main__: nothing runs


def test_targeted_sh_parked_part_goes_on_on_another_machine(tiny_model, tmp_path):
    """targeted.sh killed in random2x's first round of training (random finished to 100), `park`;
    on another machine (a fresh OUT, no weights) the parked logs are restored, random2x's last
    round is trained again for its weights, its round-2 selection reused, and it goes on to 200:
    the same round log as one uninterrupted invocation, and nothing is left parked. A random run
    kept before random went on to twice the budget is restored from the kept logs the same way and
    chained to the direct run's end."""
    import shutil

    def part(out, *args, **extra):
        env = {**os.environ, "MODEL": tiny_model, "OUT": str(tmp_path / out), "RESULTS": str(tmp_path / "res" / out),
               "PARKED": str(tmp_path / "parked"), "TARGETS": "summarization", "SEEDS": "101",
               "ARMS_ONLY": "random", "MAX_BUDGET": "100", "PER_ROUND": "50", "HELDOUT": "20", "THREADS": "2",
               "ROUGE_LIMIT": "0",
               "TRAIN_FLAGS": "--lr 1e-3 --epochs 1 --grad_accum 4 --train_max_length 128 --model_max_length 128",
               **extra}
        done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "targeted.sh"), "default", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        return done.stdout if args == ("status",) else done.returncode

    def log(out):
        state = json.load(open(tmp_path / "res" / out / "runs/default/summarization/random2x_s101/state.json"))
        return state["rounds_done"], state["round_log"]

    assert part("direct") == 0
    assert part("a", AL_KILL_AT="training:2") != 0
    assert part("a", "park") == 0
    parked = tmp_path / "parked/default/summarization"
    assert sorted(os.listdir(parked)) == ["random2x_s101", "random_s101"]
    assert sorted(os.listdir(parked / "random2x_s101/rounds/2")) == ["scores.jsonl", "selected.jsonl"]
    assert [line.split() for line in part("a", "status").splitlines()] == [
        ["summarization", "random2x_s101", "100/200", "labelled", "parked"],
        ["summarization", "random_s101", "100/100", "labelled", "parked"]]
    shutil.rmtree(tmp_path / "a")  # the first machine is gone
    assert part("b") == 0
    assert log("b") == log("direct") and log("b")[0] == 3
    assert os.listdir(parked) == []
    # random kept at 100 before random went on to twice the budget; on a later machine the kept run
    # is restored, its weights rebuilt, and the chain to 200 ends where the direct run did
    assert part("old", RANDOM_BUDGET="100") == 0
    assert not (tmp_path / "res/old/runs/default/summarization/random2x_s101").exists()
    assert part("later", RESULTS=str(tmp_path / "res/old")) == 0
    assert "random_s101_sharded: no checkpoint; training round 1 again" in \
        open(tmp_path / "later/default/summarization.log").read()  # restored, not run again from scratch
    assert log("old") == log("direct")
