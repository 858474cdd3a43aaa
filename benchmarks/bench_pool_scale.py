r"""Pool scale: what the loop does before and around the model, for pools of 15 k, 150 k and 1 M
records (the embedded pool repeated, each copy's instructions made distinct), each size in its own
process: load + validate seconds, encode (tokenise) seconds, peak RSS over the process's baseline
after imports, and one round of selection bookkeeping with the scores supplied (seeded order,
held-out slice, exclusion of 1,000 labelled ids, bucket selection of 1,000, writing scores.jsonl), so the
model's compute is left out. Side by side up to --compare_up_to records: the compact encodings
against one Python list per record (what the loop held before).

    python benchmarks/bench_pool_scale.py                     # 15k 150k 1M, writes benchmarks/results/pool_scale.md
    python benchmarks/bench_pool_scale.py --sizes 1500 --out /tmp/x.md   # seconds (the test runs this)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 2**20


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_pool(n: int, path: str) -> None:
    """The embedded pool repeated to n records; copy k's instructions end in " (k)"."""
    with open(os.path.join(ROOT, "data", "dolly-1.5k.jsonl")) as f:
        base = [json.loads(line) for line in f]
    with open(path, "w") as f:
        for j in range(n):
            r = base[j % len(base)]
            f.write(json.dumps({**r, "instruction": f"{r['instruction']} ({j // len(base)})"}) + "\n")


def child(a: argparse.Namespace) -> None:
    import al_prompts
    import fsdp_utils
    from al_datasets import load_pool
    from al_prompts import encode_records, lazy_encodings
    from al_scoring import ScoreConfig
    from al_selection import SelectConfig
    from al_strategies import select
    from al_utils import atomic_write_jsonl, round_rng

    tok = fsdp_utils.load_tokenizer(a.model)
    base = rss_gib()
    t0 = time.time()
    records = load_pool(a.pool, require_output="oracle labelling")
    t_load = time.time() - t0
    perm = records.ids_at(round_rng(0, 0, 0).permutation(len(records)))
    t_lazy = peak_lazy = None
    if not a.lists:  # what the loop does first: the held-out slice and a 1 % round sample, lazily
        t0 = time.time()
        lazy = lazy_encodings(tok, records)
        lazy.ensure(perm[: 100 + max(1, len(perm) // 100)])
        lazy[perm[0]]
        t_lazy, peak_lazy = time.time() - t0 + t_load, peak_gib() - base
        del lazy
    if a.lists:  # the loop before: the whole pool tokenised in one call, a dict of Python lists
        al_prompts.ENCODE_CHUNK = len(records)
    t0 = time.time()
    t_enc = rss_enc = None
    if len(records) <= a.encode_all_up_to:
        if a.lists:
            enc = encode_records(tok, records.rows(range(len(records))))
            enc = {i: enc[i] for i in enc}
        else:
            enc = lazy_encodings(tok, records)
            enc.ensure(records)
        t_enc, rss_enc = time.time() - t0, rss_gib() - base
    t0 = time.time()
    heldout, order = perm[:100], perm[100:]
    k = min(1000, len(order) // 4)  # labelled so far, and picked this round
    labelled = set(order[:k])
    remaining = [i for i in order if i not in labelled]
    scores = [{"id": i, "score": float(s)} for i, s in zip(remaining, round_rng(0, 1, 3).random(len(remaining)))]
    picked, _ = select(scores, k, 1, SelectConfig("forward_ppl", "bucket", "top", 5), ScoreConfig(),
                       round_rng(0, 1, 2))
    with tempfile.TemporaryDirectory() as d:
        atomic_write_jsonl(os.path.join(d, "scores.jsonl"), scores)
    t_book = time.time() - t0
    assert len(picked) == k and len(heldout) == 100
    print(json.dumps({"n": len(records), "load_s": t_load, "encode_s": t_enc, "bookkeeping_s": t_book,
                      "lazy_start_s": t_lazy, "lazy_start_peak_gib": peak_lazy,
                      "rss_encoded_gib": rss_enc, "peak_over_base_gib": peak_gib() - base}))


def run_child(pool: str, model: str, encode_all_up_to: int, lists: bool = False) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--pool", pool, "--model", model,
                          "--encode_all_up_to", str(encode_all_up_to)] + (["--lists"] if lists else []),
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="15000,150000,1000000")
    p.add_argument("--model", default=os.path.join(ROOT, "models", "tiny-llama"), help="tokenizer folder")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pool_scale.md"))
    p.add_argument("--compare_up_to", type=int, default=150000,
                   help="also run the list-per-record representation for sizes up to this")
    p.add_argument("--encode_all_up_to", type=int, default=10**9,
                   help="tokenise the whole pool only for sizes up to this (the loop itself encodes lazily)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pool", help=argparse.SUPPRESS)
    p.add_argument("--lists", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    from al_utils import atomic_write_text

    sizes = [int(s) for s in a.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            pool = os.path.join(d, f"pool{n}.jsonl")
            build_pool(n, pool)
            r = run_child(pool, a.model, a.encode_all_up_to)
            print(r, file=sys.stderr)
            rows.append(r)
            if n <= a.compare_up_to:
                r["lists"] = run_child(pool, a.model, a.encode_all_up_to, lists=True)
                print("lists", r["lists"], file=sys.stderr)
            os.remove(pool)
    lines = [f"# Pool scale ({os.cpu_count()} cores; tokenizer {os.path.basename(a.model.rstrip('/'))})", "",
             "| records | load + validate s | loop start s (load, held-out + 1 % sample encoded) | its peak RSS GiB "
             "| encode all s | bookkeeping s | encodings GiB | peak RSS over baseline GiB | KB per record |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def num(v, fmt=".1f") -> str:
        return "not run" if v is None else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['n']:,} | {r['load_s']:.1f} | {r['lazy_start_s']:.1f} | {r['lazy_start_peak_gib']:.2f} | "
                     f"{num(r['encode_s'])} | {r['bookkeeping_s']:.2f} | {num(r['rss_encoded_gib'], '.2f')} | "
                     f"{r['peak_over_base_gib']:.2f} | {r['peak_over_base_gib'] * 2**20 / r['n']:.1f} |")
    if len(rows) > 1:
        lines += ["", "Growth from one size to the next (time or memory ratio / size ratio; 1.00 = linear):", "",
                  "| step | load | loop start | encode all | bookkeeping | peak RSS |",
                  "|---|---:|---:|---:|---:|---:|"]
        for a0, b0 in zip(rows, rows[1:]):
            k = b0["n"] / a0["n"]
            lines.append(f"| {a0['n']:,} -> {b0['n']:,} | " + " | ".join(
                "n/a" if b0[f] is None or a0[f] is None else f"{b0[f] / max(a0[f], 1e-9) / k:.2f}"
                for f in ("load_s", "lazy_start_s", "encode_s", "bookkeeping_s", "peak_over_base_gib")) + " |")
    lines += ["", "Side by side, the same run holding the encodings as one Python list per record (the loop "
              "before) against the compact arrays:", "", "| records | lists: RSS after encoding GiB | compact GiB | "
              "ratio | lists: peak over baseline GiB | compact | ratio |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "lists" in r:
            cells = []
            for f in ("rss_encoded_gib", "peak_over_base_gib"):
                old, new = r["lists"][f], r[f]
                cells += [f"{old:.2f}", f"{new:.2f}", f"{old / max(new, 1e-9):.1f}x"]
            lines.append(f"| {r['n']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    atomic_write_text(a.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
