r"""Learning curves of AL runs and whether each strategy beats random, with confidence intervals
over seeds: the mean curve, the paired difference to random, the budget ratio and the area under
the curve, against labelled examples or against annotation cost (answer tokens or words).

    python report_AL.py runs/compare/*/ --out reports/compare
    python report_AL.py runs/targeted/default/summarization/*/ --metric test --x answer_words --out reports/t

Each argument is a run directory (the largest budget of a chain: its state.json holds every round),
or a folder of one target's run directories (random_s<seed> is left out where its chained
random2x_s<seed> exists: scripts/targeted.sh's layout).
Writes <out>.png (curves; difference to random with 95 % bands), <out>.md (tables) and, with --hist,
<out>_hist_<run>.png (score histograms per round with the bucket edges, like --plot_ppl_hist).

Statistics (over seeds; a strategy's run is paired with the random run of the same seed: same seed
set, same held-out and test slices):
- paired difference: strategy minus random at the strategy's x (random's same-seed curve linearly
  interpolated there; outside random's range it is not defined), mean with a 95 % t interval;
- budget ratio: the x at which random's mean curve (linearly interpolated, over the rounds every
  paired random run has) first reaches the strategy's mean value, over the strategy's x; "> r" when
  random never gets there within the budgets run, "<= r" when random's first point is already
  there. Its 95 % interval maps the paired difference's t interval through that curve: the ratios
  at which random reaches its own level plus the interval's ends. Coverage checked by simulation on
  curves like ours (benchmarks/ratio_coverage.py, benchmarks/results/ratio_coverage.md);
- AUC: the mean of a run's values over the rounds past the seed set (round 0 is the same seeded set
  for every arm that starts from random) that every run has (random may go on further, to measure
  budget ratios), and the paired difference of it, each with a t interval. The primary endpoint of
  a targeted experiment: the AUC difference of every arm to random, and of every model-based arm to
  each cheap baseline (format-matched random, bm25), with paired t-test p-values, Holm-adjusted
  over the report's comparisons (or, with --targets, over every target's);
- ROUGE-L of greedy answers to the test set at the run's last budget, where the run has them
  (test_generations.metrics.json, written by scripts/targeted.sh): descriptive.

Cells computed from fewer seeds than the arm has say so: (n=k).

    python report_AL.py --targets benchmarks/results/runs/smollm2/* --out benchmarks/results/targeted_smollm2_primary
writes the primary endpoint over several targets (each DIR holds one target's run directories).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import stats

from al_selection import bucket_sizes, k_for_round
from al_utils import InputError, atomic_savefig, atomic_write_text, read_jsonl, read_state, run_cli, run_paths

METRICS = {"heldout": "held-out answer NLL", "test": "test answer NLL"}
XS = {"examples": ("labelled", "labelled examples"), "answer_tokens": ("answer_tokens", "answer tokens labelled"),
      "answer_words": ("answer_words", "answer words labelled")}
CHEAP = ("random", "random_format", "bm25")  # the baselines: no model in the selection


@dataclass
class Curve:
    """One run: its arm, seed and (x, value) per round, rounds in order."""
    name: str
    strategy: str
    seed: int
    x: np.ndarray
    y: np.ndarray
    minutes: float | None  # wall time of its rounds (metrics.json), when recorded
    rouge: float | None = None  # ROUGE-L F1 of greedy test answers at its last budget, when recorded
    run: str = ""  # its directory


def label(flags: dict) -> str:
    """Strategy name, with stratification/pick where they matter, the target aggregation, the seed-set
    rule and the guard."""
    s = flags["sampling_strategy"]
    if s != "random" and flags.get("stratification_strategy") is not None:
        s += f" {flags['stratification_strategy']}/{flags['pick_samples_from']}"
    if flags.get("target_aggregation") not in (None, "mean"):
        s += f" {flags['target_aggregation']}"
    if flags.get("target_normalize"):
        s += " normalised"
    if flags.get("seed_strategy", "random") != "random":
        s += f" seed={flags['seed_strategy']}"
    if flags.get("max_similarity") is not None:
        s += f" tau={flags['max_similarity']}"
    return s


def read_runs(runs: list[str], metric: str, x: str) -> list[Curve]:
    field, (xfield, _) = f"{metric}_loss", XS[x]
    out = []
    for run in runs:
        f = run_paths(run).state
        state = read_state(run)
        if state is None:
            raise InputError(f"{f}: file: no run state here")
        xs, ys = [], []
        for r in state["round_log"]:
            if r.get(field) is None:
                why = "--heldout_size" if metric == "heldout" else "--test_file"
                raise InputError(f"{f}: {field}: round {r['round']} has none (the run needs {why})")
            if xfield not in r:
                raise InputError(f"{f}: {xfield}: not recorded (the run predates it; use --x examples)")
            xs.append(r[xfield])
            ys.append(r[field])
        out.append(Curve(label(state["flags"]), state["flags"]["sampling_strategy"], state["flags"]["seed"],
                         np.array(xs, float), np.array(ys, float), run_minutes(run, len(xs)), run_rouge(run), run))
    return out


def kept_runs(target_dir: str) -> list[str]:
    """One target folder's run directories, one per arm and seed: random_s<seed> is left out where
    random2x_s<seed> exists, since that chained run (scripts/targeted.sh) holds the same rounds and more."""
    names = sorted(r for r in os.listdir(target_dir) if os.path.isfile(run_paths(os.path.join(target_dir, r)).state))
    if not names:
        raise InputError(f"{target_dir}: (folder): no run directories (state.json) in it")
    return [os.path.join(target_dir, r) for r in names
            if not (r.startswith("random_s") and "random2x_s" + r.removeprefix("random_s") in names)]


def run_rouge(run: str) -> float | None:
    f = os.path.join(run, "test_generations.metrics.json")
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh).get("rougeL_f1")


def run_minutes(run: str, rounds: int) -> float | None:
    paths, total = run_paths(run), 0.0
    for r in range(rounds):
        f = paths.round_file(r, "metrics.json")
        if not os.path.isfile(f):
            return None
        with open(f) as fh:
            total += json.load(fh)["seconds"]["total"]
    return total / 60


def by_arm(curves: list[Curve]) -> dict[str, list[Curve]]:
    """arm -> its runs by seed, random first then the others by name."""
    arms: dict[str, list[Curve]] = defaultdict(list)
    for c in curves:
        twin = next((o for o in arms[c.name] if o.seed == c.seed), None)
        if twin is not None:  # pairing by seed would take one of them silently
            raise InputError(f"{c.run}: seed: {c.name} seed {c.seed} is also {twin.run} "
                             "(pass one run per arm and seed: the largest budget of a chain)")
        arms[c.name].append(c)
    return {k: sorted(arms[k], key=lambda c: c.seed) for k in sorted(arms, key=lambda s: (s != "random", s))}


# ----------------------------------------------------------------------------------------------
# statistics


def t_test(v) -> float:
    """Two-sided p-value of a one-sample t-test of mean 0 (1.0 for fewer than 2 values or no spread
    around a mean of 0)."""
    v = np.asarray(v, float)
    if len(v) < 2:
        return 1.0
    sd = v.std(ddof=1)
    if sd == 0:
        return 1.0 if v.mean() == 0 else 0.0
    return float(2 * stats.t.sf(abs(v.mean()) / (sd / np.sqrt(len(v))), len(v) - 1))


def holm(ps: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input's order."""
    order = np.argsort(ps, kind="stable")
    out, run = [0.0] * len(ps), 0.0
    for k, i in enumerate(order):
        run = max(run, min(1.0, (len(ps) - k) * ps[i]))
        out[i] = run
    return out


