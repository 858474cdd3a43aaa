#!/usr/bin/env bash
# The targeted experiment ("Does it beat random?" in the README), in parts that resume when rerun:
#   bash scripts/targeted.sh default   # default model: both targets, 6 arms x 5 seeds, budgets 50..250
#   bash scripts/targeted.sh smollm2   # SmolLM2-135M: target (a), random/rds/less x 5 seeds, budgets 25..150
# (random goes on to twice the largest budget: RANDOM_BUDGET; SEEDS="1 2" etc. runs a part of a part)
# Each run goes straight to the part's largest budget (its rounds are the learning curve); a run
# whose state.json says it is done is skipped, an interrupted one resumes. Targets:
#   (a) summarization: 30 Dolly summarization records are the target, 50 others the test set, both
#       removed from the pool (56 stay in it among 1,366 others); (b) alpaca_eval: 100 AlpacaEval
#       instructions with reference answers are the target, 300 others the test set; pool = Dolly.
# Every run also measures the untargeted held-out loss (100 pool records, 50 on SmolLM2, drawn by the seed).
# Then report_AL.py per target on the test loss, against examples and against answer words, and the
# copies the README quotes in benchmarks/results/targeted_<part>_<target>*.{md,png}.
# The default part runs its two targets side by side, one thread each (TARGETS/THREADS to change).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
PART="${1:-default}"
OUT="${OUT:-runs/targeted}"
SEEDS="${SEEDS:-1 2 3 4 5}"
TGT="--target_file @DATA/target.jsonl"
case "$PART" in
  default)
    MODEL="${MODEL:-models/tiny-llama}"
    TARGETS="${TARGETS:-summarization alpaca_eval}"
    MAX_BUDGET="${MAX_BUDGET:-250}" PER_ROUND="${PER_ROUND:-50}" THREADS="${THREADS:-1}" HELDOUT="${HELDOUT:-100}"
    # compare_strategies.sh's training; half of the remaining pool scored per round (every arm)
    TRAIN_FLAGS="${TRAIN_FLAGS:---lr 1e-3 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 384 --model_max_length 384 --cluster_data_fraction 0.5}"
    # name=flags; rds_guard's TAU 0.99 is the median nearest-neighbour cosine of pool prompts under the
    # base model (measured on the pool, never on a test set), fixed before any run
    ARMS=("random=--sampling_strategy random"
          "ppl_bucket_top=--sampling_strategy forward_ppl --stratification_strategy bucket --num_k 5 --pick_samples_from top"
          "rds=--sampling_strategy rds $TGT"
          "less=--sampling_strategy less $TGT --save_opt"
          "typiclust_rds=--seed_strategy typiclust --sampling_strategy rds $TGT"
          "rds_guard=--sampling_strategy rds $TGT --max_similarity 0.99")
    ;;
  smollm2)
    MODEL="${MODEL:-models/SmolLM2-135M}"
    TARGETS="${TARGETS:-summarization}"
    MAX_BUDGET="${MAX_BUDGET:-150}" PER_ROUND="${PER_ROUND:-25}" THREADS="${THREADS:-2}" HELDOUT="${HELDOUT:-50}"
    # lighter than the default part, the same for every arm: 1 epoch, 256 tokens, a quarter of the
    # remaining pool scored per round
    TRAIN_FLAGS="${TRAIN_FLAGS:---lr 5e-5 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 256 --model_max_length 256 --cluster_data_fraction 0.25}"
    ARMS=("random=--sampling_strategy random"
          "rds=--sampling_strategy rds $TGT"
          "less=--sampling_strategy less $TGT --save_opt")
    if [ ! -f "$MODEL/config.json" ]; then bash scripts/get_smollm2.sh "$MODEL"; fi
    ;;
  *) echo "usage: bash scripts/targeted.sh default|smollm2" >&2; exit 2 ;;
esac
RANDOM_BUDGET="${RANDOM_BUDGET:-$((2 * MAX_BUDGET))}"
start=$(date +%s)
if [ ! -f "$MODEL/config.json" ] && [ "$MODEL" = models/tiny-llama ]; then
  "$PY" build_default_model.py --file_path data/dolly-1.5k.jsonl --save_path "$MODEL" --threads 2
fi
"$PY" scripts/split_target.py --out "$OUT/data"

one_target() {  # all arms x seeds of one target, then its reports
  local target=$1 data="$OUT/data/$1" pool="$OUT/data/$1/pool.jsonl" dir="$OUT/$PART/$1" runs=()
  if [ "$target" = alpaca_eval ]; then pool=data/dolly-1.5k.jsonl; fi
  for seed in $SEEDS; do
    for arm in "${ARMS[@]}"; do
      local name="${arm%%=*}" flags="${arm#*=}" run="$dir/${arm%%=*}_s$seed" resume=() budget=$MAX_BUDGET
      # random goes on to twice the budget, so "random needs 2x the labels" can be measured at all
      if [ "$name" = random ]; then budget=$RANDOM_BUDGET; fi
      runs+=("$run")
      if [ -f "$run/state.json" ]; then
        if "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(s['round_log'][-1]['labelled'] < int(sys.argv[2]) if s['round_log'] else 1)" "$run/state.json" "$budget"; then
          continue  # finished
        fi
        resume=(--resume)
      fi
      echo "[$target] $name seed $seed" >&2
      # shellcheck disable=SC2086
      "$PY" acquisition_AL.py --file_path "$pool" --init_checkpoint_path "$MODEL" --test_file "$data/test.jsonl" \
        --al_data_fraction "$budget" --num_acquisition_samples "$PER_ROUND" --heldout_size "$HELDOUT" --seed "$seed" \
        --threads "$THREADS" --no_progress $TRAIN_FLAGS ${flags//@DATA/$data} --model_path "$run" "${resume[@]}" \
        2>> "$dir.log"
    done
  done
  for x in examples answer_words; do
    "$PY" report_AL.py "${runs[@]}" --metric test --x "$x" --out "$dir/report_$x" > /dev/null
    cp "$dir/report_$x.md" "benchmarks/results/targeted_${PART}_${target}_$x.md"
    cp "$dir/report_$x.png" "benchmarks/results/targeted_${PART}_${target}_$x.png"
  done
  "$PY" report_AL.py "${runs[@]}" --metric heldout --out "$dir/report_heldout" > /dev/null
  cp "$dir/report_heldout.md" "benchmarks/results/targeted_${PART}_${target}_heldout.md"
}

mkdir -p "$OUT/$PART"
pids=()
for target in $TARGETS; do
  one_target "$target" &
  pids+=($!)
  if [ "$PART" != default ]; then wait "${pids[-1]}"; fi  # one at a time where each uses both cores
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "elapsed: $(( $(date +%s) - start ))s; reports: $OUT/$PART/<target>/report_*.md; logs: $OUT/$PART/<target>.log"
