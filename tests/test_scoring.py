"""Scoring: every strategy against a hand computation from plain tokenizer calls and the model's
logits (the template is spelled out here, not taken from the code under test)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import al_datasets as D
import al_prompts as P
import al_scoring as SC
import al_selection as SEL
import al_strategies as S
import al_utils as U
from conftest import NO_INPUT, hand_ids, keep_tail, prompt_text


@pytest.fixture(scope="module")
def setup(loaded, pool):
    model, tok = loaded
    records = D.load_records(pool)
    enc = P.encode_records(tok, records)
    return model, tok, {r["id"]: r for r in records}, enc


def scoring(setup, **cfg) -> S.Scoring:
    model, tok, records, enc = setup
    return S.Scoring(model, tok, enc, records, SC.ScoreConfig(**{"progress": False, **cfg}), np.random.default_rng(0))


def hand_nll(model, ids, start):
    """Mean NLL of ids[start:] from one unbatched forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return F.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:])).item()


def test_template_and_encoding(setup):
    _, tok, records, enc = setup
    for r in list(records.values())[:30]:
        p, a = hand_ids(tok, r)
        assert enc[r["id"]].prompt == p and enc[r["id"]].answer == a
        assert enc[r["id"]].instruction_len == len(tok(r["instruction"]).input_ids)
    assert tok(NO_INPUT.format("x")).input_ids[0] == tok.bos_token_id  # BOS counts in lengths


def test_forward_ppl_matches_hand_computation(setup):
    model, tok, records, enc = setup
    ids = list(records)[:24]
    sc = scoring(setup, token_budget=512, max_length=128)
    got = S.forward_ppl(sc, ids)
    prompts = [tok(prompt_text(records[i])).input_ids for i in ids]
    assert sum(len(p) > 128 for p in prompts) >= 3  # the fixture exercises truncation
    want = [hand_nll(model, keep_tail(p, 128), 1) for p in prompts]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the same without the shared-prefix cache, and with fixed-size batches
    s, c = SC.sequence_nll(model, [keep_tail(p, 128) for p in prompts], [1] * len(ids), P.pad_id_of(tok),
                          SC.ScoreConfig(token_budget=0, batch_size=3, progress=False), prefix_cache=False)
    np.testing.assert_allclose(SC.mean_nll(s, c), want, atol=1e-5)


def test_row_alone_equals_row_in_padded_batch(setup):
    model, tok, records, enc = setup
    ids = list(records)[:12]
    seqs = [enc[i].prompt for i in ids]
    pad = P.pad_id_of(tok)
    batch_s, batch_c = SC.batch_nll(model, seqs, [1] * len(seqs), pad)
    for b, s in enumerate(seqs):
        alone_s, alone_c = SC.batch_nll(model, [s], [1], pad)
        assert alone_c[0] == batch_c[b] == len(s) - 1
        assert abs(alone_s[0] / alone_c[0] - batch_s[b] / batch_c[b]) < 1e-5


@pytest.mark.parametrize("start", [1, 30])
def test_prefix_cache_path(setup, monkeypatch, start):
    """Force the shared-prefix KV cache on rows of different lengths (padding + cache), with
    targets starting before and after the prefix ends."""
    model, tok, records, enc = setup
    monkeypatch.setattr(SC, "PREFIX_MIN_SAVED_TOKENS", 0)
    rows = [enc[i].prompt + enc[i].answer for i in list(records)[:40] if not records[i]["input"]][:6]
    rows = [r[:200] for r in rows]
    assert len({len(r) for r in rows}) > 1 and SC._common_prefix(rows) >= 20
    s, c = SC.batch_nll(model, rows, [start] * len(rows), P.pad_id_of(tok))
    want = [hand_nll(model, r, start) for r in rows]
    np.testing.assert_allclose((s / c).numpy(), want, atol=1e-5)
    assert c.tolist() == [len(r) - start for r in rows]