def t_interval(v) -> tuple[float, float, float]:
    """(mean, low, high) of a 95 % t interval; low = high = mean for a single value."""
    v = np.asarray(v, float)
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h


def interp(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """y at `at` on the piecewise-linear curve (x increasing); NaN outside its range."""
    if at < x[0] - 1e-9 or at > x[-1] + 1e-9:
        return float("nan")
    return float(np.interp(at, x, y))


def reach(x: np.ndarray, y: np.ndarray, v: float) -> float:
    """The smallest x at which the piecewise-linear curve reaches v (goes to or below it); 0 when
    it starts there (only a bound: x[0] or less), inf when it never does."""
    if y[0] <= v:
        return 0.0
    for i in range(1, len(x)):
        if y[i] <= v:
            return float(x[i - 1] + (y[i - 1] - v) / (y[i - 1] - y[i]) * (x[i] - x[i - 1]))
    return float("inf")


def mean_curve(runs: list[Curve], idx=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean x and mean value per round over the runs (rounds every run has)."""
    runs = [runs[i] for i in idx] if idx is not None else runs
    n = min(len(c.x) for c in runs)
    return np.mean([c.x[:n] for c in runs], 0), np.mean([c.y[:n] for c in runs], 0)


def pairs(arm: list[Curve], rand: list[Curve]) -> list[tuple[Curve, Curve]]:
    by_seed = {c.seed: c for c in rand}
    return [(c, by_seed[c.seed]) for c in arm if c.seed in by_seed]


def paired_diffs(arm: list[Curve], rand: list[Curve]) -> np.ndarray:
    """[seeds, rounds] strategy minus the same-seed random run interpolated at the strategy's x."""
    ps = pairs(arm, rand)
    n = min(len(a.x) for a, _ in ps)
    return np.array([[a.y[r] - interp(b.x, b.y, a.x[r]) for r in range(n)] for a, b in ps])


def budget_ratio(arm: list[Curve], rand: list[Curve], r: int) -> tuple[float, float, float, int]:
    """(ratio, low, high, seeds) at round r: where random's mean curve reaches the strategy's mean
    value, over the seeds whose paired difference is defined there. The interval maps the paired
    difference's t interval through the same curve (monotone: low <= ratio <= high)."""
    ps = [(a, b) for a, b in pairs(arm, rand) if len(a.x) > r]
    ps = [(a, b) for a, b in ps if not np.isnan(interp(b.x, b.y, a.x[r]))]
    if not ps:
        return float("nan"), float("nan"), float("nan"), 0
    sx = np.mean([a.x[r] for a, _ in ps])
    m, lo, hi = t_interval([a.y[r] - interp(b.x, b.y, a.x[r]) for a, b in ps])
    level = np.mean([a.y[r] for a, _ in ps]) - m  # random's own mean level at the strategy's x
    rx, ry = mean_curve([b for _, b in ps])
    return (reach(rx, ry, level + m) / sx, reach(rx, ry, level + hi) / sx, reach(rx, ry, level + lo) / sx,
            len(ps))


def fmt_ratio(v: float, first: float, last: float) -> str:
    """A ratio, or the bound it is: random beyond its last point, or already there at its first."""
    if np.isinf(v):
        return f"> {last:.2f}"
    if v == 0:
        return f"<= {first:.2f}"
    return f"{v:.2f}"


# ----------------------------------------------------------------------------------------------
# tables


def fmt_ci(m: float, lo: float, hi: float, sign: bool = False, star: bool = False) -> str:
    if np.isnan(m):
        return "n/a"
    f = "+.4f" if sign else ".4f"
    if hi - lo < 1e-9:  # one seed, or seeds that agree: no interval to show
        return format(m, f)
    mark = "*" if star and (hi < 0 or lo > 0) else ""
    return f"{format(m, f)} [{format(lo, f)}, {format(hi, f)}]{mark}"


def fewer(n: int, of: int) -> str:
    """' (n=k)' when a cell rests on fewer seeds than its row."""
    return f" (n={n})" if n < of else ""


def columns(arms: dict[str, list[Curve]], x: str) -> list[str]:
    """Round headers: the budget where every run has the same x at that round, else the round."""
    n = max(len(c.x) for cs in arms.values() for c in cs)
    out = []
    for r in range(n):
        vals = {c.x[r] for cs in arms.values() for c in cs if len(c.x) > r}
        out.append(f"{int(vals.pop())}" if len(vals) == 1 and x == "examples" else f"round {r}")
    return out


def header(cols: list[str], *last: str, text: tuple[str, ...] = ("strategy",)) -> list[str]:
    """A markdown table's header and separator: the text columns left-aligned, the rest right."""
    cells = [*text, *cols, *last]
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(text) + "---:|" * (len(cells) - len(text))]


def shared_rounds(arms: dict[str, list[Curve]]) -> int:
    """Rounds every run has: the AUC covers rounds 1 .. this - 1, the same budgets for every arm
    (random may go on further, to measure budget ratios)."""
    return min(len(c.y) for cs in arms.values() for c in cs)


def curves_table(arms: dict[str, list[Curve]], cols: list[str]) -> str:
    lines = header(cols, "AUC (shared rounds >= 1)", "seeds", "minutes/run")
    m = shared_rounds(arms)
    for name, cs in arms.items():
        n = min(len(c.y) for c in cs)
        cells = [fmt_ci(*t_interval([c.y[r] for c in cs])) for r in range(n)] + [""] * (len(cols) - n)
        auc = fmt_ci(*t_interval([c.y[1:m].mean() for c in cs])) if m > 1 else ""
        mins = [c.minutes for c in cs if c.minutes is not None]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {auc} | {len(cs)} | "
                     + (f"{np.mean(mins):.1f}" if mins else "") + " |")
    return "\n".join(lines)


