"""Shared helpers for the AL scripts: errors and atomic files, the run directory, common flags,
records and validation (prompt templates and tokenisation live in al_prompts.py, loss scoring and
generation in al_scoring.py, strategies and selection in al_strategies.py).

Conventions (see README): a score is a per-example mean NLL over the scored tokens only; higher
means "more uncertain" and sorts first ("top"). Bad input raises InputError whose message reads
`FILE:LINE: FIELD: message`; the scripts print it as `error: ...` and exit 2.
"""
from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------
# errors and atomic files


class InputError(Exception):
    """Bad input found before any work: printed as one `error: ...` line, exit code 2."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a script's main(); an InputError becomes one clear line on stderr and exit code 2, a
    full disk (or quota) one line naming the file and exit code 1."""
    try:
        main()
    except InputError as e:
        # under torchrun every rank validates the same way; rank 0 speaks, every rank exits 2
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        # every write is temp + rename, so what is on disk is the last complete version of each file
        print(f"error: {e.filename or '(a file)'}: {e.strerror} ({errno.errorcode[e.errno]}); nothing was left "
              "half-written: free space, then run again with --resume", file=sys.stderr)
        sys.exit(1)


UMASK = os.umask(0)
os.umask(UMASK)  # (reading the umask means setting it: put it straight back)


def atomic_write_text(path: str, text: str) -> None:
    """Write via a temp file in the same directory + rename, so readers never see half a file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; results should be as readable as open() makes them
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() or fsync() names no file
            raise OSError(e.errno, e.strerror, path) from e
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Build a folder in <path>.tmp and rename it into place (replacing an old one) only once the
    block completes: a crash leaves no half folder at `path`, and the next call clears the .tmp."""
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def atomic_savefig(fig, path: str, **kw) -> None:
    """matplotlib figure -> file, via a temp file + rename like every other write."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"  # keeps the extension: savefig picks the format from it
    fig.savefig(tmp, **kw)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# the run directory (README "Run directory"): every path of it is spelled here, nowhere else


@dataclass(frozen=True)
class RunPaths:
    run: str  # <model_path> without a trailing /
    ckpt: str  # the latest round's trained model, beside the run directory: <run>_sharded
    state: str
    selected: str
    labels: str  # annotators' answers imported so far
    lock: str
    rounds: str

    def round_dir(self, rnd: int) -> str:
        return os.path.join(self.rounds, str(rnd))

    def round_file(self, rnd: int, name: str) -> str:
        """rounds/<rnd>/<name>: selected.jsonl, scores.jsonl, metrics.json, scores.png, to_annotate.jsonl"""
        return os.path.join(self.round_dir(rnd), name)


CKPT_SUFFIX = "_sharded"


def run_paths(model_path: str) -> RunPaths:
    run = model_path.rstrip("/")
    return RunPaths(run, run + CKPT_SUFFIX, *(os.path.join(run, f) for f in (
        "state.json", "selected.json", "labels.jsonl", ".lock", "rounds")))


def run_of_checkpoint(ckpt: str) -> RunPaths:
    """The run directory a loop checkpoint X_sharded belongs to (X)."""
    return run_paths(ckpt.rstrip("/").removesuffix(CKPT_SUFFIX))


def read_state(run: str) -> dict | None:
    """An AL run directory's state.json, or None where there is no run."""
    f = run_paths(run).state
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------------------------
# flags every script shares

TEMPLATES = ("alpaca", "chat")  # --prompt_template (al_prompts.py renders them)

RUNTIME = "run control (may change between a run and its --resume: not part of what it selects or trains)"


def add_common_args(p: argparse.ArgumentParser, seed_help: str = "seed of every random draw") -> Any:
    """--model_config_path, --prompt_template and --seed (part of what a run is), --threads,
    --no_progress and --deterministic (how it runs), defined once for every script. Returns the
    runtime group for the script's own runtime flags: runtime_flags() reads it back."""
    g = p.add_argument_group("model, prompt template and seed")
    g.add_argument("--model_config_path", default=None,
                   help="HF folder with config + tokenizer (default: the checkpoint's own)")
    g.add_argument("--prompt_template", default="alpaca", choices=TEMPLATES,
                   help="alpaca: the original's instruction template; chat: the tokenizer's own chat template "
                        "(user turn = instruction + input, assistant turn = answer)")
    g.add_argument("--seed", type=int, default=42, help=seed_help)
    rt = p.add_argument_group(RUNTIME)
    rt.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    rt.add_argument("--no_progress", action="store_true", help="no progress bars")
    rt.add_argument("--deterministic", action="store_true",
                    help="CUDA: deterministic kernels, so a rerun or a resumed run repeats the same numbers and "
                         "picks (on CPU they always do; the flag changes nothing there); torch then raises on ops with "
                         "no deterministic CUDA kernel (top-p sampling's cumsum: eval_generate.py refuses --top_p < 1)")
    return rt


