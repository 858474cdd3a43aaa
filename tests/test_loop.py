"""The acquisition loop end to end on a 200-record pool: growth, disjointness, resume, chaining."""
import fcntl
import gc
import glob
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import acquisition_AL
import al_datasets as D
import al_utils as U
import fsdp_utils
from conftest import ROOT, hand_answer_nll, outputs

COMMON = ["--num_acquisition_samples", "50", "--stratification_strategy", "bucket", "--num_k", "3",
          "--pick_samples_from", "top", "--heldout_size", "20", "--epochs", "1", "--grad_accum", "4",
          "--train_max_length", "256", "--model_max_length", "256", "--lr", "1e-3", "--threads", "2",
          "--no_progress", "--decay_k"]


def run(pool, model, path, budget, *extra):
    acquisition_AL.main(["--file_path", pool, "--init_checkpoint_path", model, "--model_path", str(path),
                         "--al_data_fraction", str(budget), *COMMON, *extra])


@pytest.fixture(scope="module")
def full_run(pool, tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "full"
    run(pool, tiny_model, path, 150)
    return path


def test_rounds_grow_disjoint_to_budget(full_run, pool, tiny_model):
    state = json.load(open(full_run / "state.json"))
    assert state["rounds_done"] == 2 and state["budget"] == 150
    picks = [[json.loads(line)["id"] for line in open(full_run / "rounds" / str(r) / "selected.jsonl")]
             for r in range(3)]
    assert [len(p) for p in picks] == [50, 50, 50]
    flat = [i for p in picks for i in p]
    assert len(set(flat)) == 150  # disjoint
    assert not set(flat) & set(state["heldout_ids"])
    selected = json.load(open(full_run / "selected.json"))
    assert [r["id"] for r in selected] == flat
    assert {"instruction", "input", "output", "category"} <= set(selected[0])  # extra columns carried
    # round 1 scored every remaining candidate (130): 3 buckets of 44, 43, 43 over the sorted scores,
    # 16 + 16 + 18 from their tops; round 2 (80 left) decays k to 2: 40 + 40, 25 + 25
    for rnd, cuts in ((1, [(0, 16), (44, 16), (87, 18)]), (2, [(0, 25), (40, 25)])):
        scores = [json.loads(line) for line in open(full_run / "rounds" / str(rnd) / "scores.jsonl")]
        assert len(scores) == {1: 130, 2: 80}[rnd]
        ranked = [r["id"] for r in sorted(scores, key=lambda r: -r["score"])]
        want = [(i, b) for b, (lo, n) in enumerate(cuts) for i in ranked[lo: lo + n]]
        sel = [json.loads(line) for line in open(full_run / "rounds" / str(rnd) / "selected.jsonl")]
        assert [(r["id"], r["bucket"]) for r in sel] == want
        score_of = {r["id"]: r["score"] for r in scores}
        assert all(r["score"] == score_of[r["id"]] for r in sel)
    m = json.load(open(full_run / "rounds" / "2" / "metrics.json"))
    assert m["labelled"] == 150 and m["train"]["examples"] == 150 and m["candidates_ruled_out"] == 0
    # held-out loss by hand: the round-2 checkpoint on the held-out slice, truncated as in training
    tok = fsdp_utils.load_tokenizer(tiny_model)
    model = fsdp_utils.load_model(str(full_run) + "_sharded", torch.device("cpu"))
    by_id = {r["id"]: r for r in D.load_records(pool)}
    want = hand_answer_nll(model, tok, [by_id[i] for i in state["heldout_ids"]], 256)
    assert abs(m["heldout_loss"] - want) < 1e-5
    assert json.load(open(str(full_run) + "_sharded/al_checkpoint.json"))["round"] == 2


def test_interrupted_then_resumed_equals_uninterrupted(full_run, pool, tiny_model, tmp_path):
    path = tmp_path / "staged"
    run(pool, tiny_model, path, 150, "--stop_after_round", "1")
    assert json.load(open(path / "state.json"))["rounds_done"] == 1
    run(pool, tiny_model, path, 150, "--resume")
    assert outputs(path) == outputs(full_run)


def test_crash_mid_round_resumes_identically(full_run, pool, tiny_model, tmp_path):
    path = tmp_path / "crashed"
    run(pool, tiny_model, path, 150, "--stop_after_round", "1")
    # simulate a kill after round 2 selected and trained but before its state was written
    state = json.load(open(path / "state.json"))
    run(pool, tiny_model, path, 150, "--resume")
    json.dump(state, open(path / "state.json", "w"))
    os.remove(path / "rounds" / "2" / "metrics.json")
    run(pool, tiny_model, path, 150, "--resume")
    assert outputs(path) == outputs(full_run)


def test_chained_budgets_equal_one_run(full_run, pool, tiny_model, tmp_path):
    run(pool, tiny_model, tmp_path / "RUN_100", 100)
    run(pool, tiny_model, tmp_path / "RUN_150", 150, "--resume", "--resume_checkpoint_path",
        str(tmp_path / "RUN_100_sharded"))
    assert outputs(tmp_path / "RUN_150") == outputs(full_run)
    assert json.load(open(tmp_path / "RUN_150" / "state.json"))["rounds_done"] == 2


def test_existing_run_and_changed_flags_refused(full_run, pool, tiny_model, capsys):
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: run(pool, tiny_model, full_run, 150))
    assert e.value.code == 2 and "run exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: run(pool, tiny_model, full_run, 150, "--resume", "--seed", "1"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "seed: 42 -> 1" in err


