"""Label Studio: batches out as tasks with the labeling configuration, the project's JSON export back
in. The exports under fixtures/label_studio were captured from a real server by
scripts/label_studio_roundtrip.sh (CAPTURE=DIR): 200 Dolly records with ids 0..199, the seed set of
40 (one task skipped then annotated later, one annotated twice), then round 1's 40 tasks beside
round 0's in the same project. The server itself runs in the last test, where label-studio is
installed."""
import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

import acquisition_AL
import al_annotation as A
import al_datasets
from conftest import ROOT, write_jsonl

FIX = os.path.join(ROOT, "tests", "fixtures", "label_studio")
WRONG = "a first answer that a second annotation corrects"  # the script's first, corrected annotation
FLAGS = ["--num_acquisition_samples", "40", "--al_data_fraction", "80", "--stratification_strategy", "bucket",
         "--num_k", "3", "--pick_samples_from", "top", "--epochs", "1", "--grad_accum", "4",
         "--train_max_length", "256", "--model_max_length", "256", "--lr", "1e-3", "--threads", "2", "--no_progress"]


def fixture(name):
    return os.path.join(FIX, name)


def batch_ids(name):
    return [t["data"]["record_id"] for t in json.load(open(fixture(name)))]


@pytest.fixture(scope="module")
def dolly200(tmp_path_factory):
    """The script's pools: the first 200 records with ids 0..199, with and without answers."""
    d = tmp_path_factory.mktemp("ls")
    rows = [{"id": i, **json.loads(line)} for i, line in zip(range(200), open(os.path.join(ROOT, "data",
                                                                                            "dolly-1.5k.jsonl")))]
    oracle = write_jsonl(d / "oracle.jsonl", rows)
    bare = write_jsonl(d / "bare.jsonl", [{k: v for k, v in r.items() if k != "response"} for r in rows])
    records = {r["id"]: r for r in al_datasets.load_records(oracle)}
    return oracle, bare, records


def test_captured_export_parses(dolly200):
    """Round 0's export: 40 tasks; the skipped one pending, the twice-annotated one takes the later
    annotation, every other answer is the pool's."""
    _, _, records = dolly200
    tasks = json.load(open(fixture("export_r0.json")))
    rows, several = A.label_studio_rows("e.json", tasks)
    assert len(rows) == 40 and several == 1
    pending = [r for _, _, r in rows if r["output"] == ""]
    assert len(pending) == 1
    assert all(r["output"] == records[r["id"]]["output"] for _, _, r in rows if r["output"])
    twice = next(t for t in tasks if len(t["annotations"]) == 2)
    assert twice["annotations"][0]["result"][0]["value"]["text"] == [WRONG]
    assert next(r for _, _, r in rows if r["id"] == twice["data"]["record_id"])["output"] != WRONG
    assert [w for w, _, _ in rows][:1] == [f"e.json: task {tasks[0]['id']}"]


def test_captured_exports_import(dolly200):
    """The round-0 export against the pending seed set: 39 in, 1 pending; the late export completes
    it; round 1's export (both rounds' tasks) brings round 1's 40 and passes over round 0's."""
    _, _, records = dolly200
    b0 = batch_ids("batch_r0.ls.json")
    new, words = A.import_labels(fixture("export_r0.json"), b0, 0, records, {})
    assert len(new) == 39 and "(0 already imported, 1 not annotated or skipped; 1 tasks annotated more than once" \
        in words
    late, words = A.import_labels(fixture("export_r0_late.json"), b0, 0, records, new)
    assert len(late) == 1 and "39 already imported, 0 not annotated" in words
    labels = {**new, **late}
    assert labels == {i: records[i]["output"] for i in b0}
    r1, words = A.import_labels(fixture("export_r1.json"), batch_ids("batch_r1.ls.json"), 1, records, labels)
    assert len(r1) == 40 and "40 tasks of earlier rounds, already imported, passed over" in words
    assert all(a == records[i]["output"] for i, a in r1.items())


def test_tasks_and_config():
    """Tasks carry the record id and the score (also as the prediction score, for sorting), a draft
    as the prediction's text area; the configuration is valid XML whose text area the import reads;
    a chat pool's conversation is shown as dialogue."""
    rows = [{"id": 7, "instruction": "Say hi.", "input": "", "output": "", "round": 2, "score": 1.5, "bucket": 0,
             "draft": "Hi."},
            {"id": 8, "instruction": "Name a colour.", "input": "", "output": "", "round": 2, "score": None,
             "bucket": None, "messages": [{"role": "user", "content": "Name a colour."},
                                          {"role": "assistant", "content": ""}]}]
    t = A.label_studio_tasks(rows)
    assert t[0]["data"] == {"record_id": 7, "instruction": "Say hi.", "input": "", "round": 2, "score": 1.5,
                            "bucket": 0}
    assert t[0]["predictions"] == [{"model_version": "round 2", "score": 1.5, "result": [
        {"from_name": "answer", "to_name": "instruction", "type": "textarea", "value": {"text": ["Hi."]}}]}]
    assert "predictions" not in t[1] and t[1]["data"]["messages"] == rows[1]["messages"][:1]
    view = ET.fromstring(A.label_studio_config(rows))
    area = view.find("TextArea")
    assert area.get("name") == "answer" and area.get("toName") == "instruction" and area.get("required") == "true"
    para = view.find("Paragraphs")
    assert (para.get("value"), para.get("nameKey"), para.get("textKey")) == ("$messages", "role", "content")
    assert ET.fromstring(A.label_studio_config(rows[:1])).find("Paragraphs") is None
    assert A.label_studio_config(rows[:1]) == open(fixture("label_studio_config.xml")).read()


