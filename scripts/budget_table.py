"""Print budget -> held-out loss for finished runs: python scripts/budget_table.py RUN_DIR [RUN_DIR ...]"""
import json
import os
import sys

print(f"{'budget':>7} {'rounds':>6} {'labelled':>8} {'train loss':>10} {'held-out loss':>13}  run")
for run in sys.argv[1:]:
    with open(os.path.join(run, "state.json")) as f:
        state = json.load(f)
    last = state["round_log"][-1]
    held = f"{last['heldout_loss']:.4f}" if last["heldout_loss"] is not None else "n/a"
    print(f"{state['budget']:>7} {state['rounds_done'] + 1:>6} {last['labelled']:>8} "
          f"{last['train_loss']:>10.4f} {held:>13}  {run}")
