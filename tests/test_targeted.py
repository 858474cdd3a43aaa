"""Selection for a target and for diversity: embeddings, rds, typiclust, the --max_similarity guard,
the target file (exclusion, hash on --resume, bad input)."""
import json

import numpy as np
import pytest
import torch

import acquisition_AL
import al_datasets as D
import al_prompts as P
import al_scoring as SC
import al_selection as SEL
import al_similarity as M
import al_strategies as S
import al_utils as U
from conftest import TARGET_FLAGS as FLAGS
from conftest import keep_tail, outputs, prompt_text, write_jsonl


@pytest.fixture(scope="module")
def setup(loaded, pool):
    model, tok = loaded
    records = D.load_records(pool)
    return model, tok, {r["id"]: r for r in records}, P.encode_records(tok, records)


def hand_vector(model, ids):
    """Final hidden states of one unbatched forward, mean over the tokens after BOS, unit length."""
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, 1:]
    v = h.mean(0)
    return (v / v.norm()).numpy()


def test_embeddings_are_mean_pooled_after_bos_and_batch_independent(setup):
    model, tok, records, _ = setup
    ids = list(records)[:12]
    seqs = [keep_tail(tok(prompt_text(records[i])).input_ids, 96) for i in ids]
    want = np.stack([hand_vector(model, s) for s in seqs])
    for cfg in (SC.ScoreConfig(token_budget=512), SC.ScoreConfig(token_budget=0, batch_size=1),
                SC.ScoreConfig(token_budget=0, batch_size=5)):
        np.testing.assert_allclose(M.embed(model, seqs, P.pad_id_of(tok), cfg), want, atol=1e-5)


def test_group_similarity_on_hand_built_vectors():
    T = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    groups = ["a", "a", "b", "b"]  # centroids: a = (0.5, 0.5), b = (0.8, 0.4)
    X = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    score, best = M.group_similarity(X, T, groups)
    np.testing.assert_allclose(score, [0.8, 0.5, 0.8], atol=1e-6)  # (1,0): b 0.8; (0,1): a 0.5; b: 0.48+0.32
    assert best == ["b", "a", "b"]


def test_rds_equals_hand_cosines(setup, tmp_path):
    model, tok, records, enc = setup
    target_rows = [{"instruction": f"Summarise the text about {w}.", "input": "", "category": g}
                   for w, g in (("cats", "x"), ("dogs", "x"), ("rain", "y"), ("snow", "y"), ("sun", "y"))]
    path = write_jsonl(tmp_path / "t.jsonl", target_rows)
    target = M.load_target(path, "category", tok)
    ids = list(records)[:10]
    sc = S.Scoring(model, tok, enc, records, SC.ScoreConfig(progress=False, max_length=4096), None, target)
    rows = S.score_candidates("rds", ids, sc)
    T = np.stack([hand_vector(model, tok(prompt_text({**r, "input": ""})).input_ids) for r in target_rows])
    for row, i in zip(rows, ids):
        x = hand_vector(model, tok(prompt_text(records[i])).input_ids)
        by_group = {"x": float(np.mean(T[:2] @ x)), "y": float(np.mean(T[2:] @ x))}
        g = max(by_group, key=by_group.get)
        assert abs(row["score"] - by_group[g]) < 1e-5 and row["group"] == g


def test_typicality_and_typiclust_pick_on_a_hand_built_set():
    # cluster 0: a tight square around (0, 0) plus its centre; cluster 1: a line; cluster 2: labelled
    X = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1], [0, 0],  # 0..4
                  [10, 0], [11, 0], [12, 0], [14, 0],  # 5..8
                  [30, 30], [31, 30]], dtype=float)  # 9, 10
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    typ = M.typicality(X, labels, k=2)
    assert typ.argmax() == 4 or typ[4] == typ[:5].max()  # the centre is the most typical of its cluster
    assert abs(typ[4] - 1 / np.sqrt(2)) < 1e-12  # its 2 nearest are at sqrt(2)
    assert typ[6] == typ[:9][5:].max()  # 11: neighbours at 1 and 1
    rows = [{"id": j, "score": float(typ[j]), "cluster": int(labels[j]), "covered": labels[j] == 2,
             "cluster_size": int((labels == labels[j]).sum())} for j in range(9)]  # 9, 10 are labelled
    assert [i for i, _ in M.typiclust_pick(rows, 2)] == [4, 6]  # largest uncovered cluster first
    assert [i for i, _ in M.typiclust_pick(rows, 4)][:2] == [4, 6]


