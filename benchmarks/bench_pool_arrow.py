r"""Pools as Arrow: what the loop does before its first round (load + check the pool, hash it for
--resume, the seeded order with 30 target records left out, the held-out slice and the seed set
tokenised), for pools of 100 k, 1 M and 10 M records stored as JSONL, Parquet and a save_to_disk
folder; each size, format and code version in its own process. Side by side up to --before_up_to
records: the same steps with the code of --before (default: the commit before the Arrow pools),
which held one Python dict per record.

Pools: the embedded pool repeated, copy k's instructions ending in " (k)" (as bench_pool_scale).
Memory: peak RSS over the process's baseline after imports, split into the process's own memory
(anonymous, sampled every 20 ms) and the memory-mapped table's pages (file-backed: the OS page
cache, shared and dropped under pressure, never written to swap). A Parquet pool is read twice:
first (datasets writes it once as Arrow into its cache) and again (the cache mapped).

    python benchmarks/bench_pool_arrow.py                       # writes benchmarks/results/pool_arrow.md
    python benchmarks/bench_pool_arrow.py --sizes 3000 --before_up_to 0 --out /tmp/x.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE = "083f278"  # the last commit whose pools were a dict of Python dicts


def status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 2**20


def build(n: int, d: str, jsonl: bool) -> dict:
    """The pool of n records as Parquet and save_to_disk (and JSONL when asked), written a copy at a time."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    base = pa.Table.from_pylist([json.loads(line) for line in open(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))])
    paths = {"parquet": os.path.join(d, f"pool{n}.parquet"), "save_to_disk": os.path.join(d, f"disk{n}")}
    with pq.ParquetWriter(paths["parquet"], base.schema) as w:
        for k in range(-(-n // len(base))):
            part = base.slice(0, min(len(base), n - k * len(base)))
            w.write_table(part.set_column(0, "instruction", pc.binary_join_element_wise(
                part.column("instruction"), f" ({k})", "")))
    ds = datasets.Dataset.from_parquet(paths["parquet"], cache_dir=os.path.join(d, "build_cache"))
    ds.save_to_disk(paths["save_to_disk"], max_shard_size="1GB")
    if jsonl:
        paths["jsonl"] = os.path.join(d, f"pool{n}.jsonl")
        ds.to_json(paths["jsonl"], lines=True, force_ascii=False)
    del ds
    subprocess.run(["rm", "-rf", os.path.join(d, "build_cache")], check=True)
    return paths


def child(a: argparse.Namespace) -> None:
    """The loop's start on one pool, with the code at --code."""
    sys.path.insert(0, a.code)
    import numpy as np

    import fsdp_utils
    from al_datasets import file_sha256
    from al_prompts import lazy_encodings
    from al_utils import round_rng

    tok = fsdp_utils.load_tokenizer(a.model)
    import datasets  # noqa: F401  (imports belong to the baseline)
    import pyarrow.parquet  # noqa: F401

    base, base_anon = status_gib("VmRSS"), status_gib("RssAnon")
    peak_anon = [base_anon]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak_anon[0] = max(peak_anon[0], status_gib("RssAnon"))

    threading.Thread(target=sample, daemon=True).start()
    targets = [json.loads(line) for line in open(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))][:30]
    keys = {(f"{r['instruction']} (0)", r["context"]) for r in targets}  # records of the pool's first copy
    t0 = time.time()
    if a.old:
        from al_datasets import load_records

        records = load_records(a.pool, require_output="oracle labelling")
        by_id = {r["id"]: r for r in records}
        t_load = time.time() - t0
        perm = [records[i]["id"] for i in round_rng(0, 0, 0).permutation(len(records))]
        order = [i for i in perm[50:] if (by_id[i]["instruction"], by_id[i]["input"]) not in keys]
    else:
        from al_datasets import load_pool

        by_id = load_pool(a.pool, require_output="oracle labelling")
        t_load = time.time() - t0
        perm = by_id.ids_at(round_rng(0, 0, 0).permutation(len(by_id)))
        excluded = by_id.matching(keys)
        order = [i for i in perm[50:] if i not in excluded]
    t_hash = time.time()
    file_sha256(a.pool)
    t_hash = time.time() - t_hash
    enc = lazy_encodings(tok, by_id)
    enc.ensure(perm[:50] + order[:25])  # the held-out slice and the seed set
    t_ready = time.time() - t0
    stop.set()
    assert len(perm) - len(order) == 50 + 30
    print(json.dumps({"n": len(perm), "load_s": t_load, "hash_s": t_hash, "ready_s": t_ready,
                      "peak_gib": status_gib("VmHWM") - base, "anon_peak_gib": peak_anon[0] - base_anon,
                      "held_gib": status_gib("VmRSS") - base, "first_ids": [int(i) for i in np.asarray(order[:5])]}))


def run_child(pool: str, model: str, code: str, before: bool, cache: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--pool", pool, "--model", model,
                          "--code", code] + (["--old"] if before else []),
                         capture_output=True, text=True, env={**os.environ, "HF_DATASETS_CACHE": cache})
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000,10000000")
    p.add_argument("--jsonl_up_to", type=int, default=1_000_000, help="also a JSONL pool for sizes up to this")
    p.add_argument("--formats", default="parquet,save_to_disk,jsonl", help="which of the built pools to measure")
    p.add_argument("--before_up_to", type=int, default=1_000_000,
                   help="also run the --before code for sizes up to this (it holds a dict per record)")
    p.add_argument("--before", default=BEFORE, help="the commit to compare against")
    p.add_argument("--model", default=os.path.join(ROOT, "models", "tiny-llama"), help="tokenizer folder")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pool_arrow.md"))
    p.add_argument("--tmp", default=None, help="where the pools are built (10 M records take ~20 GB)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pool", help=argparse.SUPPRESS)
    p.add_argument("--code", help=argparse.SUPPRESS)
    p.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    sys.path.insert(0, ROOT)
    from al_utils import atomic_write_text

    rows = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        old = os.path.join(d, "before")
        if a.before_up_to:
            os.makedirs(old)
            subprocess.run(f"git -C {ROOT} archive {a.before} | tar -x -C {old}", shell=True, check=True)
        for n in [int(s) for s in a.sizes.split(",")]:
            t0 = time.time()
            paths = build(n, d, n <= a.jsonl_up_to)
            print(f"built {n:,} in {time.time() - t0:.0f} s", file=sys.stderr)
            for fmt, path in paths.items():
                if fmt not in a.formats.split(","):
                    continue
                cache = os.path.join(d, f"cache{n}{fmt}")
                runs = [("now", ROOT, False)] + ([("now, again", ROOT, False)] if fmt == "parquet" else [])
                runs += [("before", old, True)] if n <= a.before_up_to else []
                for way, code, before in runs:
                    r = {"n": n, "format": fmt, "way": way, **run_child(path, a.model, code, before, cache)}
                    print(r, file=sys.stderr)
                    rows.append(r)
                subprocess.run(["rm", "-rf", cache, path], check=True)
    text = report(rows, a.model, a.before)
    atomic_write_text(a.out, text)
    print(text)