class OldCacheName(torch.nn.Module):
    """The model as transformers before 5.24 spelled its KV cache: past_key_values, in forward() and
    in its output (this suite installs a later one, which calls it cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids=None, past_key_values=None, use_cache=None):
        kv = {"cache": past_key_values} if past_key_values is not None else {}
        out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache, **kv)
        return SimpleNamespace(logits=out.logits, past_key_values=out.cache if use_cache else None)


def test_prefix_cache_under_the_old_cache_name(setup, monkeypatch):
    """The shared-prefix cache passes through whichever name the installed transformers uses
    (run on a GPU machine with transformers 5.17, the new name alone failed)."""
    model, tok, records, enc = setup
    monkeypatch.setattr(SC, "PREFIX_MIN_SAVED_TOKENS", 0)
    rows = [(enc[i].prompt + enc[i].answer)[:120] for i in list(records)[:20] if not records[i]["input"]][:4]
    s, c = SC.batch_nll(OldCacheName(model), rows, [1] * len(rows), P.pad_id_of(tok))
    np.testing.assert_allclose((s / c).numpy(), [hand_nll(model, r, 1) for r in rows], atol=1e-5)


def test_answer_strategies_cover_the_same_answer_tokens(setup):
    """ifd = L(a | prompt) / L(a | BOS "### Response:") and data_pruning = |difference|, both over the
    same answer tokens, truncated rows included (prompt keeps BOS + tail down to half the context)."""
    model, tok, records, _ = setup
    L = 160
    ids = list(records)[:16]
    sc = scoring(setup, token_budget=512, max_length=L)
    ifd = S.score_candidates("ifd", ids, sc)
    dp = S.score_candidates("data_pruning_w_answers", ids, sc)
    marker = [tok.bos_token_id] + tok("### Response:", add_special_tokens=False).input_ids
    cut = 0
    for row_i, row_d, i in zip(ifd, dp, ids):
        p, a = hand_ids(tok, records[i])
        if len(p) + len(a) > L:
            cut += 1
            keep_p = min(len(p), max(L - len(a), L // 2))
            p, a = keep_tail(p, keep_p), a[: L - keep_p]
        cond = hand_nll(model, p + a, len(p))
        unc = hand_nll(model, marker + a, len(marker))
        assert row_i["id"] == i and abs(row_i["loss_cond"] - cond) < 1e-5 and abs(row_i["loss_uncond"] - unc) < 1e-5
        assert abs(row_i["score"] - cond / unc) < 1e-5
        assert abs(row_d["score"] - abs(unc - cond)) < 1e-5
    assert cut >= 3  # truncated rows are in the comparison


def test_ifd_above_max_is_never_selected():
    rows = [{"id": i, "score": s} for i, s in enumerate([0.5, 1.2, 0.9, 1.0, 3.0, 0.7])]
    scfg = SC.ScoreConfig(ifd_max=1.0)
    cfg = SEL.SelectConfig(strategy="ifd", stratification="greedy", pick="top")
    got, skipped = S.select(rows, 3, 1, cfg, scfg, np.random.default_rng(0))
    assert [r["id"] for r in got] == [3, 2, 5] and skipped == []  # 1.0, 0.9, 0.7: 3.0 and 1.2 are ruled out
    assert len(S.allowed(rows, "ifd", scfg)) == 4
    assert len(S.allowed(rows, "forward_ppl", scfg)) == 6  # only ifd has the rule
    assert S.select(rows, 3, 1, cfg, SC.ScoreConfig(ifd_max=0.1), np.random.default_rng(0)) == ([], [])


def manual_greedy(model, prompt, n, eos):
    """Greedy continuation one token at a time without a cache: (tokens, log-prob rows)."""
    seq, toks, logps = list(prompt), [], []
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        nxt = int(logits.argmax())
        toks.append(nxt)
        logps.append(torch.log_softmax(logits, -1))
        seq.append(nxt)
        if nxt == eos:
            break
    return toks, logps


def test_generation_ppl_matches_manual_greedy(setup):
    model, tok, records, _ = setup
    ids = list(records)[:6]
    rows = S.score_candidates("generation_ppl", ids, scoring(setup, token_budget=0, batch_size=4, gen_max_new_tokens=5))
    for row, i in zip(rows, ids):
        toks, logps = manual_greedy(model, tok(prompt_text(records[i])).input_ids, 5, tok.eos_token_id)
        assert row["generated_tokens"] == len(toks)
        assert abs(row["score"] - float(np.mean([-lp[t].item() for t, lp in zip(toks, logps)]))) < 1e-4


def test_generation_batches_by_kv_tokens_and_answers_do_not_change(setup, monkeypatch):
    """generate(kv_tokens=K): length-ordered batches of at most K prompt + new tokens (and the row
    cap), the greedy answers those of one prompt at a time."""
    model, tok, records, enc = setup
    prompts = [enc[i].prompt for i in list(records)[:12]]
    stop = SC.stop_ids(model, tok)
    one = SC.generate(model, prompts, [6] * 12, 0, stop, 1, progress=False)
    shapes = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: shapes.append(tuple(kw["input_ids"].shape)) or real(**kw))
    K = 4 * (sorted(map(len, prompts))[5] + 6)  # a budget that cuts batches before the 5-row cap does
    budgeted = SC.generate(model, prompts, [6] * 12, 0, stop, 5, progress=False, kv_tokens=K)
    assert budgeted == one
    assert all((rows * (L + 6) <= K or rows == 1) and rows <= 5 for rows, L in shapes)
    assert sum(r for r, _ in shapes) == 12
    assert [L for _, L in shapes] == sorted(L for _, L in shapes)
    assert any(rows < 5 for rows, _ in shapes[:-1])  # the budget, not only the row cap, cut a batch


def test_model_kv_tokens_hold_at_most_the_models_size_in_kv_cache():
    """less's generation budget: weights // (2 * layers * KV heads * head dim), capped; a config
    without the shape falls back to the cap. Counted by hand for a GQA Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    # embeddings + head 2 * 3200; a layer: q, o 1024 each, k, v 512 each, MLP 3 * 2048, 2 norms 32 each
    weights = 2 * 100 * 32 + 2 * (2 * 1024 + 2 * 512 + 3 * 2048 + 64) + 32
    assert weights == sum(p.numel() for p in model.parameters()) == 24992
    assert SC.model_kv_tokens(model) == 24992 // (2 * 2 * 2 * 8) == 390
    assert SC.model_kv_tokens(model, most=100) == 100
    shapeless = SimpleNamespace(config=SimpleNamespace(get_text_config=SimpleNamespace), parameters=model.parameters)
    assert SC.model_kv_tokens(shapeless, most=100) == 100


