"""Peak memory per rank of less's scoring work on a ~1 B-parameter Llama (random weights, fp32,
CPU, gloo), 1 process against 2 ranks, side by side in one run.

    python benchmarks/bench_less_ranks.py [--workdir /tmp/al-bench-1b]

one:        1 process, the plain model: greedy answers, then the candidates' and the target's
            projected gradients (al_similarity.grad_features)
two:        2 ranks, as the loop runs less now: the model stays sharded; answers (generate in_step)
            and gradients (layer_grads) run with the ranks in step, FSDP gathering a layer at a time;
            the Adam moments stay sharded too, gathered a weight at a time (al_similarity.gathered);
            each rank takes its share of the target's gradients (al_strategies.target_features)
two-whole:  as two before 2026-12-01: every rank holds whole moments and takes all of the target's
            gradients
two-copy:   2 ranks, as the loop ran less before: every rank gathers the whole model
            (fsdp_utils.full_params) for its answers, and takes its gradients on a plain full copy
The candidates' gradients are Adam-preconditioned (less --save_opt, the loop's less) by moments
made from the weights (the same values in every mode; --no_adam: none). Each rank scores its half
of the candidates.
Memory = peak RSS minus the RSS after imports and process-group start; worst rank shown. The
model is bench_sharded_load.py's (built once in --workdir). Also: the per-layer figures and the
memory projected from them for 7 B and 70 B Llamas. Writes benchmarks/results/less_ranks.md.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fsdp_utils  # noqa: E402
from al_scoring import ScoreConfig, generate  # noqa: E402
from al_similarity import gathered, grad_features, kron_projections, less_modules  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402
from bench_sharded_load import GB, add_model_args, build, end_worker, peak, rss  # noqa: E402


def plain_copy(model):
    """The pre-change plain_replica: a full unsharded copy of a sharded model on this rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.to_empty(device="cpu")
    fsdp_utils._reset_rotary(plain, torch.device("cpu"))
    plain.load_state_dict(sd, strict=False)
    return plain.eval()


def worker(mode: str, a) -> None:
    device = fsdp_utils.setup(2 if mode == "one" else 1)
    import transformers.models.llama.modeling_llama  # noqa: F401  (imports belong to the baseline)

    fsdp_utils.barrier()
    base = rss()
    model = fsdp_utils.load_model(os.path.join(a.workdir, "sharded"), device)
    out = {"rank": fsdp_utils.rank(), "loaded": peak() - base}
    moments = None
    if a.adam:  # the saved moments' stand-ins, from the weights: the same values in every mode
        params = dict(model.named_parameters())
        moments = {n: (params[n].detach() * 1e-3, params[n].detach().square() * 1e-4) for n, _ in less_modules(model)}
        if mode != "two":  # whole on every rank (a plain model, or as before)
            moments = {n: gathered(mv) for n, mv in moments.items()}
    out["moments"] = peak() - base
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = [torch.randint(3, vocab, (a.prompt,), generator=g).tolist() for _ in range(a.candidates)]
    target = [torch.randint(3, vocab, (a.prompt + a.new,), generator=g).tolist() for _ in range(a.targets)]
    mine = prompts[fsdp_utils.my_slice(len(prompts))]
    cfg = ScoreConfig(token_budget=a.token_budget, progress=False)
    proj = kron_projections(model, 8192, 0)  # (as measured: less_ranks*.md)
    t0 = time.time()
    local = fsdp_utils.full_params(model) if mode == "two-copy" else contextlib.nullcontext()
    with local:  # stop id 0 never comes up: every answer is --new tokens long
        gens = generate(model, mine, [a.new] * len(mine), 0, [], 16, False, in_step=mode == "two")
        grad_model = plain_copy(model) if mode == "two-copy" else model
    out["answers"] = peak() - base
    seqs = [p + g_ for p, (g_, _) in zip(mine, gens)]
    X = grad_features(grad_model, seqs, [len(p) for p in mine], 0, cfg, proj, moments)
    t1 = time.time()
    part = fsdp_utils.my_slice(len(target)) if mode == "two" else slice(None)  # al_strategies.target_features
    T = grad_features(grad_model, target[part], [a.prompt] * len(target[part]), 0, cfg, proj)
    T = np.concatenate(fsdp_utils.gather_lists([T])) if mode == "two" else T
    out.update(gradients=peak() - base, seconds=time.time() - t0, target_seconds=time.time() - t1,
               checksum=float(abs(X).sum()), target_checksum=float(abs(T).sum()))
    end_worker(out, os.path.join(a.workdir, f"less-{mode}.json"))


