"""less's gradient pass with the output layer at the scored positions only, against the same pass
with logits (and cross-entropy in the [B, V, T] layout) at every position, as it was before.

    python benchmarks/bench_less_logits.py [--model models/tiny-llama] [--n 400]
    python benchmarks/bench_less_logits.py --model models/SmolLM2-135M --out benchmarks/results/less_logits_smollm2.md

One process, one targeted round (bench_targeted.targeted_pass: N pool prompts as candidates, a
30-example summarization target), measured side by side: forward_ppl over the candidates (what
"x forward_ppl" divides by), less's greedy answers (shared by both variants), then per variant the
candidates' features (Adam-preconditioned, moments of the right shapes) and the target's, --repeats
times interleaved. Peak memory: the process's RSS sampled every 10 ms during a phase, over its RSS
with the model loaded.
Agreement: the candidates' less scores (mean cosine to the target) of the two variants, Spearman
and the overlap of their top --top; accuracy: each variant's deltas on the first candidate batch
against the same loss in float64.
"""
import argparse
import os
import sys
import threading
import time

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_pool_scale import rss_gib  # noqa: E402
from bench_targeted import add_pass_args, targeted_pass  # noqa: E402

import al_similarity as M  # noqa: E402
import al_strategies as S  # noqa: E402
from al_prompts import truncate_pair  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402

AFTER = M._module_grads


def before(model, ids: torch.Tensor, tgt: torch.Tensor, mods: list) -> list:
    """_module_grads as it was: logits at every position, cross-entropy over [B, V, T]."""
    seen: dict = {}
    hooks = [m.register_forward_hook(lambda m, a, o, seen=seen: seen.__setitem__(m, (a[0].detach(), o)))
             for m in mods]
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
            loss = (nll.sum(1) / (tgt != -100).sum(1).clamp(min=1)).sum()
            deltas = torch.autograd.grad(loss, [seen[m][1] for m in mods])
    finally:
        for h in hooks:
            h.remove()
    return [(seen[m][0].float(), d.float()) for m, d in zip(mods, deltas)]


def timed(base: float, fn, *args) -> tuple:
    """(fn's result, seconds, peak RSS during the call over `base`, GiB)."""
    peak, done = [0.0], threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_gib())

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    t0 = time.perf_counter()
    out = fn(*args)
    secs = time.perf_counter() - t0
    done.set()
    w.join()
    return out, secs, max(peak[0], rss_gib()) - base


