"""Greedy generation while scoring: fixed-row batches (before) against batches also cut by a KV-token
budget (now: <= GEN_KV_TOKENS prompt + new tokens), side by side, interleaved, 2 repetitions.
less's answers were 16 rows (now <= 64); generation_ppl, self_ask and drafts were 256 rows (now <= 256).

    python benchmarks/bench_gen_rows.py --model models/SmolLM2-135M --n 160 --max_length 256
    python benchmarks/bench_gen_rows.py --model models/tiny-llama --n 400 --max_length 384
    python benchmarks/bench_gen_rows.py --before_rows 256 --rows 256 --out benchmarks/results/gen_rows_256.md

A decode step reads every weight whatever the batch's rows, so on CPU (memory-bound at small rows)
more rows per step cost little more. Prints and writes a markdown table (time, ratio, answers
identical to those of the batches before) to --out.
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import encode_records, pad_id_of, truncate_prompt  # noqa: E402
from al_scoring import GEN_KV_TOKENS, generate, stop_ids  # noqa: E402
from al_strategies import LESS_GEN_ROWS  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/tiny-llama")
    p.add_argument("--n", type=int, default=400, help="pool prompts (records 300.. of the embedded pool)")
    p.add_argument("--max_length", type=int, default=384, help="prompts truncated to max_length - 1, as less does")
    p.add_argument("--new", type=int, default=32, help="greedy tokens (--gen_max_new_tokens)")
    p.add_argument("--before_rows", type=int, default=16, help="rows per batch before (less: 16; others: 256)")
    p.add_argument("--rows", type=int, default=LESS_GEN_ROWS, help="row cap now (less: 64; others: 256)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "less_gen_rows.md"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok = fsdp_utils.load_tokenizer(a.model)
    model = fsdp_utils.load_model(a.model, torch.device("cpu"))
    enc = encode_records(tok, load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))[300:300 + a.n])
    prompts = [truncate_prompt(enc[i].prompt, a.max_length - 1) for i in enc]
    stop, pad_id = stop_ids(model, tok), pad_id_of(tok)
    variants = {f"{a.before_rows} rows (before)": dict(batch_size=a.before_rows),
                f"<= {a.rows} rows, <= {GEN_KV_TOKENS} KV tokens (now)":
                    dict(batch_size=a.rows, kv_tokens=GEN_KV_TOKENS)}
    secs, out = dict.fromkeys(variants, 0.0), {}
    for _ in range(2):
        for name, kw in variants.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                out[name] = [g for g, _ in generate(model, prompts, [a.new] * a.n, pad_id, stop, progress=False, **kw)]
            secs[name] += time.perf_counter() - t0
    ref = next(iter(variants))
    lines = [f"# Greedy generation while scoring: rows per batch ({os.path.basename(a.model)})", "",
             f"`python benchmarks/bench_gen_rows.py --model {a.model} --n {a.n} --max_length {a.max_length} "
             f"--before_rows {a.before_rows} --rows {a.rows}`: "
             f"{a.n} pool prompts truncated at {a.max_length - 1} tokens, {a.new} greedy tokens, fp32 CPU, "
             f"{a.threads} threads, mean of 2 interleaved repetitions.", "",
             "| batches | seconds | x before | answers identical to before |", "|---|---:|---:|---:|"]
    for name in variants:
        same = sum(x == y for x, y in zip(out[ref], out[name]))
        lines.append(f"| {name} | {secs[name] / 2:.1f} | {secs[name] / secs[ref]:.2f}x | {same}/{a.n} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(a.out, text)


if __name__ == "__main__":
    main()
