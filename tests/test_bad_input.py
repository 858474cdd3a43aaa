"""The bad-input catalogue (README "Bad input"): each case gives one `error: ...` line naming the
file, line and field (or the flag), exit code 2, and leaves an existing run directory byte for byte
as it was. The run used is an annotation run waiting for its round-2 labels."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import acquisition_AL
from conftest import ROOT, write_jsonl

GOOD = {"instruction": "Name a colour.", "context": "", "response": "Blue."}
MSGS = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
FLAGS = ["--num_acquisition_samples", "10", "--epochs", "1", "--grad_accum", "2", "--train_max_length", "128",
         "--model_max_length", "128", "--threads", "2", "--no_progress", "--sampling_strategy", "forward_ppl"]


def argv(base, tmp_path, **over):
    """The base run's command line, with --flag values replaced by `over` (flag names without --)."""
    opts = {"file_path": base["pool"], "init_checkpoint_path": base["model"], "model_path": str(tmp_path / "run"),
            "al_data_fraction": "30", **over}
    out = [f"--{k}={v}" if v != "" else f"--{k}" for k, v in opts.items() if v is not None]  # "": a switch
    return FLAGS + out + (["--resume"] if "labels" not in over else [])


def tree_hash(*dirs) -> str:
    h = hashlib.sha256()
    for d in dirs:
        for root, subdirs, files in sorted(os.walk(d)):
            subdirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                h.update(os.path.relpath(p, d).encode())
                h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def base(pool, tiny_model, tmp_path_factory):
    """An annotation run on 60 records (budget 30, 10 per round): rounds 0 and 1 labelled, round 2 pending."""
    d = tmp_path_factory.mktemp("bad")
    rows = [json.loads(line) for line in open(pool)][:60]
    pool60 = write_jsonl(d / "pool60.jsonl", rows)
    b = {"pool": pool60, "model": tiny_model, "rows": rows, "dir": d}
    run = d / "run"
    common = argv(b, d, annotate_out=str(d / "batch.jsonl"))
    acquisition_AL.main([a for a in common if a != "--resume"])
    for _ in range(2):
        batch = [json.loads(line) for line in open(d / "batch.jsonl")]
        write_jsonl(d / "filled.jsonl", [{**r, "output": rows[r["id"]]["response"]} for r in batch])
        acquisition_AL.main(argv(b, d, annotate_out=str(d / "batch.jsonl"), labels=str(d / "filled.jsonl")))
    assert json.load(open(run / "state.json"))["rounds_done"] == 1
    b["pending"] = [json.loads(line) for line in open(d / "batch.jsonl")]
    b["labelled"] = [r["id"] for r in json.load(open(run / "selected.json"))]
    return b


def pool_file(t, rows, name="pool.jsonl"):
    return write_jsonl(t / name, rows)


def raw_file(t, name, data: bytes):
    (t / name).write_bytes(data)
    return str(t / name)


def labels_file(t, b, rows):
    return write_jsonl(t / "labels.jsonl", rows)