def x_table(arms: dict[str, list[Curve]], cols: list[str]) -> str:
    lines = header(cols)
    for name, cs in arms.items():
        n = min(len(c.x) for c in cs)
        cells = [f"{np.mean([c.x[r] for c in cs]):.0f}" for r in range(n)]
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (len(cols) - n)) + " |")
    return "\n".join(lines)


def diff_table(arms: dict[str, list[Curve]], cols: list[str]) -> str:
    lines = header(cols, "AUC diff (shared rounds >= 1)", "seeds")
    m = shared_rounds(arms)
    for name, cs in arms.items():
        if name == "random" or not pairs(cs, arms["random"]):
            continue
        d = paired_diffs(cs, arms["random"])
        cells = [fmt_ci(*t_interval(col[~np.isnan(col)]), sign=True, star=True) + fewer((~np.isnan(col)).sum(), len(d))
                 if (~np.isnan(col)).any() else "n/a" for col in d.T]
        a = auc_diffs(cs, arms["random"], m)
        auc = fmt_ci(*t_interval(a), sign=True, star=True) + fewer(len(a), len(d)) if m > 1 and len(a) else ""
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (len(cols) - len(cells))) + f" | {auc} | {len(d)} |")
    return "\n".join(lines)


def auc_diffs(arm: list[Curve], ref: list[Curve], m: int) -> np.ndarray:
    """Per paired seed: the mean over rounds 1 .. m-1 of arm minus the same-seed reference; a seed
    whose reference is undefined at one of those rounds (another x axis) is left out."""
    d = paired_diffs(arm, ref)[:, 1:m]
    return d[~np.isnan(d).any(1)].mean(1) if len(d) else np.zeros(0)


