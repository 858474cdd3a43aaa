r"""Where the primary endpoint's spread comes from (the test set, or the runs), and what the
experiment can detect.

    python benchmarks/variance_sources.py [TARGET_DIR ...] [--boot 2000]   # seconds

Each TARGET_DIR holds one target's kept run directories (default: every committed
benchmarks/results/runs/smollm2/<target>); as in scripts/targeted.sh, random's chained run
(random2x_s<seed>) stands for its seed. Every round's metrics.json keeps each test example's summed
answer NLL and its answer tokens, so a seed's AUC difference (arm minus random of the same seed, the
mean over the shared rounds past the seed set, as report_AL.py computes it from test_loss) can be
recomputed on test examples drawn with replacement. Per comparison:

- per seed, the AUC difference and the sd of that bootstrap: what the test set alone (its size and
  which examples it holds) adds to the seed's number;
- between seeds, the sd of the AUC differences: everything (split, seed set, selection, training,
  test set). The test set's share of that variance says whether more test examples or more seeds
  would tighten the primary endpoint;
- the smallest difference a paired t-test over 5 seeds finds with 80 % power at the Holm family's
  strictest level (alpha = 0.05 / 16), if the between-seed sd is the one observed, and the seeds
  the observed mean difference would need for that power (noncentral t).

Writes benchmarks/results/variance_sources.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
from scipy import optimize, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from al_utils import InputError, atomic_write_text, run_paths  # noqa: E402
from report_AL import auc_diffs, by_arm, comparisons, kept_runs, read_runs, shared_rounds  # noqa: E402

FAMILY = 16  # the pre-declared primary endpoint's comparisons (README: two targets x 8)
ALPHA, POWER = 0.05 / FAMILY, 0.8


def example_parts(run: str, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """([rounds, examples] summed test answer NLL, [examples] answer tokens) of rounds 0 .. rounds-1,
    checked against each round's test_loss (their token-weighted mean)."""
    paths, nll, tokens = run_paths(run), [], None
    for r in range(rounds):
        f = paths.round_file(r, "metrics.json")
        with open(f) as fh:
            m = json.load(fh)
        if "test_example_nll" not in m:
            raise InputError(f"{f}: test_example_nll: not recorded (the run predates it)")
        if tokens is not None and m["test_example_tokens"] != tokens:
            raise InputError(f"{f}: test_example_tokens: differ from round 0's (not the same test set)")
        tokens = m["test_example_tokens"]
        if abs(sum(m["test_example_nll"]) / sum(tokens) - m["test_loss"]) > 1e-6:
            raise InputError(f"{f}: test_example_nll: its token-weighted mean is not test_loss")
        nll.append(m["test_example_nll"])
    return np.array(nll), np.array(tokens, float)


def seed_auc_boot(arm: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], m: int, boot: int,
                  rng) -> tuple[float, float]:
    """(AUC difference over rounds 1 .. m-1, its sd over test examples resampled with replacement) of
    two runs' example_parts: both scored the same test examples, so one draw of examples serves both."""
    (a, ta), (b, _) = arm, ref
    per_example = (a[1:m] - b[1:m]).mean(0)  # the AUC difference is sum(per_example) / sum(tokens)
    idx = rng.integers(0, len(ta), (boot, len(ta)))
    draws = per_example[idx].sum(1) / ta[idx].sum(1)
    return float(per_example.sum() / ta.sum()), float(draws.std(ddof=1))


def power_of(delta: float, sd: float, n: int) -> float:
    """Power of a two-sided paired t-test at ALPHA over n seeds for a true mean difference delta."""
    df, tcrit = n - 1, stats.t.ppf(1 - ALPHA / 2, n - 1)
    nc = abs(delta) / (sd / np.sqrt(n))
    # the wrong-sign tail is < 1e-10 wherever it matters, and scipy's nct gives NaN far out in it
    return float(stats.nct.sf(tcrit, df, nc) + np.nan_to_num(stats.nct.cdf(-tcrit, df, nc)))


def detectable(sd: float, n: int) -> float:
    """The smallest |difference| with POWER at ALPHA over n seeds."""
    se = sd / np.sqrt(n)  # bracketed in units of the standard error (nct is NaN far out)
    return float(optimize.brentq(lambda d: power_of(d, sd, n) - POWER, 1e-6 * se, 40 * se))


