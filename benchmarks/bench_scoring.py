r"""Pool-scoring throughput, side by side in one process: ours vs the original's batching.

    python benchmarks/bench_scoring.py [--model models/tiny-llama] [--repeats 1]
    python benchmarks/bench_scoring.py --model models/SmolLM2-135M --limit 300 \
        --out benchmarks/results/scoring_smollm2.md

original: batch 4 in file order, each batch padded to its longest row (scores computed correctly,
          per row over its own tokens, so both sides must give the same numbers)
sorted:   ours without the shared-prefix cache (length-sorted token-budget batches, right-padded, no mask)
ours:     length-sorted token-budget batches + the template prefix's KV cache computed once per batch
Runs are interleaved (original, sorted, ours, original, ...) so machine noise hits all alike.
Writes benchmarks/results/scoring.md, which the README quotes.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import encode_records, pad_id_of, truncate_prompt  # noqa: E402
from al_scoring import ScoreConfig, batch_nll, mean_nll, sequence_nll  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def original(model, seqs, pad):
    sums, counts = np.zeros(len(seqs)), np.zeros(len(seqs))
    for k in range(0, len(seqs), 4):
        s, c = batch_nll(model, seqs[k:k + 4], [1] * len(seqs[k:k + 4]), pad, prefix_cache=False)
        sums[k:k + 4], counts[k:k + 4] = s.numpy(), c.numpy()
    return mean_nll(sums, counts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/tiny-llama")
    p.add_argument("--file_path", default="data/dolly-1.5k.jsonl")
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--token_budget", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts (a big model on 2 cores)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/scoring.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tok = fsdp_utils.load_tokenizer(args.model)
    model = fsdp_utils.load_model(args.model, torch.device("cpu")).eval()
    records = load_records(args.file_path)[: args.limit]
    enc = encode_records(tok, records)
    ids = [r["id"] for r in records]
    seqs = [truncate_prompt(enc[i].prompt, args.max_length) for i in ids]
    cfg = ScoreConfig(token_budget=args.token_budget, progress=False)
    groups = [enc[i].input_block for i in ids]
    pad = pad_id_of(tok)
    n_tok = sum(len(s) for s in seqs)

    def sorted_only():
        s, c = sequence_nll(model, seqs, [1] * len(seqs), pad, cfg, prefix_cache=False, groups=groups)
        return mean_nll(s, c)

    def ours():
        s, c = sequence_nll(model, seqs, [1] * len(seqs), pad, cfg, groups=groups)
        return mean_nll(s, c)

    sides = {"original": lambda: original(model, seqs, pad), "sorted": sorted_only, "ours": ours}
    times = {k: [] for k in sides}
    scores = {}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            scores[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(f"{name}: {times[name][-1]:.1f}s", file=sys.stderr)
    t = {k: float(np.median(v)) for k, v in times.items()}
    diff = float(np.abs(scores["ours"] - scores["original"]).max())
    diff_sorted = float(np.abs(scores["sorted"] - scores["original"]).max())
    nparams = sum(q.numel() for q in model.parameters())
    lines = [
        "# Pool scoring throughput (forward_ppl)",
        "",
        f"{len(seqs)} prompts of `{args.file_path}` ({n_tok} tokens, truncated at {args.max_length}), model "
        f"`{args.model}` ({nparams / 1e6:.2f} M params), fp32 CPU, {args.threads} threads, median of "
        f"{args.repeats} interleaved run(s).",
        "",
        "| approach | seconds | examples/s | tokens/s | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in [("original", "original: batch 4, file order, padded to longest"),
                        ("sorted", f"length-sorted, {args.token_budget}-token batches"),
                        ("ours", "ours: sorted + shared-prefix KV cache")]:
        lines.append(f"| {label} | {t[name]:.1f} | {len(seqs) / t[name]:.1f} | {n_tok / t[name]:.0f} | "
                     f"{t['original'] / t[name]:.2f}x |")
    lines += ["", f"**Speed-up ours / original: {t['original'] / t['ours']:.2f}x**; max |score difference| "
              f"ours vs original {diff:.2e}, sorted vs original {diff_sorted:.2e} (tolerance 1e-4).", ""]
    text = "\n".join(lines)
    atomic_write_text(args.out, text)
    print(text)
    if diff > 1e-4:
        sys.exit("scores differ by more than 1e-4")


if __name__ == "__main__":
    main()
