"""Real annotators instead of the pool's answers: export a selected batch, import the answers.

The loop writes the batch that needs labels (id, instruction, input, an empty `output`, plus
round, score and bucket for transparency) as .jsonl, .csv or a Label Studio task list (.ls.json)
and stops ("waiting for labels"). Annotators fill `output` (or the Label Studio text area); the
filled file (or Label Studio's JSON export) is checked against the pending batch and its answers
are kept in <run>/labels.jsonl, the run's only source of answers in annotation mode.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from al_datasets import ALIASES, CONVERSATIONS, read_rows
from al_utils import (
    InputError,
    RunPaths,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
    run_paths,
    setting,
)

EXPORT_FIELDS = ("id", "instruction", "input", "output", "round", "score", "bucket")
LABEL_STUDIO = ".ls.json"  # a batch written as Label Studio tasks (its export comes back as .json)
LS_CONFIG = "label_studio_config.xml"  # the project's labeling configuration, beside the batch
ANSWER = "answer"  # the text area's name in that configuration: where an annotation's answer is


@dataclass(frozen=True)
class AnnotationConfig:
    """Real annotators' settings: each field is its flag too (acquisition_AL.py's annotation group)."""
    annotate_out: str | None = setting(
        None, "write each batch that needs answers here (.jsonl; .csv; NAME.ls.json: Label Studio tasks, with the "
        "project's labeling configuration beside it) and stop, exit 0; answers then come only from annotators "
        "(--labels), so the pool needs no answer column", type=str)
    labels: str | None = setting(
        None, "the annotators' filled batch (.jsonl/.json/.csv: id + output) or the Label Studio project's JSON "
        "export: checked, imported, then the run goes on (implies --resume); blank answers and tasks not annotated "
        "(or skipped) stay pending", type=str)
    draft_answers: bool = setting(False, "Label Studio batches: the current model's greedy answer as each task's "
                                  "prediction, which annotators edit instead of writing from scratch (drafts can "
                                  "anchor annotators)")
    draft_max_new_tokens: int = setting(256, "cap on a draft answer's tokens")

    def __post_init__(self) -> None:
        if self.draft_answers and not (self.annotate_out or "").endswith(LABEL_STUDIO):
            raise InputError(f"--draft_answers: drafts go to Label Studio tasks: needs --annotate_out "
                             f"NAME{LABEL_STUDIO}")
        if self.draft_max_new_tokens < 1:
            raise InputError("--draft_max_new_tokens: must be >= 1")


def batch_rows(picked: list[dict], records: dict, rnd: int) -> list[dict]:
    """What annotators get for each picked id: the prompt, an empty answer and why it was picked;
    a conversation record also its conversation (every turn before the answer), the final assistant
    turn left empty to fill in."""
    rows = []
    for p in picked:
        r = records[p["id"]]
        row = {"id": p["id"], "instruction": r["instruction"], "input": r["input"], "output": "", "round": rnd,
               "score": p["score"], "bucket": p["bucket"]}
        col = _conversation(r)
        if col is not None:
            key, text, roles = CONVERSATIONS[col]
            turns = r[col][:-1] if roles[r[col][-1][key]] == "assistant" else r[col]  # all but the answer
            answer = next(k for k, v in roles.items() if v == "assistant")  # the column's own spelling
            row[col] = turns + [{key: answer, text: ""}]
        rows.append(row)
    return rows


def _answer(row: dict, where: str) -> tuple[str, Any]:
    """(field name, answer) of an annotators' row: `output` (or an alias), or the final assistant
    turn of the conversation it came with, whichever was filled in."""
    found = []
    name = next((n for n in ALIASES["output"] if n in row), None)
    if name is not None:
        found.append((name, row[name]))
    col = _conversation(row)
    if col is not None and isinstance(row[col], list) and row[col] and isinstance(row[col][-1], dict):
        key, text, roles = CONVERSATIONS[col]
        if roles.get(row[col][-1].get(key)) == "assistant":
            found.append((col, row[col][-1].get(text)))
    if not found:
        raise InputError(f"{where}: output: missing (columns found: {', '.join(row)})")
    return next(((n, a) for n, a in found if isinstance(a, str) and a.strip()), found[0])


def export_batch(path: str, rows: list[dict]) -> None:
    """Atomically write the batch: CSV when the name ends in .csv, Label Studio tasks (and the
    project's labeling configuration beside them) when it ends in .ls.json, else JSON lines."""
    if path.endswith(".csv"):
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS)
        w.writeheader()
        w.writerows({k: "" if r[k] is None else r[k] for k in EXPORT_FIELDS} for r in rows)
        atomic_write_text(path, buf.getvalue())
    elif path.endswith(LABEL_STUDIO):
        atomic_write_text(path, json.dumps(label_studio_tasks(rows), indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(label_studio_config_path(path), label_studio_config(rows))
    else:
        atomic_write_jsonl(path, rows)


# ----------------------------------------------------------------------------------------------
# Label Studio: the batch as tasks, the labeling configuration, the project's JSON export back


def label_studio_config_path(batch: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(batch)), LS_CONFIG)


def _conversation(row: dict) -> str | None:
    return next((c for c in CONVERSATIONS if c in row), None)


def label_studio_config(rows: list[dict]) -> str:
    """The project's <View>: the conversation so far (chat pools), the instruction and input, and
    one required text area for the answer. Fixed for a run (it depends only on the pool's kind)."""
    col = next((c for c in map(_conversation, rows) if c), None)
    lines = ["<View>"]
    if col is not None:
        key, text, _ = CONVERSATIONS[col]
        lines += ['  <Header value="Conversation so far"/>',
                  f'  <Paragraphs name="conversation" value="${col}" layout="dialogue" nameKey={quoteattr(key)} '
                  f"textKey={quoteattr(text)}/>"]
    lines += ['  <Header value="Instruction"/>', '  <Text name="instruction" value="$instruction"/>',
              '  <Header value="Input (may be empty)"/>', '  <Text name="input" value="$input"/>',
              '  <Header value="Your answer"/>',
              f'  <TextArea name="{ANSWER}" toName="instruction" rows="8" editable="true" maxSubmissions="1" '
              'required="true" placeholder="The answer the model should learn"/>',
              "</View>", ""]
    return "\n".join(lines)


def label_studio_tasks(rows: list[dict]) -> list[dict]:
    """One task per batch row: `data` holds the record id (`record_id`: Label Studio numbers tasks
    itself), instruction, input, round, score, bucket (and the conversation before the answer); the
    selection score is also the task's prediction score, so the data manager sorts by it, and a
    draft answer (--draft_answers) is that prediction's text, which annotators edit."""
    tasks = []
    for r in rows:
        data = {"record_id": r["id"], "instruction": r["instruction"], "input": r["input"], "round": r["round"],
                "score": r["score"], "bucket": r["bucket"]}
        col = _conversation(r)
        if col is not None:
            data[col] = r[col][:-1]  # the empty turn to fill is the text area
        task: dict = {"data": data}
        score = r["score"] if isinstance(r["score"], (int, float)) and math.isfinite(r["score"]) else None
        if score is not None or r.get("draft"):
            pred: dict = {"model_version": f"round {r['round']}", "result": []}
            if score is not None:
                pred["score"] = score
            if r.get("draft"):  # an empty draft would only hide the placeholder
                pred["result"] = [{"from_name": ANSWER, "to_name": "instruction", "type": "textarea",
                                   "value": {"text": [r["draft"]]}}]
            task["predictions"] = [pred]
        tasks.append(task)
    return tasks


def _latest(annotations: list[dict]) -> dict:
    """Several people annotated one task: the latest submitted wins (updated_at, then created_at,
    then Label Studio's annotation id), as a reviewer's correction is the newest."""
    return max(annotations, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("created_at") or ""),
                                          a.get("id") if isinstance(a.get("id"), int) else -1))


