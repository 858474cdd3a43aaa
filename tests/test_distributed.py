"""Ranks: 2-process torchrun (gloo, CPU) against 1 process; sharded checkpoints and conversion."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import acquisition_AL
import al_utils as U
import convert_fsdp_to_hf
import convert_hf_to_fsdp
import fsdp_utils
from conftest import ROOT, torchrun

sys.path.insert(0, os.path.join(ROOT, "tests"))
import dist_worker  # noqa: E402


def params(path: str) -> dict:
    model = fsdp_utils.load_model(path, torch.device("cpu"))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tiny_model, pool, tmp_path_factory):
    """The same global batch trained by 1 process and by 2 ranks."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    dist_worker.run("train", tiny_model, pool, str(one))
    torchrun("tests/dist_worker.py", "train", tiny_model, pool, str(two))
    return one, two


def test_two_rank_step_equals_one_rank(trained):
    one, two = trained
    l1, l2 = json.load(open(one / "train.json")), json.load(open(two / "train.json"))
    assert l1["steps"] == l2["steps"] == 1
    assert abs(l1["losses"][0] - l2["losses"][0]) < 1e-5
    # the 2-rank sharded checkpoint loads in one process and holds the same updated weights
    p1, p2 = params(str(one / "ckpt")), params(str(two / "ckpt"))
    assert p1.keys() == p2.keys()
    for k in p1:
        assert torch.allclose(p1[k], p2[k], atol=1e-5), k


def test_two_rank_scoring_of_one_rank_checkpoint(trained, pool, tmp_path):
    one, _ = trained
    ckpt = str(one / "ckpt")  # saved by a single process, read by 2 ranks (each its shards)
    torchrun("tests/dist_worker.py", "score", ckpt, pool, str(tmp_path))
    dist_worker.run("score", ckpt, pool, str(tmp_path / "one"))
    two, one = json.load(open(tmp_path / "score.json")), json.load(open(tmp_path / "one" / "score.json"))
    for name in ("forward_ppl", "rds", "less"):
        assert [r["id"] for r in two[name]] == [r["id"] for r in one[name]] == list(range(59))
        assert max(abs(a["score"] - b["score"]) for a, b in zip(one[name], two[name])) < 1e-4, name
    for name in ("rds", "less"):
        assert [r["group"] for r in two[name]] == [r["group"] for r in one[name]]
    # less --save_opt: 2 ranks keep the moments sharded (gathered a weight at a time) and score the same
    assert two["moments_sharded"] and not one["moments_sharded"]
    assert [r["id"] for r in two["less_adam"]] == list(range(59))
    assert max(abs(a["score"] - b["score"]) for a, b in zip(one["less_adam"], two["less_adam"])) < 1e-4
    assert max(abs(a["score"] - b["score"]) for a, b in zip(one["less_adam"], one["less"])) > 1e-3  # moments count
    short = [r["id"] for r in one["shortlist"]]
    assert [r["id"] for r in two["shortlist"]] == short and len(short) == 20 and short == sorted(short)
    assert max(abs(a["score"] - b["score"]) for a, b in zip(one["shortlist"], two["shortlist"])) < 1e-4


def test_deterministic_flag_acts_on_cuda_only(monkeypatch):
    """--deterministic: on CUDA, torch's deterministic kernels and cuBLAS's fixed workspace (needed
    for identical reruns there); on CPU, already bitwise reproducible, setup leaves torch alone."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fsdp_utils.setup(0, deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    try:
        fsdp_utils.deterministic_cuda()
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


def _tied_bf16_model(tiny_model, tmp_path) -> str:
    """A copy of the tiny model with tied embeddings, stored in bf16."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model, tie_word_embeddings=True, dtype=torch.bfloat16)
    m.tie_weights()
    out = str(tmp_path / "tied")
    m.save_pretrained(out)
    fsdp_utils.load_tokenizer(tiny_model).save_pretrained(out)
    return out


