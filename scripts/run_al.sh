#!/usr/bin/env bash
# The original README's loop: for each budget, an AL run chained from the previous budget
# (--resume --resume_checkpoint_path), then AlpacaEval generation + offline metrics.
# Edit the variables (or set them in the environment); defaults: embedded data and default model.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
POOL="${POOL:-data/dolly-1.5k.jsonl}"
MODEL="${MODEL:-models/tiny-llama}"                 # base checkpoint: HF folder or sharded
OUT="${OUT:-runs/run_al}"                           # runs go to $OUT/RUN_<budget>, outputs to $OUT/eval
BUDGETS="${BUDGETS:-100 200 300 400}"
PER_ROUND="${PER_ROUND:-50}"
STRATEGY="${STRATEGY:-forward_ppl}"
STRAT="${STRAT:-bucket}"                            # greedy | bucket | mixed
PICK="${PICK:-top}"                                 # top | bottom | uniform
SEED="${SEED:-42}"
HELDOUT="${HELDOUT:-100}"                          # held-out slice for the loss curve
EVAL_ITEMS="${EVAL_ITEMS:-100}"                     # AlpacaEval instructions generated per budget (0: no eval)
TRAIN_FLAGS="${TRAIN_FLAGS:---lr 1e-3 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 384 --model_max_length 384}"
AL_FLAGS="${AL_FLAGS:-}"                            # more acquisition_AL.py flags, e.g. --cluster_data_fraction 0.25
EVAL_FLAGS="${EVAL_FLAGS:---max_new_tokens 128 --batch_size 16}"
LAUNCH="${LAUNCH:-$PY}"                             # e.g. LAUNCH="torchrun --nproc_per_node=4"
THREADS="${THREADS:-2}"
start=$(date +%s)
if [ ! -f "$MODEL/config.json" ] && [ "$MODEL" = models/tiny-llama ]; then
  "$PY" build_default_model.py --file_path "$POOL" --save_path "$MODEL" --threads "$THREADS"
fi
prev=""
for budget in $BUDGETS; do
  run="$OUT/RUN_$budget"
  resume=()
  if [ -n "$prev" ]; then resume=(--resume --resume_checkpoint_path "${prev}_sharded"); fi
  if [ -f "$run/state.json" ]; then resume=(--resume); fi
  # shellcheck disable=SC2086
  $LAUNCH acquisition_AL.py --file_path "$POOL" --init_checkpoint_path "$MODEL" --al_data_fraction "$budget" \
    --num_acquisition_samples "$PER_ROUND" --heldout_size "$HELDOUT" --sampling_strategy "$STRATEGY" \
    --stratification_strategy "$STRAT" --num_k 5 --pick_samples_from "$PICK" --seed "$SEED" \
    --threads "$THREADS" $TRAIN_FLAGS $AL_FLAGS --model_path "$run" "${resume[@]}"
  if [ "$EVAL_ITEMS" = 0 ]; then prev="$run"; continue; fi
  # shellcheck disable=SC2086
  $LAUNCH eval_generate.py --sharded_model "${run}_sharded" --file_path alpaca_eval --limit "$EVAL_ITEMS" \
    --save_file_name "$OUT/eval/RUN_$budget.json" --metrics --heldout_run "$run" --heldout_pool "$POOL" \
    --seed "$SEED" --threads "$THREADS" $EVAL_FLAGS
  prev="$run"
done
evals=""
if [ "$EVAL_ITEMS" != 0 ]; then evals=", AlpacaEval outputs + metrics in $OUT/eval/"; fi
echo "elapsed: $(( $(date +%s) - start ))s; runs in $OUT/RUN_<budget>$evals"
