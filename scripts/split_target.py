r"""Seeded, disjoint data for the targeted experiment (scripts/targeted.sh).

    python scripts/split_target.py --out runs/targeted/data

(a) A Dolly category as the target (each of --category): --target_size of its records are the
    target set, --test_size others the test set; both leave the pool, which keeps the rest of the
    category among all the others. Writes OUT/<category>/{pool,target,test}.jsonl.
(b) AlpacaEval as the target: --alpaca_target instructions with their reference answers are the
    target set, --alpaca_test others the test set (items without a reference answer are not
    drawn); the pool is the Dolly pool as it is.
    Writes OUT/alpaca_eval/{target,test}.jsonl.
Records keep their ids (a Dolly record's id is its position in the pool file), so a selection can be
traced back. The same flags always give the same files; each --seed gives another split (the
experiment scripts pass the run's seed: the arms of a seed share its split).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from al_datasets import load_records
from al_utils import InputError, atomic_write_jsonl, run_cli  # noqa: E402


def draw(records: list[dict], sizes: list[int], seed: int, what: str) -> list[list[dict]]:
    """Disjoint seeded samples of the given sizes, each in file order."""
    if sum(sizes) > len(records):
        raise InputError(f"{what}: {len(records)} records, fewer than the {sum(sizes)} asked for ({sizes})")
    perm = np.random.default_rng(seed).permutation(len(records))
    out, lo = [], 0
    for n in sizes:
        out.append([records[j] for j in sorted(perm[lo: lo + n])])
        lo += n
    return out


def split_category(pool: list[dict], category: str, n_target: int, n_test: int,
                   seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(pool without target and test, target, test) for one category of the pool."""
    members = [r for r in pool if r.get("category") == category]
    target, test = draw(members, [n_target, n_test], seed, f"category {category!r}")
    gone = {r["id"] for r in target + test}
    return [r for r in pool if r["id"] not in gone], target, test


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", default="data/dolly-1.5k.jsonl")
    p.add_argument("--alpaca", default="data/alpaca_eval_text_davinci_003.json")
    p.add_argument("--out", required=True, help="folder for the split files")
    p.add_argument("--category", nargs="+", default=["summarization"],
                   help="the Dolly categories of target (a), each split on its own (e.g. summarization brainstorming)")
    p.add_argument("--target_size", type=int, default=30)
    p.add_argument("--test_size", type=int, default=50)
    p.add_argument("--alpaca_target", type=int, default=100)
    p.add_argument("--alpaca_test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    pool = load_records(args.pool, require_output="the experiment measures answer loss")
    alpaca = load_records(args.alpaca)
    blank = [r["id"] for r in alpaca if not r["output"].strip()]
    if blank:  # a loss needs an answer: those items cannot be target or test examples
        print(f"{args.alpaca}: {len(blank)} items without a reference answer are not drawn (ids {blank})",
              file=sys.stderr)
        alpaca = [r for r in alpaca if r["output"].strip()]
    files = {}
    for category in args.category:
        rest, target, test = split_category(pool, category, args.target_size, args.test_size, args.seed)
        files.update({f"{category}/pool.jsonl": rest, f"{category}/target.jsonl": target,
                      f"{category}/test.jsonl": test})
    a_target, a_test = draw(alpaca, [args.alpaca_target, args.alpaca_test], args.seed, args.alpaca)
    files.update({"alpaca_eval/target.jsonl": a_target, "alpaca_eval/test.jsonl": a_test})
    for name, rows in files.items():
        path = os.path.join(args.out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_jsonl(path, rows)
        print(f"{path}: {len(rows)} records", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