def _multi_file_model(tiny_model, tmp_path) -> str:
    """The tiny model saved as several safetensors files (converted one file at a time)."""
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "multi")
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(out, max_shard_size="40KB")
    fsdp_utils.load_tokenizer(tiny_model).save_pretrained(out)
    return out


@pytest.mark.parametrize("variant", ["fp32", "tied-bf16", "multi-file"])
def test_hf_sharded_hf_round_trip(tiny_model, tmp_path, variant):
    src = {"fp32": lambda: tiny_model, "tied-bf16": lambda: _tied_bf16_model(tiny_model, tmp_path),
           "multi-file": lambda: _multi_file_model(tiny_model, tmp_path)}[variant]()
    convert_hf_to_fsdp.main(["--load_path", src, "--save_path", str(tmp_path / "sh")])
    convert_fsdp_to_hf.main(["--load_path", str(tmp_path / "sh"), "--save_path", str(tmp_path / "hf")])
    a, b = fsdp_utils.read_safetensors(src), fsdp_utils.read_safetensors(str(tmp_path / "hf"))
    if variant == "multi-file":
        assert len(os.listdir(tmp_path / "sh")) > 5  # several parts under one .metadata
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    from transformers import AutoModelForCausalLM

    x = torch.tensor([[1, 5, 9, 42, 7]])
    m1 = AutoModelForCausalLM.from_pretrained(src)
    m2 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert torch.equal(m1(input_ids=x).logits, m2(input_ids=x).logits)
    # the sharded copy loads for training (fp32 master weights) with the same values
    m3 = fsdp_utils.load_model(str(tmp_path / "sh"), torch.device("cpu"))
    assert torch.equal(m3.lm_head.weight, m1.lm_head.weight.float())


ACQ = ["--al_data_fraction", "100", "--num_acquisition_samples", "50", "--stratification_strategy", "bucket",
       "--num_k", "3", "--epochs", "1", "--train_batch_size", "2", "--train_max_length", "256",
       "--model_max_length", "256", "--lr", "1e-3", "--heldout_size", "20", "--no_progress"]


def acq(tiny_model, pool, path, *extra):
    return ["acquisition_AL.py", "--file_path", pool, "--init_checkpoint_path", tiny_model, *ACQ,
            "--model_path", str(path), *extra]


@pytest.fixture(scope="module")
def two_rank_run(tiny_model, pool, tmp_path_factory):
    path = tmp_path_factory.mktemp("acq") / "two"
    torchrun(*acq(tiny_model, pool, path, "--grad_accum", "2"))
    return path


