"""Annotation round trip on a pool without answers: export -> annotators fill -> import -> next round,
equal to the oracle run (the pool's own answers) with the same seed."""
import csv
import json
import os

import pytest

import acquisition_AL
import al_datasets
from conftest import write_jsonl

FLAGS = ["--num_acquisition_samples", "40", "--stratification_strategy", "bucket", "--num_k", "3",
         "--pick_samples_from", "top", "--epochs", "1", "--grad_accum", "4", "--train_max_length", "256",
         "--model_max_length", "256", "--lr", "1e-3", "--threads", "2", "--no_progress", "--al_data_fraction", "120"]


def run(pool, model, path, *extra):
    acquisition_AL.main(["--file_path", str(pool), "--init_checkpoint_path", model, "--model_path", str(path),
                         *FLAGS, *extra])


def same_result(a, b) -> None:
    """Selections, scores, selected set and training numbers equal (timings aside)."""
    assert json.load(open(a / "selected.json")) == json.load(open(b / "selected.json"))
    for r in range(3):
        for name in ("selected.jsonl", "scores.jsonl"):
            fa, fb = a / "rounds" / str(r) / name, b / "rounds" / str(r) / name
            assert fa.exists() == fb.exists() and (not fa.exists() or fa.read_text() == fb.read_text())
        ma, mb = (json.load(open(p / "rounds" / str(r) / "metrics.json")) for p in (a, b))
        ma["train"].pop("seconds"), mb["train"].pop("seconds")
        assert ma["train"] == mb["train"] and ma["labelled"] == mb["labelled"]


def fill(batch_file, answers, out, only=None):
    """What an annotator does: write an answer into each row's `output` (jsonl or csv)."""
    if str(batch_file).endswith(".csv"):
        rows = list(csv.DictReader(open(batch_file, newline="")))
        for i, r in enumerate(rows):
            if only is None or i in only:
                r["output"] = answers[r["id"]]
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        rows = [json.loads(line) for line in open(batch_file)]
        write_jsonl(out, [{**r, "output": answers[r["id"]]} for r in rows])
    return str(out)


@pytest.fixture(scope="module")
def pools(pool, tmp_path_factory):
    """The same 200 records with ids that look like paths (they must never become paths), once with
    answers (the oracle) and once without (what annotators get)."""
    d = tmp_path_factory.mktemp("annot")
    rows = [{"id": f"../../escape/{i}", **json.loads(line)} for i, line in enumerate(open(pool))]
    oracle = write_jsonl(d / "oracle.jsonl", rows)
    bare = write_jsonl(d / "bare.jsonl", [{k: v for k, v in r.items() if k != "response"} for r in rows])
    return oracle, bare, {r["id"]: r["response"] for r in rows}


