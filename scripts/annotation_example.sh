#!/usr/bin/env bash
# The real case, runnable on the embedded data: an unlabelled pool, a target set, annotation rounds.
# Makes a target split of Dolly (summarization, seed 1), strips the pool's answers, then runs
# configs/annotation_example.yaml: each call exports a batch and stops; here the "annotators" fill it
# from the original pool's answers, and the next call needs only the run and the filled file.
# About 4-7 minutes on 2 CPU cores.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
OUT=runs/annotation_example  # the config's paths point here
start=$(date +%s)
if [ ! -f models/tiny-llama/config.json ]; then
  "$PY" build_default_model.py --file_path data/dolly-1.5k.jsonl --save_path models/tiny-llama --threads 2
fi
"$PY" scripts/split_target.py --out "$OUT/data" --seed 1 --category summarization
"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(line) for line in open(f"{out}/data/summarization/pool.jsonl")]
with open(f"{out}/data/unlabelled.jsonl", "w") as f:  # what you would have: no answers
    for r in rows:
        f.write(json.dumps({k: v for k, v in r.items() if k != "output"}) + "\n")
PY
if [ ! -f "$OUT/run/state.json" ]; then "$PY" acquisition_AL.py --config configs/annotation_example.yaml; fi
while [ -f "$OUT/batch.jsonl" ] && "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit('in_round' not in s)" "$OUT/run/state.json"; do
  "$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
answers = {json.loads(line)["id"]: json.loads(line)["output"] for line in open(f"{out}/data/summarization/pool.jsonl")}
rows = [json.loads(line) for line in open(f"{out}/batch.jsonl")]
with open(f"{out}/filled.jsonl", "w") as f:  # the annotators' work
    for r in rows:
        f.write(json.dumps({**r, "output": answers[r["id"]]}) + "\n")
PY
  rm "$OUT/batch.jsonl"
  "$PY" acquisition_AL.py --model_path "$OUT/run" --labels "$OUT/filled.jsonl"
done
echo "elapsed: $(( $(date +%s) - start ))s; labelled set: $OUT/run/selected.json"