def model_copy(t, b, edit_config=None, edit_tokenizer=None, truncate=False):
    d = t / "model"
    shutil.copytree(b["model"], d)
    for name, edit in (("config.json", edit_config), ("tokenizer_config.json", edit_tokenizer)):
        if edit:
            c = json.load(open(d / name))
            c.update(edit)
            json.dump(c, open(d / name, "w"))
    if truncate:
        f = d / "model.safetensors"
        os.truncate(f, os.path.getsize(f) // 2)
    return str(d)


def sharded_truncated(t, b):
    d = t / "ckpt_sharded"
    shutil.copytree(b["dir"] / "run_sharded", d)
    os.truncate(d / "__0_0.distcp", 1000)
    return str(d)


def ls_export(t, b, result=None, record=None, data=None):
    """A Label Studio JSON export (the shape of tests/fixtures/label_studio) answering the pending
    batch's first row: `result` replaces the text area, `record` the record id, `data` the data."""
    r = b["pending"][0]
    area = [{"from_name": "answer", "to_name": "instruction", "type": "textarea",
             "value": {"text": [b["rows"][r["id"]]["response"]]}}]
    task = {"id": 100, "data": data or {"record_id": r["id"] if record is None else record,
                                        "instruction": r["instruction"], "input": r["input"], "round": 2},
            "annotations": [{"id": 1, "result": area if result is None else result, "was_cancelled": False,
                             "created_at": "2026-11-30T05:41:43.389026Z", "updated_at": "2026-11-30T05:41:43.389111Z"}]}
    return raw_file(t, "export.json", json.dumps([task]).encode())


def pending_row(b, i=0, **changes):
    r = b["pending"][i]
    return {**r, "output": b["rows"][r["id"]]["response"], **changes}


# name -> (flags over the base command, the expected error line (prefix when it ends in "..."))
CASES = {
    "malformed JSONL line": lambda t, b: (
        {"file_path": (p := raw_file(t, "pool.jsonl", (json.dumps(GOOD) + "\n{\"instruction\": oops}\n").encode()))},
        f"error: {p}:2: (json): malformed JSON: Expecting value at column 17"),
    "malformed JSON array": lambda t, b: (
        {"file_path": (p := raw_file(t, "pool.json", b'[{"instruction": "a"},\n {"instruction": }]'))},
        f"error: {p}:2: (json): malformed JSON: Expecting value"),
    "wrong top-level type (.json object)": lambda t, b: (
        {"file_path": (p := raw_file(t, "pool.json", json.dumps(GOOD).encode()))},
        f"error: {p}:1: (json): expected a JSON array of records, got dict"),
    "a JSONL line that is not an object": lambda t, b: (
        {"file_path": (p := raw_file(t, "pool.jsonl", (json.dumps(GOOD) + "\n[1, 2]\n").encode()))},
        f"error: {p}:2: (record): expected a JSON object, got list"),
    "missing instruction": lambda t, b: (
        {"file_path": (p := pool_file(t, [GOOD, {"context": "", "response": "y"}]))},
        f"error: {p}:2: instruction: missing (columns found: context, response)"),
    "unknown columns only": lambda t, b: (
        {"file_path": (p := pool_file(t, [{"question": "x", "answer": "y"}]))},
        f"error: {p}:1: instruction: missing (columns found: question, answer)"),
    "empty instruction": lambda t, b: (
        {"file_path": (p := pool_file(t, [GOOD, {**GOOD, "instruction": "  "}]))},
        f"error: {p}:2: instruction: empty"),
    "non-string field": lambda t, b: (
        {"file_path": (p := pool_file(t, [GOOD, {**GOOD, "context": 5}]))},
        f"error: {p}:2: context: expected a string, got int"),
    "duplicate ids": lambda t, b: (
        {"file_path": (p := pool_file(t, [{**GOOD, "id": "a"}, {**GOOD, "id": "b"}, {**GOOD, "id": "a"}]))},
        f"error: {p}:3: id: duplicate id 'a' (first seen at line 1)"),
    "UTF-8 error": lambda t, b: (
        {"file_path": (p := raw_file(t, "pool.jsonl", json.dumps(GOOD).encode() + b'\n{"instruction": "caf\xe9"}\n'))},
        f"error: {p}:2: (encoding): invalid UTF-8 byte 0xe9 at column 21"),
    "CSV row with too many fields": lambda t, b: (
        {"file_path": (p := raw_file(t, "pool.csv", b"instruction,response\na,b\nc,d,e\n"))},
        f"error: {p}:3: (csv): more fields than the header has"),
    "empty pool": lambda t, b: (
        {"file_path": (p := raw_file(t, "pool.jsonl", b"\n"))}, f"error: {p}: file: no records"),
    "pool file missing": lambda t, b: ({"file_path": (p := str(t / "nope.jsonl"))}, f"error: {p}: file: no such file"),
    "pool without answers, oracle labelling": lambda t, b: (
        {"file_path": (p := pool_file(t, [{"instruction": "a"}])), "model_path": str(t / "fresh")},
        f"error: {p}:1: output: empty or missing (oracle labelling takes answers from the pool; use "
        "--annotate_out for an unlabelled pool)"),
    "answer-based strategy on an unlabelled pool": lambda t, b: (
        {"file_path": (p := pool_file(t, [{"instruction": "a"}])), "sampling_strategy": "ifd",
         "annotate_out": str(t / "b.jsonl")},
        f"error: {p}:1: output: empty or missing (--sampling_strategy ifd scores answers; pick a prompt-only "
        "strategy)"),
    "budget larger than the pool": lambda t, b: (
        {"al_data_fraction": "100"},
        f"error: --al_data_fraction: budget 100 + held-out 0 exceeds the pool (60 records in {b['pool']})"),
    "budget below the seed set": lambda t, b: (
        {"al_data_fraction": "5"}, "error: --al_data_fraction: budget 5 is below the seed set "
                                   "(--num_acquisition_samples 10)"),
    "budget below what the run already labelled": lambda t, b: (
        {"al_data_fraction": "15"},
        f"error: --al_data_fraction: budget 15 is below the 20 examples {t / 'run'} has already labelled"),
    "labels: unknown id": lambda t, b: (
        {"labels": (p := labels_file(t, b, [pending_row(b), {**pending_row(b, 1), "id": 9999}]))},
        f"error: {p}:2: id: unknown id 9999: not in the pool"),
    "labels: id not in the pending batch": lambda t, b: (
        {"labels": (p := labels_file(t, b, [{**pending_row(b), "id": b["labelled"][0]}]))},
        f"error: {p}:1: id: {b['labelled'][0]!r} was not requested in the pending batch (round 2)"),
    "labels: id twice": lambda t, b: (
        {"labels": (p := labels_file(t, b, [pending_row(b), pending_row(b, 1), pending_row(b)]))},
        f"error: {p}:3: id: {b['pending'][0]['id']!r} appears twice (first at line 1)"),
    "labels: instruction edited": lambda t, b: (
        {"labels": (p := labels_file(t, b, [pending_row(b, instruction="something else")]))},
        f"error: {p}:1: instruction: differs from the pool's instruction for id {b['pending'][0]['id']!r} "
        "(the batch must come back unedited; fix the pool instead)"),
    "labels: answer not a string": lambda t, b: (
        {"labels": (p := labels_file(t, b, [pending_row(b, output=42)]))},
        f"error: {p}:1: output: expected a string, got int"),
    "labels: no id column": lambda t, b: (
        {"labels": (p := labels_file(t, b, [{"output": "x"}]))}, f"error: {p}:1: id: missing (columns found: output)"),
    "labels: a Label Studio export of another project": lambda t, b: (
        {"labels": (p := ls_export(t, b, record=(x := min(set(range(60)) - set(b["labelled"])
                                                          - {r["id"] for r in b["pending"]}))))},
        f"error: {p}: task 100: id: {x} was not requested in the pending batch (round 2)"),
    "labels: a Label Studio annotation that is not a text area": lambda t, b: (
        {"labels": (p := ls_export(t, b, result=[{"from_name": "ok", "to_name": "instruction", "type": "choices",
                                                  "value": {"choices": ["yes"]}}]))},
        f"error: {p}: task 100: answer: the annotation's result is not a text area (choices); the project needs the "
        "labeling configuration written beside the batch (label_studio_config.xml)"),
    "labels: a Label Studio annotation with an empty answer": lambda t, b: (
        {"labels": (p := ls_export(t, b, result=[{"from_name": "answer", "to_name": "instruction",
                                                  "type": "textarea", "value": {"text": ["  "]}}]))},
        f"error: {p}: task 100: answer: empty answer"),
    "labels: a Label Studio task this tool did not export": lambda t, b: (
        {"labels": (p := ls_export(t, b, data={"text": "x"}))},
        f"error: {p}: task 100: data.record_id: missing (not a task this tool exported; found: text)"),
    "labels: a malformed Label Studio export": lambda t, b: (
        {"labels": (p := raw_file(t, "export.json", b'[{"id": 1,\n "data": {"record_id": 3}, "annotations": [}]'))},
        f"error: {p}:2: (json): malformed JSON: Expecting value"),
    "--draft_answers without a Label Studio batch": lambda t, b: (
        {"draft_answers": ""}, "error: --draft_answers: drafts go to Label Studio tasks: needs --annotate_out "
                               "NAME.ls.json"),
    "labels for a run that waits for none": lambda t, b: (
        {"labels": labels_file(t, b, [pending_row(b)]), "model_path": str(t / "fresh")},
        f"error: --labels: {t / 'fresh'}: no run there waiting for labels (start one with --annotate_out)"),
    "truncated checkpoint": lambda t, b: (
        {"init_checkpoint_path": (m := model_copy(t, b, truncate=True))},
        f"error: --init_checkpoint_path: {m}/model.safetensors: unreadable safetensors file (Error while "
        "deserializing header: incomplete metadata, file not fully covered): truncated or corrupt?"),
    "truncated sharded checkpoint": lambda t, b: (
        {"init_checkpoint_path": (m := sharded_truncated(t, b))},
        f"error: --init_checkpoint_path: {m}/__0_0.distcp: truncated (..."),
    "checkpoint from a different model config": lambda t, b: (
        {"model_config_path": (m := model_copy(t, b, edit_config={"intermediate_size": 48}))},
        f"error: --init_checkpoint_path: {b['model']}: model.layers.0.mlp.gate_proj.weight has shape [64, 32] "
        f"but {m}/config.json needs [48, 32] (checkpoint from a different model config)"),
    "tokenizer with no pad, unk or eos token": lambda t, b: (
        {"model_config_path": (m := model_copy(t, b, edit_tokenizer={"pad_token": None, "unk_token": None,
                                                                     "eos_token": None}))},
        f"error: {m}: tokenizer: has none of pad/unk/eos tokens"),
    "--self_ask_positions 0 (raised after round 0 had trained)": lambda t, b: (
        {"sampling_strategy": "self_ask", "self_ask_positions": "0"}, "error: --self_ask_positions: must be >= 1"),
    "--gen_max_new_tokens 0 (raised after round 0 had trained)": lambda t, b: (
        {"sampling_strategy": "generation_ppl", "gen_max_new_tokens": "0"},
        "error: --gen_max_new_tokens: must be >= 1"),
    "--model_max_length 0 (IndexError)": lambda t, b: (
        {"model_max_length": "0"}, "error: --model_max_length: must be >= 2 (BOS and at least one scored token)"),
    "--model_max_length 1 (every score 0.0)": lambda t, b: (
        {"model_max_length": "1"}, "error: --model_max_length: must be >= 2 (BOS and at least one scored token)"),
    "--seed -1 (left an empty run directory holding .lock)": lambda t, b: (
        {"seed": "-1", "model_path": str(t / "fresh")}, "error: --seed: must be >= 0"),
    "a flag the strategy ignores": lambda t, b: (
        {"num_k": "3"}, "error: --num_k: 3 has no effect with --sampling_strategy forward_ppl "
                        "--stratification_strategy greedy (only --stratification_strategy bucket reads it); "
                        "leave it out"),
    "a strategy flag for another strategy": lambda t, b: (
        {"self_ask_positions": "2"}, "error: --self_ask_positions: 2 has no effect with --sampling_strategy "
                                     "forward_ppl (only --sampling_strategy self_ask reads it); leave it out"),
    "AdamW beta out of range": lambda t, b: ({"adam_beta2": "1"}, "error: --adam_beta2: must be in [0, 1)"),
    "self_ask with no single-token \"no\"": lambda t, b: (
        {"sampling_strategy": "self_ask"},
        f"error: --sampling_strategy self_ask: tokenizer {b['model']}: none of no, No, NO is a single token, so "
        "P(no) cannot be read"),
    "--lora_r below 0": lambda t, b: ({"lora_r": "-1"}, "error: --lora_r: -1: must be >= 0 (0 = full fine-tuning)"),
    "a LoRA target module the model lacks": lambda t, b: (
        {"lora_r": "4", "lora_target_modules": "q_proj,qkv"},
        f"error: --lora_target_modules: qkv: no such linear module in {b['model']}/config.json's model (it has "
        "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj)"),
    "a LoRA flag without --lora_r": lambda t, b: (
        {"lora_alpha": "32"}, "error: --lora_alpha: 32.0 has no effect without --lora_r (full fine-tuning); leave it "
                              "out or give --lora_r"),
    "a multi-turn conversation under the alpaca template": lambda t, b: (
        {"file_path": (p := pool_file(t, [{"messages": MSGS}, {"messages": MSGS + MSGS}]))},
        f"error: {p}:2: messages: turns user -> assistant -> user -> assistant; the alpaca template holds one user "
        "turn and its answer (multi-turn and system turns need --prompt_template chat)"),
    "changed flags on --resume": lambda t, b: (
        {"seed": "1"}, f"error: --resume: {t / 'run'}/state.json: flags or pool differ from the run being resumed: "
                       "seed: 42 -> 1"),
    "changed pool on --resume": lambda t, b: (
        {"file_path": pool_file(t, [{**r, "response": r["response"] + "!"} if i == 0 else r
                                    for i, r in enumerate(b["rows"])])},
        f"error: --resume: {t / 'run'}/state.json: flags or pool differ from the run being resumed: file_path: ..."),
    "a NaN learning rate": lambda t, b: ({"lr": "nan"}, "error: --lr: must be a finite number, not nan"),
    "an infinite learning rate": lambda t, b: ({"lr": "inf"}, "error: --lr: must be a finite number, not inf"),
    "a negative warmup ratio": lambda t, b: ({"warmup_ratio": "-0.5"}, "error: --warmup_ratio: must be in [0, 1]"),
    "an unknown key in a config file": lambda t, b: (
        {"config": raw_file(t, "c.yaml", b"lr: 0.001\nlearning_rate: 0.01\n")},
        f"error: {t / 'c.yaml'}: learning_rate: unknown setting (keys are the flag names without dashes; see --help)"),
    "a wrong type in a config file": lambda t, b: (
        {"config": raw_file(t, "c.yaml", b"epochs: 1.5\n")},
        f"error: {t / 'c.yaml'}: epochs: expected an integer, got float 1.5"),
    "a switch that is not true/false in a config file": lambda t, b: (
        {"config": raw_file(t, "c.yaml", b"warm_start: yes please\n")},
        f"error: {t / 'c.yaml'}: warm_start: expected true or false, got 'yes please'"),
    "a value outside the choices in a config file": lambda t, b: (
        {"config": raw_file(t, "c.yaml", b"sampling_strategy: best\n")},
        f"error: {t / 'c.yaml'}: sampling_strategy: 'best' is not one of ..."),
    "malformed YAML in a config file": lambda t, b: (
        {"config": raw_file(t, "c.yaml", b"lr: 0.001\nepochs: [1\n")},
        f"error: {t / 'c.yaml'}:3: not valid YAML (expected ',' or ']', but got '<stream end>')"),
}


def attempt(base, tmp_path, name, capsys):
    over, expected = CASES[name](tmp_path, base)
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: acquisition_AL.main(argv(base, tmp_path, **over)))
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code, err, expected


