"""Cheaper `less`, and how far its picks move: candidate cuts measured on a real round of a real run.

    python benchmarks/bench_less_cuts.py --run runs/less_run --round 1 [--out benchmarks/results/less_cuts.md]

--run is a `less --save_opt` run directory; the round's candidates (rounds/<k>/scores.jsonl), the
target and the pool come from it, the model and its Adam moments from the checkpoint that scored
that round (<run>_sharded, i.e. the latest round's; use the run's last round). Each variant scores
the same candidates in this process, side by side:

- reference: less as the loop runs it (greedy answers of --gen_max_new_tokens, the q/v weights of
  every layer, Adam-preconditioned candidates, plain target);
- another projection seed: the same method, another random projection (how much the picks move by
  chance alone: a cut whose picks move less than this costs nothing measurable);
- answers of half the tokens;
- the LESS weights of the upper half of the layers only (the backward stops halfway);
- both cuts;
- a shortlist (--shortlist K): rds ranks every candidate, less scores only its top K (K = 2n, and
  half the candidates); the others are never picked this round;
- the other --grad_projection (countsketch for a run made with kronecker, and the reverse), two seeds.

For each: seconds (x the reference), Spearman of the candidates' scores against the reference's (a
shortlist: over the candidates it scores), and overlap of the top-n (n = the run's
--num_acquisition_samples) with the reference's top-n. --variants runs a subset (the reference first).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import al_similarity as M  # noqa: E402
import al_strategies as S  # noqa: E402
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import encode_records  # noqa: E402
from al_scoring import GRAD_PROJECTIONS, ScoreConfig  # noqa: E402
from al_utils import atomic_write_text, read_jsonl, read_state, run_paths  # noqa: E402


def less_scores(sc: S.Scoring, ids: list, seed: int, gen: int, layers: slice,
                projection: str | None = None) -> tuple[np.ndarray, float]:
    """Mean cosine of each candidate's less features to the target's (by `projection`, default the
    run's), and the seconds it took."""
    every = M.less_modules
    M.less_modules = lambda model: [(n, m) for n, m in every(model)
                                    if int(n.split(".")[2]) in range(len(model.model.layers))[layers]]
    try:
        t0 = time.perf_counter()
        sc.cfg = dataclasses.replace(sc.cfg, gen_max_new_tokens=gen)
        proj = M.projections(sc.model, sc.cfg.grad_dim, seed, projection or sc.cfg.grad_projection)
        answers = S.less_answers(sc, ids)
        X = S.less_features(sc, proj, [(sc.enc[i].prompt, a) for i, a in zip(ids, answers)], sc.moments)
        T = S.target_features(sc, proj)
        return (X @ T.T).mean(1), time.perf_counter() - t0
    finally:
        M.less_modules = every


def shortlisted(sc: S.Scoring, ids: list, k: int, gen: int) -> tuple[np.ndarray, float]:
    """less over the k candidates rds ranks highest (-inf for the rest), and the seconds of both."""
    t0 = time.perf_counter()
    short, _ = S.shortlist(ids, sc, k)
    s, _ = less_scores(sc, short, 0, gen, slice(None))
    out = np.full(len(ids), -np.inf)
    out[[ids.index(i) for i in short]] = s
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a less --save_opt run directory")
    p.add_argument("--round", type=int, required=True, help="the round whose candidates are scored")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/less_cuts.md")
    p.add_argument("--variants", default="", help="comma-separated variant numbers to run (0 = reference; "
                   "default: all)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    paths, state = run_paths(a.run), read_state(a.run)
    spec = state["spec"]
    ckpt = paths.ckpt
    tok = fsdp_utils.load_tokenizer(spec.get("model_config_path") or ckpt)
    model = fsdp_utils.load_model(ckpt, torch.device("cpu"))
    names = [n for n, _ in M.less_modules(model)]
    moments = fsdp_utils.adam_moments(model, ckpt, names)
    records = {r["id"]: r for r in load_records(spec["file_path"], template=spec["prompt_template"])}
    ids = [r["id"] for r in read_jsonl(paths.round_file(a.round, "scores.jsonl"))]
    target_rows = load_records(spec["target_file"], template=spec["prompt_template"])
    enc = encode_records(tok, [records[i] for i in ids], spec["prompt_template"])
    target = M.Target("target", target_rows, list(encode_records(tok, target_rows, spec["prompt_template"]).values()),
                      [""] * len(target_rows))
    cfg = ScoreConfig(max_length=spec["model_max_length"], progress=False, grad_dim=spec["grad_dim"],
                      gen_max_new_tokens=spec["gen_max_new_tokens"],
                      grad_projection=spec.get("grad_projection", "kronecker"))  # (runs made before the flag)
    other = next(k for k in GRAD_PROJECTIONS if k != cfg.grad_projection)
    sc = S.Scoring(model, tok, enc, records, cfg, np.random.default_rng(0), target, moments=moments,
                   betas=(spec["adam_beta1"], spec["adam_beta2"]))
    n, gen, L = spec["num_acquisition_samples"], spec["gen_max_new_tokens"], len(model.model.layers)
    variants = {"reference (as the loop runs it)": (0, gen, slice(None)),
                "another projection seed": (1, gen, slice(None)),
                f"answers of {gen // 2} tokens": (0, gen // 2, slice(None)),
                f"upper {L - L // 2} of {L} layers": (0, gen, slice(L // 2, None)),
                "both cuts": (0, gen // 2, slice(L // 2, None)),
                f"shortlist {2 * n} (rds)": (2 * n, gen),
                f"shortlist {len(ids) // 2} (rds)": (len(ids) // 2, gen),
                f"{other} projection": (0, gen, slice(None), other),
                f"{other} projection, another seed": (1, gen, slice(None), other)}
    if a.variants:
        keep = {0, *map(int, a.variants.split(","))}
        variants = {k: v for j, (k, v) in enumerate(variants.items()) if j in keep}
    res = {k: less_scores(sc, ids, *v) if len(v) >= 3 else shortlisted(sc, ids, *v) for k, v in variants.items()}
    ref, t_ref = next(iter(res.values()))
    top = set(np.argsort(-ref)[:n].tolist())
    lines = [f"# Cheaper less: what each cut saves and how far the picks move ({os.path.basename(ckpt)})", "",
             f"`python benchmarks/bench_less_cuts.py --run {a.run} --round {a.round}`: round {a.round}'s {len(ids)} "
             f"candidates, {len(target_rows)} target examples, the run's checkpoint and Adam moments, fp32 CPU, "
             f"{a.threads} threads; top-n with n = {n} (the run's batch).", "",
             "| variant | seconds | x reference | Spearman vs reference | top-n overlap |", "|---|---:|---:|---:|---:|"]
    for k, (s, t) in res.items():
        ov = len(top & set(np.argsort(-s)[:n].tolist()))
        fin = np.isfinite(s)
        lines.append(f"| {k} | {t:.1f} | {t / t_ref:.2f}x | {spearmanr(s[fin], ref[fin]).statistic:.3f} | {ov}/{n} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(a.out, text)
    print(text)
    print(json.dumps({k: round(t, 2) for k, (_, t) in res.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
