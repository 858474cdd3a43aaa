"""benchmarks/variance_sources.py on hand-made runs: the per-seed AUC difference rebuilt from the
per-example test NLL, the test-set bootstrap, and the power arithmetic."""
import importlib.util
import json
import os

import numpy as np
import pytest

from al_utils import InputError
from conftest import ROOT

spec = importlib.util.spec_from_file_location("vs", os.path.join(ROOT, "benchmarks", "variance_sources.py"))
vs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vs)

TOKENS = [10, 20, 30]


def fake_run(root, name, strategy, seed, nll, tokens=TOKENS):
    """nll: [rounds][examples] summed answer NLL; test_loss is their token-weighted mean."""
    d = root / name
    log = []
    for r, s in enumerate(nll):
        (d / "rounds" / str(r)).mkdir(parents=True)
        loss = sum(s) / sum(tokens)
        m = {"round": r, "test_loss": loss, "test_example_nll": s, "test_example_tokens": tokens,
             "seconds": {"total": 1}}
        json.dump(m, open(d / "rounds" / str(r) / "metrics.json", "w"))
        log.append({"round": r, "labelled": 25 * (r + 1), "test_loss": loss})
    json.dump({"flags": {"sampling_strategy": strategy, "seed": seed}, "round_log": log}, open(d / "state.json", "w"))
    return str(d)


RANDOM = [[20.0, 40.0, 60.0], [18.0, 38.0, 55.0], [17.0, 35.0, 50.0]]


def test_seed_auc_difference_by_hand_and_the_test_set_bootstrap(tmp_path):
    for s in (1, 2):
        fake_run(tmp_path, f"random_s{s}", "random", s, RANDOM)
    # seed 1: every example's difference in proportion to its tokens, so every resample gives the same ratio
    fake_run(tmp_path, "bm25_s1", "bm25", 1, [RANDOM[0], [17.0, 36.0, 52.0], [15.0, 31.0, 44.0]])
    # seed 2: the whole difference on the first example
    fake_run(tmp_path, "bm25_s2", "bm25", 2, [RANDOM[0], [15.0, 38.0, 55.0], [17.0, 35.0, 50.0]])
    fake_run(tmp_path, "random_s3", "random", 3, RANDOM)  # chained on in random2x_s3: left out
    fake_run(tmp_path, "random2x_s3", "random", 3, RANDOM)
    parts = {r: vs.example_parts(str(tmp_path / r), 3) for r in ("bm25_s1", "bm25_s2", "random_s1", "random_s2")}
    rng = np.random.default_rng(0)
    d1, sd1 = vs.seed_auc_boot(parts["bm25_s1"], parts["random_s1"], 3, 500, rng)
    assert d1 == pytest.approx(((-1 - 2 - 3) / 60 + (-2 - 4 - 6) / 60) / 2)  # rounds 1, 2 past the seed set
    assert sd1 == pytest.approx(0, abs=1e-12)
    d2, sd2 = vs.seed_auc_boot(parts["bm25_s2"], parts["random_s2"], 3, 2000, rng)
    assert d2 == pytest.approx((-3 / 60 + 0) / 2)
    # resamples hold the first example k ~ Binomial(3, 1/3) times: -1.5 k / tokens drawn, a spread > 0
    assert 0.005 < sd2 < 0.05
    row = vs.target_rows(str(tmp_path), 200, rng)
    assert len(row) == 1 and row[0].startswith(f"| {tmp_path.name} | bm25 | random | 2 | {(d1 + d2) / 2:+.4f} |")


def test_an_arm_scored_on_another_test_set_is_named(tmp_path):
    for s in (1, 2):
        fake_run(tmp_path, f"random_s{s}", "random", s, RANDOM)
    fake_run(tmp_path, "bm25_s1", "bm25", 1, RANDOM)
    bm25 = fake_run(tmp_path, "bm25_s2", "bm25", 2, RANDOM, tokens=[10, 20, 31])  # the arm's second seed is named
    with pytest.raises(InputError, match=f"{bm25}: test_example_tokens: differ from random seed 2's"):
        vs.target_rows(str(tmp_path), 10, np.random.default_rng(0))


def test_a_test_loss_that_disagrees_with_its_examples_is_named(tmp_path):
    run = fake_run(tmp_path, "random_s1", "random", 1, RANDOM)
    f = os.path.join(run, "rounds", "1", "metrics.json")
    m = json.load(open(f))
    m["test_loss"] += 0.01
    json.dump(m, open(f, "w"))
    with pytest.raises(InputError, match=f"{f}: test_example_nll"):
        vs.example_parts(run, 3)


def test_power_arithmetic():
    assert vs.power_of(0.0, 0.01, 5) == pytest.approx(vs.ALPHA)  # no difference: the test's level
    d = vs.detectable(0.01, 5)
    assert vs.power_of(d, 0.01, 5) == pytest.approx(vs.POWER)
    assert vs.detectable(0.02, 5) == pytest.approx(2 * d)  # in units of the sd
    n = int(vs.seeds_needed(0.01, 0.01))
    assert vs.power_of(0.01, 0.01, n) >= vs.POWER > vs.power_of(0.01, 0.01, n - 1)
