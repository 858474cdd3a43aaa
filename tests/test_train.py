"""Training: loss = answer-token NLL only, schedule sized from the real step count, learning happens."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import al_datasets as D
import al_prompts as P
from al_training import TrainConfig, collate, lr_at, token_nll_sum, train, train_config


@pytest.fixture(scope="module")
def data(loaded, pool):
    model, tok = loaded
    records = D.load_records(pool)
    enc = P.encode_records(tok, records)
    short = [enc[r["id"]] for r in records if len(enc[r["id"]].prompt) + len(enc[r["id"]].answer) < 200]
    return model, tok, short


def test_loss_is_answer_nll_by_hand(data):
    model, tok, ex = data
    pad = P.pad_id_of(tok)
    batch = [(e.prompt, e.answer) for e in ex[:3]]
    ids, mask, labels = collate(batch, pad)
    with torch.no_grad():
        got = token_nll_sum(model, ids, mask, labels).item()
    want = 0.0
    for p, a in batch:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + a])).logits[0]
        want += F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(a), reduction="sum").item()
    assert abs(got - want) < 1e-3 * len(batch)
    # padding and prompt labels are masked: changing the pad id or the labels there changes nothing
    ids2, mask2, labels2 = collate(batch, pad_id=7)
    assert (labels2 == labels).all()
    with torch.no_grad():
        assert abs(token_nll_sum(model, ids2, mask2, labels2).item() - got) < 1e-3
    assert (labels[0, : len(batch[0][0])] == -100).all()
    assert labels[0, len(batch[0][0]):].tolist()[: len(batch[0][1])] == batch[0][1]


def test_step_loss_independent_of_micro_batching(data):
    model, tok, ex = data
    pad = P.pad_id_of(tok)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    sa, _ = train(a, ex[:8], TrainConfig(lr=1e-3, epochs=1, train_batch_size=1, grad_accum=8, progress=False), pad)
    sb, _ = train(b, ex[:8], TrainConfig(lr=1e-3, epochs=1, train_batch_size=4, grad_accum=2, progress=False), pad)
    assert sa["steps"] == sb["steps"] == 1
    assert abs(sa["losses"][0] - sb["losses"][0]) < 1e-5
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_schedule_length_is_real_step_count(data):
    model, tok, ex = data
    cfg = TrainConfig(lr=1e-3, epochs=2, train_batch_size=2, grad_accum=3, progress=False)
    stats, _ = train(copy.deepcopy(model), ex[:20], cfg, P.pad_id_of(tok))
    steps = math.ceil(20 / 6) * 2  # 4 steps per epoch, the last one short
    assert stats["steps"] == len(stats["lrs"]) == len(stats["losses"]) == steps
    assert stats["warmup_steps"] == math.ceil(0.03 * steps)
    # warmup ceil(0.03 * 8) = 1 step at the full rate, then cosine from the peak down to 0 over the rest
    want = [1e-3] + [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 7)) for s in range(7)]
    np.testing.assert_allclose(stats["lrs"], want, rtol=1e-12)
    long = [lr_at(s, 100, 10) for s in range(100)]
    assert long[:10] == [(s + 1) / 10 for s in range(10)] and long[10] == 1.0 and abs(long[55] - 0.5) < 1e-12
    assert stats["examples"] == 20
    # tokens read per step (bench_lora's throughput): every example once per epoch, none truncated here
    assert stats["truncated"] == 0 and len(stats["step_tokens"]) == steps
    assert sum(stats["step_tokens"]) == 2 * sum(len(e.prompt) + len(e.answer) for e in ex[:20])
    assert sum(stats["step_tokens"][:4]) == sum(stats["step_tokens"][4:])


def test_adamw_betas_default_to_pytorchs_and_are_flags(data):
    model, tok, ex = data
    import train_AL

    args = train_AL.parser().parse_args(["--init_checkpoint_path", "m", "--data_path", "d", "--save_path", "s"])
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.999) == torch.optim.AdamW([torch.zeros(1)]).defaults["betas"]
    assert args.save_opt  # train_AL saves the optimizer unless --dont_save_opt (or the loop's own --save_opt off)
    args = train_AL.parser().parse_args(["--init_checkpoint_path", "m", "--data_path", "d", "--save_path", "s",
                                         "--adam_beta2", "0.95", "--dont_save_opt"])
    assert not args.save_opt
    cfg = train_config(args, 0, progress=False)
    cfg.epochs = 1
    _, opt = train(copy.deepcopy(model), ex[:4], cfg, P.pad_id_of(tok))
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)


def test_loss_decreases(data):
    model, tok, ex = data
    cfg = TrainConfig(lr=1e-2, epochs=8, train_batch_size=4, grad_accum=1, progress=False)
    stats, _ = train(copy.deepcopy(model), ex[:8], cfg, P.pad_id_of(tok))
    assert stats["train_loss"] < stats["losses"][0] - 1.0


def test_truncation_keeps_answer_tokens():
    prompt, answer = [1] + list(range(100, 140)), list(range(200, 230))
    p, a, cut = P.truncate_pair(prompt, answer, 50)
    assert cut and len(p) + len(a) == 50 and p[0] == 1 and p[-1] == 139 and a == answer[:25]
    p, a, cut = P.truncate_pair(prompt, answer[:5], 40)  # short answer: the prompt gives way
    assert cut and a == answer[:5] and len(p) == 35 and p[-1] == 139
    assert P.truncate_pair(prompt, answer, 100) == (prompt, answer, False)


def test_train_script_saves_sharded_checkpoint(tiny_model, pool, tmp_path):
    import json

    import fsdp_utils
    import train_AL

    rows = [json.loads(line) for line in open(pool)][:12]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "sft_sharded")
    train_AL.main(["--init_checkpoint_path", tiny_model, "--data_path", str(data), "--save_path", out,
                   "--epochs", "1", "--grad_accum", "4", "--train_max_length", "256", "--lr", "1e-3"])
    assert fsdp_utils.checkpoint_kind(out) == "dcp"
    meta = fsdp_utils.checkpoint_meta(out)
    assert meta["train"]["examples"] == 12 and meta["train"]["steps"] == 3
    model = fsdp_utils.load_model(out, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters())
    fsdp_utils.load_dcp(model, out, opt)  # optimizer state was saved (no --dont_save_opt)
    assert all(len(s) for s in opt.state.values()) and len(opt.state) == len(list(model.parameters()))


@pytest.mark.parametrize("lora", [None, "lora"])
def test_activation_checkpointing_changes_nothing_but_memory(tiny_model, data, lora):
    """--activation_checkpointing recomputes activations in backward: same losses and weights, with
    full fine-tuning and with LoRA adapters (frozen inputs: non-reentrant checkpointing)."""
    import al_lora
    import fsdp_utils

    _, tok, ex = data
    spec = al_lora.LoraSpec(4, 8.0, 0.0, "q_proj,down_proj", seed=1) if lora else None
    out = []
    for ac in (False, True):
        model = fsdp_utils.load_model(tiny_model, torch.device("cpu"), activation_checkpointing=ac, lora=spec)
        assert model.is_activation_checkpointing == ac
        stats, _ = train(model, ex[:8], TrainConfig(lr=1e-3, epochs=1, train_batch_size=2, grad_accum=2,
                                                   progress=False), P.pad_id_of(tok))
        out.append((stats["losses"], {k: v.clone() for k, v in model.state_dict().items()}))
    assert np.allclose(out[0][0], out[1][0], atol=1e-6)
    for k in out[0][1]:
        assert torch.allclose(out[0][1][k], out[1][1][k], atol=1e-6), k
