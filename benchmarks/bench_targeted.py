"""Cost of one scoring pass per candidate: rds and less against forward_ppl, side by side in one run.

    python benchmarks/bench_targeted.py [--model models/tiny-llama] [--n 200] [--out benchmarks/results/targeted.md]
    python benchmarks/bench_targeted.py --model models/SmolLM2-135M --n 48 --out benchmarks/results/targeted_smollm2.md

Each strategy scores the same N pool prompts (a 30-example summarization target from the rest of the
pool) in its own child process, so each peak RSS is its own; times are measured inside the child,
after the model is loaded. less runs as in round >= 1 of the loop: greedy answers of up to
--gen_max_new_tokens tokens, gradient features of the candidates with Adam preconditioning (moments
of the right shapes), plain gradient features of the target, projected to --grad_dim.
Writes a markdown table (README quotes it).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import al_similarity as M  # noqa: E402
import al_strategies as S  # noqa: E402
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import encode_records  # noqa: E402
from al_scoring import ScoreConfig  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def add_pass_args(p: argparse.ArgumentParser, n: int, max_length: int, projection: bool = True) -> None:
    """The flags targeted_pass reads, declared once for every benchmark built on it; without
    `projection` the benchmark picks its projections itself (the flag would do nothing)."""
    p.add_argument("--model", default="models/tiny-llama")
    p.add_argument("--n", type=int, default=n, help="pool prompts, the candidates (a real round scores ~400)")
    p.add_argument("--max_length", type=int, default=max_length, help="context (the SmolLM2 experiments': 256)")
    p.add_argument("--gen_max_new_tokens", type=int, default=32)
    p.add_argument("--grad_dim", type=int, default=8192)
    if projection:
        p.add_argument("--grad_projection", default="countsketch", choices=("countsketch", "kronecker"))
    else:
        p.set_defaults(grad_projection="kronecker")
    p.add_argument("--threads", type=int, default=2)


def targeted_pass(a: argparse.Namespace) -> tuple[S.Scoring, list]:
    """The scoring of a targeted round: the first --n pool records as candidates, 30 summarization
    records from the rest as the target, the --model loaded (also bench_less_phases.py's setup)."""
    torch.set_num_threads(a.threads)
    tok = fsdp_utils.load_tokenizer(a.model)
    model = fsdp_utils.load_model(a.model, torch.device("cpu"))
    records = load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))
    pool, rest = records[: a.n], records[a.n:]
    target_rows = [r for r in rest if r["category"] == "summarization"][:30]
    cfg = ScoreConfig(max_length=a.max_length, progress=False, gen_max_new_tokens=a.gen_max_new_tokens,
                      grad_dim=a.grad_dim, grad_projection=a.grad_projection)
    target = M.Target("target", target_rows, list(encode_records(tok, target_rows).values()), [""] * len(target_rows))
    sc = S.Scoring(model, tok, encode_records(tok, pool), {r["id"]: r for r in pool}, cfg, np.random.default_rng(0),
                   target)
    return sc, [r["id"] for r in pool]


def child(a: argparse.Namespace) -> None:
    """One strategy's pass; prints a JSON line with seconds, breakdown and peak RSS (GiB)."""
    sc, ids = targeted_pass(a)
    model, enc, target, cfg = sc.model, sc.enc, sc.target, sc.cfg
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    parts = {}
    t0 = time.perf_counter()
    if a.strategy != "less":
        S.score_candidates(a.strategy, ids, sc)
    else:
        sc.moments = {n: (torch.zeros_like(m.weight), torch.full_like(m.weight, 1e-4))
                      for n, m in M.less_modules(model)}
        proj = M.projections(model, cfg.grad_dim, 0, cfg.grad_projection)
        parts["projection matrices"] = time.perf_counter() - t0
        t = time.perf_counter()
        answers = S.less_answers(sc, ids)
        parts["greedy answers"] = time.perf_counter() - t
        t = time.perf_counter()
        S.less_features(sc, proj, [(enc[i].prompt, ans) for i, ans in zip(ids, answers)], sc.moments)
        parts["candidate gradients (Adam)"] = time.perf_counter() - t
        t = time.perf_counter()
        S.less_features(sc, proj, [(e.prompt, e.answer) for e in target.enc], None)
        parts["target gradients"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": total, "parts": parts, "peak_gib": peak / 2**20,
                      "over_loaded_gib": (peak - rss0) / 2**20}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pass_args(p, n=200, max_length=384)
    p.add_argument("--out", default="benchmarks/results/targeted.md")
    p.add_argument("--strategy", default=None, help=argparse.SUPPRESS)  # the child's
    a = p.parse_args()
    if a.strategy:
        return child(a)
    res = {}
    for s in ("forward_ppl", "rds", "less"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--strategy", s], capture_output=True,
                             text=True, check=True).stdout
        res[s] = json.loads(out.strip().splitlines()[-1])
        print(f"{s}: {res[s]['seconds']:.1f}s", file=sys.stderr)
    base = res["forward_ppl"]
    lines = [f"# One scoring pass: rds and less vs forward_ppl ({os.path.basename(a.model.rstrip('/'))})", "",
             f"{a.n} pool prompts of `data/dolly-1.5k.jsonl` (truncated at {a.max_length} tokens), model `{a.model}`, "
             f"fp32 CPU, {a.threads} threads; less: {a.gen_max_new_tokens} greedy answer tokens, "
             f"--grad_dim {a.grad_dim}, 30 target examples. Each strategy in its own process.", "",
             "| strategy | seconds | x forward_ppl | peak RSS GiB | over the loaded model GiB | x forward_ppl |",
             "|---|---:|---:|---:|---:|---:|"]
    for s, r in res.items():
        lines.append(f"| {s} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f}x | {r['peak_gib']:.2f} | "
                     f"{r['over_loaded_gib']:.2f} | {r['peak_gib'] / base['peak_gib']:.2f}x |")
    lines += ["", "less, where the time goes:", ""] + [f"- {k}: {v:.1f} s" for k, v in res["less"]["parts"].items()]
    text = "\n".join(lines) + "\n"
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
