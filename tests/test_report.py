"""report_AL.py on hand-made run directories: every number in the tables is worked out by hand
from the inputs (t quantiles: t(0.975, 1) = 12.7062, t(0.975, 2) = 4.30265)."""
import json
import os

import numpy as np
import pytest

import report_AL
from al_utils import InputError

FLAGS = {"stratification_strategy": "bucket", "pick_samples_from": "top", "num_k": 2, "decay_k": False}


def fake_run(root, name, strategy, seed, losses, tokens=None, metric="heldout", flags=None):
    d = root / name
    (d / "rounds" / "1").mkdir(parents=True)
    tokens = tokens or [100 * (i + 1) for i in range(len(losses))]
    log = [{"round": i, "labelled": 50 * (i + 1), "answer_tokens": t, "answer_words": t // 2, "train_loss": 0.0,
            "heldout_loss": v if metric == "heldout" else None, "test_loss": v if metric == "test" else None}
           for i, (v, t) in enumerate(zip(losses, tokens))]
    fl = {**FLAGS, "sampling_strategy": strategy, "seed": seed, **(flags or {})}
    json.dump({"flags": fl, "round_log": log}, open(d / "state.json", "w"))
    with open(d / "rounds" / "1" / "scores.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"id": i, "score": float(i)}) + "\n")
    return str(d)


def row(md, name):
    return next(line for line in md.splitlines() if line.startswith(f"| {name} |"))


def rows(md, name):
    return [line for line in md.splitlines() if line.startswith(f"| {name} |")]


def test_paired_ci_ratio_and_auc_by_hand(tmp_path):
    rand = [3.0, 2.8, 2.6]  # every random seed the same: its mean curve is exact
    runs = [fake_run(tmp_path, f"r{s}", "random", s, rand) for s in (1, 2, 3)]
    d1 = np.array([-0.1, -0.15, -0.18])  # paired differences at 100; at 150 all -0.2
    runs += [fake_run(tmp_path, f"a{s}", "forward_ppl", s, [3.0, 2.8 + d, 2.4]) for s, d in zip((1, 2, 3), d1)]
    runs.append(fake_run(tmp_path, "u4", "forward_ppl", 4, [9.0, 9.0, 9.0]))  # no random seed 4: not paired
    out = str(tmp_path / "rep" / "al")
    report_AL.main([*runs, "--out", out, "--hist"])
    md = open(out + ".md").read()
    diff, ratio = rows(md, "forward_ppl bucket/top")[1:3]
    h = 4.30265 * d1.std(ddof=1) / np.sqrt(3)
    assert diff.split(" | ")[2] == f"{d1.mean():+.4f} [{d1.mean() - h:+.4f}, {d1.mean() + h:+.4f}]*"  # excludes 0
    assert diff.split(" | ")[3] == "-0.2000"  # no spread: the interval is the point
    auc = (d1 - 0.2) / 2  # paired AUC over rounds 1, 2 per seed
    h = 4.30265 * auc.std(ddof=1) / np.sqrt(3)
    assert diff.split(" | ")[4] == f"{auc.mean():+.4f} [{auc.mean() - h:+.4f}, {auc.mean() + h:+.4f}]*"
    # ratio at 100: the mean 2.6567 is reached by random's mean curve at 100 + 0.1433 / 0.2 * 50;
    # the interval: random's level there (2.8) plus the ends of the difference's t interval
    at = 100 - d1.mean() / 0.2 * 50
    h = 4.30265 * d1.std(ddof=1) / np.sqrt(3)
    near = 100 - (d1.mean() + h) / 0.2 * 50  # 2.8 + hi (-0.0429): at 110.7
    assert 2.8 + d1.mean() - h < 2.6  # 2.8 + lo: below random's last point, "> 150/100"
    assert ratio.split(" | ")[1] == f"{at / 100:.2f} [{near / 100:.2f}, > 1.50]"
    # at 150: 2.4 is below random's last point in every resample
    assert ratio.split(" | ")[2] == "> 1.00 [> 1.00, > 1.00] |"
    # the curves table: the unpaired seed 4 counts there, as a seed of its arm
    assert row(md, "random").endswith("| 3.0000 | 2.8000 | 2.6000 | 2.7000 | 3 |  |")
    assert rows(md, "forward_ppl bucket/top")[0].split(" | ")[-2] == "4"
    assert os.path.getsize(out + ".png") > 1000 and os.path.getsize(out + "_hist_a1.png") > 1000


def test_bounds_when_one_curve_never_reaches_the_other(tmp_path):
    runs = [fake_run(tmp_path, f"r{s}", "random", s, [3.0, 2.9, 2.8]) for s in (1, 2)]
    runs += [fake_run(tmp_path, f"w{s}", "ifd", s, [3.0, 3.1, 3.2]) for s in (1, 2)]  # worse than the seed set
    runs += [fake_run(tmp_path, f"b{s}", "cluster", s, [3.0, 2.0, 1.0], flags={"stratification_strategy": None})
             for s in (1, 2)]  # better than random ever gets
    md = report_AL.report(report_AL.by_arm(report_AL.read_runs(runs, "heldout", "examples")), "heldout", "examples")
    # random's first point (50) is already below the worse strategy: a bound, 50/100 and 50/150
    worse = rows(md, "ifd bucket/top")[2].split(" | ")[1:]
    assert worse == ["<= 0.50 [<= 0.50, <= 0.50]", "<= 0.33 [<= 0.33, <= 0.33] |"]
    # random never reaches the better one within its last budget (150): > 150/100, > 150/150
    assert rows(md, "cluster")[2] == "| cluster | > 1.50 [> 1.50, > 1.50] | > 1.00 [> 1.00, > 1.00] |"


def test_answer_token_axis_interpolates_random_at_the_strategys_cost(tmp_path):
    runs = [fake_run(tmp_path, f"r{s}", "random", s, [3.0, 2.8, 2.6], tokens=[100, 200, 300]) for s in (1, 2)]
    # long answers: 150 tokens per example; at 150 tokens random (interpolated) is at 2.9
    runs += [fake_run(tmp_path, f"l{s}", "instruction_length", s, [2.95, 2.75 + 0.01 * s, 2.5],
                      tokens=[150, 250, 450]) for s in (1, 2)]
    out = str(tmp_path / "tok")
    report_AL.main([*runs, "--x", "answer_tokens", "--out", out])
    md = open(out + ".md").read()
    curves, cost, diff, ratio = rows(md, "instruction_length bucket/top")[:4]
    assert "| round 0 | round 1 | round 2 |" in md  # x differs across arms: columns are rounds
    assert cost == "| instruction_length bucket/top | 150 | 250 | 450 |"
    # diffs: 2.95 - 2.9; (2.76, 2.77) - 2.7 (random at 250 tokens); 450 is past random's 300: n/a
    h = 12.7062 * np.std([0.06, 0.07], ddof=1) / np.sqrt(2)
    cells = diff.split(" | ")
    assert cells[1] == "+0.0500" and cells[2] == f"+0.0650 [{0.065 - h:+.4f}, {0.065 + h:+.4f}]*" and cells[3] == "n/a"
    # ratio at round 1: mean 2.765 -> random reaches it at 100 + 0.235/0.2*100 = 217.5 tokens; / 250
    assert ratio.split(" | ")[1].startswith(f"{217.5 / 250:.2f} [")


def test_wrong_metric_or_axis_is_one_line(tmp_path):
    run = fake_run(tmp_path, "r1", "random", 1, [3.0, 2.9])
    with pytest.raises(InputError, match=r"state.json: test_loss: round 0 has none \(the run needs --test_file\)"):
        report_AL.read_runs([run], "test", "examples")
    state = json.load(open(tmp_path / "r1" / "state.json"))
    for r in state["round_log"]:
        del r["answer_words"]
    json.dump(state, open(tmp_path / "r1" / "state.json", "w"))
    with pytest.raises(InputError, match="answer_words: not recorded"):
        report_AL.read_runs([run], "heldout", "answer_words")


def test_labels_tell_seed_set_and_guard_apart():
    base = {"sampling_strategy": "rds", "stratification_strategy": "greedy", "pick_samples_from": "top"}
    assert report_AL.label(base) == "rds greedy/top"
    assert report_AL.label({**base, "seed_strategy": "typiclust"}) == "rds greedy/top seed=typiclust"
    assert report_AL.label({**base, "max_similarity": 0.99}) == "rds greedy/top tau=0.99"


def test_random_going_further_measures_larger_ratios_and_auc_stays_on_shared_budgets(tmp_path):
    runs = [fake_run(tmp_path, f"r{s}", "random", s, [3.0, 2.8, 2.6, 2.4, 2.2]) for s in (1, 2)]
    runs += [fake_run(tmp_path, f"a{s}", "rds", s, [3.0, 2.6, 2.4], flags={"stratification_strategy": None})
             for s in (1, 2)]
    md = report_AL.report(report_AL.by_arm(report_AL.read_runs(runs, "heldout", "examples")), "heldout", "examples")
    # AUC over rounds 1..2, the budgets every run has: random (2.8 + 2.6) / 2, not its later rounds
    assert rows(md, "random")[0].endswith("| 2.7000 | 2 |  |")
    assert rows(md, "rds")[1].split(" | ")[-2] == "-0.2000"
    # at 100 rds (2.6) is where random is at 150: 1.50; at 150 (2.4) random needs 200: 1.33
    assert rows(md, "rds")[2].split(" | ")[1:3] == ["1.50 [1.50, 1.50]", "1.33 [1.33, 1.33]"]


def test_a_cell_on_fewer_seeds_says_so(tmp_path):
    """Random seed 2 stopped at 100: at 150 the paired difference rests on seed 1 alone."""
    runs = [fake_run(tmp_path, "r1", "random", 1, [3.0, 2.8, 2.6]), fake_run(tmp_path, "r2", "random", 2, [3.0, 2.8])]
    runs += [fake_run(tmp_path, f"a{s}", "rds", s, [3.0, 2.7, 2.5], flags={"stratification_strategy": None})
             for s in (1, 2)]
    md = report_AL.report(report_AL.by_arm(report_AL.read_runs(runs, "heldout", "examples")), "heldout", "examples")
    diff, ratio = rows(md, "rds")[1:3]
    assert diff.split(" | ")[2:4] == ["-0.1000", "-0.1000 (n=1)"]
    # the ratio at 150: random's mean curve over the rounds every paired random run has (to 100)
    assert ratio.split(" | ")[2] == "> 0.67 [> 0.67, > 0.67] (n=1) |"


def test_one_random_run_stopping_early_keeps_the_interval_around_the_point(tmp_path):
    runs = [fake_run(tmp_path, f"r{s}", "random", s, [3.0, 2.8, 2.6, 2.4]) for s in (1, 3)]
    runs.append(fake_run(tmp_path, "r2", "random", 2, [3.0, 2.8, 2.6]))  # stopped at 150
    runs += [fake_run(tmp_path, f"a{s}", "rds", s, [3.0, 2.7 + d, 2.62], flags={"stratification_strategy": None})
             for s, d in zip((1, 2, 3), (-0.04, 0.0, 0.04))]
    arms = report_AL.by_arm(report_AL.read_runs(runs, "heldout", "examples"))
    for r in (1, 2):
        v, lo, hi, n = report_AL.budget_ratio(arms["rds"], arms["random"], r)
        assert lo <= v <= hi and n == 3
    # at 100: mean 2.7, random's mean curve reaches it at 125 -> 1.25
    assert report_AL.budget_ratio(arms["rds"], arms["random"], 1)[0] == pytest.approx(1.25)


def test_adding_an_arm_changes_no_other_arms_numbers(tmp_path):
    runs = [fake_run(tmp_path, f"r{s}", "random", s, [3.0, 2.8 + 0.01 * s, 2.6 - 0.02 * s]) for s in (1, 2, 3)]
    runs += [fake_run(tmp_path, f"a{s}", "rds", s, [3.0, 2.7 + 0.03 * s, 2.5], flags={"stratification_strategy": None})
             for s in (1, 2, 3)]
    more = [fake_run(tmp_path, f"b{s}", "bm25", s, [3.0, 2.9, 2.7 - 0.01 * s], flags={"stratification_strategy": None})
            for s in (1, 2, 3)]
    one = report_AL.report(report_AL.by_arm(report_AL.read_runs(runs, "heldout", "examples")), "heldout", "examples")
    two = report_AL.report(report_AL.by_arm(report_AL.read_runs(runs + more, "heldout", "examples")), "heldout",
                           "examples")
    assert rows(one, "rds")[:3] == rows(two, "rds")[:3]


def test_holm_and_the_t_test_by_hand():
    assert report_AL.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3p, max(2p, ..), max(1p, ..)
    assert report_AL.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    # mean 2, sd 1, n 3: t = 2 sqrt(3), two-sided with 2 degrees of freedom
    from scipy import stats
    assert report_AL.t_test([1, 2, 3]) == pytest.approx(2 * stats.t.sf(2 * np.sqrt(3), 2))
    assert report_AL.t_test([0.5]) == 1.0


def test_one_run_per_arm_and_seed_where_random_is_chained_on(tmp_path):
    less = fake_run(tmp_path, "less_s1", "less", 1, [3.0, 2.7], metric="test")
    short = fake_run(tmp_path, "random_s1", "random", 1, [3.0, 2.8], metric="test")
    chained = fake_run(tmp_path, "random2x_s1", "random", 1, [3.0, 2.8, 2.6], metric="test")
    (tmp_path / "not_a_run").mkdir()
    assert report_AL.kept_runs(str(tmp_path)) == [less, chained]
    # both random runs of seed 1 passed: pairing by seed would take one of them silently
    with pytest.raises(InputError, match=f"{short}: seed: random seed 1 is also {chained}"):
        report_AL.by_arm(report_AL.read_runs([less, chained, short], "test", "examples"))
    with pytest.raises(InputError, match="no run directories"):
        report_AL.kept_runs(str(tmp_path / "not_a_run"))
    # the folder given to the script reads as its kept runs
    (tmp_path / "out").mkdir()
    for name, args in (("folder", [str(tmp_path)]), ("runs", [less, chained])):
        report_AL.main([*args, "--metric", "test", "--out", str(tmp_path / "out" / name)])
    assert open(tmp_path / "out" / "folder.md").read() == open(tmp_path / "out" / "runs.md").read()
    with pytest.raises(InputError, match="random_s9/state.json: file: no run state here"):
        report_AL.main([str(tmp_path / "random_s9"), "--metric", "test", "--out", str(tmp_path / "out" / "x")])


def test_the_family_of_comparisons_and_targets_together(tmp_path):
    def target(name, shift):
        d = tmp_path / name
        d.mkdir()
        for s in (1, 2, 3):
            fake_run(d, f"r{s}", "random", s, [3.0, 2.8, 2.6], metric="test")
            fake_run(d, f"f{s}", "random_format", s, [3.0, 2.75 + 0.01 * s, 2.55], metric="test",
                     flags={"stratification_strategy": "greedy"})
            fake_run(d, f"l{s}", "less", s, [3.0, 2.7 - shift * s, 2.5], metric="test",
                     flags={"stratification_strategy": "greedy"})
        return str(d)

    a, b = target("summ", 0.01), target("alpaca", 0.0)
    arms = report_AL.by_arm(report_AL.read_runs([os.path.join(a, r) for r in sorted(os.listdir(a))], "test",
                                                "examples"))
    got = [(c["arm"], c["ref"]) for c in report_AL.comparisons(arms)]
    assert got == [("less greedy/top", "random"), ("less greedy/top", "random_format greedy/top"),
                   ("random_format greedy/top", "random")]
    c = report_AL.comparisons(arms)[0]
    auc = np.array([(2.7 - 0.01 * s - 2.8 + 2.5 - 2.6) / 2 for s in (1, 2, 3)])  # rounds 1, 2
    assert c["ci"][0] == pytest.approx(auc.mean()) and c["seeds"] == 3
    out = str(tmp_path / "primary")
    report_AL.main([a, b, "--targets", "--metric", "test", "--out", out])
    md = open(out + ".md").read()
    body = [line for line in md.splitlines() if line.startswith("| summ |") or line.startswith("| alpaca |")]
    assert len(body) == 6  # 3 comparisons per target, one family
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert {line.count("|") for line in table} == {8}  # header, separator and rows: 7 cells each
    ps = [c["p"] for d in (a, b) for c in report_AL.comparisons(report_AL.by_arm(report_AL.read_runs(
        [os.path.join(d, r) for r in sorted(os.listdir(d))], "test", "examples")))]
    assert [line.split(" | ")[-1].strip(" |*") for line in body] == [f"{p:.4f}" for p in report_AL.holm(ps)]


COMMITTED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")


# every part and target with kept runs (runs/parked/ holds unfinished ones, which have no table)
KEPT = sorted((part, target) for part in os.listdir(os.path.join(COMMITTED, "runs")) if part != "parked"
              for target in os.listdir(os.path.join(COMMITTED, "runs", part)))


@pytest.mark.parametrize("part, target", KEPT)
def test_a_committed_table_is_regenerated_from_its_committed_round_logs(part, target):
    runs = report_AL.kept_runs(os.path.join(COMMITTED, "runs", part, target))
    for metric, x in (("test", "examples"), ("test", "answer_words"), ("heldout", "examples")):
        name = f"baselines_{part}_{target}_{x if metric == 'test' else 'heldout'}.md"
        want = open(os.path.join(COMMITTED, name)).read()
        assert report_AL.report(report_AL.by_arm(report_AL.read_runs(runs, metric, x)), metric, x) == want


def test_the_committed_primary_table_is_regenerated_from_its_committed_round_logs():
    part = os.path.join(COMMITTED, "runs", "smollm2")
    targets = sorted(os.path.join(part, t) for t in os.listdir(part))
    want = open(os.path.join(COMMITTED, "targeted_smollm2_primary.md")).read()
    assert report_AL.primary(targets, "test", "examples") == want


def test_report_needs_no_torch():
    """report_AL.py reads the selection rules from al_selection, which imports no torch."""
    import subprocess
    import sys

    from conftest import ROOT

    code = "import sys, report_AL; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
