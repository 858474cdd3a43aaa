"""LoRA through peft: only adapters train, merging is exact, the adapter folder is PEFT's, 2 ranks = 1,
and a LoRA loop run resumes identically after a kill."""
import json
import os

import numpy as np
import pytest
import torch

import acquisition_AL
import al_lora
import al_training
import convert_fsdp_to_hf
import fsdp_utils
import train_AL
from al_datasets import load_records
from al_prompts import encode_records, pad_id_of
from conftest import outputs, torchrun, write_jsonl

LORA = ["--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj,v_proj,down_proj"]
SPEC = al_lora.LoraSpec(r=4, alpha=8.0, dropout=0.0, target_modules="q_proj,v_proj,down_proj", seed=3)
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52, 53, 54, 2, 2]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def data(pool, tmp_path_factory):
    rows = [json.loads(line) for line in open(pool)][:16]
    return write_jsonl(tmp_path_factory.mktemp("lora") / "train.jsonl", rows)


def train_cli(model, data, out, grad_accum=2, threads=2):
    return ["train_AL.py", "--init_checkpoint_path", model, "--data_path", data, "--save_path", str(out),
            "--epochs", "1", "--train_batch_size", "2", "--grad_accum", str(grad_accum), "--lr", "5e-3",
            "--train_max_length", "128", "--threads", str(threads), "--no_progress", *LORA]


