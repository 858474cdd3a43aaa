"""--prompt_template chat on the tiny model with a hand-written chat template: prompt and answer
ids against a hand-built sequence, the training loss mask token by token, prompt scoring by hand,
batched generation, and the one-line refusals."""
import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import acquisition_AL
import al_datasets as D
import al_prompts as P
import al_strategies as S
import al_training
import al_utils as U
import eval_generate
import fsdp_utils
from al_scoring import ScoreConfig, stop_ids
from conftest import write_jsonl

TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + ']\n' + m['content'] + eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '[assistant]\n' }}{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(tiny_model, path)
    tok = fsdp_utils.load_tokenizer(str(path))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def setup(chat_model, pool):
    tok = fsdp_utils.load_tokenizer(chat_model)
    model = fsdp_utils.load_model(chat_model, torch.device("cpu")).eval()
    records = D.load_records(pool)[:12]
    return model, tok, records


def hand(tok, r):
    """The template written out as text, tokenised without added specials: (prompt ids, full ids)."""
    user = r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else "")
    prompt = f"<s>[user]\n{user}</s>[assistant]\n"
    return (tok(prompt, add_special_tokens=False).input_ids,
            tok(prompt + r["output"] + "</s>", add_special_tokens=False).input_ids)


def test_prompt_answer_and_loss_mask_token_by_token(setup):
    model, tok, records = setup
    enc = P.encode_records(tok, records, "chat")
    assert any(r["input"].strip() for r in records) and any(not r["input"].strip() for r in records)
    for r in records:
        p, full = hand(tok, r)
        e = enc[r["id"]]
        assert e.prompt == p and e.prompt + e.answer == full
        assert e.answer[-1] == tok.eos_token_id  # the template's end of turn is part of the answer
    # training's labels: -100 on every prompt token and on padding, the token itself on the answer
    rows = [(enc[r["id"]].prompt, enc[r["id"]].answer) for r in records[:3]]
    ids, mask, labels = al_training.collate(rows, P.pad_id_of(tok))
    for b, r in enumerate(records[:3]):
        p, full = hand(tok, r)
        assert labels[b].tolist() == [-100] * len(p) + full[len(p):] + [-100] * (ids.shape[1] - len(full))


def test_prompt_scoring_and_answer_nll_by_hand(setup):
    model, tok, records = setup
    enc = P.encode_records(tok, records, "chat")
    sc = S.Scoring(model, tok, enc, {r["id"]: r for r in records}, ScoreConfig(progress=False, max_length=4096), None,
                   template="chat")
    rows = S.score_candidates("forward_ppl", [r["id"] for r in records], sc)
    for row, r in zip(rows, records):
        p, _ = hand(tok, r)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p])).logits[0]
        want = F.cross_entropy(logits[:-1], torch.tensor(p[1:])).item()  # every prompt token after the first
        assert abs(row["score"] - want) < 1e-5
    # ifd's direct pass: the answer after the first token + the assistant header "[assistant]\n"
    with_gen, without = (tok(t, add_special_tokens=False).input_ids for t in ("<s>[user]\nx</s>[assistant]\n",
                                                                              "<s>[user]\nx</s>"))
    assert P.response_marker_ids(tok, "chat") == [tok.bos_token_id] + with_gen[len(without):]


