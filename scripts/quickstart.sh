#!/usr/bin/env bash
# Quickstart: build the embedded default model, then run the original README's budget loop
# (scripts/run_al.sh) scaled to the embedded 1.5k pool: budgets 100..400, 50 labelled per round,
# bucket/top/forward_ppl, no AlpacaEval step; print budget -> held-out loss. About 3-6 minutes
# on 2 CPU cores.
#
# Lighter than the original's settings to fit that time (run_al.sh's defaults): 1 epoch (original 3),
# micro-batch 4 x accumulation 2 (original 1 x 16), lr 1e-3 for the tiny model (original 2e-5),
# context 384 (original 2048 training / 1024 scoring).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export OUT="${OUT:-runs/quickstart}" MODEL="${MODEL:-models/tiny-llama}" BUDGETS="100 200 300 400" PER_ROUND=50 \
  HELDOUT=100 STRATEGY=forward_ppl STRAT=bucket PICK=top SEED=42 EVAL_ITEMS=0
start=$(date +%s)
bash scripts/run_al.sh
runs=()
for budget in $BUDGETS; do runs+=("$OUT/RUN_$budget"); done
"$PY" scripts/budget_table.py "${runs[@]}"
echo "elapsed: $(( $(date +%s) - start ))s"
echo "model: $MODEL | runs: $OUT/RUN_<budget> (selected.json, state.json, rounds/) | checkpoints: $OUT/RUN_<budget>_sharded"
echo "next: README.md \"Which strategy?\" for your own data and model; configs/quickstart.yaml is this loop as a config file"