def comparisons(arms: dict[str, list[Curve]]) -> list[dict]:
    """The primary endpoint's family for one target: every arm against random, and every arm that
    selects with the model against each cheap baseline arm (format-matched random, bm25)."""
    m = shared_rounds(arms)
    base = [n for n, cs in arms.items() if cs[0].strategy in CHEAP and n != "random"]
    out = []
    for name, cs in arms.items():
        refs = (["random"] if "random" in arms and name != "random" else []) + \
            ([b for b in base if b != name] if cs[0].strategy not in CHEAP else [])
        for ref in refs:
            a = auc_diffs(cs, arms[ref], m) if pairs(cs, arms[ref]) and m > 1 else np.zeros(0)
            if len(a):
                out.append({"arm": name, "ref": ref, "ci": t_interval(a), "p": t_test(a), "seeds": len(a)})
    return out


def comparisons_table(rows: list[dict], by_target: bool = False) -> str:
    """AUC differences with raw and Holm-adjusted p-values over all the rows (one family)."""
    lines = header(["AUC diff [95 % t]", "seeds", "p", "p (Holm)"],
                   text=("target", "strategy", "minus") if by_target else ("strategy", "minus"))
    for r, adj in zip(rows, holm([r["p"] for r in rows])):
        mark = " **" if adj < 0.05 else ""
        p = f"{r['p']:.4f} | {adj:.4f}{mark}" if r["seeds"] > 1 else "n/a | n/a"  # no test on one seed
        lines.append(f"| {r['target'] + ' | ' if by_target else ''}{r['arm']} | {r['ref']} | "
                     f"{fmt_ci(*r['ci'], sign=True)} | {r['seeds']} | {p} |")
    return "\n".join(lines)


