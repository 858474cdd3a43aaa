#!/usr/bin/env bash
# The targeted experiments (README "Does it beat random?"), in parts that resume when rerun:
#   bash scripts/targeted.sh pilot     # default model, seed 101's split: choose the variant (not reported)
#   bash scripts/targeted.sh smollm2   # SmolLM2-135M: both targets, 5 arms x seeds 1-5, budgets 25..150
#   bash scripts/targeted.sh default   # default model: both targets, the smollm2 arms, budgets 50..250
#   bash scripts/targeted.sh smollm2 status   # every run: labelled/budget, kept / parked / here
# SEEDS="1 2", TARGETS=summarization, ARMS_ONLY="random less" run a part of a part.
#
# Every seed draws its own split (scripts/split_target.py --seed SEED; the arms of a seed share it):
#   summarization: 30 Dolly summarization records are the target, 50 others the test set, both
#     removed from the pool (56 stay in it among 1,366 others);
#   alpaca_eval: 100 AlpacaEval instructions with reference answers are the target, 300 others the
#     test set; the pool is Dolly as it is;
#   brainstorming (TARGETS=brainstorming): as summarization, a category with no input anywhere, so
#     only content can be matched, not the format.
# Each run goes straight to the part's largest budget (its rounds are the learning curve). random runs
# to that budget, then a chained run (random2x) goes on to twice it (same curve: docs/design.md), so
# "random needs 2x the labels" is measurable and random has a checkpoint at the arms' last budget. A
# finished run is skipped, an interrupted one resumes. After a run: greedy answers for (the first
# ROUGE_LIMIT of) its test set from its final checkpoint, ROUGE-L against the references.
# Last: the round logs (state.json, rounds/*/{metrics.json,selected.jsonl}, ROUGE) are copied into
# benchmarks/results/runs/<part>/<target>/ and report_AL.py writes the tables from those copies
# (benchmarks/results/baselines_<part>_<target>_*: the earlier one-split tables, targeted_*, stay).
# A part outlasts one machine: `bash scripts/targeted.sh smollm2 park` copies the round logs of every
# run not yet kept (finished or not) into $PARKED/<part>/<target>/ (committed: a few KB a run), and the
# next invocation, on any machine, restores them and goes on; acquisition_AL.py --resume trains a
# restored run's last round again for the weights it needs (rounds train from the base, seeded).
# A random run kept before random went on to twice the budget is restored the same way, and chained.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
PART="${1:-smollm2}"
OUT="${OUT:-runs/targeted}"
RESULTS="${RESULTS:-benchmarks/results}"  # where the kept round logs and the tables go
PARKED="${PARKED:-$RESULTS/runs/parked}"
TGT="--target_file @DATA/target.jsonl"
# less as the experiment began it (seed 1, 869ded2): Kronecker-projected gradients; the loop's default
# became countsketch later, and a run changing its projection mid-way is refused on --resume
LESS="--sampling_strategy less $TGT --save_opt --grad_projection kronecker"
# the cheap baselines and today's less, in every part (bm25 with the rule the pilot chose: mean)
ARMS=("random=--sampling_strategy random"
      "random_format=--sampling_strategy random_format $TGT"
      "bm25=--sampling_strategy bm25 $TGT"
      "less=$LESS")
