"""Generation throughput, side by side in one process: batched KV-cache decoding vs one prompt
at a time, greedy, on AlpacaEval prompts and the default model.

    python benchmarks/bench_generate.py [--model runs/quickstart/RUN_400_sharded] [--n 64] [--batch_size 16]

The default model is the quickstart's final checkpoint (run `bash scripts/quickstart.sh` first): the
untrained base model answers every prompt with EOS, which would measure nothing.

Both sides run eval_generate.generate_answers (HF generate with the KV cache); only the batch size differs.
Outputs must be identical token for token. Writes benchmarks/results/generate.md (README quotes it).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval_generate  # noqa: E402
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import format_prompt  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/RUN_400_sharded")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/generate.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok = fsdp_utils.load_tokenizer(a.model)
    model = fsdp_utils.load_model(a.model, torch.device("cpu"))
    recs = load_records(eval_generate.ALPACA_EVAL)[: a.n]
    prompts = [tok(format_prompt(r["instruction"], r["input"])).input_ids for r in recs]
    args = eval_generate.parse_args(["--save_file_name", "x", "--greedy", "--max_new_tokens", str(a.max_new_tokens)])
    res = {}
    for name, bs in (("one at a time", 1), (f"batched ({a.batch_size})", a.batch_size)):
        args.batch_size = bs
        t0 = time.perf_counter()
        out = eval_generate.generate_answers(model, tok, prompts, args, progress=False)
        res[name] = (time.perf_counter() - t0, sum(len(o) for o in out), out)
        print(f"{name}: {res[name][0]:.1f}s", file=sys.stderr)
    (t1, n1, o1), (t2, n2, o2) = res.values()
    same = o1 == o2
    lines = ["# Generation throughput (greedy, KV cache)", "",
             f"{a.n} AlpacaEval prompts, up to {a.max_new_tokens} new tokens, model `{a.model}`, fp32 CPU, "
             f"{a.threads} threads.", "",
             "| decoding | seconds | generated tokens | tokens/s |", "|---|---:|---:|---:|"]
    for name, (t, n, _) in res.items():
        lines.append(f"| {name} | {t:.1f} | {n} | {n / t:.0f} |")
    lines += ["", f"**Speed-up: {(n2 / t2) / (n1 / t1):.2f}x tokens/s**; outputs identical: {same}.", ""]
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)
    if not same:
        sys.exit("batched outputs differ from one-at-a-time outputs")


if __name__ == "__main__":
    main()