def rouge_table(arms: dict[str, list[Curve]]) -> str:
    """ROUGE-L at each run's last budget (random: the arms' last budget, its chained run's first
    part), mean [t] and paired difference to random."""
    lines = header(["ROUGE-L F1", "minus random (paired)", "seeds"])
    rand = {c.seed: c.rouge for c in arms.get("random", []) if c.rouge is not None}
    for name, cs in arms.items():
        v = [c.rouge for c in cs if c.rouge is not None]
        if not v:
            continue
        d = [c.rouge - rand[c.seed] for c in cs if c.rouge is not None and c.seed in rand]
        diff = fmt_ci(*t_interval(d), sign=True, star=True) if d and name != "random" else ""
        lines.append(f"| {name} | {fmt_ci(*t_interval(v))} | {diff} | {len(v)} |")
    return "\n".join(lines)


def ratio_table(arms: dict[str, list[Curve]], cols: list[str]) -> str:
    lines = header(cols[1:])
    rand = arms["random"]
    for name, cs in arms.items():
        if name == "random" or not pairs(cs, rand):
            continue
        rx, _ = mean_curve([b for _, b in pairs(cs, rand)])
        cells = []
        for r in range(1, min(len(c.x) for c in cs)):
            v, lo, hi, n = budget_ratio(cs, rand, r)
            if not n:
                cells.append("n/a")
                continue
            sx = np.mean([a.x[r] for a, _ in pairs(cs, rand)])
            first, last = rx[0] / sx, rx[-1] / sx
            ci = f" [{fmt_ratio(lo, first, last)}, {fmt_ratio(hi, first, last)}]" if lo != hi or len(cs) > 1 else ""
            cells.append(fmt_ratio(v, first, last) + ci + fewer(n, len(pairs(cs, rand))))
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (len(cols) - 1 - len(cells))) + " |")
    return "\n".join(lines)


