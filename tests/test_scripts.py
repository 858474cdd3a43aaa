"""scripts/run_al.sh end to end with tiny settings: two chained budgets, eval after each, report."""
import json
import os
import subprocess

import report_AL
from conftest import ROOT


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
    assert "reference_nll" in m and m["heldout_examples"] == 20
    # eval's held-out loss (same slice, same truncation) equals the loop's own last measurement
    assert abs(m["heldout_loss"] - state["round_log"][-1]["heldout_loss"]) < 1e-5
    report_AL.main([str(tmp_path / "RUN_100"), "--out", str(tmp_path / "rep")])
    assert "| forward_ppl bucket/top |" in open(tmp_path / "rep.md").read()