def test_batched_generation_equals_one_at_a_time(setup):
    model, tok, records = setup
    model = copy.deepcopy(model)  # EOS pushed down, so rows talk to their caps (the tiny model says EOS at once)
    eos = tok.eos_token_id
    model.lm_head.register_forward_hook(lambda m, i, o: o.index_add(-1, torch.tensor([eos]),
                                                                    torch.full_like(o[..., :1], -20.0)))
    prompts = P.prompt_ids(tok, records[:6], "chat")
    args = eval_generate.parse_args(["--save_file_name", "x.json", "--greedy", "--max_new_tokens", "8",
                                     "--prompt_template", "chat"])
    out = {}
    for bs in (1, 6):
        args.batch_size = bs
        out[bs] = eval_generate.generate_answers(model, tok, prompts, args, progress=False)
    assert out[1] == out[6] and all(len(g) == 8 for g in out[1])
    # the model's generation_config may list more stop ids than the tokenizer's EOS (Llama 3 Instruct's
    # <|eot_id|>): every row ends at its first one of them, which is dropped like EOS
    x = out[1][0][2]
    assert x not in out[1][0][:2] and x != eos
    model.generation_config.eos_token_id = [eos, x]
    stopped = eval_generate.generate_answers(model, tok, prompts, args, progress=False)
    assert stopped[0] == out[1][0][:2]
    assert stopped == [g[: g.index(x)] if x in g else g for g in out[1]]


def test_generation_config_stop_ids_are_loaded(chat_model, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(chat_model, path)
    tok = fsdp_utils.load_tokenizer(str(path))
    assert stop_ids(fsdp_utils.load_model(str(path), torch.device("cpu")), tok) == [tok.eos_token_id]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.eos_token_id, 7],
                                                             "repetition_penalty": 1.5}))
    model = fsdp_utils.load_model(str(path), torch.device("cpu"))
    assert stop_ids(model, tok) == sorted([tok.eos_token_id, 7])
    assert model.generation_config.repetition_penalty in (None, 1.0)  # decoding stays what the flags say


def test_chat_run_records_its_template_and_refuses_another_on_resume(chat_model, pool, tmp_path):
    argv = ["--file_path", pool, "--init_checkpoint_path", chat_model, "--model_path", str(tmp_path / "r"),
            "--al_data_fraction", "40", "--num_acquisition_samples", "20", "--heldout_size", "10",
            "--epochs", "1", "--grad_accum", "4", "--train_max_length", "128", "--model_max_length", "128",
            "--threads", "2", "--no_progress"]
    acquisition_AL.main([*argv, "--prompt_template", "chat"])
    state = json.load(open(tmp_path / "r" / "state.json"))
    assert state["flags"]["prompt_template"] == "chat" and np.isfinite(state["round_log"][-1]["heldout_loss"])
    # not given, a setting is the run's own (state.json spec); given differently, it is refused
    assert acquisition_AL.parse_args([*argv, "--resume"]).prompt_template == "chat"
    with pytest.raises(U.InputError, match="prompt_template: 'chat' -> 'alpaca'"):
        acquisition_AL.main([*argv, "--al_data_fraction", "60", "--resume", "--prompt_template", "alpaca"])


def test_tokenizer_without_chat_template_is_one_line(tiny_model, pool, tmp_path, capsys):
    argv = ["--file_path", pool, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "r"),
            "--al_data_fraction", "40", "--num_acquisition_samples", "20", "--prompt_template", "chat"]
    with pytest.raises(SystemExit) as e:
        U.run_cli(lambda: acquisition_AL.main(argv))
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: {tiny_model}: tokenizer: has no chat template (--prompt_template "
                                       "chat formats prompts with the tokenizer's own; use --prompt_template alpaca)\n")
    assert not (tmp_path / "r").exists()


def conversation(r: dict, k: int) -> list[dict]:
    """A 2-turn conversation (system turn on odd k) from a pool record: the record, then a follow-up."""
    turns = [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]},
             {"role": "user", "content": "Say that again, shorter."},
             {"role": "assistant", "content": r["output"][:40]}]
    return ([{"role": "system", "content": "Be brief."}] if k % 2 else []) + turns


def hand_multi(tok, turns):
    """Hand-built ids of a conversation (the template written out as text) and the positions training
    learns: every assistant turn's text and end of turn, not its header."""
    def ids(text):
        return tok(text, add_special_tokens=False).input_ids

    text, learnt = "<s>", []
    for t in turns:
        text += f"[{t['role']}]\n"
        start = len(ids(text))
        text += t["content"] + "</s>"
        if t["role"] == "assistant":
            learnt += range(start, len(ids(text)))
    return ids(text), learnt


