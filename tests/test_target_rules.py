"""Aggregation over target examples (mean, round_robin, coverage, per-target normalisation) and
the cheap baselines (bm25, format-matched random), on hand-made matrices and records."""
import json
import math

import numpy as np
import pytest

import acquisition_AL
import al_datasets as D
import al_scoring as SC
import al_selection as SEL
import al_similarity as M
import al_strategies as S
from conftest import TARGET_FLAGS as FLAGS
from conftest import write_jsonl


def test_round_robin_takes_turns_in_target_order():
    S_ = np.array([[.9, .1], [.8, .7], [.1, .6], [.5, .5]])
    # target 0 ranks 0, 1, 3, 2; target 1 ranks 1, 2, 3, 0
    assert M.round_robin_order(S_) == ([0, 1, 3, 2], [0, 1, 0, 1])


def test_round_robin_ties_and_a_target_with_nothing_left():
    S_ = np.array([[.5, .5, .9], [.5, .5, .9]])  # every target ties: the earlier candidate first
    assert M.round_robin_order(S_) == ([0, 1], [0, 1])  # target 2 finds nothing left and passes
    assert M.round_robin_order(np.zeros((0, 3))) == ([], [])


def test_coverage_lets_a_near_duplicate_wait():
    S_ = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 0.8], [0.5, 0.5]])
    # gains from the column minima (0, 0): 1.0, 1.0, 0.8, 1.0 -> 0 (earliest of the ties); then
    # 0.1, 0.8, 0.5 -> 2; then nothing gains: 1 and 3 by mean similarity (0.5 each: candidate order)
    assert M.coverage_order(S_) == [0, 2, 1, 3]
    # the mean rule would take the near-duplicate 1 second
    rows = M.target_rows(list("abcd"), S_, ["", ""], "mean", False)
    assert [r["id"] for r in sorted(rows, key=lambda r: -r["score"])] == ["a", "b", "d", "c"]


def test_coverage_equals_plain_greedy_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        S_ = rng.normal(size=(12, 4)).round(1)  # rounding makes ties
        cur, left, want = S_.min(0), list(range(12)), []
        while left:
            gains = [np.maximum(S_[c] - cur, 0).sum() for c in left]
            if max(gains) <= 0:
                want += sorted(left, key=lambda c: (-S_[c].mean(), c))
                break
            c = left[int(np.argmax(gains))]  # argmax: the first of equal gains
            want.append(c)
            left.remove(c)
            cur = np.maximum(cur, S_[c])
        assert M.coverage_order(S_) == want


def test_normalisation_and_the_rows_each_rule_writes():
    S_ = np.array([[1.0, 10.0], [3.0, 10.0], [2.0, 40.0]])
    # column 0: mean 2, sd sqrt(2/3); column 1: mean 20, sd sqrt(200)
    z0, z1 = np.array([-1, 1, 0]) / math.sqrt(2 / 3), np.array([-10, -10, 20]) / math.sqrt(200)
    np.testing.assert_allclose(M.normalize_targets(S_), np.stack([z0, z1], 1))
    np.testing.assert_allclose(M.normalize_targets(np.ones((3, 1))), np.zeros((3, 1)))  # constant column
    rows = M.target_rows([7, 8, 9], S_, ["", ""], "mean", True)
    np.testing.assert_allclose([r["score"] for r in rows], (z0 + z1) / 2)
    assert [r["similarity"] for r in rows] == [5.5, 6.5, 21.0]  # raw mean, whatever the rule
    rows = M.target_rows([7, 8, 9], S_, ["", ""], "round_robin", False)
    # target 0 takes 8, target 1 takes 9, target 0 takes 7
    assert [(r["id"], r["score"], r["target"]) for r in rows] == [(7, 1.0, 0), (8, 3.0, 0), (9, 2.0, 1)]
    groups = M.target_rows([7, 8, 9], S_, ["x", "y"], "mean", False)  # max over groups of the group mean
    assert [(r["score"], r["group"]) for r in groups] == [(10.0, "y"), (10.0, "y"), (40.0, "y")]


def test_bm25_is_the_hand_computation():
    docs = ["Cats sit on the mats.", "Dogs chase cats, cats!", "Birds fly high"]
    S_ = S.bm25_matrix(docs, ["cats chase", "zebra", "birds"])
    # words after stop words: [cats sit mats], [dogs chase cats cats], [birds fly high]; avgdl 10/3
    k1, b, avg = 1.5, 0.75, 10 / 3

    def idf(df):
        return math.log(1 + (3 - df + 0.5) / (df + 0.5))

    def tf(f, dl):
        return f / (f + k1 * (1 - b + b * dl / avg))

    want = np.array([[idf(2) * tf(1, 3), 0, 0],
                     [idf(2) * tf(2, 4) + idf(1) * tf(1, 4), 0, 0],
                     [0, 0, idf(1) * tf(1, 3)]])
    np.testing.assert_allclose(S_, want, rtol=1e-6)


def scoring(records, target_records, tmp_path, tok):
    target = M.load_target(write_jsonl(tmp_path / "t.jsonl", target_records), None, tok)
    return S.Scoring(None, tok, {}, {r["id"]: r for r in records}, SC.ScoreConfig(progress=False),
                     np.random.default_rng(0), target)