def add_save_opt_args(g: Any, default: bool) -> None:
    """--save_opt / --dont_save_opt: one setting under both of the original's names."""
    x = g.add_mutually_exclusive_group()
    on, off = ("(default)", "") if default else ("", "(default)")
    x.add_argument("--save_opt", dest="save_opt", action="store_true", default=default,
                   help=f"save the optimizer state with the checkpoint {on}".rstrip())
    x.add_argument("--dont_save_opt", dest="save_opt", action="store_false",
                   help=f"save the model without optimizer state {off}".rstrip())


def runtime_flags(p: argparse.ArgumentParser, *more_titles: str) -> set[str]:
    """Destinations of the flags in the RUNTIME group and the groups titled `more_titles`
    (argparse keeps groups in _action_groups)."""
    titles = {RUNTIME, *more_titles}
    return {a.dest for g in p._action_groups if g.title in titles for a in g._group_actions}


def check_common_args(args: argparse.Namespace) -> None:
    if args.seed < 0:  # numpy's seeded streams refuse negative seeds
        raise InputError("--seed: must be >= 0")
    if args.threads < 0:
        raise InputError("--threads: must be >= 0")


def kill_point(name: str, rnd: int) -> None:
    """Crash-safety test hook: with AL_KILL_AT=<name>:<round> in the environment the process
    SIGKILLs itself here (points: scoring, selected, training, checkpoint_save); with
    AL_KILL_RANK=<r> only that rank of a torchrun launch does."""
    if os.environ.get("AL_KILL_AT") == f"{name}:{rnd}" and \
            os.environ.get("AL_KILL_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0"):
        os.kill(os.getpid(), signal.SIGKILL)


