"""Print budget -> held-out loss for finished runs: python scripts/budget_table.py RUN_DIR [RUN_DIR ...]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from al_utils import read_state  # noqa: E402

print(f"{'budget':>7} {'rounds':>6} {'labelled':>8} {'train loss':>10} {'held-out loss':>13}  run")
for run in sys.argv[1:]:
    state = read_state(run)
    if state is None:
        sys.exit(f"error: {run}: no state.json (not a run directory)")
    last = state["round_log"][-1]
    held = f"{last['heldout_loss']:.4f}" if last["heldout_loss"] is not None else "n/a"
    print(f"{state['budget']:>7} {state['rounds_done'] + 1:>6} {last['labelled']:>8} "
          f"{last['train_loss']:>10.4f} {held:>13}  {run}")