def test_round_trip_equals_oracle_run(pools, tiny_model, tmp_path, capsys):
    oracle, bare, answers = pools
    run(oracle, tiny_model, tmp_path / "oracle")
    capsys.readouterr()
    before = set(os.listdir(tmp_path))
    work = tmp_path / "ann"

    run(bare, tiny_model, work, "--annotate_out", str(tmp_path / "b0.jsonl"))  # exports the seed set
    assert "waiting for labels: 40 of round 0's 40 examples" in capsys.readouterr().err
    state = json.load(open(work / "state.json"))
    assert state["rounds_done"] == -1 and state["in_round"]["waiting_for_labels"] == 40
    b0 = [json.loads(line) for line in open(tmp_path / "b0.jsonl")]
    seed_set = [json.loads(line)["id"] for line in open(tmp_path / "oracle/rounds/0/selected.jsonl")]
    assert [r["id"] for r in b0] == seed_set
    assert set(b0[0]) == {"id", "instruction", "input", "output", "round", "score", "bucket"} and b0[0]["output"] == ""

    # round 0 labelled; round 1 is selected and goes out as CSV
    run(bare, tiny_model, work, "--labels", fill(tmp_path / "b0.jsonl", answers, tmp_path / "f0.jsonl"),
        "--annotate_out", str(tmp_path / "b1.csv"))
    assert json.load(open(work / "state.json"))["rounds_done"] == 0
    # a partial file: half the rows answered -> those are kept, the rest stays pending, no training
    part = fill(tmp_path / "b1.csv", answers, tmp_path / "f1_part.csv", only=set(range(20)))
    run(bare, tiny_model, work, "--labels", part, "--annotate_out", str(tmp_path / "b1_rest.csv"))
    err = capsys.readouterr().err
    assert "imported 20 answers" in err and "20 left blank" in err and "20 of 40 labelled" in err
    assert json.load(open(work / "state.json"))["rounds_done"] == 0
    assert len(list(csv.DictReader(open(tmp_path / "b1_rest.csv")))) == 20
    # the whole file again: the 20 already imported are recognised, the other 20 complete the batch
    run(bare, tiny_model, work, "--labels", fill(tmp_path / "b1.csv", answers, tmp_path / "f1.csv"))
    assert "imported 20 answers from" in capsys.readouterr().err
    # no --annotate_out this time: the batch is in the run directory
    run(bare, tiny_model, work, "--labels", fill(work / "rounds/2/to_annotate.jsonl", answers, tmp_path / "f2.jsonl"))
    assert json.load(open(work / "state.json"))["rounds_done"] == 2
    same_result(work, tmp_path / "oracle")
    assert len(open(work / "labels.jsonl").readlines()) == 120
    # ids shaped like paths were never used as paths
    assert set(os.listdir(tmp_path)) - before == {"ann", "ann_sharded", "b0.jsonl", "f0.jsonl", "b1.csv",
                                                   "f1_part.csv", "b1_rest.csv", "f1.csv", "f2.jsonl"}
    assert not (tmp_path.parent.parent / "escape").exists()


def test_resume_without_labels_reexports(pools, tiny_model, tmp_path, capsys):
    _, bare, _ = pools
    run(bare, tiny_model, tmp_path / "a", "--annotate_out", str(tmp_path / "b.jsonl"))
    os.remove(tmp_path / "b.jsonl")
    run(bare, tiny_model, tmp_path / "a", "--resume", "--annotate_out", str(tmp_path / "b.jsonl"))
    assert "waiting for labels: 40" in capsys.readouterr().err and (tmp_path / "b.jsonl").exists()


def test_oracle_mode_refuses_unlabelled_pool(pools, tiny_model, tmp_path, capsys):
    _, bare, _ = pools
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: run(bare, tiny_model, tmp_path / "o"))
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: {bare}:1: output: empty or missing (oracle labelling takes answers "
                                       "from the pool; use --annotate_out for an unlabelled pool)\n")


def test_conversation_export_and_import(tmp_path):
    """A conversation record goes out with its final assistant turn empty; the answer may come back
    in that turn (or in `output`)."""
    import al_annotation as A

    turns = [{"from": "human", "value": "Name a colour."}]
    pool = write_jsonl(tmp_path / "p.jsonl", [{"conversations": turns}, {"instruction": "Say hi."}])
    records = {r["id"]: r for r in al_datasets.load_records(pool)}
    rows = A.batch_rows([{"id": 0, "score": 1.0, "bucket": None}, {"id": 1, "score": 0.5, "bucket": None}],
                        records, 1)
    assert rows[0]["conversations"] == turns + [{"from": "gpt", "value": ""}] and "conversations" not in rows[1]
    A.export_batch(str(tmp_path / "batch.jsonl"), rows)
    back = [json.loads(line) for line in open(tmp_path / "batch.jsonl")]
    back[0]["conversations"][-1]["value"] = "Blue."  # filled in the conversation, `output` left blank
    back[1]["output"] = "Hi."
    new, words = A.import_labels(write_jsonl(tmp_path / "filled.jsonl", back), [0, 1], 1, records, {})
    assert new == {0: "Blue.", 1: "Hi."} and "(0 already imported, 0 left blank)" in words