def test_several_tasks_of_one_record(dolly200, tmp_path):
    """A batch imported into the project twice: the annotated copy counts; two different answers
    for one record are refused, naming both tasks."""
    _, _, records = dolly200
    tasks = json.load(open(fixture("export_r0_late.json")))
    b0 = batch_ids("batch_r0.ls.json")
    copy = {**tasks[0], "id": 999, "annotations": []}
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([copy, *tasks]))
    new, _ = A.import_labels(str(path), b0, 0, records, {})
    assert len(new) == 40
    other = {**copy, "annotations": [{**tasks[0]["annotations"][-1], "result": [
        {"from_name": "answer", "to_name": "instruction", "type": "textarea", "value": {"text": ["other"]}}]}]}
    path.write_text(json.dumps([*tasks, other]))
    with pytest.raises(A.InputError, match=f"task 999: answer: record {copy['data']['record_id']} is also task "
                                           f"{tasks[0]['id']}, with a different answer"):
        A.import_labels(str(path), b0, 0, records, {})


def test_loop_with_captured_exports(dolly200, tiny_model, tmp_path, capsys):
    """The loop itself on the real exports: the seed set goes out as the captured batch's tasks (with
    drafts), the partial export keeps the run waiting with one task pending, the late one trains
    round 0 and sends round 1 out; the run equals the oracle run's round 0."""
    oracle, bare, records = dolly200
    common = ["--init_checkpoint_path", tiny_model, *FLAGS]
    acquisition_AL.main([*common, "--file_path", oracle, "--model_path", str(tmp_path / "oracle"),
                         "--stop_after_round", "0"])
    run, batch = tmp_path / "ann", str(tmp_path / "out" / "batch.ls.json")
    os.makedirs(tmp_path / "out")
    capsys.readouterr()
    acquisition_AL.main([*common, "--file_path", bare, "--model_path", str(run), "--annotate_out", batch,
                         "--draft_answers", "--draft_max_new_tokens", "8"])
    cfg = str(tmp_path / "out" / "label_studio_config.xml")
    assert (f"waiting for labels: 40 of round 0's 40 examples are in {batch} (Label Studio tasks; the project's "
            f"labeling configuration: {cfg}); import them into the project") in capsys.readouterr().err
    tasks = json.load(open(batch))
    assert [t["data"] for t in tasks] == [t["data"] for t in json.load(open(fixture("batch_r0.ls.json")))]
    assert open(cfg).read() == open(fixture("label_studio_config.xml")).read()
    drafts = [json.loads(line).get("draft") for line in open(run / "rounds/0/to_annotate.jsonl")]
    assert len(drafts) == 40 and all(isinstance(d, str) for d in drafts)

    acquisition_AL.main(["--model_path", str(run), "--labels", fixture("export_r0.json")])
    err = capsys.readouterr().err
    assert "imported 39 answers" in err and "round 0: 39 of 40 labelled" in err
    assert "waiting for labels: 1 of round 0's 40 examples" in err and "they are already in the project" in err
    acquisition_AL.main(["--model_path", str(run), "--labels", fixture("export_r0_late.json"),
                         "--stop_after_round", "0"])
    assert json.load(open(run / "state.json"))["rounds_done"] == 0
    for name in ("selected.json", "rounds/0/selected.jsonl"):
        assert open(run / name).read() == open(tmp_path / "oracle" / name).read()
    ma, mb = (json.load(open(p / "rounds/0/metrics.json"))["train"] for p in (run, tmp_path / "oracle"))
    ma.pop("seconds"), mb.pop("seconds")
    assert ma == mb


@pytest.mark.skipif(not (shutil.which("label-studio") or os.path.exists(os.path.join(ROOT, ".ls-venv", "bin",
                                                                                      "label-studio"))),
                    reason="label-studio not installed (bash scripts/label_studio_roundtrip.sh installs it)")
def test_real_server_round_trip():
    """Two rounds through a real Label Studio server equal the oracle run (several minutes)."""
    env = dict(os.environ)
    if shutil.which("label-studio") and not os.path.exists(os.path.join(ROOT, ".ls-venv")):
        env["LS_VENV"] = os.path.dirname(os.path.dirname(shutil.which("label-studio")))
    p = subprocess.run(["bash", "scripts/label_studio_roundtrip.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0 and "OK: 2 rounds through Label Studio equal the oracle run" in p.stdout, p.stderr[-3000:]
