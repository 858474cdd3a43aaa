"""Pool loading: column aliases, stable ids, extra columns carried through."""
import json

from al_datasets import load_records
from conftest import write_jsonl


def test_aliases_ids_and_extras(tmp_path):
    p = tmp_path / "pool.jsonl"
    rows = [{"prompt": "p0", "context": "c0", "response": "r0", "category": "qa"},
            {"Instruction": "p1", "input": "", "output": "o1", "n": 3, "tags": ["a", None]},
            {"instruction": "p2", "id": "own-id", "output": None}]
    p.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    got = load_records(str(p))
    assert got == [
        {"id": 0, "instruction": "p0", "input": "c0", "output": "r0", "category": "qa"},
        {"id": 1, "instruction": "p1", "input": "", "output": "o1", "n": 3, "tags": ["a", None]},
        {"id": "own-id", "instruction": "p2", "input": "", "output": ""},
    ]


def test_json_array_and_dolly_file(tmp_path):
    p = tmp_path / "pool.json"
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]))
    assert [r["id"] for r in load_records(str(p))] == [0, 1]
    recs = load_records(write_jsonl(tmp_path / "x.jsonl", [{"instruction": "i", "response": "r"}] * 3))
    assert [r["id"] for r in recs] == [0, 1, 2]


def hf_copies(pool, tmp_path):
    """The pool as a .parquet file and as save_to_disk folders (a Dataset, and a DatasetDict)."""
    import datasets

    ds = datasets.Dataset.from_list([json.loads(line) for line in open(pool)])
    ds.to_parquet(str(tmp_path / "pool.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict({"train": ds.select(range(5)), "other": ds}).save_to_disk(str(tmp_path / "dict"))
    return str(tmp_path / "pool.parquet"), str(tmp_path / "disk"), str(tmp_path / "dict")


def test_parquet_and_save_to_disk_pools_select_the_same(pool, tiny_model, tmp_path):
    import acquisition_AL

    parquet, disk, dd = hf_copies(pool, tmp_path)
    assert load_records(parquet) == load_records(disk) == load_records(pool) == load_records(f"{dd}:other")
    assert len(load_records(dd)) == 5  # a DatasetDict without :SPLIT reads its train split
    picks = []
    for i, src in enumerate((pool, parquet, disk)):
        acquisition_AL.main(["--file_path", src, "--init_checkpoint_path", tiny_model, "--model_path",
                             str(tmp_path / f"r{i}"), "--al_data_fraction", "60", "--num_acquisition_samples", "30",
                             "--stratification_strategy", "bucket", "--num_k", "3", "--heldout_size", "10",
                             "--epochs", "1", "--grad_accum", "4", "--train_max_length", "128",
                             "--model_max_length", "128", "--threads", "2", "--no_progress"])
        picks.append([r["id"] for r in json.load(open(tmp_path / f"r{i}" / "selected.json"))])
    assert picks[0] == picks[1] == picks[2] and len(picks[0]) == 60


def test_dataset_source_errors(pool, tmp_path):
    import datasets
    import pytest

    from al_datasets import file_sha256
    from al_utils import InputError

    parquet, disk, dd = hf_copies(pool, tmp_path)
    datasets.Dataset.from_list([{"question": "q", "answer": "a"}]).to_parquet(str(tmp_path / "cols.parquet"))
    datasets.Dataset.from_list([{"instruction": 3}, {"instruction": 4}]).to_parquet(str(tmp_path / "t.parquet"))
    cases = {str(tmp_path / "cols.parquet"): f"{tmp_path}/cols.parquet:1: instruction: missing (columns found: "
                                             "question, answer)",
             f"{dd}:nope": f"{dd}:nope: (dataset): no split 'nope' (splits: other, train); name one as {dd}:nope:SPLIT",
             str(tmp_path / "none.parquet"): f"{tmp_path}/none.parquet: file: no such file"}
    for src, err in cases.items():
        with pytest.raises(InputError) as e:
            load_records(src)
        assert str(e.value) == err
    with pytest.raises(InputError, match="t.parquet:1: instruction: expected a string, got int"):
        load_records(str(tmp_path / "t.parquet"))
    with pytest.raises(InputError, match=r"^hf:no-such/dataset: \(dataset\): not in the local Hugging Face cache"):
        load_records("hf:no-such/dataset")
    # --resume compares content: same data in another folder hashes the same, other data differently
    assert file_sha256(disk) == file_sha256(f"{dd}:other") != file_sha256(dd)


def test_single_turn_conversations(tmp_path):
    import pytest

    from al_utils import InputError

    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    share = [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]
    p = write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}, {"conversations": share, "id": "s"},
                                           {"messages": msgs[:1]}])
    got = load_records(p)
    assert [(r["id"], r["instruction"], r["input"], r["output"]) for r in got] == [
        (0, "Name a colour.", "", "Blue."), ("s", "Name a colour.", "", "Blue."), (2, "Name a colour.", "", "")]
    assert got[0]["messages"] == msgs and got[1]["conversations"] == share  # kept as they came
    bad = {
        "role": ([{"role": "bot", "content": "x"}],
                 "messages: turn 1: unknown role 'bot' (known: user, assistant, system)"),
        "empty": ([{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}],
                  "messages: turn 1: empty content"),
        "multi": (msgs + msgs, "messages: turns user -> assistant -> user -> assistant; the alpaca template holds one "
                               "user turn and its answer (multi-turn and system turns need --prompt_template chat)"),
        "system": ([{"role": "system", "content": "Be brief."}, *msgs],
                   "messages: turns system -> user -> assistant; the alpaca template"),
        "shape": (["hi"], "messages: turn 1: expected an object with 'role' and a string 'content'"),
    }
    for name, (turns, err) in bad.items():
        f = write_jsonl(tmp_path / f"{name}.jsonl", [{"messages": msgs}, {"messages": turns}])
        with pytest.raises(InputError) as e:
            load_records(f)
        assert str(e.value).startswith(f"{f}:2: {err}"), str(e.value)
    with pytest.raises(InputError) as e:  # oracle labelling needs the answer
        load_records(p, require_output="oracle labelling takes answers from the pool")
    assert str(e.value) == (f"{p}:3: messages: no assistant answer after the last user turn (oracle labelling takes "
                            "answers from the pool)")


