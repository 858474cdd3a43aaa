"""Scoring: every strategy against a hand computation from the model's logits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import al_strategies as S
import al_utils as U


@pytest.fixture(scope="module")
def setup(loaded, pool):
    model, tok = loaded
    records = U.load_records(pool)
    enc = U.encode_records(tok, records)
    return model, tok, {r["id"]: r for r in records}, enc


def hand_nll(model, ids, start):
    """Mean NLL of ids[start:] from one unbatched forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return F.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:])).item()


CFG = S.ScoreConfig(token_budget=512, max_rows=8, progress=False)


def test_template_and_encoding(setup):
    _, tok, records, enc = setup
    r = next(r for r in records.values() if r["input"])
    text = U.format_prompt(r["instruction"], r["input"])
    assert "### Input:\n" + r["input"] in text and text.endswith("### Response:")
    assert "### Input" not in U.format_prompt("x")
    e = enc[r["id"]]
    assert e.prompt[0] == tok.bos_token_id and e.answer[-1] == tok.eos_token_id
    assert tok.decode(e.prompt + e.answer[:-1], skip_special_tokens=True) == text + U.ANSWER_SEP + r["output"]


def test_forward_ppl_matches_hand_computation(setup):
    model, tok, records, enc = setup
    ids = list(records)[:24]
    got = S.forward_ppl(model, enc, ids, U.pad_id_of(tok), CFG)
    want = [hand_nll(model, enc[i].prompt[: CFG.max_length], 1) for i in ids]  # scoring truncates
    assert max(len(enc[i].prompt) for i in ids) > CFG.max_length  # the fixture exercises truncation
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the same without the shared-prefix cache
    seqs = [enc[i].prompt[: CFG.max_length] for i in ids]
    s, c = U.sequence_nll(model, seqs, [1] * len(ids), U.pad_id_of(tok), 512, 8, progress=False, prefix_cache=False)
    np.testing.assert_allclose(U.mean_nll(s, c), want, atol=1e-5)


def test_row_alone_equals_row_in_padded_batch(setup):
    model, tok, records, enc = setup
    ids = list(records)[:12]
    seqs = [enc[i].prompt for i in ids]
    pad = U.pad_id_of(tok)
    batch_s, batch_c = U.batch_nll(model, seqs, [1] * len(seqs), pad)
    for b, s in enumerate(seqs):
        alone_s, alone_c = U.batch_nll(model, [s], [1], pad)
        assert alone_c[0] == batch_c[b] == len(s) - 1
        assert abs(alone_s[0] / alone_c[0] - batch_s[b] / batch_c[b]) < 1e-5


@pytest.mark.parametrize("start", [1, 30])
def test_prefix_cache_path(setup, monkeypatch, start):
    """Force the shared-prefix KV cache on rows of different lengths (padding + cache), with
    targets starting before and after the prefix ends."""
    model, tok, records, enc = setup
    monkeypatch.setattr(U, "PREFIX_MIN_SAVED_TOKENS", 0)
    rows = [enc[i].prompt + enc[i].answer for i in list(records)[:40] if not records[i]["input"]][:6]
    rows = [r[:200] for r in rows]
    assert len({len(r) for r in rows}) > 1 and U._common_prefix(rows) >= 20
    s, c = U.batch_nll(model, rows, [start] * len(rows), U.pad_id_of(tok))
    want = [hand_nll(model, r, start) for r in rows]
    np.testing.assert_allclose((s / c).numpy(), want, atol=1e-5)
    assert c.tolist() == [len(r) - start for r in rows]


def test_answer_strategies(setup):
    model, tok, records, enc = setup
    ids = [i for i in list(records)[:14] if len(enc[i].prompt) + len(enc[i].answer) <= CFG.max_length]
    rng = np.random.default_rng(0)
    ifd = S.score_candidates("ifd", records, ids, enc, model, tok, CFG, rng)
    dp = S.score_candidates("data_pruning_w_answers", records, ids, enc, model, tok, CFG, rng)
    for row_i, row_d, i in zip(ifd, dp, ids):
        e = enc[i]
        cond = hand_nll(model, e.prompt + e.answer, len(e.prompt))
        unc = hand_nll(model, [tok.bos_token_id] + e.answer, 1)
        assert row_i["id"] == i and abs(row_i["loss_cond"] - cond) < 1e-5 and abs(row_i["loss_uncond"] - unc) < 1e-5
        assert abs(row_i["score"] - cond / unc) < 1e-5
        assert abs(row_d["score"] - abs(unc - cond)) < 1e-5


def test_generation_ppl_matches_manual_greedy(setup):
    model, tok, records, enc = setup
    ids = list(records)[:6]
    cfg = S.ScoreConfig(max_rows=4, gen_max_new_tokens=5, progress=False)
    rows = S.score_candidates("generation_ppl", records, ids, enc, model, tok, cfg, np.random.default_rng(0))
    for row, i in zip(rows, ids):
        seq, nll = list(enc[i].prompt), []
        for _ in range(5):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
            nxt = int(logits.argmax())
            nll.append(-torch.log_softmax(logits, -1)[nxt].item())
            seq.append(nxt)
            if nxt == tok.eos_token_id:
                break
        assert row["generated_tokens"] == len(nll)
        assert abs(row["score"] - float(np.mean(nll))) < 1e-4


def test_self_ask_is_probability_of_no(setup):
    model, tok, records, enc = setup
    ids = list(records)[:4]
    cfg = S.ScoreConfig(self_ask_positions=1, progress=False)
    rows = S.score_candidates("self_ask", records, ids, enc, model, tok, cfg, np.random.default_rng(0))
    no_ids = S._first_token_ids(tok, ["no", "No", "NO"])
    for row, i in zip(rows, ids):
        r = records[i]
        q = r["instruction"] + ("\n" + r["input"] if r["input"].strip() else "")
        p = tok(U.format_prompt(S.SELF_ASK_TEMPLATE.format(instruction=q))).input_ids
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([p])).logits[0, -1].softmax(-1)
        assert abs(row["score"] - probs[no_ids].sum().item()) < 1e-5


def test_model_free_and_compound_keys(setup):
    model, tok, records, enc = setup
    ids = list(records)[:30]
    rows = S.score_candidates("instruction_length", records, ids, enc, None, tok, CFG, np.random.default_rng(0))
    assert [r["score"] for r in rows] == [-len(enc[i].prompt) for i in ids]
    a = S.score_candidates("random", records, ids, enc, None, tok, CFG, np.random.default_rng(7))
    b = S.score_candidates("random", records, ids, enc, None, tok, CFG, np.random.default_rng(7))
    assert a == b
    rows = S.score_candidates("length_and_ppl", records, ids, enc, model, tok, CFG, np.random.default_rng(0))
    by_score = [r["id"] for r in sorted(rows, key=lambda r: -r["score"])]
    by_key = [r["id"] for r in sorted(rows, key=lambda r: (r["length"], r["forward_ppl"]))]
    assert by_score == by_key


def test_cluster_strategy(setup):
    model, tok, records, enc = setup
    ids = list(records)[:40]
    cfg = S.ScoreConfig(num_clusters=4, progress=False)
    for emb in ("tfidf", "hidden"):
        cfg.cluster_embedding = emb
        rows = S.score_candidates("cluster", records, ids, enc, model, tok, cfg, np.random.default_rng(0))
        assert {r["cluster"] for r in rows} == {0, 1, 2, 3}
        again = S.score_candidates("cluster", records, ids, enc, model, tok, cfg, np.random.default_rng(0))
        assert rows == again