def test_similarity_guard_skips_exactly_the_close_ones():
    emb = {i: np.array(v, dtype=np.float32) / np.linalg.norm(v) for i, v in
           {"L": [1, 0], "a": [1, 0.05], "b": [0, 1], "c": [0.05, 1], "d": [1, 1], "e": [-1, 0.2]}.items()}
    rows = [{"id": i, "score": s} for i, s in (("a", 5), ("b", 4), ("c", 3), ("d", 2), ("e", 1))]
    keep = M.similarity_guard(emb, ["L"], tau=0.9)
    cfg = SEL.SelectConfig(strategy="forward_ppl", stratification="greedy", pick="top")
    picked, skipped = S.select(rows, 3, 1, cfg, SC.ScoreConfig(), np.random.default_rng(0), keep)
    # a is close to the labelled L, c to the picked b; d (cos 0.71 to both) and e are kept
    assert [r["id"] for r in picked] == ["b", "d", "e"] and skipped == ["a", "c"]
    # without the guard: the top 3
    assert [r["id"] for r in S.select(rows, 3, 1, cfg, SC.ScoreConfig(), np.random.default_rng(0))[0]] == \
        ["a", "b", "c"]


def run_rds(tiny_model, pool_t, target, path, *extra):
    acquisition_AL.main(["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path", str(path),
                         "--al_data_fraction", "90", "--sampling_strategy", "rds", "--target_file", target,
                         "--target_group_field", "category", *FLAGS, *extra])


