"""report_AL.py on hand-made run directories: the table's numbers are the inputs' numbers."""
import json
import os

import report_AL

FLAGS = {"stratification_strategy": "bucket", "pick_samples_from": "top", "num_k": 2, "decay_k": False}


def fake_run(root, name, strategy, seed, losses):
    d = root / name
    (d / "rounds" / "1").mkdir(parents=True)
    log = [{"round": i, "labelled": 50 * (i + 1), "train_loss": 0.0, "heldout_loss": v} for i, v in enumerate(losses)]
    json.dump({"flags": {**FLAGS, "sampling_strategy": strategy, "seed": seed}, "round_log": log},
              open(d / "state.json", "w"))
    with open(d / "rounds" / "1" / "scores.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"id": i, "score": float(i)}) + "\n")
    return str(d)


def test_table_plot_and_random_match(tmp_path):
    runs = [fake_run(tmp_path, "r1", "random", 1, [3.0, 2.8, 2.6]),
            fake_run(tmp_path, "r2", "random", 2, [3.2, 3.0, 2.4]),
            fake_run(tmp_path, "a1", "forward_ppl", 1, [2.9, 2.5, 2.3])]
    out = str(tmp_path / "rep" / "al")
    report_AL.main([*runs, "--out", out, "--hist"])
    md = open(out + ".md").read()
    assert "| random | 3.1000 ± 0.1000 | 2.9000 ± 0.1000 | 2.5000 ± 0.1000 |  |" in md
    # forward_ppl reaches 2.5 at 100 examples (first budget past the seed set); random's mean at 150
    assert "| forward_ppl bucket/top | 2.9000 | 2.5000 | 2.3000 | 150 |" in md
    # paired with random seed 1 only (same seed set and held-out slice): 2.9-3.0, 2.5-2.8, 2.3-2.6
    assert "| forward_ppl bucket/top | -0.1000 | -0.3000 | -0.3000 | 1 |" in md
    assert os.path.getsize(out + ".png") > 1000 and os.path.getsize(out + "_hist_a1.png") > 1000


def test_paired_difference_over_seeds(tmp_path):
    """Each strategy run is compared with the random run of its own seed; unpaired seeds are ignored."""
    runs = [fake_run(tmp_path, "r1", "random", 1, [3.0, 2.8, 2.6]),
            fake_run(tmp_path, "r2", "random", 2, [3.2, 3.0, 2.4]),
            fake_run(tmp_path, "a1", "forward_ppl", 1, [3.0, 2.7, 2.3]),
            fake_run(tmp_path, "a2", "forward_ppl", 2, [3.2, 2.7, 2.5]),
            fake_run(tmp_path, "a3", "forward_ppl", 3, [9.0, 9.0, 9.0])]  # no random seed 3
    table = report_AL.paired_table(report_AL.paired_diffs(report_AL.read_runs(runs)))
    # seed 1: 0, -0.1, -0.3; seed 2: 0, -0.3, +0.1
    assert "| forward_ppl bucket/top | +0.0000 ± 0.0000 | -0.2000 ± 0.1000 | -0.1000 ± 0.2000 | 2 |" in table
