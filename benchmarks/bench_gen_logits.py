"""generation_ppl's memory: every row's raw logits kept until scoring (before) against each row
reduced to its score inside generate() (now: of_logits), one child process each so peak RSS is
each variant's own; scores must be identical.

    python benchmarks/bench_gen_logits.py --model models/SmolLM2-135M --n 400

A row's logits are [new tokens, vocab] floats (32 x 49,152 x 4 B = 6.3 MB on SmolLM2). "before" is
emulated with today's generate() keeping each row's logits: the code before kept views of each batch's
[B, T, V] tensor, at least as large, and also stacked a second copy of every batch's logits (now one
row at a time), so its peak was no lower than this. Prints and writes a markdown table to --out.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import encode_records, pad_id_of, truncate_prompt  # noqa: E402
from al_scoring import GEN_KV_TOKENS, generate, stop_ids  # noqa: E402
from al_strategies import generated_nll  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402

VARIANTS = {"before": "every row's logits kept, scored after generation",
            "now": "each row reduced to its score in generate() (of_logits)"}


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def child(a: argparse.Namespace) -> None:
    """One variant: generation_ppl's scores of the prompts, seconds, peak RSS over the loaded model."""
    torch.set_num_threads(a.threads)
    tok = fsdp_utils.load_tokenizer(a.model)
    model = fsdp_utils.load_model(a.model, torch.device("cpu"))
    enc = encode_records(tok, load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))[300:300 + a.n])
    prompts = [truncate_prompt(enc[i].prompt, a.max_length) for i in enc]
    base = rss_gib()
    kw = dict(progress=False, kv_tokens=GEN_KV_TOKENS)
    t0 = time.perf_counter()
    before = a.child == "before"  # keep each row's logits and score them afterwards
    gens = generate(model, prompts, [a.new] * a.n, pad_id_of(tok), stop_ids(model, tok), 256,
                    of_logits=(lambda _, logits: logits) if before else generated_nll, **kw)
    scores = [generated_nll(t, kept) if before else kept for t, kept in gens]
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"seconds": secs, "peak_over_model_gib": peak - base, "scores": scores}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/SmolLM2-135M")
    p.add_argument("--n", type=int, default=400, help="pool prompts (records 300.. of the embedded pool)")
    p.add_argument("--max_length", type=int, default=256, help="prompt truncation (--model_max_length)")
    p.add_argument("--new", type=int, default=32, help="greedy tokens (--gen_max_new_tokens)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gen_logits.md"))
    a = p.parse_args()
    if a.child:
        return child(a)
    res = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--child", v] + sys.argv[1:]
        res[v] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    same = res["before"]["scores"] == res["now"]["scores"]
    b, n = res["before"], res["now"]
    lines = [f"# generation_ppl: logits kept against reduced per row ({os.path.basename(a.model)})", "",
             f"`python benchmarks/bench_gen_logits.py --model {a.model} --n {a.n} --max_length {a.max_length} "
             f"--new {a.new}`: fp32 CPU, {a.threads} threads, generate()'s batches (<= 256 rows, <= {GEN_KV_TOKENS} "
             "KV tokens); one child process per variant. Peak = peak RSS over the RSS with the model and "
             "prompts loaded.", "",
             "| variant | seconds | peak over model GiB |", "|---|---:|---:|"]
    lines += [f"| {v}: {VARIANTS[v]} | {r['seconds']:.1f} | {r['peak_over_model_gib']:.2f} |" for v, r in res.items()]
    lines += ["", f"now / before: time {n['seconds'] / b['seconds']:.2f}x, peak "
              f"{n['peak_over_model_gib'] / max(b['peak_over_model_gib'], 1e-9):.2f}x; scores of all {a.n} rows "
              f"{'identical' if same else 'DIFFERENT'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(a.out, text)


if __name__ == "__main__":
    main()