def float64_error(sc: S.Scoring, seqs: list, starts: list) -> tuple[float, float]:
    """Largest relative error of either variant's deltas on the first gradient batch against the
    loss computed in float64 row by row (the model cast to float64 for the reference only)."""
    mods = [m for _, m in M.less_modules(sc.model)]
    got = []
    for fn in (before, AFTER):  # layer_grads' first batch, its forward + backward by each variant
        M._module_grads = fn
        idx, acts = next(M.layer_grads(sc.model, seqs, starts, sc.pad_id, sc.cfg, mods))
        got.append([d for _, d in acts])
    M._module_grads = AFTER
    sc.model.double()
    seen: dict = {}
    hooks = [m.register_forward_hook(lambda m, a, o: seen.setdefault(m, []).append(o)) for m in mods]
    with torch.enable_grad():
        loss = sum(torch.nn.functional.cross_entropy(sc.model(input_ids=torch.tensor([seqs[i]])).logits[0][
            starts[i] - 1:-1], torch.tensor(seqs[i][starts[i]:])) for i in idx)
        want = torch.autograd.grad(loss, [o for m in mods for o in seen[m]])
    for h in hooks:
        h.remove()
    sc.model.float()
    errs = []
    for ds in got:
        err = 0.0
        for j, d in enumerate(ds):
            for b, i in enumerate(idx):
                w = want[j * len(idx) + b][0]
                err = max(err, float((d[b, : len(seqs[i])].double() - w).abs().max() / w.abs().max()))
        errs.append(err)
    return errs[0], errs[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pass_args(p, n=400, max_length=256)
    p.add_argument("--top", type=int, default=25, help="the round's batch, for the top-n overlap")
    p.add_argument("--repeats", type=int, default=2, help="runs of each variant, interleaved (best one counts)")
    p.add_argument("--out", default="benchmarks/results/less_logits.md")
    a = p.parse_args()
    sc, ids = targeted_pass(a)
    enc, cfg, base = sc.enc, sc.cfg, rss_gib()
    sc.moments = {n: (torch.randn_like(m.weight) * 1e-4, torch.rand_like(m.weight) * 1e-6)
                  for n, m in M.less_modules(sc.model)}
    proj = M.projections(sc.model, cfg.grad_dim, 0, cfg.grad_projection)
    rows = []
    _, fwd, fwd_mem = timed(base, S.score_candidates, "forward_ppl", ids, sc)
    answers, gen, gen_mem = timed(base, S.less_answers, sc, ids)
    rows.append(("forward_ppl", fwd, fwd_mem))
    rows.append(("less: greedy answers (both variants)", gen, gen_mem))
    pairs = [(enc[i].prompt, ans) for i, ans in zip(ids, answers)]
    target = [(e.prompt, e.answer) for e in sc.target.enc]
    scores, totals = {}, {}
    for r in range(a.repeats):
        for name, fn in (("before", before), ("after", AFTER)):
            M._module_grads = fn
            X, xs, xm = timed(base, S.less_features, sc, proj, pairs, sc.moments)
            T, ts, tm = timed(base, S.less_features, sc, proj, target, None)
            run = f"{name} (run {r + 1})"
            rows += [(f"{run}: candidates' features", xs, xm), (f"{run}: target's features", ts, tm)]
            assert name not in scores or np.array_equal(scores[name], (X @ T.T).mean(1))  # deterministic
            scores[name] = (X @ T.T).mean(1)
            totals.setdefault(name, []).append((gen + xs + ts, max(gen_mem, xm, tm)))
    M._module_grads = AFTER
    rho = spearmanr(scores["before"], scores["after"]).statistic
    top = len(set(np.argsort(-scores["before"])[: a.top]) & set(np.argsort(-scores["after"])[: a.top]))
    trunc = [truncate_pair(p_, a_, cfg.max_length)[:2] for p_, a_ in pairs]
    err_before, err_after = float64_error(sc, [p_ + a_ for p_, a_ in trunc], [len(p_) for p_, _ in trunc])
    name = os.path.basename(a.model.rstrip("/"))
    lines = [f"# less's gradient pass: logits at the scored positions only ({name}, {a.n} candidates, 30 targets)",
             "", f"`python benchmarks/bench_less_logits.py --model {a.model} --n {a.n}`: fp32 CPU, {a.threads} "
             f"threads, prompt + answer truncated at {a.max_length} tokens, {a.gen_max_new_tokens} greedy answer "
             f"tokens, --grad_dim {a.grad_dim} --grad_projection {a.grad_projection}, Adam moments of the right "
             f"shapes; one process, measured side by side (each variant {a.repeats}x, interleaved). Memory: peak RSS "
             "during the phase over the RSS with the model loaded.", "",
             "| phase | seconds | x forward_ppl | peak over loaded model (GiB) |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {s:.2f} | {s / fwd:.2f}x | {m:.2f} |" for k, s, m in rows]
    lines += ["", f"| less round (answers + features) | seconds, best of {a.repeats} | x forward_ppl "
              "| peak / forward_ppl's |", "|---|---:|---:|---:|"]
    for k, runs in totals.items():
        s, m = min(runs)
        lines.append(f"| {k} | {s:.1f} | **{s / fwd:.2f}x** | {m / max(fwd_mem, 1e-9):.2f}x |")
    lines += ["", f"Agreement of the candidates' less scores (mean cosine to the target) after vs before: Spearman "
              f"{rho:.4f}, top-{a.top} overlap {top}/{a.top}. Deltas on the first candidate batch against the same "
              f"loss in float64 (largest relative error of a module's deltas): before {err_before:.1e}, after "
              f"{err_after:.1e}."]
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
