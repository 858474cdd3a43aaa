"""Peak memory per rank when 2 ranks load a >= 1 B-parameter model, side by side in one run.

    python benchmarks/bench_sharded_load.py [--workdir /tmp/al-bench-1b]

naive:        each rank loads the full HF model (from_pretrained), then shards it with fully_shard
hf-broadcast: ours from a HF folder: meta-device build, rank 0 reads the file, broadcast into shards
sharded:      ours from a sharded (DCP) checkpoint written by convert_hf_to_fsdp.py (one process):
              meta-device build, each rank reads its half of every tensor
sharded-by-2-ranks: the same from a checkpoint saved by 2 ranks (as the AL loop writes under torchrun)
Memory = peak RSS minus the RSS after imports and process-group start. For the sharded load, the
run goes on to a no-grad forward and a forward+backward of 1000 tokens (the original README's
memory table). A random-weight Llama (fp32) is built once from a config and saved in --workdir.
Writes benchmarks/results/sharded_load.md, which the README quotes.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fsdp_utils  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402

GB = 1024**3


def rss() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024 / GB


def peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def end_worker(out: dict, path: str) -> None:
    """Every rank's results, in rank order, written by rank 0 to `path`; then the process group ends."""
    res = fsdp_utils.gather_lists([out])
    if fsdp_utils.is_main():
        with open(path, "w") as f:
            json.dump(res, f)
    fsdp_utils.barrier()
    fsdp_utils.teardown()


def worker(mode: str, workdir: str, tokens: int) -> None:
    device = fsdp_utils.setup(1)
    import torch.distributed.checkpoint  # noqa: F401  (imports belong to the baseline)
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM

    fsdp_utils.barrier()
    base = rss()
    t0 = time.time()
    if mode == "naive":
        model = AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "hf"), dtype=torch.float32)
        fsdp_utils.shard(model, device)
    else:
        src = {"hf-broadcast": "hf", "sharded": "sharded", "sharded-by-2-ranks": "sharded2"}[mode]
        model = fsdp_utils.load_model(os.path.join(workdir, src), device)
    out = {"rank": fsdp_utils.rank(), "load_s": time.time() - t0, "loaded_peak": peak() - base,
           "loaded_now": rss() - base}
    if mode == "sharded":
        x = torch.randint(3, model.config.vocab_size, (1, tokens))
        with torch.no_grad():
            model(input_ids=x)
        model.reshard()
        out["nograd_peak"] = peak() - base
        model(input_ids=x, labels=x).loss.backward()
        out["grad_peak"] = peak() - base
        model.zero_grad(set_to_none=True)
        # what the AL loop writes under 2 ranks: every rank's shard a separate item
        fsdp_utils.save_checkpoint(model, None, os.path.join(workdir, "sharded2"), {})
    end_worker(out, os.path.join(workdir, f"{mode}.json"))


def build(workdir: str, args) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                      num_key_value_heads=args.hidden // 128, tie_word_embeddings=False)
    hf = os.path.join(workdir, "hf")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        print("building the random-weight model ...", file=sys.stderr)
        torch.manual_seed(0)
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        model.to_empty(device="cpu")
        for p in model.parameters():  # cheap random weights: what is measured is bytes, not quality
            p.data.uniform_(-0.02, 0.02)
        model.save_pretrained(hf, max_shard_size="2GB")
        del model
    shutil.rmtree(os.path.join(workdir, "sharded"), ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "convert_hf_to_fsdp.py"), "--load_path", hf,
                    "--save_path", os.path.join(workdir, "sharded")], check=True)
    with open(os.path.join(hf, "config.json")) as f:
        c = json.load(f)
    h, i, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    return 2 * v * h + n * (4 * h * h + 3 * h * i + 2 * h) + h


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The random-weight Llama's shape and where it is built (also bench_less_ranks.py's)."""
    p.add_argument("--workdir", default="/tmp/al-bench-1b")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--vocab", type=int, default=32000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sharded_load.md"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.workdir, args.tokens)
    n_params = build(args.workdir, args)
    full = n_params * 4 / GB
    convert_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GB
    hf_files = sorted(f for f in os.listdir(os.path.join(args.workdir, "hf")) if f.endswith(".safetensors"))
    largest = max(os.path.getsize(os.path.join(args.workdir, "hf", f)) for f in hf_files) / GB
    res = {}
    for mode in ("naive", "hf-broadcast", "sharded", "sharded-by-2-ranks"):
        print(f"2 ranks, {mode} load ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", __file__,
                        "--workdir", args.workdir, "--tokens", str(args.tokens), "--worker", mode],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        with open(os.path.join(args.workdir, f"{mode}.json")) as f:
            res[mode] = json.load(f)
    worst = {m: max(r["loaded_peak"] for r in rs) for m, rs in res.items()}
    lines = [
        "# Sharded load: peak memory per rank (2 ranks, CPU, gloo)",
        "",
        f"Llama with {n_params / 1e9:.2f} B parameters, fp32, random weights: full model = {full:.2f} GiB. "
        "Memory = peak RSS minus RSS after imports and process-group start; worst rank shown.",
        "",
        "| load | peak per rank (GiB) | x full model | x naive | load seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in res:
        secs = max(r["load_s"] for r in res[m])
        lines.append(f"| {m} | {worst[m]:.2f} | {worst[m] / full:.2f} | {worst[m] / worst['naive']:.2f} | {secs:.0f} |")
    s = res["sharded"]
    shard = full / 2
    lines += ["", f"convert_hf_to_fsdp.py on the {len(hf_files)}-file HF folder: peak RSS {convert_peak:.2f} GiB "
              f"(whole process; largest input file {largest:.2f} GiB, full model {full:.2f} GiB).", ""]
    for m in ("sharded", "sharded-by-2-ranks"):
        lines.append(f"{m}: **{worst[m] / full:.2f} x the full model's bytes per rank** (target <= 0.6) and "
                     f"**{worst[m] / worst['naive']:.2f} x naive** (target <= 0.5).")
    lines += [
        "",
        f"## Memory table (per rank, 2 ranks, {args.tokens} tokens, fp32 CPU)",
        "",
        "| stage | actual (GiB, worst rank) | theoretical (GiB) | what the theory counts |",
        "|---|---:|---:|---|",
        f"| loaded | {max(r['loaded_peak'] for r in s):.2f} | {shard:.2f} | this rank's half of the fp32 weights |",
        f"| no-grad forward of {args.tokens} tokens | {max(r['nograd_peak'] for r in s):.2f} | {shard:.2f} | "
        "weights; plus one layer gathered at a time and activations of one layer |",
        f"| forward + backward of {args.tokens} tokens | {max(r['grad_peak'] for r in s):.2f} | {2 * shard:.2f} | "
        "weights + gradients (sharded); plus saved activations of every layer |",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
