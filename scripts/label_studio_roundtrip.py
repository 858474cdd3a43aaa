"""The annotation loop against a running Label Studio server (driven by label_studio_roundtrip.sh).

Two runs on the same 200 Dolly records and seed: the oracle run (the pool's own answers) and an
annotation run on the pool with its answers removed, whose batches go through Label Studio's HTTP
API: a project made with the written labeling configuration, each round's tasks imported, answers
submitted (from the pool's own answers: one task skipped then annotated later, one annotated twice,
the first time wrongly), the project exported as JSON and imported into the loop. Two rounds; then
the selections, scores, selected set and training losses of the two runs must be equal.
Exit 1 on any difference. --capture DIR copies the exports and batches (test fixtures).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--vocab_size", "512", "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2",
        "--num_attention_heads", "2", "--num_key_value_heads", "1", "--warmup_steps", "40",
        "--warmup_seq_len", "64", "--warmup_batch", "8", "--warmup_lr", "3e-3", "--threads", "2"]
FLAGS = ["--num_acquisition_samples", "40", "--al_data_fraction", "80", "--stratification_strategy", "bucket",
         "--num_k", "3", "--pick_samples_from", "top", "--epochs", "1", "--grad_accum", "4",
         "--train_max_length", "256", "--model_max_length", "256", "--lr", "1e-3", "--threads", "2", "--no_progress"]
WRONG = "a first answer that a second annotation corrects"


class Api:
    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def __call__(self, method: str, path: str, body=None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
        return json.loads(raw) if raw else None


def sh(*argv: str, expect: str | None = None) -> str:
    """Run a project script; its stderr (where the loop reports) is returned and checked."""
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0 or (expect and expect not in p.stderr):
        sys.exit(f"FAIL: {' '.join(argv)} (exit {p.returncode}){f', expected {expect!r}' if expect else ''}:\n"
                 f"{p.stderr[-3000:]}")
    return p.stderr


def tasks_of(api: Api, project: int, rnd: int) -> list[dict]:
    """The project's tasks of round `rnd` (every page)."""
    out, page = [], 1
    while True:
        got = api("GET", f"/api/tasks?project={project}&page={page}&page_size=100&fields=all")
        items = got["tasks"] if isinstance(got, dict) else got
        out += items
        if not items or (isinstance(got, dict) and len(out) >= got.get("total", 0)):
            break
        page += 1
    return [t for t in out if t["data"]["round"] == rnd]


def annotate(api: Api, task: dict, text: str | None) -> None:
    """Submit an annotation (text None: skip the task, as the Skip button does)."""
    result = [] if text is None else [{"from_name": "answer", "to_name": "instruction", "type": "textarea",
                                       "value": {"text": [text]}}]
    api("POST", f"/api/tasks/{task['id']}/annotations/", {"result": result, "was_cancelled": text is None})


def export(api: Api, project: int, path: str) -> str:
    with open(path, "w") as f:
        json.dump(api("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true"), f, indent=1)
    return path


