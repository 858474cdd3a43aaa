"""Tokenising a pool (al_prompts.encode_records: prompt, prompt + answer, instruction per record)
with the Rust tokenizer called directly (al_prompts.batch_ids) against the transformers call, as
before; and the lazy pool's prompt-only encoding (a round of a strategy that reads no answers:
prompt and instruction per record). Side by side in one process, interleaved, for each tokenizer;
the encodings must be equal (the prompt-only one's prompts, with every answer read afterwards).

    python benchmarks/bench_tokenise.py [--models models/tiny-llama,models/SmolLM2-135M] [--n 30000]
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import al_prompts as P  # noqa: E402
import fsdp_utils  # noqa: E402
from al_datasets import load_records  # noqa: E402
from al_utils import atomic_write_text  # noqa: E402

NOW = P.batch_ids


def before(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, return_attention_mask=False).input_ids if texts else []


def prompts_only(tokenizer, records: list[dict]) -> P.Encodings:
    enc = P.lazy_encodings(tokenizer, {r["id"]: r for r in records})
    enc.ensure([r["id"] for r in records])
    return enc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="models/tiny-llama,models/SmolLM2-135M",
                   help="tokenizer folders, comma-separated")
    p.add_argument("--n", type=int, default=30_000,
                   help="records (the embedded pool repeated, instructions made distinct)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/tokenise.md")
    a = p.parse_args()
    base = load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))
    records = [{**base[j % len(base)], "id": str(j), "instruction": f"{base[j % len(base)]['instruction']} "
                f"({j // len(base)})"} for j in range(a.n)]
    lines = [f"# Tokenising a pool: the Rust tokenizer called directly against the transformers call ({a.n} records)",
             "", f"`python benchmarks/bench_tokenise.py --n {a.n}`: `encode_records` (prompt, prompt + answer and "
             "instruction of every record) through the transformers call (before) and the Rust tokenizer (now), "
             "and a lazy pool's prompt-only `ensure` (what a round of a strategy that reads no answers "
             f"tokenises: prompt and instruction); each variant {a.repeats}x interleaved in one process, best of "
             f"{a.repeats}; {os.cpu_count()} cores.", "",
             "| tokenizer | before s | now s | now / before | 1 M records now (s) | prompt-only s | "
             "prompt-only / now | 1 M records prompt-only (s) | encodings equal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model in a.models.split(","):
        tok = fsdp_utils.load_tokenizer(model)
        best: dict = {}
        encs = {}
        for _ in range(a.repeats):
            for name, fn, encode in (("before", before, P.encode_records), ("now", NOW, P.encode_records),
                                     ("prompts", NOW, prompts_only)):
                P.batch_ids = fn
                t0 = time.perf_counter()
                encs[name] = encode(tok, records)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        P.batch_ids = NOW
        x, y, z = encs["before"], encs["now"], encs["prompts"]
        equal = all((getattr(x, k) == getattr(y, k)).all() for k in ("buf", "start", "plen", "input_block", "ins_len"))
        equal = equal and all(z[r["id"]] == y[r["id"]] for r in records[:2000])  # answers read one by one
        per_m = {k: v / a.n * 1e6 for k, v in best.items()}
        lines.append(f"| {os.path.basename(model.rstrip('/'))} | {best['before']:.1f} | {best['now']:.1f} | "
                     f"**{best['now'] / best['before']:.2f}x** | {per_m['now']:.0f} | {best['prompts']:.1f} | "
                     f"**{best['prompts'] / best['now']:.2f}x** | {per_m['prompts']:.0f} | "
                     f"{'yes' if equal else 'NO'} |")
    text = "\n".join(lines)
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