def test_only_adapters_train_and_merge_is_exact(tiny_model, data):
    model = fsdp_utils.load_model(tiny_model, torch.device("cpu"), lora=SPEC)
    base = fsdp_utils.load_model(tiny_model, torch.device("cpu"))
    names = al_lora.base_names(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert logits(model).equal(logits(base))  # B starts at zero: the adapted model is the base model
    tok = fsdp_utils.load_tokenizer(tiny_model)
    recs = load_records(data)
    enc = encode_records(tok, recs)
    cfg = al_training.TrainConfig(lr=5e-3, epochs=1, train_batch_size=2, grad_accum=2, max_length=128, progress=False)
    al_training.train(model, [enc[r["id"]] for r in recs], cfg, pad_id_of(tok))
    after = model.state_dict()
    changed = {k for k in after if not after[k].equal(before[k])}
    adapters = {k for k in after if al_lora.is_adapter(k)}
    assert changed and changed <= adapters  # every base weight bit for bit as loaded
    assert {k for k in adapters if ".lora_B." in k} <= changed  # B moved off zero in every adapted layer
    assert len(adapters) == 2 * 2 * 3  # A and B, 2 layers, 3 target modules
    adapted = logits(model)
    saved = al_lora.merge(model)
    assert not al_lora.lora_layers(model)
    assert set(model.state_dict()) == set(base.state_dict()) == set(names)  # an ordinary model again
    assert torch.allclose(logits(model), adapted, atol=1e-5)
    # W' = W + alpha/r * B @ A, by hand for one layer
    key = "base_model.model.model.layers.1.mlp.down_proj"
    w0 = before[names["model.layers.1.mlp.down_proj.weight"]]
    want = w0 + 8.0 / 4 * saved[f"{key}.lora_B.weight"] @ saved[f"{key}.lora_A.weight"]
    assert torch.allclose(model.state_dict()["model.layers.1.mlp.down_proj.weight"], want, atol=1e-6)


def test_less_lora_features_equal_autograd_on_the_adapters(tiny_model, data, tmp_path):
    """less under LoRA: features from the merged model and the saved adapters equal the CountSketch
    (as an explicit matrix) of autograd's gradients on the adapted model's A and B (1e-4), plain and
    Adam-preconditioned by the moments --save_opt keeps in adapter/ (equal to the optimizer's)."""
    import al_similarity as M
    from al_scoring import ScoreConfig

    model = fsdp_utils.load_model(tiny_model, torch.device("cpu"), lora=SPEC)
    tok = fsdp_utils.load_tokenizer(tiny_model)
    recs = load_records(data)
    enc = encode_records(tok, recs)
    cfg = al_training.TrainConfig(lr=5e-3, epochs=1, train_batch_size=2, grad_accum=2, max_length=128, progress=False)
    _, opt = al_training.train(model, [enc[r["id"]] for r in recs], cfg, pad_id_of(tok))
    starts = [min(40, len(enc[r["id"]].prompt)) for r in recs[:4]]
    seqs = [enc[r["id"]].prompt[:s] + enc[r["id"]].answer[:12] for r, s in zip(recs, starts)]
    layers = dict(al_lora.lora_layers(model))
    ab = {n: (lay.lora_A["default"].weight, lay.lora_B["default"].weight) for n, lay in layers.items()}

    def hand(seq: list[int], start: int) -> dict:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=torch.tensor([seq])).logits[0]
        torch.nn.functional.cross_entropy(out[start - 1:-1], torch.tensor(seq[start:])).backward()
        return {n: torch.cat([a.grad.flatten(), b.grad.flatten()]) for n, (a, b) in ab.items()}

    grads = [hand(s, st) for s, st in zip(seqs, starts)]
    state = {n: [torch.cat([opt.state[a][k].flatten(), opt.state[b][k].flatten()]) for k in ("exp_avg", "exp_avg_sq")]
             for n, (a, b) in ab.items()}
    al_training.save_trained(model, tok, str(tmp_path / "ck"), {"round": 1}, opt, SPEC, tiny_model)
    adapters, moments = al_lora.read_adapters(str(tmp_path / "ck"))
    assert sorted(a.module for a in adapters) == sorted(layers) and len(adapters) == 6
    assert {a.scale for a in adapters} == {2.0}  # alpha / r
    for n, (m, v) in state.items():
        assert moments[n][0].equal(m) and moments[n][1].equal(v)
    dim = 64
    sk = M.hash_sketches([a.size for a in adapters], dim, seed=5)
    mats = []  # each sketch as the matrix it applies: row i has its sign at its bucket
    for s, a in zip(sk, adapters):
        bucket, sign = s.buckets()
        S = torch.zeros(a.size, dim)
        S[torch.arange(a.size), bucket.long()] = sign
        mats.append(S)
    for mom in (None, moments):
        got = M.lora_features(model, seqs, starts, pad_id_of(tok), ScoreConfig(grad_dim=dim, token_budget=512),
                              adapters, sk, mom)
        for row, g in zip(got, grads):
            want = 0
            for a, S in zip(adapters, mats):
                x = g[a.module]
                if mom is not None:  # LESS's formula
                    m, v = mom[a.module]
                    x = (0.9 * m + 0.1 * x) / torch.sqrt(0.999 * v + 0.001 * x ** 2 + 1e-8)
                want = want + x @ S
            np.testing.assert_allclose(row, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.fixture(scope="module")
def one_rank(tiny_model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora1") / "ckpt"
    train_AL.main(train_cli(tiny_model, data, out)[1:])
    return out


def test_checkpoint_holds_merged_weights_and_a_peft_adapter(tiny_model, one_rank, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # train_AL saves the optimizer by default: under LoRA the adapters' moments, beside PEFT's two files
    assert sorted(os.listdir(one_rank / "adapter")) == ["adapter_config.json", "adapter_model.safetensors",
                                                        al_lora.OPTIMIZER_FILE]
    meta = fsdp_utils.checkpoint_meta(str(one_rank))
    assert meta["lora"]["r"] == 4 and meta["lora"]["targets"] == ["q_proj", "v_proj", "down_proj"]
    assert not fsdp_utils.has_optimizer_state(str(one_rank))
    merged = fsdp_utils.load_model(str(one_rank), torch.device("cpu"))  # loads like a full checkpoint
    out = tmp_path / "adapter"
    convert_fsdp_to_hf.main(["--load_path", str(one_rank), "--save_path", str(out), "--adapter"])
    assert "config.json" not in os.listdir(out) and "tokenizer.json" in os.listdir(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    plain = logits(base)
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    assert json.load(open(out / "adapter_config.json"))["base_model_name_or_path"] == tiny_model
    assert torch.allclose(logits(peft_model), logits(merged), atol=1e-5)  # base + adapter = merged weights
    assert (logits(merged) - plain).abs().max() > 1e-2  # and training did change the model
    hf = tmp_path / "hf"  # without --adapter: the merged weights
    convert_fsdp_to_hf.main(["--load_path", str(one_rank), "--save_path", str(hf)])
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)), logits(merged),
                          atol=1e-5)


def test_two_ranks_equal_one_rank(tiny_model, data, one_rank, tmp_path):
    two = tmp_path / "two"
    # each rank accumulates half as many micro-batches, so a global step is the same 4 rows
    torchrun(*train_cli(tiny_model, data, two, grad_accum=1, threads=1))
    assert json.load(open(two / "al_checkpoint.json"))["train"]["steps"] == 4
    p1 = fsdp_utils.load_model(str(one_rank), torch.device("cpu")).state_dict()
    p2 = fsdp_utils.load_model(str(two), torch.device("cpu")).state_dict()
    for k in p1:
        assert torch.allclose(p1[k], p2[k], atol=1e-5), k
    from safetensors.torch import load_file

    a1, a2 = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (one_rank, two))
    assert a1.keys() == a2.keys()
    for k in a1:
        assert torch.allclose(a1[k], a2[k], atol=1e-5), k


