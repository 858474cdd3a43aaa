#!/usr/bin/env bash
# Several strategies x several seeds on the same pool and base model, each run straight to the
# largest budget (its rounds are the learning curve: 50, 100, ... labelled), then report_AL.py on
# examples and on answer words. Random goes on to twice the budget (RANDOM_BUDGET), so a budget
# ratio up to 2x can be measured at every budget (random's curve has to reach the strategy's value).
# Edit the variables; SEEDS may be split over several calls (same OUT): a finished run returns at once,
# interrupted ones resume, and each call reports the runs it was given.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
POOL="${POOL:-data/dolly-1.5k.jsonl}"
MODEL="${MODEL:-models/tiny-llama}"
OUT="${OUT:-runs/compare}"
MAX_BUDGET="${MAX_BUDGET:-300}"
RANDOM_BUDGET="${RANDOM_BUDGET:-$((2 * MAX_BUDGET))}"
PER_ROUND="${PER_ROUND:-50}"
SEEDS="${SEEDS:-42 43 44 45 46}"
# name:strategy:stratification:pick
CONFIGS="${CONFIGS:-random:random:greedy:top ppl_top:forward_ppl:bucket:top ppl_bottom:forward_ppl:bucket:bottom ifd:ifd:bucket:top cluster:cluster:greedy:top}"
TRAIN_FLAGS="${TRAIN_FLAGS:---lr 1e-3 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 384 --model_max_length 384}"
THREADS="${THREADS:-2}"
start=$(date +%s)
if [ ! -f "$MODEL/config.json" ] && [ "$MODEL" = models/tiny-llama ]; then
  "$PY" build_default_model.py --file_path "$POOL" --save_path "$MODEL" --threads "$THREADS"
fi
runs=()
for seed in $SEEDS; do
  for cfg in $CONFIGS; do
    IFS=: read -r name strategy strat pick <<< "$cfg"
    run="$OUT/${name}_s$seed"
    resume=() budget=$MAX_BUDGET
    if [ "$strategy" = random ]; then budget=$RANDOM_BUDGET; fi
    if [ -f "$run/state.json" ]; then resume=(--resume); fi
    # shellcheck disable=SC2086
    "$PY" acquisition_AL.py --file_path "$POOL" --init_checkpoint_path "$MODEL" --al_data_fraction "$budget" \
      --num_acquisition_samples "$PER_ROUND" --heldout_size 100 --sampling_strategy "$strategy" \
      --stratification_strategy "$strat" --num_k 5 --pick_samples_from "$pick" --seed "$seed" \
      --threads "$THREADS" --no_progress $TRAIN_FLAGS --model_path "$run" "${resume[@]}"
    runs+=("$run")
  done
done
"$PY" report_AL.py "${runs[@]}" --out "$OUT/report"
"$PY" report_AL.py "${runs[@]}" --x answer_words --out "$OUT/report_answer_words"
echo "elapsed: $(( $(date +%s) - start ))s; reports: $OUT/report{,_answer_words}.{md,png}"