def same_runs(a: str, b: str, rounds: int) -> list[str]:
    """What differs between two runs (timings aside)."""
    diff = []
    if json.load(open(f"{a}/selected.json")) != json.load(open(f"{b}/selected.json")):
        diff.append("selected.json")
    for r in range(rounds):
        for name in ("selected.jsonl", "scores.jsonl"):
            fa, fb = f"{a}/rounds/{r}/{name}", f"{b}/rounds/{r}/{name}"
            if os.path.exists(fa) != os.path.exists(fb) or (os.path.exists(fa) and open(fa).read() != open(fb).read()):
                diff.append(f"rounds/{r}/{name}")
        ma, mb = (json.load(open(f"{p}/rounds/{r}/metrics.json")) for p in (a, b))
        ma["train"].pop("seconds"), mb["train"].pop("seconds")
        if ma["train"] != mb["train"] or ma["labelled"] != mb["labelled"]:
            diff.append(f"rounds/{r}/metrics.json train: {ma['train']} != {mb['train']}")
    return diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--work", required=True, help="a scratch directory")
    p.add_argument("--capture", default=None, help="copy the exports and batches here")
    a = p.parse_args()
    api, w = Api(a.url, a.token), a.work
    rows = [{"id": i, **json.loads(line)} for i, line in zip(range(200), open(f"{ROOT}/data/dolly-1.5k.jsonl"))]
    answers = {r["id"]: r["response"] for r in rows}
    for name, keep in (("oracle", rows), ("bare", [{k: v for k, v in r.items() if k != "response"} for r in rows])):
        with open(f"{w}/{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
    sh("build_default_model.py", "--file_path", f"{w}/oracle.jsonl", "--save_path", f"{w}/model", *TINY)
    common = ["acquisition_AL.py", "--init_checkpoint_path", f"{w}/model", *FLAGS]
    sh(*common, "--file_path", f"{w}/oracle.jsonl", "--model_path", f"{w}/oracle")
    batch, ann = f"{w}/batch.ls.json", f"{w}/ann"
    sh(*common, "--file_path", f"{w}/bare.jsonl", "--model_path", ann, "--annotate_out", batch, "--draft_answers",
       expect="waiting for labels: 40 of round 0's 40 examples")
    config = open(f"{w}/label_studio_config.xml").read()
    project = api("POST", "/api/projects/", {"title": "acquisition_AL round trip", "label_config": config})["id"]
    print(f"project {project} created with the written labeling configuration", flush=True)
    exports = []
    for rnd in range(2):
        shutil.copy(batch, f"{w}/batch_r{rnd}.ls.json")
        tasks = json.load(open(batch))
        drafts = {r["id"]: r["draft"] for r in map(json.loads, open(f"{ann}/rounds/{rnd}/to_annotate.jsonl"))}
        shown = {t["data"]["record_id"]: t["predictions"][0]["result"][0]["value"]["text"][0] for t in tasks
                 if t.get("predictions") and t["predictions"][0]["result"]}
        assert len(drafts) == 40 and shown == {i: d for i, d in drafts.items() if d}, "drafts missing"
        api("POST", f"/api/projects/{project}/import", tasks)
        mine = tasks_of(api, project, rnd)
        assert len(mine) == 40, f"round {rnd}: {len(mine)} tasks in the project"
        skipped = mine[0] if rnd == 0 else None
        for t in mine:
            if t is skipped:
                annotate(api, t, None)
                continue
            if rnd == 0 and t is mine[1]:  # annotated twice: the later annotation is the answer
                annotate(api, t, WRONG)
            annotate(api, t, answers[t["data"]["record_id"]])
        exports.append(export(api, project, f"{w}/export_r{rnd}.json"))
        if rnd == 0:  # the skipped task stays pending, the run keeps waiting; then it is annotated
            err = sh("acquisition_AL.py", "--model_path", ann, "--labels", exports[-1],
                     expect="imported 39 answers")
            assert "1 not annotated or skipped" in err and "1 tasks annotated more than once" in err, err
            annotate(api, skipped, answers[skipped["data"]["record_id"]])
            exports.append(export(api, project, f"{w}/export_r0_late.json"))
        err = sh("acquisition_AL.py", "--model_path", ann, "--labels", exports[-1])
        print(err.strip().splitlines()[0], flush=True)
    diff = same_runs(ann, f"{w}/oracle", 2)
    labels = [json.loads(line) for line in open(f"{ann}/labels.jsonl")]
    if len(labels) != 80 or any(r["output"] != answers[r["id"]] for r in labels):
        diff.append("labels.jsonl: not the 80 pool answers")
    if a.capture:
        os.makedirs(a.capture, exist_ok=True)
        for f in [*exports, f"{w}/batch_r0.ls.json", f"{w}/batch_r1.ls.json", f"{w}/label_studio_config.xml"]:
            shutil.copy(f, a.capture)
    if diff:
        sys.exit("FAIL: the Label Studio run differs from the oracle run: " + "; ".join(diff))
    print("OK: 2 rounds through Label Studio equal the oracle run (selections, scores, selected set, training "
          "losses)")


if __name__ == "__main__":
    main()