def single_token_nos(tok) -> list[int]:
    out = set()
    for text in ("no", " no", "No", " No", "NO", " NO"):
        ids = tok(text, add_special_tokens=False).input_ids
        if len(ids) == 1:
            out.add(ids[0])
    return sorted(out)


@pytest.fixture(scope="module")
def setup_1024(pool, tmp_path_factory):
    """The tiny fixture's 512-piece vocabulary has no single-token "no"; 1024 pieces learn "▁no"."""
    import build_default_model
    import fsdp_utils
    from conftest import TINY

    path = str(tmp_path_factory.mktemp("models") / "tiny1024")
    argv = list(TINY)
    argv[argv.index("--vocab_size") + 1] = "1024"
    build_default_model.main(["--file_path", pool, "--save_path", path, *argv])
    tok = fsdp_utils.load_tokenizer(path)
    model = fsdp_utils.load_model(path, torch.device("cpu")).eval()
    records = D.load_records(pool)
    return model, tok, {r["id"]: r for r in records}, P.encode_records(tok, records)


def test_self_ask_reads_single_token_no_over_fixed_positions(setup, setup_1024):
    with pytest.raises(U.InputError, match="none of no, No, NO is a single token"):
        S.no_token_ids(setup[1])  # "▁n" + "o", "▁" + "N" + "o": refused, not guessed
    setup = setup_1024
    model, tok, records, _ = setup
    no_ids = single_token_nos(tok)
    assert no_ids and S.no_token_ids(tok) == no_ids
    first_of_NO = tok("NO", add_special_tokens=False).input_ids
    if len(first_of_NO) > 1:  # e.g. "▁N" + "O": the first piece also starts "Not", "New", ...
        assert first_of_NO[0] not in no_ids
    ids = list(records)[:8]
    n = 3
    rows = S.score_candidates("self_ask", ids, scoring(setup, token_budget=0, batch_size=4, self_ask_positions=n))
    short = 0
    for row, i in zip(rows, ids):
        r = records[i]
        q = r["instruction"] + ("\n" + r["input"] if r["input"].strip() else "")
        ask = NO_INPUT.format("Can you answer the following request correctly? Answer yes or no.\n\nRequest: " + q)
        toks, logps = manual_greedy(model, tok(ask).input_ids, n, tok.eos_token_id)
        short += len(toks) < n
        want = sum(lp.exp()[no_ids].sum().item() for lp in logps) / n  # after EOS: 0
        assert abs(row["score"] - want) < 1e-5
    assert short  # some row hit EOS before n positions