LOOP = ["--num_acquisition_samples", "40", "--heldout_size", "20", "--epochs", "1", "--grad_accum", "2",
        "--train_max_length", "128", "--model_max_length", "128", "--lr", "5e-3", "--threads", "2", "--no_progress",
        "--sampling_strategy", "forward_ppl", *LORA]


def loop(pool, model, path, *extra):
    acquisition_AL.main(["--file_path", pool, "--init_checkpoint_path", model, "--model_path", str(path),
                         "--al_data_fraction", "80", *LOOP, *extra])


def test_lora_loop_killed_in_training_resumes_identically(pool, tiny_model, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    loop(pool, tiny_model, tmp_path / "full")
    m = json.load(open(tmp_path / "full" / "rounds" / "1" / "metrics.json"))
    assert m["labelled"] == 80 and m["heldout_loss"] is not None
    argv = [sys.executable, os.path.join(ROOT, "acquisition_AL.py"), "--file_path", pool, "--init_checkpoint_path",
            tiny_model, "--model_path", str(tmp_path / "killed"), "--al_data_fraction", "80", *LOOP]
    p = subprocess.run(argv, env={**os.environ, "AL_KILL_AT": "training:1"}, capture_output=True, text=True)
    assert p.returncode == -9
    loop(pool, tiny_model, tmp_path / "killed", "--resume")
    assert outputs(tmp_path / "killed") == outputs(tmp_path / "full")
    assert os.path.isfile(tmp_path / "killed_sharded" / "adapter" / "adapter_model.safetensors")
    # the round's model is the merged checkpoint: round 1's held-out loss is that of the saved weights
    assert fsdp_utils.checkpoint_meta(str(tmp_path / "killed_sharded"))["round"] == 1


def test_lora_and_full_fine_tuning_differ_only_in_training(pool, tiny_model, tmp_path):
    """Round 0 (the seed set) is chosen before any training, so both select the same records; the
    LoRA run's base weights outside the target modules stay exactly the base model's."""
    loop(pool, tiny_model, tmp_path / "lora", "--stop_after_round", "0")
    sel = [json.loads(x) for x in open(tmp_path / "lora" / "rounds" / "0" / "selected.jsonl")]
    assert len(sel) == 40
    base = fsdp_utils.load_model(tiny_model, torch.device("cpu")).state_dict()
    lora = fsdp_utils.load_model(str(tmp_path / "lora_sharded"), torch.device("cpu")).state_dict()
    changed = {k for k in base if not base[k].equal(lora[k])}
    assert changed == {f"model.layers.{i}.{m}.weight" for i in range(2)
                       for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}


def test_lora_loop_on_two_ranks_equals_one_process(pool, tiny_model, target_data, tmp_path):
    """The loop under torchrun with LoRA: adapters sharded with their layer, merged after training
    with their Adam moments saved (--save_opt); round 1 is less on those adapters' preconditioned
    gradients, its answers generated by the merged model under FSDP: the same selections and
    held-out losses as 1 process."""
    from test_distributed import ACQ

    common = ["--file_path", pool, "--init_checkpoint_path", tiny_model, *ACQ, *LORA, "--sampling_strategy", "less",
              "--target_file", target_data[0], "--save_opt", "--grad_dim", "64", "--gen_max_new_tokens", "4"]
    torchrun("acquisition_AL.py", *common, "--model_path", str(tmp_path / "two"), "--grad_accum", "2")
    acquisition_AL.main([*common, "--model_path", str(tmp_path / "one"), "--grad_accum", "4", "--threads", "2"])
    for r in ("0", "1"):
        ids = [[json.loads(line)["id"] for line in open(tmp_path / run / "rounds" / r / "selected.jsonl")]
               for run in ("one", "two")]
        assert ids[0] == ids[1] and len(ids[0]) == 50
        m1, m2 = (json.load(open(tmp_path / run / "rounds" / r / "metrics.json")) for run in ("one", "two"))
        assert abs(m1["heldout_loss"] - m2["heldout_loss"]) < 1e-4
    scores = [[json.loads(line) for line in open(tmp_path / run / "rounds" / "1" / "scores.jsonl")]
              for run in ("one", "two")]
    assert [r["id"] for r in scores[0]] == [r["id"] for r in scores[1]] and len(scores[0]) > 50
    assert max(abs(a["score"] - b["score"]) for a, b in zip(*scores)) < 1e-4
    assert os.path.isfile(tmp_path / "two_sharded" / "adapter" / al_lora.OPTIMIZER_FILE)
