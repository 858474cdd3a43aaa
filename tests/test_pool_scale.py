"""Compact encodings: the same Encoded as tokenising each record on its own; chunking does not
change them; the scale benchmark's smallest size runs (seconds)."""
import os
import subprocess
import sys

import al_datasets as D
import al_prompts as P
from conftest import ROOT, hand_ids


def test_compact_encodings_equal_per_record_tokenisation(loaded, pool, monkeypatch):
    _, tok = loaded
    records = D.load_records(pool)[:50]
    monkeypatch.setattr(P, "ENCODE_CHUNK", 7)  # many chunks, one of them short
    enc = P.encode_records(tok, records)
    assert isinstance(enc, P.Encodings) and list(enc) == [r["id"] for r in records]
    for r in records:
        p, a = hand_ids(tok, r)
        e = enc[r["id"]]
        assert (e.prompt, e.answer, e.input_block) == (p, a, int(bool(r["input"].strip())))
        assert e.instruction_len == len(tok(r["instruction"]).input_ids)
    # a later id replaces an earlier one (annotators' answers over the pool's)
    relabelled = {**records[3], "output": "Another answer."}
    enc.update(P.encode_records(tok, [relabelled]))
    assert len(enc) == 50 and enc[records[3]["id"]].answer == hand_ids(tok, relabelled)[1]
    assert enc.buf.dtype.name == "int32"


def test_lazy_pool_tokenises_answers_only_where_asked(loaded, pool):
    """A lazy pool's prompt-only ensure leaves answers untokenised (their ids not in the buffer); an
    answer read anyway is tokenised then, alone; ensure(answers=True) encodes the rest whole. Every
    Encoded equals the eager one."""
    _, tok = loaded
    records = D.load_records(pool)[:40]
    ids = [r["id"] for r in records]
    eager = P.encode_records(tok, records)
    lazy = P.lazy_encodings(tok, D.load_pool(pool))
    lazy.ensure(ids)
    lazy._join()
    assert len(lazy.buf) == sum(len(eager[i].prompt) for i in ids)  # prompts only
    assert list(lazy.later) == [int(bool(r["output"])) for r in records] and lazy.later.any()
    first = next(i for i, r in zip(ids, records) if r["output"])
    e = lazy[first]
    assert callable(e.answer_or_later) and e.prompt == eager[first].prompt
    assert e.answer == eager[first].answer and e.answer  # read: tokenised then, for this record alone
    lazy._join()
    assert lazy.later.sum() == sum(bool(r["output"]) for r in records)  # a new row for it; the others wait
    assert not lazy.later[lazy.rows[first]]
    lazy.ensure(ids[:20], answers=True)
    assert [lazy[i].answer_or_later for i in ids[:20]] == [eager[i].answer for i in ids[:20]]
    assert [lazy[i] for i in ids] == [eager[i] for i in ids] and list(lazy) == ids


def test_batch_ids_equal_the_tokenizer_call_also_when_its_file_asks_to_truncate_or_pad(loaded, pool):
    """The Rust tokenizer called directly gives the transformers call's ids; a tokenizer.json that
    asks for truncation or padding (the call turns both off) goes through the call, not truncated."""
    _, tok = loaded
    texts = [P.format_prompt(r["instruction"], r["input"]) + P.ANSWER_SEP + r["output"] for r in D.load_records(pool)]
    want = tok(texts, return_attention_mask=False).input_ids
    assert P.batch_ids(tok, texts) == want and P.batch_ids(tok, []) == []
    for ask in (lambda b: b.enable_truncation(8), lambda b: b.enable_padding(length=600)):
        ask(tok._tokenizer)
        assert P.batch_ids(tok, texts) == want
        tok._tokenizer.no_truncation()
        tok._tokenizer.no_padding()
    assert max(map(len, want)) > 8


def test_scale_benchmark_smallest_size(tiny_model, tmp_path):
    out = tmp_path / "scale.md"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_pool_scale.py"), "--sizes", "1500",
                    "--compare_up_to", "1500", "--model", tiny_model, "--out", str(out)], check=True,
                   capture_output=True, timeout=300)
    text = out.read_text()
    assert "| 1,500 |" in text and "Side by side" in text
