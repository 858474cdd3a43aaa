r"""Parquet pools: load + validate seconds and peak RSS of load_records, the file read a record
batch at a time (now) against the whole table read and made one list of row dicts first (before),
side by side, each size and way in its own process. Pools: the embedded pool repeated, each copy's
instructions made distinct (bench_pool_scale.build_pool), written as Parquet.

    python benchmarks/bench_pool_parquet.py                       # 250k and 1M records
    python benchmarks/bench_pool_parquet.py --sizes 3000 --out /tmp/x.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pool_scale import build_pool, peak_gib, rss_gib  # noqa: E402


def whole_rows(path: str):
    """Before: the table read whole, then every row a dict at once."""
    import datasets
    import pyarrow.parquet as pq

    return list(enumerate(datasets.Dataset(pq.read_table(path)).to_list(), start=1))


def child(pool: str, way: str) -> None:
    import al_datasets

    if way == "whole":
        al_datasets.dataset_rows = whole_rows
    import datasets  # noqa: F401  (imports belong to the baseline)
    import pyarrow.parquet  # noqa: F401

    base = rss_gib()
    t0 = time.time()
    records = al_datasets.load_records(pool, require_output="oracle labelling")
    print(json.dumps({"n": len(records), "load_s": time.time() - t0, "peak_gib": peak_gib() - base,
                      "held_gib": rss_gib() - base}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="250000,1000000")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pool_parquet.md"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(*a.child)
    import pyarrow.json
    import pyarrow.parquet as pq

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in map(int, a.sizes.split(",")):
            jsonl, parquet = os.path.join(d, f"{n}.jsonl"), os.path.join(d, f"{n}.parquet")
            build_pool(n, jsonl)
            pq.write_table(pyarrow.json.read_json(jsonl), parquet)
            os.remove(jsonl)
            res = {}
            for way in ("whole", "batches"):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", parquet, way],
                                     capture_output=True, text=True, check=True)
                res[way] = json.loads(out.stdout.strip().splitlines()[-1])
                assert res[way]["n"] == n
            rows.append((n, os.path.getsize(parquet) / 2**30, res))
            os.remove(parquet)
    lines = ["# Parquet pools: load_records memory (2 cores)", "",
             "Peak RSS over the process's baseline after imports, and what is still held once the records are "
             "loaded (the records themselves); whole = the table read whole and made one list of row dicts "
             "(before), batches = read a record batch at a time (now).", "",
             "| records | parquet GiB | whole: s | whole: peak GiB | batches: s | batches: peak GiB | "
             "held after loading GiB | peak ratio batches / whole |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, size, r in rows:
        w, b = r["whole"], r["batches"]
        lines.append(f"| {n:,} | {size:.2f} | {w['load_s']:.1f} | {w['peak_gib']:.2f} | {b['load_s']:.1f} | "
                     f"{b['peak_gib']:.2f} | {b['held_gib']:.2f} | {b['peak_gib'] / w['peak_gib']:.2f} |")
    lines.append("")
    text = "\n".join(lines)
    from al_utils import atomic_write_text

    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