def _ls_answer(annotation: Any, where: str) -> str:
    """The text area's value of one submitted annotation (its entries joined by newlines)."""
    if not isinstance(annotation, dict) or not isinstance(annotation.get("result"), list):
        raise InputError(f"{where}: annotations: expected an object with a `result` list")
    areas = [x for x in annotation["result"] if isinstance(x, dict) and x.get("type") == "textarea"]
    if not areas:
        kinds = sorted({str(x.get("type")) for x in annotation["result"] if isinstance(x, dict)})
        if not kinds:
            raise InputError(f"{where}: {ANSWER}: empty answer (submitted with no text)")
        raise InputError(f"{where}: {ANSWER}: the annotation's result is not a text area ({', '.join(kinds)}); "
                         f"the project needs the labeling configuration written beside the batch ({LS_CONFIG})")
    if len(areas) > 1:
        names = sorted(str(x.get("from_name")) for x in areas)
        raise InputError(f"{where}: {ANSWER}: {len(areas)} text areas ({', '.join(names)}); expected one")
    value = areas[0].get("value")
    text = value.get("text") if isinstance(value, dict) else None
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise InputError(f"{where}: {ANSWER}: expected value.text to be a list of strings, got {text!r}")
    answer = "\n".join(text)
    if not answer.strip():
        raise InputError(f"{where}: {ANSWER}: empty answer")
    return answer