def test_run_made_before_a_flag_existed_still_resumes(full_run, pool, tiny_model, tmp_path, capsys):
    """A flag added later is absent from an older run's state: at its default it is no change."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(full_run, old)
    shutil.copytree(f"{full_run}_sharded", f"{old}_sharded")
    state = json.load(open(old / "state.json"))
    del state["flags"]["test_file"], state["flags"]["budget_unit"]
    json.dump(state, open(old / "state.json", "w"))
    run(pool, tiny_model, old, 150, "--resume")  # nothing left to do, and no refusal
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: run(pool, tiny_model, old, 20000, "--resume", "--budget_unit", "answer_words"))
    assert e.value.code == 2 and "budget_unit: None -> 'answer_words'" in capsys.readouterr().err


def test_model_free_strategy_grows_labelled_set(pool, tiny_model, tmp_path):
    # the original replaced the labelled set with `random` and looped forever
    run(pool, tiny_model, tmp_path / "rand", 120, "--sampling_strategy", "random")
    ids = [r["id"] for r in json.load(open(tmp_path / "rand" / "selected.json"))]
    assert len(ids) == len(set(ids)) == 120


def test_warm_start_resumed_equals_uninterrupted(pool, tiny_model, tmp_path):
    run(pool, tiny_model, tmp_path / "ws", 150, "--warm_start")
    run(pool, tiny_model, tmp_path / "ws2", 150, "--warm_start", "--stop_after_round", "1")
    run(pool, tiny_model, tmp_path / "ws2", 150, "--warm_start", "--resume")
    assert outputs(tmp_path / "ws2") == outputs(tmp_path / "ws")


def cli(pool, model, path, budget, *extra, env=None):
    argv = [sys.executable, os.path.join(ROOT, "acquisition_AL.py"), "--file_path", pool, "--init_checkpoint_path",
            model, "--model_path", str(path), "--al_data_fraction", str(budget), *COMMON, *extra]
    return subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_warm_start_run_without_its_checkpoint_is_refused(pool, tiny_model, tmp_path):
    """Cold-start rounds can be trained again to rebuild a lost checkpoint; warm-start ones cannot."""
    import shutil

    run(pool, tiny_model, tmp_path / "ws", 100, "--warm_start", "--stop_after_round", "0")
    shutil.rmtree(f"{tmp_path / 'ws'}_sharded")
    with pytest.raises(U.InputError, match="no checkpoint, and a --warm_start run's weights depend on every round"):
        run(pool, tiny_model, tmp_path / "ws", 100, "--warm_start", "--resume")


@pytest.mark.parametrize("point", ["scoring", "selected", "training", "checkpoint_save"])
def test_sigkill_then_resume_equals_uninterrupted(full_run, pool, tiny_model, tmp_path, point):
    """SIGKILL in round 1 at each point (AL_KILL_AT hook), then --resume: same files as no kill."""
    path = tmp_path / "killed"
    p = cli(pool, tiny_model, path, 150, env={"AL_KILL_AT": f"{point}:1"})
    p.communicate()
    assert p.returncode == -9
    state = json.load(open(path / "state.json"))
    assert state["rounds_done"] == 0
    assert state.get("in_round", {}).get("finished") == {"scoring": None, "selected": "selection",
                                                         "training": "selection", "checkpoint_save": "selection"}[point]
    assert os.path.isfile(path / "rounds/1/selected.jsonl") == (point != "scoring")
    run(pool, tiny_model, path, 150, "--resume")
    assert outputs(path) == outputs(full_run)
    assert not glob.glob(str(tmp_path / ".*tmp*"))  # no temp leftovers


def test_second_run_on_same_model_path_refused(pool, tiny_model, tmp_path, capsys):
    path = tmp_path / "busy"
    first = cli(pool, tiny_model, path, 150)
    while not (path / "rounds/0/selected.jsonl").exists():  # the first run holds the lock by now
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: run(pool, tiny_model, path, 150, "--resume"))
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: --model_path: {path}: another run holds its lock ({path}/.lock)\n"
    first.communicate()
    assert first.returncode == 0
    with open(path / ".lock") as f:  # released at exit
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("where", ["checkpoint", "state"])
def test_full_disk_stops_with_one_line_and_resumes_identically(full_run, pool, tiny_model, tmp_path, capsys,
                                                               monkeypatch, where):
    """fsync (where a full disk shows: data is only known to be on disk once synced) fails with
    ENOSPC for round 1's checkpoint files, or for its first state.json write."""
    import errno

    path = tmp_path / "full"
    real_fsync = os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        done = json.load(open(path / "state.json"))["rounds_done"] if (path / "state.json").exists() else -1
        hit = ".full_sharded.tmp" in name if where == "checkpoint" else name.endswith("state.json")
        if hit and done == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SystemExit) as e:
        U.run_cli(lambda: run(pool, tiny_model, path, 150))
    err = capsys.readouterr().err.splitlines()[-1]
    where_file = f"{path}_sharded" if where == "checkpoint" else f"{path}/state.json"
    assert e.value.code == 1 and err == f"error: {where_file}: No space left on device (ENOSPC); nothing was left " \
        "half-written: free space, then run again with --resume"
    state = json.load(open(path / "state.json"))
    assert state["rounds_done"] == 0 and fsdp_utils.checkpoint_meta(f"{path}_sharded")["round"] == 0
    assert not glob.glob(str(tmp_path / ".*tmp*")) and not glob.glob(str(path / ".tmp-*"))  # nothing half-written
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    del e  # the traceback holds the failed run and its lock, which a real exit would release
    gc.collect()
    run(pool, tiny_model, path, 150, "--resume")
    assert outputs(path) == outputs(full_run)