def test_format_matched_random_draws_only_rows_shaped_like_the_target(tmp_path, loaded):
    records = [{"id": k, "instruction": f"q{k}", "input": "passage" if k % 3 == 0 else "", "output": "a"}
               for k in range(30)]  # 10 with an input
    with_input = [{"instruction": f"t{k}", "input": "text" if k < 2 else "", "output": "a"} for k in range(3)]
    sc = scoring(records, with_input, tmp_path, loaded[1])
    rows = S.score_candidates("random_format", list(range(30)), sc)
    assert sum(r["format_match"] for r in rows) == 10
    picked, _ = S.select(rows, 10, 1, SEL.SelectConfig("random_format", "greedy", "top"), sc.cfg,
                         np.random.default_rng(0))
    assert {r["id"] for r in picked} == set(range(0, 30, 3))  # exactly the rows with an input
    picked, _ = S.select(rows, 12, 1, SEL.SelectConfig("random_format", "greedy", "top"), sc.cfg,
                         np.random.default_rng(0))
    assert {r["id"] for r in picked[:10]} == set(range(0, 30, 3)) and len(picked) == 12  # then the others
    # the other shape when most target records have no input; the order within is the seeded stream
    sc2 = scoring(records, with_input[1:] + [with_input[2]], tmp_path, loaded[1])
    rows2 = S.score_candidates("random_format", list(range(30)), sc2)
    assert [r["id"] for r in rows2 if r["format_match"]] == [k for k in range(30) if k % 3]
    u = np.random.default_rng(0).random(30)
    assert [r["score"] for r in rows2] == [float(v) + (k % 3 != 0) for k, v in enumerate(u)]


@pytest.mark.parametrize("extra, error", [
    (["--sampling_strategy", "rds", "--target_aggregation", "round_robin", "--target_normalize"],
     "--target_normalize: has no effect with --target_aggregation round_robin"),
    (["--sampling_strategy", "rds", "--target_aggregation", "coverage", "--target_group_field", "category"],
     "--target_group_field: groups are scored separately by --target_aggregation mean only"),
    (["--sampling_strategy", "bm25", "--grad_dim", "64"], "--grad_dim: 64 has no effect with --sampling_strategy bm25"),
    (["--sampling_strategy", "random_format", "--target_aggregation", "coverage"],
     "--target_aggregation: coverage has no effect with --sampling_strategy random_format"),
    (["--sampling_strategy", "forward_ppl", "--target_normalize"],
     "--target_normalize: True has no effect with --sampling_strategy forward_ppl"),
    (["--sampling_strategy", "bm25"], "--target_file: --sampling_strategy bm25 selects for a target"),
])
def test_bad_rule_flags(tiny_model, target_data, tmp_path, capsys, extra, error):
    target, pool_t, _ = target_data
    needs = extra[1] != "forward_ppl" and extra != ["--sampling_strategy", "bm25"]
    tgt = ["--target_file", target] if needs else []
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: acquisition_AL.main(
            ["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "x"),
             "--al_data_fraction", "60", *tgt, *FLAGS, *extra]))
    assert e.value.code == 2 and capsys.readouterr().err.startswith(f"error: {error}")
    assert not (tmp_path / "x").exists()


def run(tiny_model, pool_t, target, path, *extra):
    acquisition_AL.main(["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path", str(path),
                         "--al_data_fraction", "60", "--target_file", target, *FLAGS, *extra])


def test_rules_in_the_loop(tiny_model, target_data, tmp_path):
    """rds round_robin gives every target example its turn and picks the top of its order; bm25
    coverage and format-matched random run, resume, and record what they compute."""
    target, pool_t, _ = target_data
    run(tiny_model, pool_t, target, tmp_path / "rr", "--sampling_strategy", "rds", "--target_aggregation",
        "round_robin")
    rows = [json.loads(line) for line in open(tmp_path / "rr" / "rounds" / "1" / "scores.jsonl")]
    picked = [json.loads(line)["id"] for line in open(tmp_path / "rr" / "rounds" / "1" / "selected.jsonl")]
    order = sorted(rows, key=lambda r: -r["score"])
    assert picked == [r["id"] for r in order[:30]] and sorted(r["score"] for r in rows) == list(
        range(1, len(rows) + 1))
    n_target = len(D.load_records(target))
    assert [r["target"] for r in order[:n_target]] == list(range(n_target))  # every target example its turn
    assert all("sims" not in r and -1 <= r["similarity"] <= 1 for r in rows)
    run(tiny_model, pool_t, target, tmp_path / "b", "--sampling_strategy", "bm25", "--target_aggregation", "coverage")
    run(tiny_model, pool_t, target, tmp_path / "b", "--sampling_strategy", "bm25", "--target_aggregation", "coverage",
        "--resume")  # done: nothing changes
    state = json.load(open(tmp_path / "b" / "state.json"))
    assert state["flags"]["target_aggregation"] == "coverage" and state["round_log"][-1]["labelled"] == 60
    run(tiny_model, pool_t, target, tmp_path / "f", "--sampling_strategy", "random_format")
    records = {r["id"]: r for r in D.load_records(pool_t)}
    picked = [json.loads(line)["id"] for line in open(tmp_path / "f" / "rounds" / "1" / "selected.jsonl")]
    shaped = sum(bool(r["input"].strip()) for r in D.load_records(target)) * 2 >= n_target
    assert all(bool(records[i]["input"].strip()) == shaped for i in picked[:5])
