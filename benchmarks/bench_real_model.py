r"""SmolLM2-135M on CPU: the original README's memory table (1 rank and per rank on 2 ranks) and
training throughput on 1 rank vs 2 ranks, measured side by side in one run.

    bash scripts/get_smollm2.sh && python convert_hf_to_fsdp.py --load_path models/SmolLM2-135M \
        --save_path models/SmolLM2-135M_sharded
    python benchmarks/bench_real_model.py [--model models/SmolLM2-135M_sharded]

memory: load the sharded checkpoint, then a no-grad forward of 1000 tokens, then a forward +
        backward of 1000 tokens; peak RSS minus the RSS after imports and process-group start. Run
        twice: with glibc's default allocator settings, and with MALLOC_MMAP_THRESHOLD_=65536, which
        returns every freed buffer over 64 KiB to the OS (the default keeps raising that threshold,
        so freed all-gather buffers stay in the heap and count towards RSS).
train:  train_AL.train on the first 64 pool examples (256-token truncation), global batch 16
        (1 rank: 4 rows x 4 micro-batches; 2 ranks: 4 rows x 2 micro-batches each); the same 2 cores
        either way (1 rank x 2 threads vs 2 ranks x 1 thread). Tokens/s counts prompt + answer tokens.
Writes benchmarks/results/real_model.md, which the README quotes.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_prompts import encode_records, pad_id_of, truncate_pair  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402
from bench_sharded_load import GB, end_worker, peak, rss  # noqa: E402


def memory(args) -> dict:
    device = torch.device("cpu")
    base = rss()
    model = fsdp_utils.load_model(args.model, device)
    out = {"loaded": peak() - base}
    x = torch.randint(3, model.config.vocab_size, (1, args.tokens))
    with torch.no_grad():
        model(input_ids=x)
    if fsdp_utils.world() > 1:
        model.reshard()
    out["nograd"] = peak() - base
    model(input_ids=x, labels=x).loss.backward()
    out["grad"] = peak() - base
    return out


def train_speed(args) -> dict:
    from al_training import TrainConfig, train

    tok = fsdp_utils.load_tokenizer(args.model)
    model = fsdp_utils.load_model(args.model, torch.device("cpu"))
    records = load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))[: args.examples]
    enc = encode_records(tok, records)
    examples = [enc[r["id"]] for r in records]
    tokens = sum(len(p) + len(a) for p, a, _ in (truncate_pair(e.prompt, e.answer, 256) for e in examples))
    cfg = TrainConfig(lr=1e-5, epochs=1, train_batch_size=4, grad_accum=16 // (4 * fsdp_utils.world()),
                      max_length=256, progress=False)
    fsdp_utils.barrier()
    t0 = time.time()
    stats, _ = train(model, examples, cfg, pad_id_of(tok))
    fsdp_utils.barrier()
    secs = time.time() - t0
    return {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs, "steps": stats["steps"],
            "loss": stats["train_loss"]}


def worker(args) -> None:
    fsdp_utils.setup(2 // int(os.environ.get("WORLD_SIZE", "1")))
    import transformers.models.llama.modeling_llama  # noqa: F401  (imports belong to the baseline)

    fsdp_utils.barrier()
    out = memory(args) if args.worker == "memory" else train_speed(args)
    end_worker(out, os.path.join(args.workdir, f"{args.worker}_{fsdp_utils.world()}.json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/SmolLM2-135M_sharded")
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--workdir", default="/tmp/al-bench-real")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "real_model.md"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    fsdp_utils.check_model_dir(args.model, "--model")
    os.makedirs(args.workdir, exist_ok=True)
    res = {}
    for what, malloc in (("memory", {}), ("memory", {"MALLOC_MMAP_THRESHOLD_": "65536"}), ("train", {})):
        for n in (1, 2):
            print(f"{what} {malloc or ''}, {n} rank(s) ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", __file__,
                            "--model", args.model, "--tokens", str(args.tokens), "--examples", str(args.examples),
                            "--workdir", args.workdir, "--worker", what], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(2 // n), **malloc})
            with open(os.path.join(args.workdir, f"{what}_{n}.json")) as f:
                res[(what + ("_mmap" if malloc else ""), n)] = json.load(f)
    with open(os.path.join(args.model, "config.json")) as f:
        c = json.load(f)
    h, i, v, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    n_params = v * h * (1 if c.get("tie_word_embeddings") else 2) + L * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h
    W = n_params * 4 / GB
    logits = args.tokens * v * 4 / GB  # fp32 logits of every position (the loss also keeps their grad)
    lines = [
        "# SmolLM2-135M on CPU: memory table and training throughput",
        "",
        f"{n_params / 1e6:.1f} M parameters, fp32 = {W:.2f} GiB of weights (embeddings tied). Memory = peak RSS "
        "minus RSS after imports and process-group start (worst rank). Theory: weights (and gradients) this "
        f"rank holds, plus the {args.tokens}-token fp32 logits ({logits:.2f} GiB; doubled with their gradient); "
        "the rest of the actual numbers is activations and allocator slack.",
        "",
        "| stage | 1 rank theory | 1 rank | 1 rank, mmap 64k | 2 ranks theory (per rank) | 2 ranks (per rank) "
        "| 2 ranks, mmap 64k (per rank) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    theory = {"loaded": lambda n: W / n, "nograd": lambda n: W / n + logits, "grad": lambda n: 2 * W / n + 2 * logits}
    names = {"loaded": "loaded", "nograd": f"no-grad forward, {args.tokens} tokens",
             "grad": f"forward + backward, {args.tokens} tokens"}
    for k in ("loaded", "nograd", "grad"):
        cells = [f"{theory[k](n):.2f} GiB | " + " | ".join(f"{max(r[k] for r in res[(m, n)]):.2f} GiB"
                                                          for m in ("memory", "memory_mmap")) for n in (1, 2)]
        lines.append(f"| {names[k]} | " + " | ".join(cells) + " |")
    t1, t2 = res[("train", 1)][0], res[("train", 2)][0]
    lines += [
        "",
        f"## Training throughput ({args.examples} examples, {t1['tokens']} tokens, global batch 16, 256-token "
        "truncation, same 2 cores)",
        "",
        "| ranks | threads per rank | seconds | tokens/s | final-epoch loss |",
        "|---:|---:|---:|---:|---:|",
        f"| 1 | 2 | {t1['seconds']:.1f} | {t1['tokens_per_s']:.0f} | {t1['loss']:.4f} |",
        f"| 2 | 1 | {t2['seconds']:.1f} | {t2['tokens_per_s']:.0f} | {t2['loss']:.4f} |",
        "",
        f"2 ranks / 1 rank: **{t2['tokens_per_s'] / t1['tokens_per_s']:.2f}x** tokens/s on the same 2 cores "
        "(FSDP2 over gloo adds an all-gather per layer in forward and backward and a reduce-scatter of the "
        "gradients; with more cores or GPUs each rank brings its own compute). Losses agree because the "
        "global step is the same.",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
