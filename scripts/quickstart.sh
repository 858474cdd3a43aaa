#!/usr/bin/env bash
# Quickstart: build the embedded default model, then run the original README's budget loop
# scaled to the embedded 1.5k pool (budgets 100..400, 50 labelled per round, bucket/top/forward_ppl),
# and print budget -> held-out loss. About 5-8 minutes on 2 CPU cores.
#
# Lighter than the original's settings to fit that time: 1 epoch (original 3), micro-batch 4 x
# accumulation 2 (original 1 x 16), lr 1e-3 for the tiny model (original 2e-5), context 384
# (original 2048 training / 1024 scoring).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
OUT="${OUT:-runs/quickstart}"
MODEL="${MODEL:-models/tiny-llama}"
THREADS="${THREADS:-2}"
start=$(date +%s)
if [ ! -f "$MODEL/config.json" ]; then
  "$PY" build_default_model.py --file_path data/dolly-1.5k.jsonl --save_path "$MODEL" --threads "$THREADS"
fi
prev=""
runs=()
for budget in 100 200 300 400; do
  run="$OUT/RUN_$budget"
  resume=()
  if [ -n "$prev" ]; then resume=(--resume --resume_checkpoint_path "${prev}_sharded"); fi
  if [ -f "$run/state.json" ]; then resume=(--resume); fi   # re-running the quickstart continues
  "$PY" acquisition_AL.py --file_path data/dolly-1.5k.jsonl --init_checkpoint_path "$MODEL" \
    --al_data_fraction "$budget" --num_acquisition_samples 50 --heldout_size 100 \
    --stratification_strategy bucket --num_k 5 --pick_samples_from top --sampling_strategy forward_ppl \
    --lr 1e-3 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 384 --model_max_length 384 \
    --threads "$THREADS" --seed 42 --model_path "$run" "${resume[@]}"
  prev="$run"
  runs+=("$run")
done
"$PY" scripts/budget_table.py "${runs[@]}"
echo "elapsed: $(( $(date +%s) - start ))s"
echo "model: $MODEL | runs: $OUT/RUN_<budget> (selected.json, state.json, rounds/) | checkpoints: $OUT/RUN_<budget>_sharded"