def report(arms: dict[str, list[Curve]], metric: str, x: str) -> str:
    cols = columns(arms, x)
    seeds = sorted({c.seed for cs in arms.values() for c in cs})
    out = [f"# {METRICS[metric]} by {XS[x][1]} (seeds {', '.join(map(str, seeds))})", "",
           "Mean over seeds [95 % t interval]; AUC = mean over the rounds past the seed set that every run has.",
           "",
           curves_table(arms, cols)]
    if x != "examples":
        out += ["", f"Mean {XS[x][1]} at each round:", "", x_table(arms, cols)]
    if "random" not in arms:
        return "\n".join(out + ["", "(no random runs: no paired statistics)", ""])
    out += ["", "## Paired difference to random of the same seed (strategy - random; negative: better)", "",
            "At the strategy's x, random's same-seed curve interpolated there; mean [95 % t interval] over seeds; "
            "* = the interval excludes 0.", "", diff_table(arms, cols), "",
            "## Budget ratio: what random needs to match the strategy, over what the strategy used", "",
            f"x at which random's mean curve reaches the strategy's mean {METRICS[metric]}, divided by the "
            "strategy's x (2.00 = random needs twice the labels); [95 % interval: the paired difference's t "
            "interval mapped through random's mean curve]; '> r': random does not get there within its budgets; "
            "'<= r': random's first point is already there.",
            "", ratio_table(arms, cols), "",
            "## AUC differences with p-values (Holm over this table)", "",
            "Paired t-test over seeds of the AUC difference (shared rounds >= 1); ** = Holm-adjusted p < 0.05.", "",
            comparisons_table(comparisons(arms)), ""]
    if any(c.rouge is not None for cs in arms.values() for c in cs):
        out += ["## ROUGE-L of greedy test answers at the last budget (descriptive)", "", rouge_table(arms), ""]
    return "\n".join(out)


def primary(targets: list[str], metric: str, x: str) -> str:
    """The primary endpoint over several targets: every target's comparisons, one Holm family."""
    rows = []
    for d in targets:
        rows += [{**c, "target": os.path.basename(os.path.normpath(d))}
                 for c in comparisons(by_arm(read_runs(kept_runs(d), metric, x)))]
    return "\n".join([f"# Primary endpoint: AUC difference of {METRICS[metric]} by {XS[x][1]}", "",
                      "Paired t-test over seeds; Holm over every row (one family); ** = adjusted p < 0.05.", "",
                      comparisons_table(rows, by_target=True), ""])


# ----------------------------------------------------------------------------------------------
# figures


