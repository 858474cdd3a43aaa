"""Pool loading: column aliases, stable ids, extra columns carried through."""
import json

from al_utils import load_records
from conftest import write_jsonl


def test_aliases_ids_and_extras(tmp_path):
    p = tmp_path / "pool.jsonl"
    rows = [{"prompt": "p0", "context": "c0", "response": "r0", "category": "qa"},
            {"Instruction": "p1", "input": "", "output": "o1"},
            {"instruction": "p2", "id": "own-id", "output": None}]
    p.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    got = load_records(str(p))
    assert got == [
        {"id": 0, "instruction": "p0", "input": "c0", "output": "r0", "category": "qa"},
        {"id": 1, "instruction": "p1", "input": "", "output": "o1"},
        {"id": "own-id", "instruction": "p2", "input": "", "output": ""},
    ]


def test_json_array_and_dolly_file(tmp_path):
    p = tmp_path / "pool.json"
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]))
    assert [r["id"] for r in load_records(str(p))] == [0, 1]
    recs = load_records(write_jsonl(tmp_path / "x.jsonl", [{"instruction": "i", "response": "r"}] * 3))
    assert [r["id"] for r in recs] == [0, 1, 2]