def label_studio_rows(path: str, tasks: list) -> tuple[list[tuple[str, str, dict]], int]:
    """A Label Studio JSON export as (where, task, row) triples the import checks like a filled
    batch, and how many tasks had several submitted annotations. A task with no annotation, or only
    skipped (cancelled) ones, comes back with an empty answer: it stays pending. A record in several
    tasks (a batch imported into the project twice) is one row: the annotated task's, refused when
    two tasks carry different answers."""
    rows: dict = {}  # record id -> (where, task, row)
    several = 0
    for n, task in enumerate(tasks, start=1):
        at = f"task {task.get('id', f'#{n}')}"
        where = f"{path}: {at}"
        data = task["data"]
        if not isinstance(data, dict) or "record_id" not in data:
            found = ", ".join(data) if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{where}: data.record_id: missing (not a task this tool exported; "
                             f"found: {found or 'none'})")
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            raise InputError(f"{where}: annotations: expected a list, got {type(annotations).__name__}")
        done = [a for a in annotations if not (isinstance(a, dict) and a.get("was_cancelled"))]
        several += len(done) > 1
        row = {"id": data["record_id"], "output": _ls_answer(_latest(done), where) if done else ""}
        row.update({k: data[k] for k in ("instruction", "input") if k in data})
        rid = json.dumps(data["record_id"])
        if rid in rows:
            (w0, at0, r0) = rows[rid]
            if r0["output"].strip() and row["output"].strip() and not _same(r0["output"], row["output"]):
                raise InputError(f"{where}: {ANSWER}: record {data['record_id']!r} is also {at0}, with a "
                                 "different answer; keep one of them")
            if r0["output"].strip():
                continue
        rows[rid] = (where, at, row)
    return list(rows.values()), several


def _label_studio_export(path: str) -> list | None:
    """The parsed export when `path` is a Label Studio JSON export (a .json array of objects with
    `data`), else None: a plain JSON batch has the same suffix."""
    if not path.endswith(".json") or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # read_rows reports it, with the line
    if isinstance(data, list) and data and all(isinstance(t, dict) and "data" in t for t in data):
        return data
    return None


def load_labels(run: str) -> dict[Any, str]:
    """id -> answer for every label imported into this run so far."""
    f = run_paths(run).labels
    return {r["id"]: r["output"] for r in read_jsonl(f)} if os.path.isfile(f) else {}


def save_labels(run: str, labels: dict[Any, str]) -> None:
    atomic_write_jsonl(run_paths(run).labels, [{"id": i, "output": a} for i, a in labels.items()])


def _same(a: str, b: str) -> bool:
    """Equal up to line endings and surrounding blanks (spreadsheets rewrite both)."""
    return a.replace("\r\n", "\n").strip() == b.replace("\r\n", "\n").strip()


def _row_id(row: Any, where: str, key: dict) -> Any:
    """The pool id an annotators' row answers."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: (record): expected a JSON object, got {type(row).__name__}")
    if "id" not in row:
        raise InputError(f"{where}: id: missing (columns found: {', '.join(row) or 'none'})")
    rid = key.get(str(row["id"]))
    if rid is None:
        raise InputError(f"{where}: id: unknown id {row['id']!r}: not in the pool")
    return rid


def _checked_answer(row: dict, where: str, rid: Any, record: dict) -> tuple[str, str]:
    """(field, answer) of a row whose prompt is the pool's, unedited; the answer a string."""
    for field in ("instruction", "input"):
        name = next((n for n in ALIASES[field] if n in row), None)
        if name is not None and not _same(str(row[name] or ""), record[field]):
            raise InputError(f"{where}: {name}: differs from the pool's {field} for id {rid!r} "
                             "(the batch must come back unedited; fix the pool instead)")
    name, answer = _answer(row, where)
    answer = answer if answer is not None else ""
    if not isinstance(answer, str):
        raise InputError(f"{where}: {name}: expected a string, got {type(answer).__name__}")
    return name, answer


