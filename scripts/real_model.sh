#!/usr/bin/env bash
# The whole SmolLM2-135M experiment: fetch + convert the model, then the original budget loop
# (scripts/run_al.sh: budgets 50/100/150, 50 per round, AlpacaEval eval after each budget) for
# forward_ppl bucket/top and for random, then a second seed for both arms (no eval)
# and the learning-curve report. About an hour on 2 CPU cores.
# Lighter than the original's settings to fit that: 1 epoch, 256-token truncation, a quarter of the
# remaining pool scored per round, 100 AlpacaEval items at 64 greedy new tokens. Results are copied to
# benchmarks/results/smollm2_{curve.png,curve.md,eval.md}.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
OUT="${OUT:-runs/smollm2}"
HF=models/SmolLM2-135M
start=$(date +%s)
bash scripts/get_smollm2.sh "$HF"
if [ ! -f "${HF}_sharded/.metadata" ]; then
  "$PY" convert_hf_to_fsdp.py --load_path "$HF" --save_path "${HF}_sharded"
fi
export MODEL="${HF}_sharded" BUDGETS="50 100 150" PER_ROUND=50 HELDOUT=50 EVAL_ITEMS=100 SEED=42
export TRAIN_FLAGS="--lr 5e-5 --epochs 1 --train_batch_size 4 --grad_accum 2 --train_max_length 256 --model_max_length 256"
export AL_FLAGS="--cluster_data_fraction 0.25 --no_progress"
export EVAL_FLAGS="--max_new_tokens 64 --batch_size 16 --greedy --model_context_length 512"
for cfg in ppl_top:forward_ppl:bucket:top random:random:greedy:top; do
  IFS=: read -r name STRATEGY STRAT PICK <<< "$cfg"
  STRATEGY=$STRATEGY STRAT=$STRAT PICK=$PICK OUT="$OUT/$name" bash scripts/run_al.sh
done
# more seeds for the learning curve: straight to the last budget (its rounds are the curve's points),
# no AlpacaEval
for seed in ${EXTRA_SEEDS-1}; do
  for cfg in ppl_top:forward_ppl:bucket:top random:random:greedy:top; do
    IFS=: read -r name STRATEGY STRAT PICK <<< "$cfg"
    SEED=$seed BUDGETS="${BUDGETS##* }" EVAL_ITEMS=0 STRATEGY=$STRATEGY STRAT=$STRAT PICK=$PICK \
      OUT="$OUT/seed$seed/$name" bash scripts/run_al.sh
  done
done
# the base model on the same AlpacaEval slice and the runs' held-out slice (same seed: same slice)
"$PY" eval_generate.py --sharded_model "$MODEL" --file_path alpaca_eval --limit "$EVAL_ITEMS" --metrics \
  --heldout_run "$OUT/ppl_top/RUN_50" --save_file_name "$OUT/base/eval/base.json" --seed "$SEED" --threads 2 \
  --no_progress $EVAL_FLAGS
"$PY" report_AL.py "$OUT"/{ppl_top,random}/RUN_150 "$OUT"/seed*/*/RUN_150 --out "$OUT/report"
"$PY" scripts/eval_table.py "$OUT"/base/eval/base.metrics.json "$OUT"/{ppl_top,random}/eval/RUN_*.metrics.json \
  | tee "$OUT/eval_table.md"
# the copies the README quotes
cp "$OUT/report.png" benchmarks/results/smollm2_curve.png
cp "$OUT/report.md" benchmarks/results/smollm2_curve.md
cp "$OUT/eval_table.md" benchmarks/results/smollm2_eval.md
echo "elapsed: $(( $(date +%s) - start ))s; report: $OUT/report.md, $OUT/report.png; evals: $OUT/*/eval/"