def seeds_needed(delta: float, sd: float, cap: int = 1000) -> str:
    n = next((n for n in range(3, cap + 1) if power_of(delta, sd, n) >= POWER), None)
    return str(n) if n else f"> {cap}"


def target_rows(target_dir: str, boot: int, rng) -> list[str]:
    arms = by_arm(read_runs(kept_runs(target_dir), "test", "examples"))
    m, name = shared_rounds(arms), os.path.basename(target_dir.rstrip("/"))
    runs = {(c.name, c.seed): c.run for cs in arms.values() for c in cs}
    parts = {k: example_parts(run, m) for k, run in runs.items()}  # each run read once
    for (n, s), (_, tokens) in parts.items():
        if ("random", s) in parts and not np.array_equal(tokens, parts["random", s][1]):
            raise InputError(f"{runs[n, s]}: test_example_tokens: differ from random seed {s}'s "
                             "(not the same seed's split)")
    rows = []
    for c in comparisons(arms):
        # seeds in report_AL's order (the arm's runs by seed), so the check below also checks the pairing
        seeds = [a.seed for a in arms[c["arm"]] if (c["ref"], a.seed) in parts]
        per_seed = [seed_auc_boot(parts[c["arm"], s], parts[c["ref"], s], m, boot, rng) for s in seeds]
        d, within = np.array([v for v, _ in per_seed]), np.array([w for _, w in per_seed])
        # the per-example sums must give what report_AL.py reads from test_loss
        ref = auc_diffs(arms[c["arm"]], arms[c["ref"]], m)
        if d.shape != ref.shape or not np.allclose(d, ref, atol=1e-9):
            raise InputError(f"{target_dir}: {c['arm']} - {c['ref']}: per-example AUC differences {d} are not "
                             f"report_AL's {ref}")
        cells = ", ".join(f"{v:+.4f} ± {w:.4f}" for v, w in per_seed)
        rms = float(np.sqrt(np.mean(within ** 2)))
        if len(d) > 1:
            sd = float(d.std(ddof=1))
            tail = (f"{sd:.4f} | {rms:.4f} | {min(100, 100 * rms ** 2 / sd ** 2):.0f} % | {detectable(sd, 5):.4f} | "
                    f"{seeds_needed(d.mean(), sd)}")
        else:
            tail = f"n/a | {rms:.4f} | n/a | n/a | n/a"
        rows.append(f"| {name} | {c['arm']} | {c['ref']} | {len(d)} | {d.mean():+.4f} | {cells} | {tail} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", help="target directories of kept runs "
                   "(default: benchmarks/results/runs/smollm2/*)")
    p.add_argument("--boot", type=int, default=2000, help="test-example resamples per seed")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "variance_sources.md"))
    args = p.parse_args(argv)
    targets = args.targets or sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "runs", "smollm2", "*")))
    start, rng = time.time(), np.random.default_rng(0)
    rows = [row for t in targets for row in target_rows(t, args.boot, rng)]
    lines = [
        "# Where the primary endpoint's spread comes from", "",
        f"`python benchmarks/variance_sources.py` ({args.boot} test-example resamples per seed; "
        f"{time.time() - start:.0f} s). The AUC difference of test answer NLL over the shared rounds past "
        "the seed set (50-150 labels), strategy minus the reference of the same seed (negative: better). "
        "Per seed: the difference ± its sd over resampled test examples (what the test set alone adds). "
        "Between seeds: the sd of the per-seed differences (split, seed set, selection, training and "
        "test set together). Test-set share: the mean within-seed variance over the between-seed "
        f"variance (capped at 100 %). Detectable: the smallest difference a paired t-test over 5 seeds "
        f"finds with {100 * POWER:.0f} % power at alpha = 0.05 / {FAMILY} (Holm's strictest step) if the between-seed "
        "sd is the one observed; seeds needed: for the observed mean difference, the same test "
        "(noncentral t). Two seeds give a rough sd only.", "",
        "| target | strategy | minus | seeds | mean | per seed (± test-set sd) | between-seed sd | "
        "test-set sd | test-set share | detectable, 5 seeds | seeds needed |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
        *rows]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
