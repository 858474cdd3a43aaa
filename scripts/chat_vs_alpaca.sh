#!/usr/bin/env bash
# SmolLM2-135M-Instruct: held-out answer NLL under --prompt_template alpaca vs chat, untrained and after
# fine-tuning on the same Dolly records under each template (README "Chat template vs alpaca").
#   bash scripts/chat_vs_alpaca.sh            # N_TRAIN=150 records 100.., held-out = records 0..99
# Held-out and training answers are scored/trained at 512 tokens; 1 epoch, lr 5e-5, 4 rows x 2 micro-batches.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
MODEL="${MODEL:-models/SmolLM2-135M}" OUT="${OUT:-runs/chat_vs_alpaca}" N_TRAIN="${N_TRAIN:-150}"
if [ ! -f "$MODEL/config.json" ]; then bash scripts/get_smollm2.sh "$MODEL"; fi
mkdir -p "$OUT"
head -n 100 data/dolly-1.5k.jsonl > "$OUT/heldout.jsonl"
sed -n "101,$((100 + N_TRAIN))p" data/dolly-1.5k.jsonl > "$OUT/train.jsonl"
for t in alpaca chat; do
  if [ ! -f "$OUT/${t}_sharded/.metadata" ]; then
    "$PY" train_AL.py --init_checkpoint_path "$MODEL" --data_path "$OUT/train.jsonl" --save_path "$OUT/${t}_sharded" \
      --prompt_template "$t" --epochs 1 --lr 5e-5 --train_batch_size 4 --grad_accum 2 --train_max_length 512 \
      --dont_save_opt --no_progress
  fi
  for m in base trained; do
    dir="$MODEL"; [ "$m" = trained ] && dir="$OUT/${t}_sharded"
    [ -f "$OUT/${t}_$m.metrics.json" ] || "$PY" eval_generate.py --model_path "$dir" --file_path "$OUT/heldout.jsonl" \
      --max_new_tokens 1 --greedy --metrics --prompt_template "$t" --model_context_length 512 \
      --save_file_name "$OUT/${t}_$m.json" --no_progress
  done
done
"$PY" - "$OUT" "$N_TRAIN" <<'PY' | tee benchmarks/results/chat_vs_alpaca.md
import json, sys
out, n = sys.argv[1], sys.argv[2]
print(f"# SmolLM2-135M-Instruct: alpaca vs chat template (`bash scripts/chat_vs_alpaca.sh`)\n")
print(f"Answer NLL on Dolly records 0..99 (context 512), untrained and after 1 epoch on records 100..{99 + int(n)} "
      "under the same template.\n")
print("| template | untrained (token-weighted) | trained (token-weighted) | untrained (per example) | trained (per example) |")
print("|---|---:|---:|---:|---:|")
for t in ("alpaca", "chat"):
    b, a = (json.load(open(f"{out}/{t}_{m}.metrics.json")) for m in ("base", "trained"))
    print(f"| {t} | {b['reference_nll']:.3f} | {a['reference_nll']:.3f} | {b['reference_nll_per_example']:.3f} | "
          f"{a['reference_nll_per_example']:.3f} |")
PY