def report(rows: list[dict], model: str, before: str) -> str:
    lines = [f"# Pools as Arrow: the loop's start ({os.cpu_count()} cores; tokenizer "
             f"{os.path.basename(model.rstrip('/'))}; before = {before})", "",
             "Ready = load + check, the seeded order (30 target records left out), held-out slice and seed set "
             "tokenised, and the --resume hash of the source (also shown apart). Peak = RSS over the baseline after "
             "imports: all of it, and the "
             "process's own (anonymous) memory; the rest is the memory-mapped table's page cache.", "",
             "| records | format | code | ready s | of which load + check s | hash s | peak GiB | own peak GiB "
             "| held after GiB | first ids in order |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['format']} | {r['way']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['n']:,} | {r['format']} | {r['way']} | {r['ready_s']:.1f} | {r['load_s']:.1f} | "
                     f"{r['hash_s']:.1f} | {r['peak_gib']:.2f} | {r['anon_peak_gib']:.2f} | {r['held_gib']:.2f} | "
                     f"{r['first_ids']} |")
    ok = [r for r in rows if "error" not in r]
    pairs = [(r, b) for r in ok for b in ok if r["way"] == "now" and b["way"] == "before"
             and (r["n"], r["format"]) == (b["n"], b["format"])]
    if pairs:
        lines += ["", "Side by side (before / now; same ids in the same order is checked by the first-ids column):",
                  "", "| records | format | ready | peak | own peak |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {r['n']:,} | {r['format']} | {b['ready_s'] / r['ready_s']:.1f}x | "
                  f"{b['peak_gib'] / max(r['peak_gib'], 1e-3):.1f}x | "
                  f"{b['anon_peak_gib'] / max(r['anon_peak_gib'], 1e-3):.1f}x |" for r, b in pairs]
    growth = {}
    for r in ok:
        growth.setdefault((r["format"], r["way"]), []).append(r)
    lines += ["", "Growth per 10x records (ratio of the figure / 10; 1.00 = linear):", "",
              "| format | code | step | ready | peak | own peak |", "|---|---|---|---:|---:|---:|"]
    for (fmt, way), rs in growth.items():
        for x, y in zip(rs, rs[1:]):
            k = y["n"] / x["n"]
            lines.append(f"| {fmt} | {way} | {x['n']:,} -> {y['n']:,} | {y['ready_s'] / x['ready_s'] / k:.2f} | "
                         f"{y['peak_gib'] / max(x['peak_gib'], 1e-3) / k:.2f} | "
                         f"{y['anon_peak_gib'] / max(x['anon_peak_gib'], 1e-3) / k:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
