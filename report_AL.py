"""Learning curves of AL runs: held-out loss against labelled budget, one line per strategy with a
band over seeds, a markdown table, and how much budget random selection needs to match each strategy.

    python report_AL.py runs/compare/*/ --out reports/compare

Each argument is a run directory (the largest budget of a chain: its state.json holds every round).
Writes <out>.png (curves), <out>.md (table) and, with --hist, <out>_hist_<run>.png (score histograms
per round with the bucket edges marked, like the original's --plot_ppl_hist).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from al_strategies import bucket_sizes, k_for_round
from al_utils import InputError, atomic_savefig, atomic_write_text, read_jsonl, read_state, run_cli, run_paths


def label(flags: dict) -> str:
    """Strategy name, with stratification/pick where they matter (not for random or unranked ones)."""
    s = flags["sampling_strategy"]
    if s == "random" or flags.get("stratification_strategy") is None:
        return s
    return f"{s} {flags['stratification_strategy']}/{flags['pick_samples_from']}"


def read_runs(runs: list[str]) -> list[tuple[str, int, dict[int, float]]]:
    """(strategy label, seed, labelled count -> held-out loss) of each run directory."""
    out = []
    for run in runs:
        f = run_paths(run).state
        state = read_state(run)
        if state is None:
            raise InputError(f"{f}: file: no run state here")
        curve = {}
        for r in state["round_log"]:
            if r["heldout_loss"] is None:
                raise InputError(f"{f}: heldout_loss: run has no held-out slice (use --heldout_size)")
            curve[r["labelled"]] = r["heldout_loss"]
        out.append((label(state["flags"]), state["flags"]["seed"], curve))
    return out


def load_curves(rows: list[tuple[str, int, dict[int, float]]]) -> dict[str, dict[int, list[float]]]:
    """strategy label -> labelled count -> held-out losses (one per seed)."""
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, _, curve in rows:
        for b, v in curve.items():
            curves[name][b].append(v)
    return curves


def paired_diffs(rows: list[tuple[str, int, dict[int, float]]]) -> dict[str, dict[int, list[float]]]:
    """strategy label -> labelled count -> (strategy - random) held-out loss, one per seed that has
    both. Same seed = same seed set and same held-out slice, so the slice-to-slice spread cancels."""
    rand = {seed: c for name, seed, c in rows if name == "random"}
    diffs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, seed, curve in rows:
        if name != "random" and seed in rand:
            for b, v in curve.items():
                if b in rand[seed]:
                    diffs[name][b].append(v - rand[seed][b])
    return diffs


def paired_table(diffs: dict[str, dict[int, list[float]]]) -> str:
    if not diffs:
        return "(no strategy has a random run with the same seed)"
    return md_table(diffs, "seeds", lambda s: str(max(len(v) for v in diffs[s].values())), "+.4f")


def _mean_std(v: list[float] | None, fmt: str = ".4f") -> str:
    if not v:
        return ""
    if len(v) == 1:  # a single seed has no spread to show
        return format(v[0], fmt)
    return f"{format(float(np.mean(v)), fmt)} ± {np.std(v):.4f}"


def random_match(curves: dict, strategy: str) -> str:
    """Smallest budget at which random's mean loss reaches the strategy's at its smallest budget
    past the seed set (round 0 is the same seeded set for every strategy, so it cannot differ)."""
    if "random" not in curves:
        return "n/a (no random runs)"
    budgets = sorted(curves[strategy])
    b0 = budgets[1] if len(budgets) > 1 else budgets[0]
    target = float(np.mean(curves[strategy][b0]))
    for b in sorted(curves["random"]):
        if np.mean(curves["random"][b]) <= target:
            return str(b)
    return f"> {max(curves['random'])}"


def table(curves: dict) -> str:
    return md_table(curves, "random needs", lambda s: "" if s == "random" else random_match(curves, s))


def md_table(data: dict[str, dict[int, list[float]]], last: str, last_cell: Callable[[str], str],
             fmt: str = ".4f") -> str:
    """One row per strategy (random first): mean ± std over seeds at each budget, then `last`."""
    budgets = sorted({b for c in data.values() for b in c})
    lines = ["| strategy | " + " | ".join(str(b) for b in budgets) + f" | {last} |",
             "|---|" + "---:|" * (len(budgets) + 1)]
    for s in sorted(data, key=lambda s: (s != "random", s)):
        cells = [_mean_std(data[s].get(b), fmt) for b in budgets]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {last_cell(s)} |")
    return "\n".join(lines)


def plot(curves: dict, diffs: dict, path: str) -> None:
    """Left: held-out loss per strategy (band: std over seeds). Right, when random runs share seeds
    with the others: each strategy minus random of the same seed, which the slice spread does not blur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if diffs else 1, figsize=(12 if diffs else 7, 4.5), squeeze=False)
    panels = [(axes[0][0], curves, "held-out answer NLL (lower is better)")]
    if diffs:
        panels.append((axes[0][1], diffs, "minus random, same seed (below 0: better)"))
        axes[0][1].axhline(0, color="gray", linestyle="--", linewidth=1)
    order = sorted(curves, key=lambda s: (s != "random", s))
    color = {s: f"C{i}" for i, s in enumerate(order)}  # a strategy keeps its colour in both panels
    for ax, data, ylabel in panels:
        for s in [s for s in order if s in data]:
            b = sorted(data[s])
            m = np.array([np.mean(data[s][x]) for x in b])
            sd = np.array([np.std(data[s][x]) for x in b])
            ax.plot(b, m, marker="o", label=s, color=color[s], linestyle="--" if s == "random" else "-")
            ax.fill_between(b, m - sd, m + sd, color=color[s], alpha=0.2)
        ax.set_xlabel("labelled examples")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
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
    p.add_argument("runs", nargs="+", help="run directories (largest budget of each chain)")
    p.add_argument("--out", default="reports/al", help="output path stem (.png, .md)")
    p.add_argument("--hist", action="store_true", help="also plot per-round score histograms of each run")
    args = p.parse_args(argv)
    runs = [run_paths(r).run for r in args.runs]
    rows = read_runs(runs)
    curves, diffs = load_curves(rows), paired_diffs(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(curves, diffs, args.out + ".png")
    text = ("# Held-out answer NLL by labelled budget (mean ± std over seeds, where there are several)\n\n"
            + table(curves) +
            "\n\n'random needs': the smallest budget at which random selection's mean reaches the strategy's "
            "loss at its first budget past the seed set.\n\n"
            "## Difference to random with the same seed (negative: the strategy is better)\n\n"
            + paired_table(diffs) + "\n")
    atomic_write_text(args.out + ".md", text)
    if args.hist:
        for run in runs:
            plot_hist(run, f"{args.out}_hist_{os.path.basename(run)}.png")
    print(text)
    print(f"wrote {args.out}.png and {args.out}.md", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
