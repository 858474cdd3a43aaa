"""Markdown table of eval_generate.py metrics files: python scripts/eval_table.py A.metrics.json [B.metrics.json ...]
Rows in natural order of the paths (RUN_50 before RUN_100)."""
import json
import os
import re
import sys

print("| model | AlpacaEval reference NLL | ROUGE-L F1 | held-out answer NLL | output words |")
print("|---|---|---|---|---|")
for f in sorted(sys.argv[1:], key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]):
    with open(f) as fh:
        m = json.load(fh)
    held = f"{m['heldout_loss']:.4f}" if "heldout_loss" in m else "n/a"
    name = os.path.relpath(f).removesuffix(".metrics.json")
    print(f"| {name} | {m['reference_nll']:.4f} | {m['rougeL_f1']:.4f} | {held} | {m['output_words']:.1f} |")