def test_rds_run_excludes_target_records_and_resumes(tiny_model, target_data, tmp_path):
    target, pool_t, _ = target_data
    run_rds(tiny_model, pool_t, target, tmp_path / "r")
    state = json.load(open(tmp_path / "r" / "state.json"))
    picked = [r["id"] for r in json.load(open(tmp_path / "r" / "selected.json"))]
    heldout = set(state["heldout_ids"])
    equal = {100, 101, 102} - heldout  # the pool's copies of target records
    assert len(picked) == 90 and not equal & set(picked)
    assert state["excluded_as_target"] == len(equal) and len(state["flags"]["target_file"]) == 64
    rows = [json.loads(line) for line in open(tmp_path / "r" / "rounds" / "1" / "scores.jsonl")]
    assert {r["group"] for r in rows} <= {"summarization", "open_qa"} and not equal & {r["id"] for r in rows}
    # a changed target is refused on --resume
    changed = [json.loads(line) for line in open(target)]
    changed[0]["instruction"] += "!"
    with pytest.raises(U.InputError, match="target_file: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run_rds(tiny_model, pool_t, write_jsonl(tmp_path / "t2.jsonl", changed), tmp_path / "r", "--resume")


def test_typiclust_seed_and_guard_run(tiny_model, target_data, tmp_path):
    """--seed_strategy typiclust picks round 0 with the base model; --max_similarity counts skips."""
    _, pool_t, _ = target_data
    acquisition_AL.main(["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path",
                         str(tmp_path / "t"), "--al_data_fraction", "60", "--sampling_strategy", "typiclust",
                         "--seed_strategy", "typiclust", "--max_similarity", "0.9999", *FLAGS])
    r0 = [json.loads(line) for line in open(tmp_path / "t" / "rounds" / "0" / "scores.jsonl")]
    sel0 = [json.loads(line)["id"] for line in open(tmp_path / "t" / "rounds" / "0" / "selected.jsonl")]
    assert len(sel0) == 30 and not any(r["covered"] for r in r0)  # nothing labelled yet
    kept = [r for r in r0 if r["id"] in sel0]
    assert len({r["cluster"] for r in kept}) == len(kept)  # one per cluster: as many clusters as picks
    m = json.load(open(tmp_path / "t" / "rounds" / "1" / "metrics.json"))
    r1 = [json.loads(line) for line in open(tmp_path / "t" / "rounds" / "1" / "scores.jsonl")]
    assert m["skipped_as_similar"] == sum(bool(r.get("skipped_similar")) for r in r1)


@pytest.mark.parametrize("case, error", [
    ("missing", "{d}/nope.jsonl: file: no such file"),
    ("empty", "{d}/empty.jsonl: file: no records"),
    ("malformed", "{d}/bad.jsonl:1: (json): malformed JSON: Expecting property name enclosed in double quotes at "
                  "column 2"),
    ("no group column", "{d}/target.jsonl:1: colour: missing (--target_group_field names a column every target "
                        "record needs)"),
    ("group of one", "{d}/one.jsonl: (records): group 'solo' of --target_group_field category has 1 example; a "
                     "mean similarity needs at least 2"),
    ("no target", "--target_file: --sampling_strategy rds selects for a target: give the examples it should find "
                  "more of"),
    ("tau 0", "--max_similarity: must be in (0, 1]"),
    ("tau > 1", "--max_similarity: must be in (0, 1]"),
    ("target with another strategy", "--target_file: {d}/target.jsonl has no effect with --sampling_strategy "
                                     "forward_ppl (only --sampling_strategy rds or less or bm25 or random_format "
                                     "reads it); leave it out"),
])
def test_bad_target_input(tiny_model, target_data, tmp_path, capsys, case, error):
    target, pool_t, d = target_data
    (d / "empty.jsonl").write_text("\n")
    (d / "bad.jsonl").write_text("{oops\n")
    write_jsonl(d / "one.jsonl", [{"instruction": "a", "category": "solo"}, {"instruction": "b", "category": "x"},
                                  {"instruction": "c", "category": "x"}])
    argv = ["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "r"),
            "--al_data_fraction", "60", "--sampling_strategy", "rds", "--target_file", target, *FLAGS]
    over = {"missing": ["--target_file", str(d / "nope.jsonl")], "empty": ["--target_file", str(d / "empty.jsonl")],
            "malformed": ["--target_file", str(d / "bad.jsonl")], "no group column": ["--target_group_field", "colour"],
            "group of one": ["--target_file", str(d / "one.jsonl"), "--target_group_field", "category"],
            "tau 0": ["--max_similarity", "0"], "tau > 1": ["--max_similarity", "1.5"]}
    if case == "no target":
        argv = [a for a in argv if a not in ("--target_file", target)]
    if case == "target with another strategy":
        argv[argv.index("rds")] = "forward_ppl"
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: acquisition_AL.main(argv + over.get(case, [])))
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: " + error.format(d=d) + "\n"
    assert not (tmp_path / "r").exists()