def test_acquisition_two_ranks_equals_one_process(two_rank_run, tiny_model, pool, tmp_path):
    acquisition_AL.main(acq(tiny_model, pool, tmp_path / "one", "--grad_accum", "4", "--threads", "2")[1:])
    for r in ("0", "1"):
        ids = [[json.loads(line)["id"] for line in open(run / "rounds" / r / "selected.jsonl")]
               for run in (tmp_path / "one", two_rank_run)]
        assert ids[0] == ids[1] and len(ids[0]) == 50
    s1 = U.read_jsonl(str(tmp_path / "one" / "rounds" / "1" / "scores.jsonl"))
    s2 = U.read_jsonl(str(two_rank_run / "rounds" / "1" / "scores.jsonl"))
    assert [r["id"] for r in s1] == [r["id"] for r in s2]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(s1, s2)) < 1e-4
    assert fsdp_utils.checkpoint_kind(f"{two_rank_run}_sharded") == "dcp"
    # a 2-process run is not resumed by 1 process (training batches are split over the ranks)
    with pytest.raises(U.InputError, match=r"started with 2 process\(es\) and is resumed with 1"):
        acquisition_AL.main(acq(tiny_model, pool, two_rank_run, "--grad_accum", "2", "--resume")[1:])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_run(a, b) -> None:
    """Same selections, scores and checkpoint weights (same world size: bitwise)."""
    for f in ("selected.json", "rounds/0/selected.jsonl", "rounds/1/scores.jsonl", "rounds/1/selected.jsonl"):
        assert open(a / f).read() == open(b / f).read(), f
    pa, pb = params(f"{a}_sharded"), params(f"{b}_sharded")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_two_nodes_equal_one_node(two_rank_run, tiny_model, pool, tmp_path):
    """Two `torchrun --nnodes 2 --nproc_per_node 1` launches (node ranks 0 and 1, rendezvous on
    localhost) run the acquisition the 1-node 2-rank launch ran."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={i}", f"--rdzv_endpoint=127.0.0.1:{port}",
                               *acq(tiny_model, pool, tmp_path / "nodes", "--grad_accum", "2")],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    same_run(tmp_path / "nodes", two_rank_run)


def test_rank_killed_in_training_then_resumed(two_rank_run, tiny_model, pool, tmp_path):
    """Rank 1 SIGKILLed while training round 1: torchrun stops rank 0 and fails; --resume under
    2 ranks ends with the files of the uninterrupted 2-rank run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AL_KILL_AT": "training:1", "AL_KILL_RANK": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        *acq(tiny_model, pool, tmp_path / "killed", "--grad_accum", "2")],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "SIGKILL" in r.stderr
    assert json.load(open(tmp_path / "killed" / "state.json"))["rounds_done"] == 0
    torchrun(*acq(tiny_model, pool, tmp_path / "killed", "--grad_accum", "2", "--resume"))
    same_run(tmp_path / "killed", two_rank_run)


def test_two_rank_run_resumed_without_its_checkpoint(two_rank_run, tiny_model, pool, tmp_path):
    """The checkpoint deleted after round 0: --resume under 2 ranks trains round 0 again (sharded,
    both ranks) to rebuild it and ends with the files of the uninterrupted 2-rank run."""
    torchrun(*acq(tiny_model, pool, tmp_path / "lost", "--grad_accum", "2", "--stop_after_round", "0"))
    shutil.rmtree(f"{tmp_path / 'lost'}_sharded")
    torchrun(*acq(tiny_model, pool, tmp_path / "lost", "--grad_accum", "2", "--resume"))
    same_run(tmp_path / "lost", two_rank_run)


def test_crash_during_checkpoint_save(tiny_model, pool, tmp_path):
    """A kill mid-save leaves a temp folder (half-written) or a parked previous checkpoint;
    the previous checkpoint stays loadable and --resume finishes like an uninterrupted run."""
    argv = ["--file_path", pool, "--init_checkpoint_path", tiny_model, "--al_data_fraction", "100",
            "--num_acquisition_samples", "50", "--epochs", "1", "--grad_accum", "4", "--train_max_length", "256",
            "--model_max_length", "256", "--lr", "1e-3", "--threads", "2", "--no_progress"]
    acquisition_AL.main([*argv, "--model_path", str(tmp_path / "ref")])
    run = tmp_path / "run"
    acquisition_AL.main([*argv, "--model_path", str(run), "--stop_after_round", "0"])
    ckpt = str(run) + "_sharded"
    # killed while writing shards: a truncated temp checkpoint beside the good one
    tmp = tmp_path / ".run_sharded.tmp"
    shutil.copytree(ckpt, tmp)
    shard = next(p for p in tmp.iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:100])
    assert fsdp_utils.checkpoint_meta(ckpt)["round"] == 0
    fsdp_utils.load_model(ckpt, torch.device("cpu"))  # still loadable
    # killed between parking the old checkpoint and renaming the new one in
    os.replace(ckpt, str(tmp) + ".old")
    acquisition_AL.main([*argv, "--model_path", str(run), "--resume"])
    assert not tmp.exists() and not os.path.exists(str(tmp) + ".old")
    for f in ("selected.json", "rounds/1/scores.jsonl", "rounds/1/selected.jsonl"):
        assert open(run / f).read() == open(tmp_path / "ref" / f).read(), f
