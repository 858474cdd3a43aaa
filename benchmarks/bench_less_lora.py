"""less's gradient features under LoRA against full weights, side by side in one process, beside
forward_ppl over the same candidates.

    python benchmarks/bench_less_lora.py [--model models/tiny-llama] [--n 400] [--lora_r 8]

The round shape of bench_less_phases.py (N pool candidates, 30 summarization targets, greedy answers
computed once and shared): the candidates' Adam-preconditioned features and the target's plain ones,
(a) full weights: the q/v projections of every layer, Kronecker-projected (al_similarity.grad_features);
(b) LoRA: adapters of rank --lora_r on every Llama projection (the default --lora_target_modules),
random A and B, CountSketched (al_similarity.lora_features). Moments of the right shapes, random.
Writes a markdown table to --out.
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_targeted import add_pass_args, targeted_pass  # noqa: E402

import al_similarity as M  # noqa: E402
import al_strategies as S  # noqa: E402
from al_lora import Adapter, LoraSpec, fresh_adapters  # noqa: E402
from al_prompts import truncate_pair  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pass_args(p, n=400, max_length=384, projection=False)  # full weights: Kronecker, below
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/less_lora.md")
    a = p.parse_args()
    sc, ids = targeted_pass(a)
    model, cfg = sc.model, sc.cfg
    t0 = time.perf_counter()
    S.score_candidates("forward_ppl", ids, sc)
    fwd = time.perf_counter() - t0
    answers = S.less_answers(sc, ids)
    cands = [truncate_pair(sc.enc[i].prompt, ans, cfg.max_length)[:2] for i, ans in zip(ids, answers)]
    targets = [truncate_pair(e.prompt, e.answer, cfg.max_length)[:2] for e in sc.target.enc]
    g = torch.Generator().manual_seed(0)
    spec = LoraSpec(r=a.lora_r)
    adapters = [Adapter(ad.module, ad.A, torch.randn(ad.B.shape, generator=g) * 1e-3, ad.scale)
                for ad in fresh_adapters(model, spec)]
    sk = M.hash_sketches([ad.size for ad in adapters], cfg.grad_dim, 0)
    proj = M.kron_projections(model, cfg.grad_dim, 0)
    full_m = {n: (torch.randn_like(m.weight) * 1e-4, torch.rand_like(m.weight) * 1e-6)
              for n, m in M.less_modules(model)}
    lora_m = {ad.module: (torch.randn(ad.size, generator=g) * 1e-4, torch.rand(ad.size, generator=g) * 1e-6)
              for ad in adapters}
    runs = {
        "full weights (q, v; Kronecker)": lambda seqs, starts, mom: M.grad_features(
            model, seqs, starts, sc.pad_id, cfg, proj, full_m if mom else None),
        f"LoRA r={a.lora_r} (7 projections; CountSketch)": lambda seqs, starts, mom: M.lora_features(
            model, seqs, starts, sc.pad_id, cfg, adapters, sk, lora_m if mom else None),
    }
    rows = []
    for name, run in runs.items():
        secs = []
        for pairs, mom in ((cands, True), (targets, False)):
            t0 = time.perf_counter()
            run([p_ + a_ for p_, a_ in pairs], [len(p_) for p_, _ in pairs], mom)
            secs.append(time.perf_counter() - t0)
        rows.append((name, *secs))
    n_full = sum(m.weight.numel() for _, m in M.less_modules(model))
    n_lora = sum(ad.size for ad in adapters)
    mname = os.path.basename(a.model.rstrip("/"))
    lines = [f"# less features: LoRA against full weights ({mname}, {a.n} candidates, 30 targets)", "",
             f"`python benchmarks/bench_less_lora.py --model {a.model} --n {a.n} --lora_r {a.lora_r}`: fp32 CPU, "
             f"{a.threads} threads, {a.gen_max_new_tokens} greedy answer tokens (shared, not timed), --grad_dim "
             f"{a.grad_dim}; one process, side by side. forward_ppl over the candidates: {fwd:.1f} s.", "",
             f"Parameters differentiated: full weights {n_full / 1e6:.2f} M, LoRA {n_lora / 1e6:.2f} M.", "",
             "| features | candidates s (Adam) | target s (plain) | total x forward_ppl |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {c:.2f} | {t:.2f} | {(c + t) / fwd:.2f}x |" for n, c, t in rows]
    lines.append("")
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