@pytest.mark.parametrize("name", list(CASES))
def test_catalogue(base, tmp_path, name, capsys):
    shutil.copytree(base["dir"] / "run", tmp_path / "run")
    shutil.copytree(base["dir"] / "run_sharded", tmp_path / "run_sharded")
    before = tree_hash(tmp_path / "run", tmp_path / "run_sharded")
    code, err, expected = attempt(base, tmp_path, name, capsys)
    assert code == 2 and len(err) == 1, err
    if expected.endswith("..."):
        assert err[0].startswith(expected[:-3]), err[0]
    else:
        assert err[0] == expected
    assert tree_hash(tmp_path / "run", tmp_path / "run_sharded") == before
    assert not (tmp_path / "fresh").exists()


def test_tokenizer_without_pad_token_pads_with_eos(tiny_model, tmp_path):
    """No pad (and no unk) token is normal for Llama tokenizers: padding is masked, eos stands in."""
    from al_prompts import pad_id_of
    from fsdp_utils import load_tokenizer

    m = model_copy(tmp_path, {"model": tiny_model}, edit_tokenizer={"pad_token": None, "unk_token": None})
    tok = load_tokenizer(m)
    assert tok.pad_token_id is None and pad_id_of(tok) == tok.eos_token_id is not None


@pytest.mark.parametrize("flag", ["--num_k", "--num_acquisition_samples"])
def test_counts_below_one(tmp_path, tiny_model, capsys, flag):
    p = pool_file(tmp_path, [GOOD, GOOD, GOOD])
    with pytest.raises(SystemExit):
        acquisition_AL.run_cli(lambda: acquisition_AL.main(
            ["--file_path", p, "--init_checkpoint_path", tiny_model, "--model_path", str(tmp_path / "r"),
             "--al_data_fraction", "2", "--stratification_strategy", "bucket", flag, "0"]))
    assert capsys.readouterr().err == f"error: {flag}: must be >= 1\n" and not (tmp_path / "r").exists()


def test_cli_exit_code(tmp_path):
    """The real command line: exit status 2 and a single line on stderr."""
    p = tmp_path / "pool.jsonl"
    p.write_text("not json\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "acquisition_AL.py"), "--file_path", str(p),
                          "--init_checkpoint_path", str(tmp_path), "--model_path", str(tmp_path / "r"),
                          "--al_data_fraction", "1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {p}:1: (json): malformed JSON: Expecting value at column 1"