def file_sha256(path: str) -> str:
    """A data source's content hash (what --resume compares): the file's bytes, or a dataset's files."""
    from al_datasets import dataset_sha256, is_dataset_source

    if is_dataset_source(path):
        return dataset_sha256(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# records

ALIASES = {
    "instruction": ("instruction", "Instruction", "prompt"),
    "input": ("input", "context"),
    "output": ("output", "response"),
}


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
    """A .jsonl file streamed line by line: a million-record pool is never held as one string."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{i}: (encoding): invalid UTF-8 byte 0x{raw[e.start]:02x} "
                                 f"at column {e.start + 1}") from None
            if not line.strip():
                continue  # a blank line holds no record
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{i}: (json): malformed JSON: {e.msg} at column {e.colno}") from None


def read_rows(path: str) -> Iterable[tuple[int, Any]]:
    """(1-based line or element number, parsed value) for every record of a .json/.jsonl/.csv file
    (.jsonl streamed), or (1-based row, row) of a Hugging Face dataset source (al_datasets)."""
    from al_datasets import dataset_rows, is_dataset_source

    if is_dataset_source(path):
        return dataset_rows(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file: no such file")
    if path.endswith(".jsonl"):
        return _jsonl_rows(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(f"{path}:{line}: (encoding): invalid UTF-8 byte 0x{raw[e.start]:02x} "
                         f"at column {col}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: (json): malformed JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise InputError(f"{path}:1: (json): expected a JSON array of records, got {type(data).__name__}")
        return list(enumerate(data, start=1))
    if path.endswith(".csv"):  # header row + one record per row; the line is where the row starts
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows, start = [], 2
        try:
            for row in reader:
                if None in row:
                    raise InputError(f"{path}:{start}: (csv): more fields than the header has")
                rows.append((start, {k: v for k, v in row.items() if v is not None}))
                start = reader.line_num + 1
        except csv.Error as e:
            raise InputError(f"{path}:{reader.line_num}: (csv): {e}") from None
        return rows
    raise InputError(f"{path}: file: expected a .json, .jsonl, .csv or .parquet file, a save_to_disk folder or "
                     "hf:NAME[:SPLIT]")


# conversation columns: name -> (role key, text key, role spellings -> user | assistant | system)
CONVERSATIONS = {
    "messages": ("role", "content", {"user": "user", "assistant": "assistant", "system": "system"}),
    "conversations": ("from", "value", {"human": "user", "user": "user", "gpt": "assistant",
                                        "assistant": "assistant", "system": "system"}),
}


def conversation_turns(row: dict, where: str = "") -> tuple[str, list[tuple[str, str]]] | None:
    """(column, [(role, text)]) of a `messages` ([{role, content}]) or ShareGPT `conversations`
    ([{from, value}]) row with roles as user | assistant | system, or None when it has neither.
    Only a last assistant turn may be empty (an answer still to write)."""
    col = next((c for c in CONVERSATIONS if c in row), None)
    if col is None:
        return None
    key, text, roles = CONVERSATIONS[col]
    turns = row[col]
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{where}: {col}: expected a non-empty list of turns")
    seq = []
    for k, t in enumerate(turns, 1):
        if not isinstance(t, dict) or key not in t or not isinstance(t.get(text), str):
            raise InputError(f"{where}: {col}: turn {k}: expected an object with {key!r} and a string {text!r}")
        if t[key] not in roles:
            raise InputError(f"{where}: {col}: turn {k}: unknown {key} {t[key]!r} (known: {', '.join(roles)})")
        if not t[text].strip() and not (k == len(turns) > 1 and roles[t[key]] == "assistant"):
            raise InputError(f"{where}: {col}: turn {k}: empty {text}")
        seq.append((roles[t[key]], t[text]))
    return col, seq


def conversation_record(row: dict, where: str, require_output: str, multi_turn: bool) -> dict | None:
    """instruction/input/output of a conversation row (None when it is not one): the first user turn
    and the final assistant turn (empty when the conversation ends on a user turn: unlabelled). The
    alpaca template holds one user turn and its answer; with `multi_turn` (--prompt_template chat)
    a system turn may open it and user/assistant turns alternate, the turns before the final
    answer being its context (chat_context)."""
    parsed = conversation_turns(row, where)
    if parsed is None:
        return None
    col, seq = parsed
    kinds = [r for r, _ in seq]
    if not multi_turn and kinds not in (["user"], ["user", "assistant"]):
        raise InputError(f"{where}: {col}: turns {' -> '.join(kinds)}; the alpaca template holds one user turn "
                         "and its answer (multi-turn and system turns need --prompt_template chat)")
    body = kinds[1:] if kinds[0] == "system" else kinds
    if not body or any(k != ("user", "assistant")[j % 2] for j, k in enumerate(body)):
        raise InputError(f"{where}: {col}: turns {' -> '.join(kinds)}; expected an optional system turn, then user "
                         "and assistant turns alternating from a user turn")
    answer = seq[-1][1] if kinds[-1] == "assistant" else ""
    if require_output and not answer.strip():
        raise InputError(f"{where}: {col}: no assistant answer after the last user turn ({require_output})")
    return {"instruction": next(t for r, t in seq if r == "user"), "input": "", "output": answer}


def load_records(path: str, require_output: str = "", template: str = "alpaca") -> list[dict]:
    """Load a pool as records {id, instruction, input, output, ...extra columns}; a row without an
    instruction column may be a conversation (`messages` or ShareGPT `conversations`): single-turn,
    or under the chat template (--prompt_template chat) any number of turns (conversation_record).

    `id` is the row's own id if it has one, else its 0-based position in the file (records only,
    so the first record of a .jsonl is 0 even after blank lines). Extra columns are carried through.
    A non-empty `require_output` (the reason) makes a record without an answer an error.
    """
    records: list[dict] = []
    first_line: dict[Any, int] = {}
    for pos, (line, row) in enumerate(read_rows(path)):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: (record): expected a JSON object, got {type(row).__name__}")
        rec: dict[str, Any] = {}
        used: set[str] = set()
        has_instruction = any(n in row for n in ALIASES["instruction"])
        conversation = None if has_instruction else conversation_record(row, where, require_output, template == "chat")
        for field, names in ALIASES.items():
            if conversation is not None:  # the conversation column itself is kept as it came
                rec = conversation
                break
            name = next((n for n in names if n in row), None)
            if name is None:
                if field == "instruction":
                    raise InputError(f"{where}: instruction: missing (columns found: {', '.join(row) or 'none'})")
                rec[field] = ""
                continue
            used.add(name)
            value = row[name]
            if value is None and field != "instruction":
                value = ""
            if not isinstance(value, str):
                raise InputError(f"{where}: {name}: expected a string, got {type(value).__name__}")
            rec[field] = value
        if not rec["instruction"].strip():
            raise InputError(f"{where}: instruction: empty")
        if require_output and not rec["output"].strip():
            raise InputError(f"{where}: output: empty or missing ({require_output})")
        rid = row.get("id", pos)
        if not isinstance(rid, (int, str)) or isinstance(rid, bool):
            raise InputError(f"{where}: id: expected a string or integer, got {type(rid).__name__}")
        if rid in first_line:
            raise InputError(f"{where}: id: duplicate id {rid!r} (first seen at line {first_line[rid]})")
        first_line[rid] = line
        extra = {k: v for k, v in row.items() if k not in used and k != "id"}
        records.append({"id": rid, **rec, **extra})
    if not records:
        raise InputError(f"{path}: file: no records")
    return records


def answer_words(text: str) -> int:
    """What an annotator writes, counted in whitespace-separated words (comparable across tokenizers)."""
    return len(text.split())


def round_rng(seed: int, rnd: int, purpose: int) -> np.random.Generator:
    """Independent, reproducible random streams per (seed, round, purpose): a resumed run draws
    exactly what the uninterrupted run drew, with no RNG state to carry."""
    return np.random.default_rng([seed, rnd, purpose])


def describe(x: np.ndarray) -> str:
    if len(x) == 0:
        return "n/a"
    return f"mean {np.mean(x):.3f} min {np.min(x):.3f} max {np.max(x):.3f}"

