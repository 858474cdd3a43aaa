r"""LoRA against full fine-tuning: training tokens/s and peak memory, side by side in one run.

Each configuration trains in its own process (so peak RSS is its own) with train_AL.train on the
same examples of the embedded pool: 1 epoch, 4 rows per step, 256-token context. Timed: the
optimizer steps after the first (the first pays one-off allocation); tokens = every input token
of those steps (prompt + answer, padding not counted). Peak memory: the process's peak RSS, and the
same less its RSS once the model is loaded (what training itself adds: gradients, optimizer state,
activations). Configurations alternate (full, lora, full, lora, ...) so a noisy neighbour hits both
alike; medians over the repeats, ratios of the medians.

    python benchmarks/bench_lora.py                          # SmolLM2-135M, writes benchmarks/results/lora.md
    python benchmarks/bench_lora.py --model models/tiny-llama --steps 3 --repeats 1 --out /tmp/lora.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from al_lora import DEFAULT_TARGETS  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402


def status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 2**20


def child(a: argparse.Namespace) -> None:
    import al_lora
    import fsdp_utils
    from al_datasets import load_records
    from al_prompts import encode_records, pad_id_of
    from al_training import TrainConfig, train

    device = fsdp_utils.setup(a.threads)
    tok = fsdp_utils.load_tokenizer(a.model)
    records = load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))[: a.steps * 4]
    enc = encode_records(tok, records)
    lora = al_lora.LoraSpec(a.lora_r, 2.0 * a.lora_r, 0.0, tuple(DEFAULT_TARGETS.split(","))) \
        if a.lora_r else None
    model = fsdp_utils.load_model(a.model, device, lora=lora)
    loaded = status_gib("VmRSS")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    times: list[float] = []
    last = [time.time()]

    def on_step(step: int) -> None:
        now = time.time()
        times.append(now - last[0])
        last[0] = now

    cfg = TrainConfig(lr=1e-4, epochs=1, train_batch_size=4, grad_accum=1, max_length=256, progress=False)
    examples = [enc[r["id"]] for r in records]
    stats, _ = train(model, examples, cfg, pad_id_of(tok), on_step=on_step)
    per_step = stats["step_tokens"][1:]  # the first step (allocation, warm-up) is not timed
    print(json.dumps({"tokens_per_s": sum(per_step) / sum(times[1:]), "peak_gib": status_gib("VmHWM"),
                      "train_gib": status_gib("VmHWM") - loaded, "trainable": trainable, "total": total,
                      "train_loss": stats["train_loss"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M"))
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "lora.md"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    runs: dict[int, list[dict]] = {0: [], a.lora_r: []}
    for rep in range(a.repeats):
        for r in (0, a.lora_r):
            out = subprocess.run([sys.executable, __file__, "--child", "--model", a.model, "--lora_r", str(r),
                                  "--steps", str(a.steps), "--threads", str(a.threads)],
                                 check=True, capture_output=True, text=True)
            runs[r].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep} {'full' if r == 0 else f'lora r={r}'}: {runs[r][-1]}", file=sys.stderr)
    med = {r: {k: statistics.median(x[k] for x in v) for k in v[0]} for r, v in runs.items()}
    full, lora = med[0], med[a.lora_r]
    rows = [("training tokens/s", "tokens_per_s", "{:.0f}"), ("peak RSS (GiB)", "peak_gib", "{:.2f}"),
            ("training's own memory: peak less loaded model (GiB)", "train_gib", "{:.2f}"),
            ("trainable parameters", "trainable", "{:,.0f}")]
    lines = [f"# LoRA vs full fine-tuning ({os.path.basename(a.model.rstrip('/'))})", "",
             f"`python benchmarks/bench_lora.py` on {os.cpu_count()} CPU cores, {a.threads} threads: {a.steps} "
             f"optimizer steps of 4 rows x <= 256 tokens per run (first step not timed), AdamW, fp32; "
             f"LoRA r={a.lora_r}, alpha={2 * a.lora_r} on every projection ({DEFAULT_TARGETS.replace(',', ', ')}); "
             f"configurations alternated, median of {a.repeats} runs each.", "",
             f"| | full fine-tuning | LoRA r={a.lora_r} | LoRA / full |", "|---|---|---|---|"]
    for name, key, fmt in rows:
        lines.append(f"| {name} | {fmt.format(full[key])} | {fmt.format(lora[key])} | {lora[key] / full[key]:.2f}x |")
    lines += ["", f"Total parameters {full['total']:,.0f} (LoRA adds {lora['total'] - full['total']:,.0f}). "
              "Per-run numbers: " + "; ".join(f"{'full' if r == 0 else 'lora'} {x['tokens_per_s']:.0f} tok/s "
                                                f"{x['peak_gib']:.2f} GiB" for r, v in runs.items() for x in v)]
    text = "\n".join(lines) + "\n"
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
