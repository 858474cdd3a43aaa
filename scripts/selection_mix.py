r"""What each arm picked, by shape and category: is a targeted strategy matching content, or only
the format (an input present) that its target happens to have?

    python scripts/selection_mix.py benchmarks/results/runs/pilot/summarization/* --category summarization

For each arm (runs grouped by report_AL's label, mean over seeds): the share of the examples picked
past the seed set (finished rounds >= 1, from rounds/<k>/selected.jsonl) that have an input, and
that belong to --category, beside the same shares in --pool (give the split's pool.jsonl for the
pool the picks came from; a Dolly record keeps its id, its line in the Dolly file, in every split).
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from al_datasets import load_records
from al_prompts import has_input  # noqa: E402
from al_utils import InputError, read_jsonl, read_state, run_cli, run_paths  # noqa: E402
from report_AL import label  # noqa: E402


def picks(run: str, rounds_done: int) -> list:
    """Ids picked in the finished rounds >= 1, in order (a round cut short leaves its selection on
    disk: it is not counted)."""
    paths = run_paths(run)
    return [row["id"] for r in range(1, rounds_done + 1) for row in read_jsonl(paths.round_file(r, "selected.jsonl"))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (with rounds/<k>/selected.jsonl)")
    p.add_argument("--pool", default="data/dolly-1.5k.jsonl", help="the records the ids refer to")
    p.add_argument("--category", default="summarization", help="the category whose share is counted")
    args = p.parse_args(argv)
    by_id = {r["id"]: r for r in load_records(args.pool)}
    share = defaultdict(list)  # arm -> [(with input, in category, picked)] per run
    for run in args.runs:
        state = read_state(run)
        if state is None:
            raise InputError(f"{run}: state.json: no run state here")
        ids = picks(run, state["rounds_done"])
        if not ids:
            continue
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise InputError(f"{run}: selected.jsonl: ids {missing[:5]} are not in {args.pool}")
        recs = [by_id[i] for i in ids]
        share[label(state["flags"])].append((sum(map(has_input, recs)) / len(recs),
                                             sum(r.get("category") == args.category for r in recs) / len(recs),
                                             len(recs)))
    pool = list(by_id.values())
    print(f"| arm | with input | {args.category} | picked per run | runs |\n|---|---:|---:|---:|---:|")
    print(f"| (pool {os.path.basename(args.pool)}) | {sum(map(has_input, pool)) / len(pool):.0%} | "
          f"{sum(r.get('category') == args.category for r in pool) / len(pool):.0%} | | |")
    for arm, rows in sorted(share.items(), key=lambda kv: (kv[0] != "random", kv[0])):
        n = len(rows)
        print(f"| {arm} | {sum(r[0] for r in rows) / n:.0%} | {sum(r[1] for r in rows) / n:.0%} | "
              f"{sum(r[2] for r in rows) / n:.0f} | {n} |")


if __name__ == "__main__":
    run_cli(main)