def hand_grad(model, seq, start, names):
    """The full per-example gradient of the mean answer NLL from autograd, restricted to `names`."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=torch.tensor([seq])).logits[0]
    torch.nn.functional.cross_entropy(logits[start - 1:-1], torch.tensor(seq[start:])).backward()
    params = dict(model.named_parameters())
    out = {n: params[n].grad.detach().clone() for n in names}
    model.zero_grad(set_to_none=True)
    return out


def test_less_features_equal_projected_autograd_gradients(setup):
    model, tok, records, enc = setup
    ids = list(records)[:6]
    starts = [min(40, len(enc[i].prompt)) for i in ids]
    seqs = [enc[i].prompt[:s] + enc[i].answer[:20] for i, s in zip(ids, starts)]
    names = [n for n, _ in M.less_modules(model)]
    assert names[:2] == ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"]
    proj = M.kron_projections(model, 48, seed=3)
    assert M.kron_dims(48) == (6, 8) and M.kron_dims(8192) == (64, 128)
    got = M.grad_features(model, seqs, starts, P.pad_id_of(tok), SC.ScoreConfig(token_budget=512, grad_dim=48), proj)
    R = [torch.kron(A, B) for A, B in proj]  # the explicit [out*in, 48] projection of each weight
    for row, s, st in zip(got, seqs, starts):
        g = hand_grad(model, s, st, names)
        want = sum(g[n].reshape(-1) @ r for n, r in zip(names, R))
        np.testing.assert_allclose(row, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_less_deltas_on_a_large_vocabulary_match_float64():
    """layer_grads' output gradients on a 50k vocabulary (SmolLM2's is 49k), rows of unequal
    length: within 1e-5 of the same loss computed in float64 (largest error over a module's deltas,
    relative to their largest entry; 2.9e-6 here). Cross-entropy over every position in the
    [B, V, T] layout, as before the output layer saw only the scored positions, was 4.4e-5 off."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50_000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # logits spread as a trained model's are (tens), not ~0
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 50_000, (n,), generator=g).tolist() for n in (40, 33, 21)]
    starts = [30, 10, 20]
    mods = [m for _, m in M.less_modules(model)]
    (idx, got), = M.layer_grads(model, seqs, starts, 0, SC.ScoreConfig(token_budget=0, batch_size=3), mods)

    ref = model.double()
    seen: dict = {}
    hooks = [m.register_forward_hook(lambda m, a, o: seen.setdefault(m, []).append(o)) for m in mods]
    loss = 0
    with torch.enable_grad():
        for s, st in zip(seqs, starts):  # one row at a time: no padding in the reference
            logits = ref(input_ids=torch.tensor([s])).logits[0]
            loss = loss + torch.nn.functional.cross_entropy(logits[st - 1:-1], torch.tensor(s[st:]))
        want = torch.autograd.grad(loss, [o for m in mods for o in seen[m]])
    for h in hooks:
        h.remove()
    for j, (_, d) in enumerate(got):
        for b, i in enumerate(idx):
            w = want[j * len(seqs) + i][0]
            err = float((d[b, : len(seqs[i])].double() - w).abs().max() / w.abs().max())
            assert err < 1e-5, (j, i, err)
            assert float(d[b, len(seqs[i]):].abs().sum()) == 0  # padding: no gradient


def test_hash_sketch_is_the_countsketch_its_hashes_describe():
    """Entry k goes, with sign s(k), to bucket h(k): the sketch of a batch equals its product with
    the explicit sparse matrix; the hashes are seeded, spread over the buckets, differ per block, and
    the round's cached table holds exactly what they compute."""
    import dataclasses

    a, b = M.hash_sketches([30_000, 500], 64, seed=7)
    assert a.table is not None and M.hash_sketches([30_000, 500], 64, seed=7) == [a, b]
    assert a.coeffs != b.coeffs != M.hash_sketches([30_000, 500], 64, 8)[1].coeffs
    bucket, sign = a.buckets()
    computed = dataclasses.replace(a, table=None).buckets()
    assert bucket.equal(computed[0]) and sign.equal(computed[1])
    assert 0 <= int(bucket.min()) and int(bucket.max()) < 64
    assert set(sign.unique().tolist()) == {-1.0, 1.0} and abs(float(sign.mean())) < 0.03
    counts = torch.bincount(bucket, minlength=64).float()
    assert float(counts.min()) > 0.7 * 30_000 / 64 and float(counts.max()) < 1.3 * 30_000 / 64
    G = torch.randn(3, 500, generator=torch.Generator().manual_seed(0))
    S = torch.zeros(500, 64)
    bucket, sign = b.buckets()
    S[torch.arange(500), bucket.long()] = sign
    torch.testing.assert_close(b(G), G @ S)