def test_multi_turn_loss_covers_every_assistant_turn(setup, tmp_path):
    model, tok, records = setup
    rows = [{"messages": conversation(r, k), "id": f"c{k}"} for k, r in enumerate(records[:4])]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    with pytest.raises(U.InputError, match="need --prompt_template chat"):
        D.load_records(path)
    recs = D.load_records(path, require_output="training", template="chat")
    assert [r["messages"] for r in recs] == [r["messages"] for r in rows]  # kept as they came
    assert recs[0]["instruction"] == records[0]["instruction"] and recs[0]["output"] == records[0]["output"][:40]
    enc = P.encode_records(tok, recs, "chat")
    examples = []
    for r in recs:
        ids, learnt = hand_multi(tok, r["messages"])
        e = enc[r["id"]]
        assert e.prompt + e.answer == ids
        assert len(e.spans) == 1  # the first answer, inside the prompt
        examples.append((e.prompt, e.answer, e.prompt_loss()))
        # labels: the token itself at every learnt position (both answers), -100 elsewhere
        _, _, labels = al_training.collate(examples[-1:], P.pad_id_of(tok))
        assert [j for j, x in enumerate(labels[0].tolist()) if x != -100] == learnt
        assert labels[0, learnt].tolist() == [ids[j] for j in learnt]
    # the training loss is the NLL over those positions, by hand
    ids, mask, labels = al_training.collate(examples, P.pad_id_of(tok))
    with torch.no_grad():
        got = al_training.token_nll_sum(model, ids, mask, labels).item()
    want = 0.0
    for r in recs:
        seq, learnt = hand_multi(tok, r["messages"])
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([seq])).logits[0].log_softmax(-1)
        want -= sum(logp[j - 1, seq[j]].item() for j in learnt)
    assert abs(got - want) < 1e-3 * len(recs)
    assert sum(map(al_training.learnt_tokens, examples)) == sum(len(hand_multi(tok, r["messages"])[1]) for r in recs)
    # prompt-based scores cover every turn before the final answer (user turns included)
    sc = S.Scoring(model, tok, enc, {r["id"]: r for r in recs}, ScoreConfig(progress=False, max_length=4096), None,
                   template="chat")
    for row, r in zip(S.score_candidates("forward_ppl", [r["id"] for r in recs], sc), recs):
        p = enc[r["id"]].prompt
        assert tok.decode(p).count("Say that again") == 1
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p])).logits[0]
        assert abs(row["score"] - F.cross_entropy(logits[:-1], torch.tensor(p[1:])).item()) < 1e-5


def test_multi_turn_run_keeps_conversations_and_exports_them_for_annotators(chat_model, pool, tmp_path):
    from al_annotation import batch_rows

    rows = [{"messages": conversation(r, k)} for k, r in enumerate(D.load_records(pool)[:40])]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    argv = ["--file_path", path, "--init_checkpoint_path", chat_model, "--model_path", str(tmp_path / "r"),
            "--al_data_fraction", "20", "--num_acquisition_samples", "10", "--epochs", "1", "--grad_accum", "2",
            "--train_max_length", "256", "--model_max_length", "256", "--threads", "2", "--no_progress",
            "--prompt_template", "chat", "--sampling_strategy", "forward_ppl"]
    acquisition_AL.main(argv)
    selected = json.load(open(tmp_path / "r" / "selected.json"))
    assert len(selected) == 20 and all(s["messages"] == rows[s["id"]]["messages"] for s in selected)
    by_id = {i: {**r, "id": i, "instruction": "", "input": ""} for i, r in enumerate(rows)}
    out = batch_rows([{"id": 3, "score": None, "bucket": None}], by_id, 1)[0]
    assert out["messages"] == rows[3]["messages"][:-1] + [{"role": "assistant", "content": ""}]
