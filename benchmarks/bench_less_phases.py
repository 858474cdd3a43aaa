"""Where one round of `less` spends its time, phase by phase, beside forward_ppl and each phase's floor.

    python benchmarks/bench_less_phases.py [--model models/tiny-llama] [--n 400]
    python benchmarks/bench_less_phases.py --model models/SmolLM2-135M --n 200 \
        --out benchmarks/results/less_phases_smollm2.md

The realistic round shape: N candidates (pool prompts) and a 30-example summarization target from
the rest of the pool, all in one process, measured side by side:

- forward_ppl over the candidates (what "x forward_ppl" divides by);
- less as in round >= 1 of the loop: greedy answers, then per batch the forward + backward that yields
  each LESS weight's inputs x and output gradients d (`al_similarity.layer_grads`), then the features
  (`project_grad`: form G = sum_t d x^T, Adam direction, CountSketch or A^T G B by --grad_projection),
  for the candidates (Adam, moments of the right shapes) and the target (plain);
- floors: a no-grad forward over the same batches (a forward + backward costs about three), and with
  --grad_projection kronecker, for the target's plain features, the projection done the way it was
  before it was factored (G formed, then A^T G B): time and agreement (largest relative difference
  of a feature row, rank correlation and top-10 overlap of --agree candidates' mean-similarity
  scores computed both ways without Adam).

Writes a markdown table to --out.
"""
import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_targeted import add_pass_args, targeted_pass  # noqa: E402

import al_similarity as M  # noqa: E402
import al_strategies as S  # noqa: E402
from al_prompts import truncate_pair  # noqa: E402
from al_scoring import pad  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def materialised(x: torch.Tensor, d: torch.Tensor, proj: tuple) -> torch.Tensor:
    """The Kronecker projection as it was before project_grad factored it: G formed, then A^T G B."""
    A, Bm = proj
    return (A.T @ torch.bmm(d.transpose(1, 2), x) @ Bm).flatten(1)


def features(sc: S.Scoring, proj: list, pairs: list, moments: dict | None, t: dict, what: str) -> tuple:
    """less_features' work, timed by phase; also the pre-factoring projection where there is no Adam."""
    cfg, model = sc.cfg, sc.model
    pairs = [truncate_pair(p, a, cfg.max_length)[:2] for p, a in pairs]
    seqs, starts = [p + a for p, a in pairs], [len(p) for p, _ in pairs]
    names = [n for n, _ in M.less_modules(model)]
    new = np.zeros((len(seqs), cfg.grad_dim), dtype=np.float32)
    old = np.zeros_like(new)
    kron = cfg.grad_projection == "kronecker"
    label = f"{what}: features " + ("(form G, Adam, " + ("project)" if kron else "sketch)") if moments
                                    else "(factored)" if kron else "(form G, sketch)")
    grads = M.layer_grads(model, seqs, starts, sc.pad_id, cfg)
    model.eval()
    while True:
        t0 = time.perf_counter()
        try:
            idx, acts = next(grads)
        except StopIteration:
            break
        t[f"{what}: forward + backward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        new[idx] = sum(M.project_grad(x, d, pj, None if moments is None else moments[n], sc.betas)
                       for n, pj, (x, d) in zip(names, proj, acts)).numpy()
        t[label] += time.perf_counter() - t0
        if moments is None and kron:
            t0 = time.perf_counter()
            old[idx] = sum(materialised(x, d, pj) for pj, (x, d) in zip(proj, acts)).numpy()
            t[f"floor: {what} features as before (form G, project)"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for idx in M.grad_batches(cfg, [len(s) for s in seqs]):
            model(input_ids=pad([seqs[i] for i in idx], sc.pad_id)[0])
    t[f"floor: {what} forward (no grad, same batches)"] += time.perf_counter() - t0
    return new, old


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pass_args(p, n=400, max_length=384)
    p.add_argument("--agree", type=int, default=50, help="candidates whose scores are also computed without Adam, "
                   "projected both ways (the agreement check)")
    p.add_argument("--out", default="benchmarks/results/less_phases.md")
    a = p.parse_args()
    sc, ids = targeted_pass(a)
    model, enc, target, cfg = sc.model, sc.enc, sc.target, sc.cfg
    t: dict = defaultdict(float)
    t0 = time.perf_counter()
    S.score_candidates("forward_ppl", ids, sc)
    fwd = time.perf_counter() - t0
    sc.moments = {n: (torch.randn_like(m.weight) * 1e-4, torch.rand_like(m.weight) * 1e-6)
                  for n, m in M.less_modules(model)}
    proj = M.projections(model, cfg.grad_dim, 0, cfg.grad_projection)
    t0 = time.perf_counter()
    answers = S.less_answers(sc, ids)
    t["greedy answers"] = time.perf_counter() - t0
    pairs = [(enc[i].prompt, ans) for i, ans in zip(ids, answers)]
    features(sc, proj, pairs, sc.moments, t, "candidates")
    T_new, T_old = features(sc, proj, [(e.prompt, e.answer) for e in target.enc], None, t, "target")
    agreement = []
    if cfg.grad_projection == "kronecker":  # the factored projection against the pre-factoring one, without Adam
        C_new, C_old = features(sc, proj, pairs[: a.agree], None, defaultdict(float), "candidates")
        rel = max(float(np.abs(new - old).max() / np.abs(old).max()) for new, old in ((T_new, T_old), (C_new, C_old)))
        s_new, s_old = (unit(C) @ unit(T).T for C, T in ((C_new, T_new), (C_old, T_old)))
        s_new, s_old = s_new.mean(1), s_old.mean(1)
        rho = spearmanr(s_new, s_old).statistic
        top = len(set(np.argsort(-s_new)[:10]) & set(np.argsort(-s_old)[:10]))
        agreement = [f"Factored projection (target, and candidates without Adam) against G formed then projected: "
                     f"largest relative difference of a feature {rel:.1e}; the first {a.agree} candidates' "
                     f"mean-similarity scores Spearman {rho:.6f}, top-10 overlap {top}/10.", ""]
    less = sum(v for k, v in t.items() if not k.startswith("floor"))
    name = os.path.basename(a.model.rstrip("/"))
    lines = [f"# less, phase by phase ({name}, {a.n} candidates, 30 targets)", "",
             f"`python benchmarks/bench_less_phases.py --model {a.model} --n {a.n}`: fp32 CPU, {a.threads} threads, "
             f"prompts truncated at {a.max_length} tokens, {a.gen_max_new_tokens} greedy answer tokens, "
             f"--grad_dim {a.grad_dim} --grad_projection {a.grad_projection}, Adam moments of the right shapes; "
             "one process, measured side by side.", "",
             f"forward_ppl over the candidates: {fwd:.1f} s; less in all: {less:.1f} s = **{less / fwd:.2f}x "
             "forward_ppl**.", "",
             "| phase | seconds | x forward_ppl |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / fwd:.2f}x |" for k, v in t.items()]
    lines += ["", *agreement]
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
