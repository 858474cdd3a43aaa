"""The acquisition loop end to end on a 200-record pool: growth, disjointness, resume, chaining."""
import glob
import json
import os

import pytest

import acquisition_AL

COMMON = ["--num_acquisition_samples", "50", "--stratification_strategy", "bucket", "--num_k", "3",
          "--pick_samples_from", "top", "--heldout_size", "20", "--epochs", "1", "--grad_accum", "4",
          "--train_max_length", "256", "--model_max_length", "256", "--lr", "1e-3", "--threads", "2",
          "--no_progress", "--decay_k"]


def run(pool, model, path, budget, *extra):
    acquisition_AL.main(["--file_path", pool, "--init_checkpoint_path", model, "--model_path", str(path),
                         "--al_data_fraction", str(budget), *COMMON, *extra])


def outputs(path) -> dict:
    """What 'same result' compares: the selected set and every round's scores and selections."""
    files = [os.path.join(path, "selected.json")]
    files += sorted(glob.glob(os.path.join(path, "rounds", "*", "s*.jsonl")))
    return {os.path.relpath(f, path): open(f).read() for f in files}


@pytest.fixture(scope="module")
def full_run(pool, tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "full"
    run(pool, tiny_model, path, 150)
    return path


def test_rounds_grow_disjoint_to_budget(full_run, pool):
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
    # round 1 scored every remaining candidate; bucket picks carry bucket and score
    scores = [json.loads(line) for line in open(full_run / "rounds" / "1" / "scores.jsonl")]
    assert len(scores) == 200 - 20 - 50
    sel1 = [json.loads(line) for line in open(full_run / "rounds" / "1" / "selected.jsonl")]
    assert {r["bucket"] for r in sel1} == {0, 1, 2}
    # round 2 decays k from 3 to 2
    sel2 = [json.loads(line) for line in open(full_run / "rounds" / "2" / "selected.jsonl")]
    assert {r["bucket"] for r in sel2} == {0, 1}
    m = json.load(open(full_run / "rounds" / "2" / "metrics.json"))
    assert m["labelled"] == 150 and m["heldout_loss"] > 0 and m["train"]["examples"] == 150
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