case "$PART" in
  pilot|default)
    MODEL="${MODEL:-models/tiny-llama}"
    TARGETS="${TARGETS:-summarization alpaca_eval}"
    PER_ROUND="${PER_ROUND:-50}" THREADS="${THREADS:-1}" HELDOUT="${HELDOUT:-100}"
    # compare_strategies.sh's training; half of the remaining pool scored per round (every arm)
    TRAIN_FLAGS="${TRAIN_FLAGS:---lr 1e-3 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 384 --model_max_length 384 --cluster_data_fraction 0.5}"
    if [ "$PART" = pilot ]; then  # cheaper: to 150, random not beyond, no ROUGE
      SEEDS="${SEEDS:-101}" MAX_BUDGET="${MAX_BUDGET:-150}" RANDOM_BUDGET="${RANDOM_BUDGET:-$MAX_BUDGET}" ROUGE_LIMIT=0
      ARMS+=("less_rr=$LESS --target_aggregation round_robin"
             "less_coverage=$LESS --target_aggregation coverage"
             "less_norm=$LESS --target_normalize"
             "rds_rr=--sampling_strategy rds $TGT --target_aggregation round_robin"
             "bm25_rr=--sampling_strategy bm25 $TGT --target_aggregation round_robin"
             "bm25_coverage=--sampling_strategy bm25 $TGT --target_aggregation coverage")
    else
      MAX_BUDGET="${MAX_BUDGET:-250}" ROUGE_LIMIT="${ROUGE_LIMIT:-100}"
      ARMS+=("less_rr=$LESS --target_aggregation round_robin")
    fi
    ;;
  smollm2)
    MODEL="${MODEL:-models/SmolLM2-135M}"
    TARGETS="${TARGETS:-summarization alpaca_eval}"
    MAX_BUDGET="${MAX_BUDGET:-150}" PER_ROUND="${PER_ROUND:-25}" THREADS="${THREADS:-2}" HELDOUT="${HELDOUT:-50}"
    ROUGE_LIMIT="${ROUGE_LIMIT:-50}"
    # lighter than the default part, the same for every arm: 1 epoch, 256 tokens, a quarter of the
    # remaining pool scored per round
    TRAIN_FLAGS="${TRAIN_FLAGS:---lr 5e-5 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 256 --model_max_length 256 --cluster_data_fraction 0.25}"
    # the less variant the pilot chose (README "Against the cheap baselines")
    ARMS+=("less_rr=$LESS --target_aggregation round_robin")
    if [ ! -f "$MODEL/config.json" ]; then bash scripts/get_smollm2.sh "$MODEL"; fi
    ;;
  *) echo "usage: bash scripts/targeted.sh pilot|smollm2|default [park|status]" >&2; exit 2 ;;
esac
SEEDS="${SEEDS:-1 2 3 4 5}"
RANDOM_BUDGET="${RANDOM_BUDGET:-$((2 * MAX_BUDGET))}"
start=$(date +%s)
if [ ! -f "$MODEL/config.json" ] && [ "$MODEL" = models/tiny-llama ]; then
  "$PY" build_default_model.py --file_path data/dolly-1.5k.jsonl --save_path "$MODEL" --threads 2
fi

done_to() {  # is the run at $1 finished at budget $2?
  [ -f "$1/state.json" ] && "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(not s['round_log'] or s['round_log'][-1]['labelled'] < int(sys.argv[2]))" "$1/state.json" "$2"
}

needs_weights() {  # does a finished run's checkpoint still have a use (ROUGE, or random's chain)?
  case "$1" in
    */random2x_s*) return 1 ;;
    */random_s*) [ "$RANDOM_BUDGET" -gt "$MAX_BUDGET" ] && [ ! -f "${1/random_s/random2x_s}/state.json" ] && return 0 ;;
  esac
  [ "$ROUGE_LIMIT" != 0 ] && [ ! -f "$1/test_generations.metrics.json" ]
}

loop() {  # loop RUN BUDGET FLAGS... : run or resume one arm to its budget; a run parked without
  # its weights (PARKED) gets them back from acquisition_AL.py --resume, which trains the last round again
  local run=$1 budget=$2 resume=()
  shift 2
  if done_to "$run" "$budget" && { [ -d "${run}_sharded" ] || ! needs_weights "$run"; }; then return; fi
  if [ -f "$run/state.json" ]; then resume=(--resume); fi
  # shellcheck disable=SC2086
  "$PY" acquisition_AL.py --file_path "$pool" --init_checkpoint_path "$MODEL" --test_file "$data/test.jsonl" \
    --al_data_fraction "$budget" --num_acquisition_samples "$PER_ROUND" --heldout_size "$HELDOUT" --seed "$seed" \
    --threads "$THREADS" --no_progress $TRAIN_FLAGS "$@" --model_path "$run" "${resume[@]}" 2>> "$dir.log"
}

