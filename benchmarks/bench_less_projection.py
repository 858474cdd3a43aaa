"""Fidelity per cost of less's random projection: projected scores against exact, unprojected gradients.

    python benchmarks/bench_less_projection.py [--model models/tiny-llama] [--n 60] [--targets 20]

N pool examples are the candidates and T summarization examples from the rest of the pool the target
(plain gradients of the answer NLL on the pool's own answers, no Adam: the projection alone is
measured). The exact score of a candidate is its mean cosine, over the target, of the full gradient
of the LESS weights (the q/v projections of every layer, concatenated). Each projection's scores
are compared with the exact ones (Spearman, top-10 overlap), over 5 projection seeds, beside the
seconds it takes per example once the gradient G is formed (the Adam path forms it anyway):

- kron d: the Kronecker-structured Gaussian projection, A^T G B per weight (d = d1 x d2;
  --grad_projection kronecker, less's only projection before 2026-12-01);
- countsketch d: each gradient entry added, with a hashed sign, to one of d hashed buckets
  (al_similarity.HashSketch, less's default).

Writes a markdown table to --out.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import al_similarity as M  # noqa: E402
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import encode_records, pad_id_of, truncate_pair  # noqa: E402
from al_scoring import ScoreConfig  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def gradients(model, pairs: list, pad_id: int) -> list[list[torch.Tensor]]:
    """Per example, the formed gradient G [out, in] of every LESS weight (from al_similarity.layer_grads)."""
    seqs, starts = [p + a for p, a in pairs], [len(p) for p, _ in pairs]
    out: list = [None] * len(seqs)
    for idx, acts in M.layer_grads(model, seqs, starts, pad_id, ScoreConfig(token_budget=2048)):
        Gs = [torch.bmm(d.transpose(1, 2), x) for x, d in acts]
        for b, i in enumerate(idx):
            out[i] = [G[b] for G in Gs]
    return out


def kron(model, dim: int, seed: int):
    """Per weight A^T G B, the blocks summed."""
    proj = M.kron_projections(model, dim, seed)
    return lambda gs: sum((A.T @ G @ B).reshape(-1) for G, (A, B) in zip(gs, proj))


def countsketch(model, dim: int, seed: int):
    """less's HashSketch of every weight, the sketches summed."""
    sk = M.projections(model, dim, seed, "countsketch")
    return lambda gs: sum(s(G.reshape(1, -1))[0] for G, s in zip(gs, sk))


def mean_cos(X: np.ndarray, T: np.ndarray) -> np.ndarray:
    unit = lambda Z: Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)  # noqa: E731
    return (unit(X) @ unit(T).T).mean(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/tiny-llama")
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--targets", type=int, default=20)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/less_projection.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok = fsdp_utils.load_tokenizer(a.model)
    model = fsdp_utils.load_model(a.model, torch.device("cpu")).eval()
    records = load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))
    cand, rest = records[: a.n], records[a.n:]
    tgt = [r for r in rest if r["category"] == "summarization"][: a.targets]
    enc = lambda rows: [truncate_pair(e.prompt, e.answer, a.max_length)[:2]  # noqa: E731
                        for e in encode_records(tok, rows).values()]
    Gc, Gt = gradients(model, enc(cand), pad_id_of(tok)), gradients(model, enc(tgt), pad_id_of(tok))
    flat = lambda gs: np.stack([torch.cat([G.reshape(-1) for G in g]).numpy() for g in gs])  # noqa: E731
    exact = mean_cos(flat(Gc), flat(Gt))
    top = set(np.argsort(-exact)[:10].tolist())
    params = sum(G.numel() for G in Gc[0])
    rows = []
    for name, make, dim in (("kron", kron, 8192), ("kron", kron, 32768), ("countsketch", countsketch, 8192),
                            ("countsketch", countsketch, 32768)):
        rho, ov, setup, secs = [], [], [], []
        for seed in range(5):
            t0 = time.perf_counter()
            f = make(model, dim, seed)
            setup.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            X, T = (np.stack([f(g).numpy() for g in gs]) for gs in (Gc, Gt))
            secs.append((time.perf_counter() - t0) / (len(Gc) + len(Gt)))
            s = mean_cos(X, T)
            rho.append(spearmanr(s, exact).statistic)
            ov.append(len(top & set(np.argsort(-s)[:10].tolist())))
        rows.append(f"| {name} {dim} | {np.mean(rho):.3f} ({min(rho):.3f}-{max(rho):.3f}) | {np.mean(ov):.1f}/10 | "
                    f"{1e3 * np.median(secs):.2f} | {np.median(setup):.2f} |")
    lines = [f"# less's projection: fidelity per cost ({os.path.basename(a.model.rstrip('/'))})", "",
             f"`python benchmarks/bench_less_projection.py --model {a.model} --n {a.n} --targets {a.targets}`: "
             f"{a.n} candidates, {a.targets} summarization targets, exact gradients of {params:,} LESS weights "
             f"(no Adam), fp32 CPU, {a.threads} threads; 5 projection seeds each.", "",
             "| projection | Spearman vs exact, mean (range) | top-10 overlap | ms per example (G formed) | "
             "setup s (once a round) |", "|---|---:|---:|---:|---:|", *rows, ""]
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
