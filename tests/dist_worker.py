"""Run by tests under `torchrun --nproc_per_node=2` (and in-process for the 1-rank side).

    torchrun --nproc_per_node=2 tests/dist_worker.py MODE MODEL POOL OUT
MODE train: one optimizer step on a fixed global batch of 8 (grad_accum x ranks = 4 micro-batches
of 2), then save a sharded checkpoint to OUT/ckpt and the step loss to OUT/train.json.
MODE score: forward_ppl, rds and less (and less with the checkpoint's Adam moments, and less
--shortlist 20) of the first 59 pool records, sliced over ranks and gathered, to OUT/score.json.
"""
import contextlib
import json
import os
import sys

import numpy as np
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import al_datasets as D  # noqa: E402
import al_prompts as P  # noqa: E402
import al_scoring as SC  # noqa: E402
import al_strategies as S  # noqa: E402
import fsdp_utils  # noqa: E402
from al_similarity import Target, less_modules  # noqa: E402
from al_training import TrainConfig, train  # noqa: E402


def run(mode: str, model_path: str, pool: str, out: str) -> None:
    device = fsdp_utils.setup(2 if fsdp_utils.world() == 1 else 1)
    os.makedirs(out, exist_ok=True)
    tok = fsdp_utils.load_tokenizer(model_path)
    model = fsdp_utils.load_model(model_path, device)
    records = D.load_records(pool)
    enc = P.encode_records(tok, records)
    ids = [r["id"] for r in records]
    if mode == "train":
        ex = [enc[i] for i in ids if len(enc[i].prompt) + len(enc[i].answer) < 300][:8]
        accum = 4 // fsdp_utils.world()
        cfg = TrainConfig(lr=1e-3, epochs=1, train_batch_size=2, grad_accum=accum, progress=False)
        stats, opt = train(model, ex, cfg, P.pad_id_of(tok))
        fsdp_utils.save_checkpoint(model, tok, os.path.join(out, "ckpt"), {"round": 0}, opt)
        if fsdp_utils.is_main():
            json.dump({"losses": stats["losses"], "steps": stats["steps"]}, open(os.path.join(out, "train.json"), "w"))
    else:
        # 59 candidates, a row per batch: the ranks make unequal numbers of calls (30 and 29)
        cfg = SC.ScoreConfig(token_budget=0, batch_size=1, max_length=256, progress=False, gen_max_new_tokens=4,
                             grad_dim=64)
        # rds's target: pool records 60..69 (not scored) in two groups by category parity
        target = Target(pool, records[60:70], [enc[i] for i in ids[60:70]], [str(j % 2) for j in range(10)])
        sc = S.Scoring(model, tok, enc, {r["id"]: r for r in records}, cfg, np.random.default_rng(0), target)
        out_rows = {}
        for name in ("forward_ppl", "rds", "less"):  # less keeps the model sharded, as the loop
            with fsdp_utils.full_params(model) if name != "less" else contextlib.nullcontext():
                out_rows[name] = S.score_candidates(name, ids[:59], sc, fsdp_utils.my_slice(59),
                                                    fsdp_utils.gather_lists)
        # less --save_opt: the checkpoint's Adam moments, which 2 ranks keep sharded and gather a weight at a time
        sc.moments = fsdp_utils.adam_moments(model, model_path, [k for k, _ in less_modules(model)])
        out_rows["moments_sharded"] = all(isinstance(m, DTensor) for pair in sc.moments.values() for m in pair)
        out_rows["less_adam"] = S.score_candidates("less", ids[:59], sc, fsdp_utils.my_slice(59),
                                                   fsdp_utils.gather_lists)
        sc.moments = None
        with fsdp_utils.full_params(model):  # less --shortlist 20: rds's top 20, then less on those
            short, _ = S.shortlist(ids[:59], sc, 20)
        out_rows["shortlist"] = S.score_candidates("less", short, sc, fsdp_utils.my_slice(20), fsdp_utils.gather_lists)
        if fsdp_utils.is_main():
            json.dump(out_rows, open(os.path.join(out, "score.json"), "w"))
    fsdp_utils.barrier()


if __name__ == "__main__":
    run(*sys.argv[1:5])
    fsdp_utils.teardown()