def plot(arms: dict[str, list[Curve]], metric: str, x: str, path: str) -> None:
    """Left: mean curve per strategy with its 95 % band. Right (with random runs): each strategy
    minus random of the same seed, with the 95 % band of that paired difference. The legend says
    over how many seeds each curve is (with per-seed splits an arm with fewer seeds sits at its
    seeds' level), and each panel's y range reaches past the curves by at most their own spread:
    with few seeds a t band is many times wider than all of them, and would squash them to a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = "random" in arms and len(arms) > 1
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(13 if paired else 7, 4.8), squeeze=False)
    color = {s: f"C{i}" for i, s in enumerate(arms)}

    def curve(ax, x, m, lo, hi, name: str, seeds: int, **kw) -> list:
        ax.plot(x, m, marker="o", label=f"{name} ({seeds} seed{'s' if seeds > 1 else ''})", color=color[name], **kw)
        ax.fill_between(x, lo, hi, color=color[name], alpha=0.15)
        return [list(m), list(lo), list(hi)]

    ax = axes[0][0]
    drawn = []
    for name, cs in arms.items():
        n = min(len(c.y) for c in cs)
        mx = np.mean([c.x[:n] for c in cs], 0)
        m, lo, hi = np.array([t_interval([c.y[r] for c in cs]) for r in range(n)]).T
        drawn.append(curve(ax, mx, m, lo, hi, name, len(cs), linestyle="--" if name == "random" else "-"))
    ax.set_ylabel(f"{METRICS[metric]} (lower is better)")
    panels = [(ax, drawn)]
    if paired:
        ax = axes[0][1]
        ax.axhline(0, color="gray", linestyle="--", linewidth=1)
        drawn = [[[0.0]] * 3]
        for name, cs in arms.items():
            if name == "random" or not pairs(cs, arms["random"]):
                continue
            d = paired_diffs(cs, arms["random"])
            mx = np.mean([a.x[: d.shape[1]] for a, _ in pairs(cs, arms["random"])], 0)
            ok = ~np.isnan(d).any(0)
            m, lo, hi = np.array([t_interval(d[:, r]) for r in np.flatnonzero(ok)]).T
            drawn.append(curve(ax, mx[ok], m, lo, hi, name, len(d)))
        ax.set_ylabel("minus random, same seed (below 0: better)")
        panels.append((ax, drawn))
    for ax, drawn in panels:
        m, lo, hi = ([v for c in drawn for v in c[k] if np.isfinite(v)] for k in range(3))
        if m:
            spread = max(m) - min(m) or 0.05 * max(abs(max(m)), 1e-3)
            margin = 0.05 * spread  # markers at the edge stay whole
            ax.set_ylim(max(min(lo + m), min(m) - spread) - margin, min(max(hi + m), max(m) + spread) + margin)
        ax.set_xlabel(XS[x][1])
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def plot_hist(run: str, path: str) -> None:
    """Score histogram of every scored round, bucket edges marked where bucket stratification ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flags, paths = read_state(run)["flags"], run_paths(run)
    rounds = sorted(int(d) for d in os.listdir(paths.rounds)
                    if os.path.isfile(paths.round_file(int(d), "scores.jsonl")))
    if not rounds:
        return
    fig, axes = plt.subplots(len(rounds), 1, figsize=(6, 2.2 * len(rounds)), squeeze=False)
    for ax, r in zip(axes[:, 0], rounds):
        scores = sorted((row["score"] for row in read_jsonl(paths.round_file(r, "scores.jsonl"))), reverse=True)
        ax.hist(scores, bins=50)
        if flags["stratification_strategy"] == "bucket":
            edges = np.cumsum(bucket_sizes(len(scores), k_for_round(flags["num_k"], flags["decay_k"], r)))[:-1]
            for e in edges:
                ax.axvline(scores[e], color="red", linewidth=0.8)
        ax.set_title(f"round {r}", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (largest budget of each chain), or folders each "
                   "holding one target's run directories (one per arm and seed is read: a chained random2x_s<seed> "
                   "stands for its random_s<seed>); with --targets, such folders, one per target")
    p.add_argument("--out", default="reports/al", help="output path stem (.png, .md)")
    p.add_argument("--metric", default="heldout", choices=METRICS,
                   help="heldout: loss on the pool's held-out slice; test: on the runs' --test_file")
    p.add_argument("--x", default="examples", choices=XS,
                   help="the budget axis: labelled examples, or the cumulative length of their answers "
                        "(tokens of the run's tokenizer; words to compare models with different tokenizers)")
    p.add_argument("--hist", action="store_true", help="also plot per-round score histograms of each run")
    p.add_argument("--targets", action="store_true",
                   help="the primary endpoint over several targets (one Holm family): writes <out>.md only")
    args = p.parse_args(argv)
    if args.targets:
        text = primary(args.runs, args.metric, args.x)
        atomic_write_text(args.out + ".md", text)
        print(text)
        return
    # a folder holding runs (no state.json of its own) reads as its kept runs; anything else as a run,
    # so a missing path gets read_runs' one-line error
    is_folder = [os.path.isdir(a) and not os.path.isfile(run_paths(a).state) for a in args.runs]
    runs = [r for a, f in zip(args.runs, is_folder) for r in (kept_runs(a) if f else [run_paths(a).run])]
    arms = by_arm(read_runs(runs, args.metric, args.x))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(arms, args.metric, args.x, args.out + ".png")
    text = report(arms, args.metric, args.x)
    atomic_write_text(args.out + ".md", text)
    if args.hist:
        for run in runs:
            plot_hist(run, f"{args.out}_hist_{os.path.basename(run)}.png")
    print(text)
    print(f"wrote {args.out}.png and {args.out}.md", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