def test_less_countsketch_features_equal_sketched_autograd_gradients(setup, monkeypatch):
    """--grad_projection countsketch (the default): each weight's gradient (Adam direction with
    moments) times its explicit sketch matrix, summed over the weights (1e-4); the same with the
    hashes computed per batch (sketches too large to keep their tables)."""
    model, tok, records, enc = setup
    ids = list(records)[:4]
    starts = [min(40, len(enc[i].prompt)) for i in ids]
    seqs = [enc[i].prompt[:s] + enc[i].answer[:20] for i, s in zip(ids, starts)]
    named = M.less_modules(model)
    names = [n for n, _ in named]
    proj = M.projections(model, 48, 3, "countsketch")
    assert SC.ScoreConfig().grad_projection == "countsketch" and len(proj) == len(named)
    mats = []
    for sk, (_, m) in zip(proj, named):
        S = torch.zeros(m.weight.numel(), 48)
        bucket, sign = sk.buckets()
        S[torch.arange(m.weight.numel()), bucket.long()] = sign
        mats.append(S)
    g = torch.Generator().manual_seed(1)
    moments = {n: (torch.randn(m.weight.shape, generator=g) * 1e-3, torch.rand(m.weight.shape, generator=g) * 1e-5)
               for n, m in named}
    for mom in (None, moments):
        got = M.grad_features(model, seqs, starts, P.pad_id_of(tok), SC.ScoreConfig(token_budget=512, grad_dim=48),
                              proj, mom)
        for row, s, st in zip(got, seqs, starts):
            grad = hand_grad(model, s, st, names)
            want = 0
            for n, S in zip(names, mats):
                x = grad[n]
                if mom is not None:  # LESS's formula
                    m, v = mom[n]
                    x = (0.9 * m + 0.1 * x) / torch.sqrt(0.999 * v + 0.001 * x ** 2 + 1e-8)
                want = want + x.reshape(-1) @ S
            np.testing.assert_allclose(row, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    monkeypatch.setattr(M, "SKETCH_TABLE_BYTES", 0)
    bare = M.projections(model, 48, 3, "countsketch")
    assert all(s.table is None for s in bare) and bare == proj
    cfg = SC.ScoreConfig(token_budget=512, grad_dim=48)
    assert np.array_equal(M.grad_features(model, seqs, starts, P.pad_id_of(tok), cfg, bare, moments),
                          M.grad_features(model, seqs, starts, P.pad_id_of(tok), cfg, proj, moments))


def test_less_run_made_before_grad_projection_resumes_with_kronecker(tiny_model, target_data, tmp_path, capsys):
    """A less run whose state predates --grad_projection was Kronecker-projected: resumed without the
    flag it stays so (the same picks as an uninterrupted --grad_projection kronecker run); the
    default (countsketch) picks otherwise; asking for countsketch on it is refused."""
    target, pool_t, _ = target_data

    def run(name: str, *extra: str) -> list:
        acquisition_AL.main(["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path",
                             str(tmp_path / name), "--al_data_fraction", "90", "--target_file", target, *FLAGS,
                             "--sampling_strategy", "less", "--grad_dim", "64", "--gen_max_new_tokens", "4", *extra])
        return [r["id"] for r in json.load(open(tmp_path / name / "selected.json"))]

    kron = run("kron", "--grad_projection", "kronecker")
    assert run("sketch") != kron
    run("old", "--grad_projection", "kronecker", "--stop_after_round", "1")
    state = json.load(open(tmp_path / "old" / "state.json"))
    for part in ("flags", "spec"):
        del state[part]["grad_projection"]
    json.dump(state, open(tmp_path / "old" / "state.json", "w"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        acquisition_AL.run_cli(lambda: acquisition_AL.main(["--model_path", str(tmp_path / "old"), "--resume",
                                                            "--grad_projection", "countsketch"]))
    assert "grad_projection: None -> 'countsketch'" in capsys.readouterr().err
    acquisition_AL.main(["--model_path", str(tmp_path / "old"), "--resume"])
    assert [r["id"] for r in json.load(open(tmp_path / "old" / "selected.json"))] == kron


def test_factored_projection_equals_the_projection_of_the_formed_gradient():
    """project_grad without Adam never forms G = sum_t d x^T; it must equal A^T G B (1e-5)."""
    g = torch.Generator().manual_seed(0)
    x, d = torch.randn(3, 7, 12, generator=g), torch.randn(3, 7, 10, generator=g)
    d[1, 5:] = 0  # a padded row: no gradient there
    A, B = torch.randn(10, 4, generator=g), torch.randn(12, 6, generator=g)
    G = torch.einsum("bto,bti->boi", d, x)
    want = torch.stack([(A.T @ G[b] @ B).reshape(-1) for b in range(3)])
    torch.testing.assert_close(M.project_grad(x, d, (A, B)), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    m, v = torch.randn(10, 12, generator=g), torch.rand(10, 12, generator=g)  # with Adam: G formed, as LESS does
    gamma = (0.9 * m + 0.1 * G) / torch.sqrt(0.999 * v + 0.001 * G ** 2 + 1e-8)
    want = torch.stack([(A.T @ gamma[b] @ B).reshape(-1) for b in range(3)])
    torch.testing.assert_close(M.project_grad(x, d, (A, B), (m, v), (0.9, 0.999)), want, rtol=1e-5,
                               atol=1e-5 * float(want.abs().max()))


def test_less_adam_preconditioning_from_a_saved_optimizer_state(setup, tmp_path):
    import copy

    import fsdp_utils
    from al_training import TrainConfig, train

    model, tok, records, enc = setup
    trained = copy.deepcopy(model)
    ex = [enc[i] for i in list(records)[:8]]
    _, opt = train(trained, ex, TrainConfig(lr=1e-3, epochs=1, train_batch_size=2, grad_accum=2, max_length=128,
                                            progress=False), P.pad_id_of(tok))
    fsdp_utils.save_checkpoint(trained, tok, str(tmp_path / "ck"), {"round": 1}, opt)
    assert fsdp_utils.has_optimizer_state(str(tmp_path / "ck"))
    names = [n for n, _ in M.less_modules(trained)]
    moments = fsdp_utils.adam_moments(fsdp_utils.load_model(str(tmp_path / "ck"), torch.device("cpu")),
                                      str(tmp_path / "ck"), names)
    params = dict(trained.named_parameters())
    for n in names:  # the moments train() left
        torch.testing.assert_close(moments[n][0], opt.state[params[n]]["exp_avg"])
        torch.testing.assert_close(moments[n][1], opt.state[params[n]]["exp_avg_sq"])
    seq, start = enc[ids0 := list(records)[9]].prompt[:30] + enc[ids0].answer[:10], 30
    proj = M.kron_projections(trained, 24, seed=1)
    got = M.grad_features(trained, [seq], [start], P.pad_id_of(tok), SC.ScoreConfig(grad_dim=24), proj, moments,
                          (0.9, 0.999))
    g = hand_grad(trained, seq, start, names)
    want = 0
    for n, (A, B) in zip(names, proj):
        m, v = moments[n]
        gamma = (0.9 * m + 0.1 * g[n]) / torch.sqrt(0.999 * v + 0.001 * g[n] ** 2 + 1e-8)  # LESS's formula
        want = want + gamma.reshape(-1) @ torch.kron(A, B)
    np.testing.assert_allclose(got[0], want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_less_run_and_its_bad_input(tiny_model, target_data, tmp_path, capsys):
    target, pool_t, d = target_data
    base = ["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "l"),
            "--al_data_fraction", "60", "--sampling_strategy", "less", "--target_file", target, "--grad_dim", "64",
            "--gen_max_new_tokens", "4", "--save_opt", *FLAGS]
    acquisition_AL.main(base)
    capsys.readouterr()
    rows = [json.loads(line) for line in open(tmp_path / "l" / "rounds" / "1" / "scores.jsonl")]
    held = sum(i in json.load(open(tmp_path / "l" / "state.json"))["heldout_ids"] for i in (100, 101, 102))
    assert len(rows) == 103 - 10 - 30 - (3 - held)  # pool - held-out - seed set - copies of target records
    assert all(-1 <= r["score"] <= 1 and 1 <= r["answer_tokens"] <= 4 for r in rows)
    no_answers = write_jsonl(d / "noans.jsonl", [{"instruction": "a"}, {"instruction": "b"}])
    unlabelled = write_jsonl(d / "unlabelled.jsonl", [{"instruction": f"q{k}"} for k in range(80)])
    for extra, error in (
            (["--target_file", no_answers], f"{no_answers}:1: output: empty or missing (--sampling_strategy less "
                                            "takes the target's gradients on its answers)"),
            (["--grad_dim", "0"], "--grad_dim: must be >= 1"),
            (["--shortlist", "-1"], "--shortlist: must be >= 0"),
            (["--grad_projection", "kronecker", "--lora_r", "4"], "--grad_projection kronecker: under --lora_r less "
             "takes the adapters' gradients, which are CountSketched; leave the flag out"),
            (["--grad_answers", "pool", "--file_path", unlabelled, "--annotate_out", str(tmp_path / "b.jsonl")],
             f"{unlabelled}:1: output: empty or missing (--grad_answers pool takes gradients on the pool's answers; "
             "the default takes the model's own)")):
        with pytest.raises(SystemExit):
            acquisition_AL.run_cli(lambda extra=extra: acquisition_AL.main(
                base[:5] + [str(tmp_path / "bad")] + base[6:] + extra))
        assert capsys.readouterr().err == f"error: {error}\n" and not (tmp_path / "bad").exists()


def test_less_shortlist_rescores_rds_top_k(tiny_model, target_data, tmp_path):
    """--shortlist 40: round 1 takes gradients for exactly the 40 candidates an rds run of the same
    seed ranks highest, and scores them as less without a shortlist does."""
    target, pool_t, _ = target_data
    less = ["--sampling_strategy", "less", "--grad_dim", "64", "--gen_max_new_tokens", "4"]
    runs = {"less": less, "short": [*less, "--shortlist", "40"], "rds": ["--sampling_strategy", "rds"]}
    rows = {}
    for name, extra in runs.items():
        acquisition_AL.main(["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--model_path",
                             str(tmp_path / name), "--al_data_fraction", "60", "--target_file", target, *FLAGS, *extra])
        rows[name] = {r["id"]: r for r in U.read_jsonl(tmp_path / name / "rounds" / "1" / "scores.jsonl")}
    cands = list(rows["rds"])  # candidate order
    top = sorted(cands, key=lambda i: -rows["rds"][i]["score"])[:40]
    assert list(rows["short"]) == [i for i in cands if i in set(top)] and len(rows["rds"]) > 50
    for i, r in rows["short"].items():
        assert r["rds_score"] == pytest.approx(rows["rds"][i]["score"], abs=1e-6)
        assert r["score"] == pytest.approx(rows["less"][i]["score"], abs=1e-5)
    picked = [r["id"] for r in U.read_jsonl(tmp_path / "short" / "rounds" / "1" / "selected.jsonl")]
    assert set(picked) == set(sorted(rows["short"], key=lambda i: -rows["short"][i]["score"])[:30])


def test_less_run_resumed_from_its_round_logs_alone_equals_uninterrupted(tiny_model, target_data, tmp_path, capsys):
    """The run's logs copied without its weights: --resume trains the last round again (its
    checkpoint and --save_opt's Adam moments) and every later score and pick is as without the copy."""
    import shutil

    target, pool_t, _ = target_data
    base = ["--file_path", pool_t, "--init_checkpoint_path", tiny_model, "--al_data_fraction", "90",
            "--sampling_strategy", "less", "--target_file", target, "--grad_dim", "64", "--gen_max_new_tokens", "4",
            "--save_opt", *FLAGS]
    acquisition_AL.main(base + ["--model_path", str(tmp_path / "full")])
    acquisition_AL.main(base + ["--model_path", str(tmp_path / "part"), "--stop_after_round", "1"])
    shutil.copytree(tmp_path / "part" / "rounds", tmp_path / "copy" / "rounds")  # no part_sharded
    shutil.copy(tmp_path / "part" / "state.json", tmp_path / "copy")
    capsys.readouterr()
    acquisition_AL.main(base + ["--model_path", str(tmp_path / "copy"), "--resume"])
    assert (f"--resume: {tmp_path / 'copy'}_sharded: no checkpoint; training round 1 again on its 60 labelled"
            in capsys.readouterr().err)
    assert outputs(tmp_path / "copy") == outputs(tmp_path / "full")