rouge() {  # greedy answers of a finished run's checkpoint for its test set, with ROUGE-L
  local run=$1
  if [ "$ROUGE_LIMIT" = 0 ] || [ -f "$run/test_generations.metrics.json" ]; then return; fi
  "$PY" eval_generate.py --sharded_model "${run}_sharded" --file_path "$data/test.jsonl" --limit "$ROUGE_LIMIT" \
    --greedy --max_new_tokens 128 --metrics --threads "$THREADS" --no_progress \
    --save_file_name "$run/test_generations.json" 2>> "$dir.log"
}

copy_logs() {  # copy_logs RUN TO: every round's metrics.json and selected.jsonl (TO exists)
  local to; to="$(cd "$2" && pwd)"
  (cd "$1" && find rounds \( -name metrics.json -o -name selected.jsonl \) -exec cp --parents {} "$to/" \;)
}

park() {  # park TARGET: the round logs of every run not yet kept, into PARKED/<part>/<target>/
  local dir="$OUT/$PART/$1" to
  for run in "$dir"/*/; do
    run="${run%/}" to="$PARKED/$PART/$1/$(basename "$run")"
    local kept="$RESULTS/runs/$PART/$1/$(basename "$run")"
    # kept, or a random run whose chained twice-the-budget run is kept in its place
    if [ ! -f "$run/state.json" ] || [ -d "$kept" ] || [ -d "${kept/random_s/random2x_s}" ]; then continue; fi
    rm -rf "$to" && mkdir -p "$to"
    cp "$run/state.json" "$to/"
    copy_logs "$run" "$to"
    local next; next=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['rounds_done'] + 1)" "$to/state.json")
    # the round in flight: its selection (less's costs the most) and the scores its metrics describe
    local inflight="$run/rounds/$next"
    if [ -f "$inflight/selected.jsonl" ] && [ -f "$inflight/scores.jsonl" ]; then cp "$inflight/scores.jsonl" "$to/rounds/$next/"; fi
    if [ -f "$run/test_generations.metrics.json" ]; then cp "$run/test_generations.metrics.json" "$to/"; fi
    echo "parked $run -> $to" >&2
  done
}

status() {  # status TARGET: every run of the target, where it is (kept, parked, here) and how far
  "$PY" - "$1" "$RESULTS/runs/$PART/$1" "$PARKED/$PART/$1" "$OUT/$PART/$1" <<'PYEOF'
import glob, json, os, sys
target, places = sys.argv[1], dict(zip(("kept", "parked", "here"), sys.argv[2:]))
runs = {}
for where, d in places.items():  # the furthest copy of each run wins
    for f in sorted(glob.glob(os.path.join(d, "*", "state.json"))):
        s = json.load(open(f))
        done = s["round_log"][-1]["labelled"] if s["round_log"] else 0
        rouge = os.path.isfile(os.path.join(os.path.dirname(f), "test_generations.metrics.json"))
        name = os.path.basename(os.path.dirname(f))
        if name not in runs or done > runs[name][0]:
            runs[name] = (done, s.get("budget"), where, rouge)
for name, (done, budget, where, rouge) in sorted(runs.items(), key=lambda x: (x[0].split("_s")[-1], x[0])):
    print(f"{target:14s} {name:22s} {done:>4}/{budget} labelled  {where}{'  ROUGE' if rouge else ''}")
PYEOF
}

one_target() {  # all arms x seeds of one target, then its reports
  local target=$1 dir="$OUT/$PART/$1" runs=()
  local keep="$RESULTS/runs/$PART/$target"
  for parked in "$PARKED/$PART/$target"/*/; do  # runs an earlier machine parked: go on from their round logs
    parked="${parked%/}"
    if [ -d "$parked" ] && [ ! -f "$dir/$(basename "$parked")/state.json" ]; then
      mkdir -p "$dir" && cp -r "$parked" "$dir/" && echo "restored $parked" >&2
    fi
  done
  if [ "$RANDOM_BUDGET" -gt "$MAX_BUDGET" ]; then  # a random run kept before random went on to twice the budget: on from its logs
    for kept in "$keep"/random_s*/; do
      kept="${kept%/}"
      if [ -d "$kept" ] && [ ! -d "${kept/random_s/random2x_s}" ] && [ ! -f "$dir/$(basename "$kept")/state.json" ]; then
        mkdir -p "$dir" && cp -r "$kept" "$dir/" && echo "restored $kept" >&2
      fi
    done
  fi
  for seed in $SEEDS; do
    local data="$OUT/data/s$seed/$target" pool="$OUT/data/s$seed/$target/pool.jsonl"
    "$PY" scripts/split_target.py --out "$OUT/data/s$seed" --seed "$seed" --category summarization brainstorming \
      2> /dev/null
    if [ "$target" = alpaca_eval ]; then pool=data/dolly-1.5k.jsonl; fi
    for arm in "${ARMS[@]}"; do
      local name="${arm%%=*}" flags="${arm#*=}"
      if [ -n "${ARMS_ONLY:-}" ] && [[ " $ARMS_ONLY " != *" $name "* ]]; then continue; fi
      flags="${flags//@DATA/$data}"
      local run="$dir/${name}_s$seed"
      echo "[$target] $name seed $seed" >&2
      # shellcheck disable=SC2086
      loop "$run" "$MAX_BUDGET" $flags
      rouge "$run"
      runs+=("$run")
      if [ "$name" = random ] && [ "$RANDOM_BUDGET" -gt "$MAX_BUDGET" ]; then  # on to twice the budget, chained: random's curve in the reports
        # shellcheck disable=SC2086
        if [ -f "$dir/random2x_s$seed/state.json" ]; then loop "$dir/random2x_s$seed" "$RANDOM_BUDGET" $flags
        else loop "$dir/random2x_s$seed" "$RANDOM_BUDGET" $flags --resume --resume_checkpoint_path "${run}_sharded"; fi
        runs[-1]="$dir/random2x_s$seed"
      fi
    done
  done
  # the round logs into the repository, and every table from those copies
  for run in "${runs[@]}"; do
    local to="$keep/$(basename "$run")"
    mkdir -p "$to"
    cp "$run/state.json" "$to/"
    copy_logs "$run" "$to"
    local src="$run"; [[ "$run" == */random2x_s* ]] && src="${run/random2x_s/random_s}"
    rm -rf "${PARKED:?}/$PART/$target/$(basename "$run")" "$PARKED/$PART/$target/$(basename "$src")"  # kept now
    if [ -f "$src/test_generations.metrics.json" ]; then cp "$src/test_generations.metrics.json" "$to/"; fi
  done
  # the tables cover every committed run of the target, not only this invocation's (SEEDS/ARMS_ONLY
  # run parts); given the folder, report_AL.py lets random's chained run stand for its seed
  for x in examples answer_words; do
    "$PY" report_AL.py "$keep" --metric test --x "$x" --out "$RESULTS/baselines_${PART}_${target}_$x" > /dev/null
  done
  "$PY" report_AL.py "$keep" --metric heldout --out "$RESULTS/baselines_${PART}_${target}_heldout" > /dev/null
}

case "${2:-}" in
  park) for target in $TARGETS; do park "$target"; done; exit 0 ;;
  status) for target in $TARGETS; do status "$target"; done; exit 0 ;;
  "") ;;
  *) echo "usage: bash scripts/targeted.sh PART [park|status]" >&2; exit 2 ;;
esac
mkdir -p "$OUT/$PART"
for target in $TARGETS; do one_target "$target"; done
echo "elapsed: $(( $(date +%s) - start ))s; reports: $RESULTS/baselines_${PART}_*; logs: $OUT/$PART/<target>.log"
