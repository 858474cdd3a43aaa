"""less's greedy answers with generation batches of at most the model's own size in KV cache
(al_scoring.model_kv_tokens), against the fixed 8,192-token budget as before; and the whole less
round (answers + candidates' and target's features) beside forward_ppl.

    python benchmarks/bench_less_gen_memory.py [--models models/tiny-llama] [--n 400]

One process per model, one targeted round (bench_targeted.targeted_pass: N pool prompts as
candidates, a 30-example summarization target): forward_ppl over the candidates (what "x
forward_ppl" divides by), then the answers under each budget, --repeats times interleaved (best
time, highest peak), then the candidates' and the target's features once (Adam moments of the right
shapes). Peak memory: the process's RSS sampled every 10 ms during a phase, over its RSS with the
model loaded; a phase's peak can include memory the allocator kept from an earlier one, so the
answers' variants alternate.
"""
import argparse
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_less_logits import timed  # noqa: E402
from bench_pool_scale import rss_gib  # noqa: E402
from bench_targeted import add_pass_args, targeted_pass  # noqa: E402

import al_similarity as M  # noqa: E402
import al_strategies as S  # noqa: E402
from al_scoring import GEN_KV_TOKENS, model_kv_tokens  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def child(a: argparse.Namespace) -> str:
    """One model's table rows (markdown), measured in this process."""
    sc, ids = targeted_pass(a)
    base = rss_gib()
    sc.moments = {n: (torch.randn_like(m.weight) * 1e-4, torch.rand_like(m.weight) * 1e-6)
                  for n, m in M.less_modules(sc.model)}
    proj = M.projections(sc.model, sc.cfg.grad_dim, 0, sc.cfg.grad_projection)
    _, fwd, fwd_mem = timed(base, S.score_candidates, "forward_ppl", ids, sc)
    budgets = {"before": GEN_KV_TOKENS, "now": model_kv_tokens(sc.model)}
    best: dict = {}
    answers: dict = {}
    real = S.model_kv_tokens
    for _ in range(a.repeats):
        for name, kv in budgets.items():
            S.model_kv_tokens = lambda model, kv=kv: kv  # noqa: E731
            answers[name], secs, mem = timed(base, S.less_answers, sc, ids)
            s0, m0 = best.get(name, (float("inf"), 0.0))
            best[name] = (min(s0, secs), max(m0, mem))
    S.model_kv_tokens = real
    pairs = [(sc.enc[i].prompt, x) for i, x in zip(ids, answers["now"])]
    _, xs, xm = timed(base, S.less_features, sc, proj, pairs, sc.moments)
    _, ts, tm = timed(base, S.less_features, sc, proj, [(e.prompt, e.answer) for e in sc.target.enc], None)
    model = os.path.basename(a.model.rstrip("/"))
    same = sum(x == y for x, y in zip(answers["before"], answers["now"]))
    rows = [f"| {model} | forward_ppl | | {fwd:.1f} | 1.00x | {fwd_mem:.2f} | 1.00x | |"]
    for name, kv in budgets.items():
        s, m = best[name]
        round_s, round_m = s + xs + ts, max(m, xm, tm)
        rows.append(f"| {model} | answers, {name} | {kv} | {s:.1f} | {s / fwd:.2f}x | {m:.2f} | "
                    f"{m / fwd_mem:.2f}x | {same}/{len(ids)} |")
        rows.append(f"| {model} | less round, answers {name} | {kv} | {round_s:.1f} | **{round_s / fwd:.2f}x** | "
                    f"{round_m:.2f} | **{round_m / fwd_mem:.2f}x** | |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="models/tiny-llama",
                   help="comma-separated (SmolLM2-135M: its own size, 11,676 tokens, is over the cap, so unchanged)")
    add_pass_args(p, n=400, max_length=256)  # --model: set per child process from --models
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=2, help="runs of each budget, interleaved")
    p.add_argument("--out", default="benchmarks/results/less_gen_memory.md")
    a = p.parse_args()
    if a.child:
        print(child(a))
        return
    rows = []
    for model in a.models.split(","):  # a process each: one model's allocations do not raise the other's peak
        argv = [sys.executable, __file__, "--child", "--model", model] + [
            x for k, v in vars(a).items() if k not in ("model", "models", "out", "child") for x in (f"--{k}", str(v))]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        rows.append(out.strip().splitlines()[-5:])
    lines = [f"# less's greedy answers: KV budget of the model's own size ({a.n} candidates, 30 targets)", "",
             f"`python benchmarks/bench_less_gen_memory.py --n {a.n}`: fp32 CPU, {a.threads} threads, prompts "
             f"truncated at {a.max_length - 1} tokens, {a.gen_max_new_tokens} greedy answer tokens, --grad_dim "
             f"{a.grad_dim} --grad_projection {a.grad_projection}; a process per model; the answers under each "
             f"budget {a.repeats}x interleaved (best time, highest peak), the features once. Memory: peak RSS "
             "during the phase over the RSS with the model loaded. A less round: the answers + the candidates' "
             "and the target's features (peak: the highest of the three).", "",
             "| model | phase | KV tokens | seconds | x forward_ppl | peak over loaded model (GiB) | "
             "peak / forward_ppl's | answers identical |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [line for r in rows for line in r]
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
