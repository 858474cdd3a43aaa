"""Bad input: one `error: FILE:LINE: FIELD: message` line (or `error: --flag: ...`), exit 2, no work done."""
import json
import os
import subprocess
import sys

import pytest

import acquisition_AL
from conftest import ROOT, write_jsonl

GOOD = {"instruction": "Name a colour.", "context": "", "response": "Blue."}


def fail(capsys, tmp_path, pool, model, *extra):
    run = tmp_path / "run"
    argv = ["--file_path", str(pool), "--init_checkpoint_path", str(model), "--model_path", str(run),
            "--al_data_fraction", "2", "--num_acquisition_samples", "1", "--no_progress", *extra]
    with pytest.raises(SystemExit) as e:
        acquisition_AL.run_cli(lambda: acquisition_AL.main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert not run.exists()  # nothing started
    return err[0]


def pool_with(tmp_path, rows, name="pool.jsonl"):
    return write_jsonl(tmp_path / name, rows)


def test_malformed_json_line(tmp_path, tiny_model, capsys):
    p = tmp_path / "pool.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{\"instruction\": oops}\n")
    assert fail(capsys, tmp_path, p, tiny_model).startswith(f"error: {p}:3: (json): malformed JSON")


def test_missing_instruction(tmp_path, tiny_model, capsys):
    p = pool_with(tmp_path, [GOOD, GOOD, {"question": "x", "response": "y"}])
    assert fail(capsys, tmp_path, p, tiny_model) == (
        f"error: {p}:3: instruction: missing (columns found: question, response)")


def test_empty_instruction(tmp_path, tiny_model, capsys):
    p = pool_with(tmp_path, [GOOD, {**GOOD, "instruction": "  "}, GOOD])
    assert fail(capsys, tmp_path, p, tiny_model) == f"error: {p}:2: instruction: empty"


def test_duplicate_id(tmp_path, tiny_model, capsys):
    p = pool_with(tmp_path, [{**GOOD, "id": "a"}, {**GOOD, "id": "b"}, {**GOOD, "id": "a"}])
    assert fail(capsys, tmp_path, p, tiny_model) == f"error: {p}:3: id: duplicate id 'a' (first seen at line 1)"


def test_json_array_element_numbers(tmp_path, tiny_model, capsys):
    p = tmp_path / "pool.json"
    p.write_text(json.dumps([GOOD, GOOD, {**GOOD, "instruction": 5}]))
    assert fail(capsys, tmp_path, p, tiny_model) == f"error: {p}:3: instruction: expected a string, got int"


def test_budget_larger_than_pool(tmp_path, tiny_model, capsys):
    p = pool_with(tmp_path, [GOOD, GOOD, GOOD])
    err = fail(capsys, tmp_path, p, tiny_model, "--al_data_fraction", "10")
    assert err.startswith("error: --al_data_fraction: budget 10 + held-out 0 exceeds the pool (3 records")


@pytest.mark.parametrize("flag", ["--num_k", "--num_acquisition_samples"])
def test_counts_below_one(tmp_path, tiny_model, capsys, flag):
    p = pool_with(tmp_path, [GOOD, GOOD, GOOD])
    assert fail(capsys, tmp_path, p, tiny_model, flag, "0") == f"error: {flag}: must be >= 1"


def test_answer_strategy_on_pool_without_answers(tmp_path, tiny_model, capsys):
    p = pool_with(tmp_path, [{"instruction": "a"}, {"instruction": "b"}, {"instruction": "c"}])
    err = fail(capsys, tmp_path, p, tiny_model, "--sampling_strategy", "ifd")
    assert err == (f"error: {p}:1: output: empty or missing (--sampling_strategy ifd scores answers, "
                   "and oracle labelling needs them)")


def test_model_path_not_a_model(tmp_path, capsys):
    p = pool_with(tmp_path, [GOOD, GOOD, GOOD])
    (tmp_path / "notmodel").mkdir()
    err = fail(capsys, tmp_path, p, tmp_path / "notmodel")
    assert err == f"error: --init_checkpoint_path: {tmp_path / 'notmodel'}: not a model folder " \
                  "(expected config.json + *.safetensors, or a sharded checkpoint with .metadata)"


def test_cli_exit_code(tmp_path):
    """The real command line: exit status 2 and a single line on stderr."""
    p = tmp_path / "pool.jsonl"
    p.write_text("not json\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "acquisition_AL.py"), "--file_path", str(p),
                          "--init_checkpoint_path", str(tmp_path), "--model_path", str(tmp_path / "r"),
                          "--al_data_fraction", "1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {p}:1: (json): malformed JSON: Expecting value at column 1"