def layer_bytes(h: int, i: int, n_kv_ratio: float = 1.0) -> float:
    """fp32 bytes of one Llama decoder layer: q, o (h x h), k, v (h x h kv_ratio), the MLP (3 h i), 2 norms."""
    return 4 * (2 * h * h + 2 * h * h * n_kv_ratio + 3 * h * i + 2 * h)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--targets", type=int, default=4)
    p.add_argument("--prompt", type=int, default=48, help="prompt tokens per candidate")
    p.add_argument("--new", type=int, default=8, help="answer tokens generated per candidate")
    p.add_argument("--token_budget", type=int, default=2048)
    p.add_argument("--modes", default="one,two,two-whole", help="also two-copy (~2.5 full models per rank: "
                   "where 2 ranks x 2.5 models fit in memory)")
    p.add_argument("--no_adam", dest="adam", action="store_false", help="no Adam moments (less without --save_opt)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "less_ranks.md"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker, a)
    n_params = build(a.workdir, a)
    full = n_params * 4 / GB
    flags = ["--workdir", a.workdir, "--candidates", str(a.candidates), "--targets", str(a.targets), "--prompt",
             str(a.prompt), "--new", str(a.new), "--token_budget", str(a.token_budget)]
    flags += [] if a.adam else ["--no_adam"]
    res = {}
    for mode in a.modes.split(","):
        print(f"less, {mode} ...", file=sys.stderr)
        launch = [sys.executable] if mode == "one" else [sys.executable, "-m", "torch.distributed.run",
                                                          "--nproc_per_node=2"]
        # glibc keeps freed blocks up to its (growing) mmap threshold: FSDP's per-layer gathers then
        # stay in RSS long after they are freed (a CPU artifact; on CUDA the caching allocator decides).
        # A fixed threshold returns every block over 64 KiB on free, in every mode alike.
        subprocess.run([*launch, __file__, *flags, "--worker", mode], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
        with open(os.path.join(a.workdir, f"less-{mode}.json")) as f:
            res[mode] = json.load(f)
    worst = {m: {k: max(r[k] for r in rs) for k in ("loaded", "moments", "answers", "gradients", "seconds",
                                                                   "target_seconds")}
             for m, rs in res.items()}
    one = worst["one"]["gradients"]  # --modes must hold one
    lines = [
        "# less on 2 ranks: peak memory per rank (CPU, gloo)",
        "",
        f"Llama with {n_params / 1e9:.2f} B parameters, fp32, random weights: full model = {full:.2f} GiB. "
        f"{a.candidates} candidates of {a.prompt} prompt tokens + {a.new} generated answer tokens (split over "
        f"the ranks), {a.targets} target examples (every rank), projected to 8192 dimensions"
        f"{', the candidates Adam-preconditioned' if a.adam else ', no Adam moments'}. Memory = peak RSS "
        "over the RSS after imports and process-group start, worst rank, every process with glibc's "
        "MALLOC_MMAP_THRESHOLD_=65536 (freed blocks go back to the system); `python benchmarks/bench_less_ranks.py`.",
        "",
        "| mode | loaded GiB | with moments GiB | after answers GiB | after gradients (peak) GiB | x 1-process peak | "
        "x full model | seconds | of which the target's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, w in worst.items():
        lines.append(f"| {m} | {w['loaded']:.2f} | {w['moments']:.2f} | {w['answers']:.2f} | {w['gradients']:.2f} | "
                     f"{w['gradients'] / one:.2f} | {w['gradients'] / full:.2f} | {w['seconds']:.0f} | "
                     f"{w['target_seconds']:.0f} |")
    same = {m: [round(r["checksum"], 2) for r in rs] for m, rs in res.items()}
    tsame = {m: [round(r["target_checksum"], 2) for r in rs] for m, rs in res.items()}
    lines += ["", f"Feature checksums (sum of |features|), the candidates' per rank: {json.dumps(same)}; the target's, "
              f"as every rank holds them: {json.dumps(tsame)} (the 2-rank modes compute the same features; the "
              "candidates' per-rank sums add up to the 1-process one, the target's equal it).", ""]
    # projection: per rank ~ its shard + one gathered layer (+ the root's embeddings and head, gathered
    # for the whole forward) + activations, which depend on tokens per batch, not on the rank count
    lay1 = layer_bytes(a.hidden, a.intermediate)
    root1 = 2 * a.vocab * a.hidden * 4
    qv1 = a.hidden * a.hidden * 2  # q and v of one layer (this model: no grouped KV heads)
    lines += [
        "## Projected weights per rank (fp32; activations on top, set by the token budget)",
        "",
        "Formula: per rank = P x 4 B / W (its shard) + one decoder layer gathered (L = 4 (2h^2 + 2h^2 kv + 3hi)) + "
        "embeddings and LM head gathered (2 V h x 4 B); before: + the full model gathered (P x 4 B) + a plain "
        "copy (P x 4 B). less --save_opt adds the Adam moments of the LESS weights (q and v: Q = layers x h^2 "
        "(1 + kv) parameters, two moments): now 2 Q x 4 B / W + one weight's whole while it is used (2 h^2 x 4 B); "
        f"before 2 Q x 4 B on every rank. This model: one layer = {lay1 / GB:.2f} GiB, embeddings + head = "
        f"{root1 / GB:.2f} GiB, moments = {2 * qv1 * a.layers * 4 / GB:.2f} GiB whole.",
        "",
        "| model | P | W | now: per rank GiB | before: per rank GiB | of which moments now / before | "
        "1 process GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, P, n_layers, h, i, V, kv in (("7B (Llama 2)", 6.74e9, 32, 4096, 11008, 32000, 1.0),
                                           ("70B (Llama 2)", 69.0e9, 80, 8192, 28672, 32000, 0.125)):
        whole = 2 * n_layers * h * h * (1 + kv) * 4  # the moments of every q and v
        for W in (2, 8):
            m_now = whole / W + 2 * h * h * 4
            now = P * 4 / W + layer_bytes(h, i, kv) + 2 * V * h * 4 + m_now
            before = P * 4 / W + 2 * P * 4 + whole
            lines.append(f"| {name} | {P / 1e9:.1f} B | {W} | {now / GB:.1f} | {before / GB:.1f} | "
                         f"{m_now / GB:.1f} / {whole / GB:.1f} | {(P * 4 + whole) / GB:.1f} |")
    lines.append("")
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