def test_atomic_writes_get_the_mode_open_gives(tmp_path):
    """Results are as readable as any file the user's umask allows (mkstemp alone makes them 0600)."""
    import os
    import stat

    from al_utils import atomic_write_json

    atomic_write_json(str(tmp_path / "a.json"), {"x": 1})
    (tmp_path / "b.json").write_text("{}")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.json")
    assert json.load(open(tmp_path / "a.json")) == {"x": 1}


def test_arrow_pools_checked_column_wise_as_row_by_row(pool, tmp_path):
    """A Parquet / save_to_disk pool is checked in Arrow without becoming Python rows: the same
    records as the JSONL pool, and for every bad pool the same first error the row-by-row read gives."""
    import datasets
    import pytest

    import al_datasets as D
    from al_utils import InputError

    parquet, disk, _ = hf_copies(pool, tmp_path)
    want = load_records(pool)
    for src in (parquet, disk):
        p = D.load_pool(src, require_output="oracle")
        assert p.extras == ["category"] and p.ids is None  # column-wise: the source's own table
        assert p.take([5, 0, 199]) == [want[5], want[0], want[199]] and p[7] == want[7] and 200 not in p
        assert list(p.texts("output")) == [r["output"] for r in want]
        assert p.matching({(want[3]["instruction"], want[3]["input"]), (want[4]["instruction"], "other")}) == {3}
    ok = {"instruction": "i", "input": None, "output": "o"}
    bad = {"null": [ok, {**ok, "instruction": None}],
           "blank": [ok, ok, {**ok, "instruction": " \x1c\u3000"}],  # str.strip()'s whitespace, not just ASCII
           "answer": [ok, {**ok, "output": "\t"}, {**ok, "output": None}],
           "dup": [{**ok, "id": "a"}, {**ok, "id": "b"}, {**ok, "id": "a"}],
           "noid": [{**ok, "id": 3}, {**ok, "id": None}],
           "first": [{**ok, "id": 1}, {**ok, "id": 1, "instruction": ""}]}  # two problems: the earlier row's
    for name, rows in bad.items():
        path = str(tmp_path / f"{name}.parquet")
        datasets.Dataset.from_list(rows).to_parquet(path)
        with pytest.raises(InputError) as col:
            D.load_pool(path, "oracle")
        with pytest.raises(InputError) as row:
            D._rows_pool(path, D._table_rows(D.source_table(path)), "oracle", "alpaca")
        assert str(col.value) == str(row.value), name
    assert str(col.value) == f"{tmp_path}/first.parquet:2: instruction: empty"
    good = str(tmp_path / "ids.parquet")
    datasets.Dataset.from_list([{**ok, "id": 7}, {**ok, "id": 9, "input": "x"}]).to_parquet(good)
    assert D.load_pool(good).take([9, 7]) == [{"id": 9, "instruction": "i", "input": "x", "output": "o"},
                                             {"id": 7, "instruction": "i", "input": "", "output": "o"}]


def test_pool_formats_encode_and_select_alike(pool, tiny_model, tmp_path):
    """JSONL, CSV, Parquet and a conversation pool (JSONL and Parquet): lazy encodings over the Arrow
    pool equal encode_records over the records as a list, and the loop picks the same ids."""
    import csv

    import datasets

    import acquisition_AL
    import al_datasets as D
    import fsdp_utils
    from al_prompts import encode_records, lazy_encodings

    rows = [json.loads(line) for line in open(pool)][:120]
    conv = [{"messages": [{"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["response"]}], "id": f"c{k}"} for k, r in enumerate(rows)]
    with open(tmp_path / "pool.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    srcs = {"jsonl": write_jsonl(tmp_path / "pool.jsonl", rows), "csv": str(tmp_path / "pool.csv"),
            "parquet": str(tmp_path / "pool.parquet"), "conv": write_jsonl(tmp_path / "conv.jsonl", conv),
            "conv_parquet": str(tmp_path / "conv.parquet")}
    datasets.Dataset.from_list(rows).to_parquet(srcs["parquet"])
    datasets.Dataset.from_list(conv).to_parquet(srcs["conv_parquet"])
    tok = fsdp_utils.load_tokenizer(tiny_model)
    picks = {}
    for name, src in srcs.items():
        p = D.load_pool(src)
        ids = list(p)[::-1]
        lazy = lazy_encodings(tok, p)
        lazy.ensure(ids)
        eager = encode_records(tok, D.load_records(src))
        assert [lazy[i] for i in ids] == [eager[i] for i in ids], name
        acquisition_AL.main(["--file_path", src, "--init_checkpoint_path", tiny_model, "--model_path",
                             str(tmp_path / name), "--al_data_fraction", "40", "--num_acquisition_samples", "20",
                             "--heldout_size", "10", "--epochs", "1", "--grad_accum", "4", "--train_max_length", "64",
                             "--model_max_length", "64", "--threads", "2", "--no_progress"])
        picks[name] = [r["id"] for r in json.load(open(tmp_path / name / "selected.json"))]
    assert picks["jsonl"] == picks["csv"] == picks["parquet"] and len(picks["jsonl"]) == 40
    assert picks["conv"] == picks["conv_parquet"] and picks["conv"][0].startswith("c")