def test_self_ask_refuses_a_tokenizer_without_single_token_no():
    class Tok:
        name_or_path = "toy"

        def __call__(self, text, add_special_tokens=True):
            return type("E", (), {"input_ids": [ord(c) for c in text]})()  # one token per character

    with pytest.raises(U.InputError, match="none of no, No, NO is a single token"):
        S.no_token_ids(Tok())


def test_long_prompts_keep_the_response_marker(setup, setup_1024, monkeypatch):
    """generation_ppl and self_ask generate from the prompt's tail: "### Response:" survives."""
    model, tok, records, enc = setup
    seen = []
    real = S.generate

    def spy(model, prompts, *a, **k):
        seen.extend(prompts)
        return real(model, prompts, *a, **k)

    monkeypatch.setattr(S, "generate", spy)
    long_ids = [i for i in records if len(enc[i].prompt) > 100][:3]
    assert len(long_ids) == 3
    for name, su in (("generation_ppl", setup), ("self_ask", setup_1024)):
        seen.clear()
        S.score_candidates(name, long_ids, scoring(su, max_length=64, gen_max_new_tokens=2, self_ask_positions=1))
        assert len(seen) == 3
        for p in seen:
            assert len(p) == 64 and p[0] == su[1].bos_token_id
            assert su[1].decode(p[1:], skip_special_tokens=True).endswith("### Response:"), name


def test_model_free_and_compound_keys(setup):
    model, tok, records, enc = setup
    ids = list(records)[:30]
    rows = S.score_candidates("instruction_length", ids, scoring(setup))
    lengths = [len(tok(records[i]["instruction"]).input_ids) for i in ids]
    assert [r["score"] for r in rows] == [-n for n in lengths]
    rows = S.score_candidates("random", ids, S.Scoring(None, tok, enc, records, SC.ScoreConfig(),
                                                       np.random.default_rng(7)))
    assert [r["score"] for r in rows] == np.random.default_rng(7).random(30).tolist()
    rows = S.score_candidates("length_and_ppl", ids, scoring(setup, max_length=4096))
    ppl = {i: hand_nll(model, tok(prompt_text(records[i])).input_ids, 1) for i in ids}
    by_score = [r["id"] for r in sorted(rows, key=lambda r: -r["score"])]
    by_key = sorted(ids, key=lambda i: (len(tok(records[i]["instruction"]).input_ids), ppl[i]))
    assert by_score == by_key
    assert [r["length"] for r in rows] == lengths


def test_cluster_tfidf_finds_the_topics(setup):
    model, tok, _, _ = setup
    topics = {"fruit": "apple banana cherry orchard fruit", "cars": "engine wheel brake gearbox car",
              "code": "python function loop compiler code"}
    recs = [{"id": f"{t}{k}", "instruction": f"{words} number {k}", "input": "", "output": "x"}
            for t, words in topics.items() for k in range(4)]
    by_id = {r["id"]: r for r in recs}
    enc = P.encode_records(tok, recs)
    sc = S.Scoring(model, tok, enc, by_id, SC.ScoreConfig(num_clusters=3, progress=False), np.random.default_rng(0))
    rows = S.score_candidates("cluster", list(by_id), sc)
    groups = {}
    for r in rows:
        groups.setdefault(r["cluster"], set()).add(r["id"].rstrip("0123456789"))
    assert sorted(len(g) for g in groups.values()) == [1, 1, 1] and len(groups) == 3  # one topic per cluster


def test_unknown_strategy_is_an_error(setup):
    with pytest.raises(U.InputError, match="unknown strategy 'nope'"):
        S.score_candidates("nope", [1], scoring(setup))