def import_labels(path: str, batch: list, rnd: int, records: dict, labels: dict) -> tuple[dict, str]:
    """Check an annotators' file (or a Label Studio export) against the pending batch of round
    `rnd` and return (new answers by id, what came in, in words). Any problem raises InputError
    naming file, line (or task) and field, before anything is changed; blank answers stay pending."""
    tasks = _label_studio_export(path)
    if tasks is not None:
        rows, several = label_studio_rows(path, tasks)
    else:
        rows, several = ((f"{path}:{line}", f"line {line}", row) for line, row in read_rows(path)), 0
    key = {str(i): i for i in records}  # CSV turns every id into a string
    in_batch = set(batch)
    first: dict = {}
    new: dict = {}
    blank = again = earlier = 0
    for where, at, row in rows:
        rid = _row_id(row, where, key)
        if rid not in in_batch:
            if tasks is not None and rid in labels:  # an earlier round's task: the project keeps them all
                earlier += 1
                continue
            raise InputError(f"{where}: id: {rid!r} was not requested in the pending batch (round {rnd})")
        if rid in first:
            raise InputError(f"{where}: id: {rid!r} appears twice (first at {first[rid]})")
        first[rid] = at
        name, answer = _checked_answer(row, where, rid, records[rid])
        if not answer.strip():
            blank += 1
        elif rid in labels:
            if not _same(labels[rid], answer):
                raise InputError(f"{where}: {name}: id {rid!r} was already labelled with a different answer")
            again += 1
        else:
            new[rid] = answer  # kept exactly as written
    pending = "not annotated or skipped" if tasks is not None else "left blank"
    words = f"{len(new)} answers from {path} ({again} already imported, {blank} {pending}"
    if several:
        words += f"; {several} tasks annotated more than once: the latest annotation taken"
    if earlier:
        words += f"; {earlier} tasks of earlier rounds, already imported, passed over"
    return new, words + ")"


# ----------------------------------------------------------------------------------------------
# the loop's side: which runs take answers from annotators, the labels a call brings, the batch handed out


def annotation_mode(annotate_out: str | None, labels_file: str | None, resume: bool, prior: dict | None) -> bool:
    """Answers from annotators: asked for now, or the run being resumed was started that way."""
    return bool(annotate_out or labels_file) or bool(
        prior and resume and prior["flags"].get("labels_from") == "annotators")


def pending_labels(labels_file: str | None, paths: RunPaths, prior: dict | None, by_id: dict,
                   labels: dict) -> tuple[dict, str]:
    """--labels checked in full before anything changes: (new answers, the summary line)."""
    if not labels_file:
        return {}, ""
    if prior is None:
        raise InputError(f"--labels: {paths.run}: no run there waiting for labels "
                         "(start one with --annotate_out)")
    rnd = prior["rounds_done"] + 1
    sel = paths.round_file(rnd, "selected.jsonl")
    if not os.path.isfile(sel):
        raise InputError(f"--labels: {paths.run}: no batch is waiting for labels")
    batch = [r["id"] for r in read_jsonl(sel)]
    new, words = import_labels(labels_file, batch, rnd, by_id, labels)
    done = sum(i in labels or i in new for i in batch)
    return new, f"imported {words}; round {rnd}: {done} of {len(batch)} labelled"


def export_for_annotators(picked: list[dict], rnd: int, by_id: dict, labels: dict, paths: RunPaths,
                          annotate_out: str | None, write: bool,
                          drafts: Callable[[list], list[str]] | None = None) -> dict | None:
    """Write (where `write`: rank 0) the picks that have no answer yet to the round's
    to_annotate.jsonl and to --annotate_out, with `drafts` of their answers where given (called on
    every rank); return what state.json's `in_round` adds (how many wait, where they went), or None
    when every pick has its answer (the same on every rank)."""
    missing = [r for r in picked if r["id"] not in labels]
    if not missing:
        return None
    mine = paths.round_file(rnd, "to_annotate.jsonl")
    dest = annotate_out or mine
    texts = drafts([r["id"] for r in missing]) if drafts is not None else None
    if write:
        rows = batch_rows(missing, by_id, rnd)
        for row, text in zip(rows, texts or []):
            row["draft"] = text
        export_batch(mine, rows)
        if annotate_out:
            export_batch(annotate_out, rows)
    wait = {"waiting_for_labels": len(missing), "batch": len(picked), "exported_to": dest}
    if dest.endswith(LABEL_STUDIO):
        wait["label_studio_config"] = label_studio_config_path(dest)
    return wait
