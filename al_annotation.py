"""Real annotators instead of the pool's answers: export a selected batch, import the answers.

The loop writes the batch that needs labels (id, instruction, input, an empty `output`, plus
round, score and bucket for transparency) as .jsonl or .csv and stops ("waiting for labels").
Annotators fill `output`; the filled file is checked against the pending batch and its answers
are kept in <run>/labels.jsonl, the run's only source of answers in annotation mode.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any

from al_datasets import ALIASES, CONVERSATIONS, read_rows
from al_utils import InputError, RunPaths, atomic_write_jsonl, atomic_write_text, read_jsonl, run_paths

EXPORT_FIELDS = ("id", "instruction", "input", "output", "round", "score", "bucket")


def batch_rows(picked: list[dict], records: dict, rnd: int) -> list[dict]:
    """What annotators get for each picked id: the prompt, an empty answer and why it was picked;
    a conversation record also its conversation (every turn before the answer), the final assistant
    turn left empty to fill in."""
    rows = []
    for p in picked:
        r = records[p["id"]]
        row = {"id": p["id"], "instruction": r["instruction"], "input": r["input"], "output": "", "round": rnd,
               "score": p["score"], "bucket": p["bucket"]}
        col = next((c for c in CONVERSATIONS if c in r), None)
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
    col = next((c for c in CONVERSATIONS if c in row), None)
    if col is not None and isinstance(row[col], list) and row[col] and isinstance(row[col][-1], dict):
        key, text, roles = CONVERSATIONS[col]
        if roles.get(row[col][-1].get(key)) == "assistant":
            found.append((col, row[col][-1].get(text)))
    if not found:
        raise InputError(f"{where}: output: missing (columns found: {', '.join(row)})")
    return next(((n, a) for n, a in found if isinstance(a, str) and a.strip()), found[0])


def export_batch(path: str, rows: list[dict]) -> None:
    """Atomically write the batch: CSV when the name ends in .csv, else JSON lines."""
    if path.endswith(".csv"):
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS)
        w.writeheader()
        w.writerows({k: "" if r[k] is None else r[k] for k in EXPORT_FIELDS} for r in rows)
        atomic_write_text(path, buf.getvalue())
    else:
        atomic_write_jsonl(path, rows)


def load_labels(run: str) -> dict[Any, str]:
    """id -> answer for every label imported into this run so far."""
    f = run_paths(run).labels
    return {r["id"]: r["output"] for r in read_jsonl(f)} if os.path.isfile(f) else {}


def save_labels(run: str, labels: dict[Any, str]) -> None:
    atomic_write_jsonl(run_paths(run).labels, [{"id": i, "output": a} for i, a in labels.items()])


def _same(a: str, b: str) -> bool:
    """Equal up to line endings and surrounding blanks (spreadsheets rewrite both)."""
    return a.replace("\r\n", "\n").strip() == b.replace("\r\n", "\n").strip()


def _row_id(row: Any, where: str, key: dict, in_batch: set, rnd: int) -> Any:
    """The pool id an annotators' row answers, checked to be one of the pending batch."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: (record): expected a JSON object, got {type(row).__name__}")
    if "id" not in row:
        raise InputError(f"{where}: id: missing (columns found: {', '.join(row) or 'none'})")
    rid = key.get(str(row["id"]))
    if rid is None:
        raise InputError(f"{where}: id: unknown id {row['id']!r}: not in the pool")
    if rid not in in_batch:
        raise InputError(f"{where}: id: {rid!r} was not requested in the pending batch (round {rnd})")
    return rid


def import_labels(path: str, batch: list, rnd: int, records: dict, labels: dict) -> tuple[dict, int, int]:
    """Check an annotators' file against the pending batch of round `rnd` and return
    (new answers by id, rows left blank, rows already imported). Any problem raises InputError
    naming file, line and field, before anything is changed; blank answers stay pending."""
    key = {str(i): i for i in records}  # CSV turns every id into a string
    in_batch = set(batch)
    first: dict = {}
    new: dict = {}
    blank = again = 0
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        rid = _row_id(row, where, key, in_batch, rnd)
        if rid in first:
            raise InputError(f"{where}: id: {rid!r} appears twice (first at line {first[rid]})")
        first[rid] = line
        for field in ("instruction", "input"):
            name = next((n for n in ALIASES[field] if n in row), None)
            if name is not None and not _same(str(row[name] or ""), records[rid][field]):
                raise InputError(f"{where}: {name}: differs from the pool's {field} for id {rid!r} "
                                 "(the batch must come back unedited; fix the pool instead)")
        name, answer = _answer(row, where)
        answer = answer if answer is not None else ""
        if not isinstance(answer, str):
            raise InputError(f"{where}: {name}: expected a string, got {type(answer).__name__}")
        if not answer.strip():
            blank += 1
        elif rid in labels:
            if not _same(labels[rid], answer):
                raise InputError(f"{where}: {name}: id {rid!r} was already labelled with a different answer")
            again += 1
        else:
            new[rid] = answer  # kept exactly as written
    return new, blank, again


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
    new, blank, again = import_labels(labels_file, batch, rnd, by_id, labels)
    done = sum(i in labels or i in new for i in batch)
    return new, (f"imported {len(new)} answers from {labels_file} ({again} already imported, {blank} left "
                 f"blank); round {rnd}: {done} of {len(batch)} labelled")


def export_for_annotators(picked: list[dict], rnd: int, by_id: dict, labels: dict, paths: RunPaths,
                          annotate_out: str | None, write: bool) -> dict | None:
    """Write (where `write`: rank 0) the picks that have no answer yet to the round's
    to_annotate.jsonl and to --annotate_out; return what state.json's `in_round` adds (how many
    wait, where they went), or None when every pick has its answer (the same on every rank)."""
    missing = [r for r in picked if r["id"] not in labels]
    if not missing:
        return None
    mine = paths.round_file(rnd, "to_annotate.jsonl")
    dest = annotate_out or mine
    if write:
        rows = batch_rows(missing, by_id, rnd)
        export_batch(mine, rows)
        if annotate_out:
            export_batch(annotate_out, rows)
    return {"waiting_for_labels": len(missing), "batch": len(picked), "exported_to": dest}
