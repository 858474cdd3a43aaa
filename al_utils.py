"""Shared helpers for the AL scripts: errors and atomic files, the run directory, common flags,
records and validation, the prompt template and tokenisation (loss scoring and generation live in
al_scoring.py, strategies and selection in al_strategies.py).

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

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

RUNTIME = "run control (may change between a run and its --resume: not part of what it selects or trains)"


def add_common_args(p: argparse.ArgumentParser, seed_help: str = "seed of every random draw") -> Any:
    """--model_config_path, --prompt_template and --seed (part of what a run is), --threads and
    --no_progress (how it runs), defined once for every script. Returns the runtime group for the script's own
    runtime flags: runtime_flags() reads it back."""
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


# ----------------------------------------------------------------------------------------------
# prompt template: one template for scoring, training and evaluation

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
RESPONSE_MARKER = "### Response:"  # ends every prompt; IFD's direct pass scores the answer after it
ANSWER_SEP = " "  # the answer follows "### Response:" after a single space and ends with EOS


TEMPLATES = ("alpaca", "chat")


def format_prompt(instruction: str, input: str = "") -> str:
    if input.strip():
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def user_turn(r: dict) -> dict:
    """--prompt_template chat: the user turn is the instruction, then the input after a blank line."""
    return {"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else "")}


def chat_context(r: dict) -> list[dict]:
    """--prompt_template chat: the messages before the answer: the user turn, or a conversation's
    turns before its final assistant turn."""
    parsed = conversation_turns(r)
    if parsed is None:
        return [user_turn(r)]
    seq = parsed[1][:-1] if parsed[1][-1][0] == "assistant" else parsed[1]
    return [{"role": role, "content": text} for role, text in seq]


def request_text(r: dict) -> str:
    """What the user asks, as text: the instruction (+ the input on the next line), or every user turn
    of a conversation, a blank line apart (self_ask's question)."""
    parsed = conversation_turns(r)
    if parsed is not None:
        return "\n\n".join(t for role, t in parsed[1] if role == "user")
    return r["instruction"] + ("\n" + r["input"] if r["input"].strip() else "")


def check_template(tokenizer, template: str, where: str) -> None:
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{where}: tokenizer: has no chat template (--prompt_template chat formats prompts with "
                         "the tokenizer's own; use --prompt_template alpaca)")


def _chat_ids(tokenizer, conversations: list[list[dict]], generation_prompt: bool) -> list[list[int]]:
    return [list(x) for x in tokenizer.apply_chat_template(conversations, add_generation_prompt=generation_prompt,
                                                           tokenize=True)["input_ids"]]


def prompt_ids(tokenizer, records: Sequence[dict], template: str = "alpaca") -> list[list[int]]:
    """Each record's prompt ids: BOS + the alpaca prompt, or the tokenizer's chat template applied
    to the turns before the answer with the assistant's turn opened (add_generation_prompt)."""
    if not records:
        return []
    if template == "chat":
        return _chat_ids(tokenizer, [chat_context(r) for r in records], True)
    return tokenizer([format_prompt(r["instruction"], r["input"]) for r in records]).input_ids


def response_marker_ids(tokenizer, template: str = "alpaca") -> list[int]:
    """What IFD's direct pass puts before the answer: BOS + "### Response:" (Cherry_LLM), or with
    chat the first token and the assistant-turn header the template opens (found on ids: the
    generation prompt minus the prompt without it)."""
    if template == "chat":
        r = {"instruction": "x", "input": ""}
        with_gen = _chat_ids(tokenizer, [[user_turn(r)]], True)[0]
        without = _chat_ids(tokenizer, [[user_turn(r)]], False)[0]
        return with_gen[:1] + with_gen[len(without):]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + \
        tokenizer(RESPONSE_MARKER, add_special_tokens=False).input_ids


# ----------------------------------------------------------------------------------------------
# tokenisation


@dataclass
class Encoded:
    prompt: list[int]  # BOS + templated prompt
    answer: list[int]  # answer tokens + EOS (empty when the record has no answer)
    template: int = 0  # 1 when the prompt has the input block: rows of one template share a prefix
    instruction_len: int = 0  # tokens of the instruction alone, BOS included (as the original counted)
    spans: tuple = ()  # (start, end) of earlier assistant turns inside the prompt: trained on too (multi-turn)

    def prompt_loss(self) -> list[int] | None:
        """1 on the prompt tokens training learns (earlier assistant turns), else 0; None: none."""
        if not self.spans:
            return None
        mask = [0] * len(self.prompt)
        for a, b in self.spans:
            mask[a:b] = [1] * (b - a)
        return mask


def answer_words(text: str) -> int:
    """What an annotator writes, counted in whitespace-separated words (comparable across tokenizers)."""
    return len(text.split())


def pad_id_of(tokenizer) -> int:
    """pad, else unk, else eos: padding is always masked, so any real id works (no vocab resize)."""
    for tid in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise InputError(f"{tokenizer.name_or_path}: tokenizer: has none of pad/unk/eos tokens")


ENCODE_CHUNK = 2_000  # records tokenised per call: bounds the transient Python lists, drives the progress bar


class Encodings(Mapping):
    """id -> Encoded for a whole pool, held in flat arrays: one int32 buffer of every record's
    prompt ids then answer ids, offsets and lengths per record. A Python list per record cost about
    54 KB of memory each (a million-record pool did not fit); this costs 4 bytes per token. Encoded
    objects are built on access; a later id replaces an earlier one (annotators' answers)."""

    def __init__(self, source: tuple | None = None) -> None:
        self.source = source  # lazy: (tokenizer, id -> record, template, progress) encodes ids on demand
        self.rows: dict[Any, int] = {}
        self.buf = np.zeros(0, np.int32)
        self.start = np.zeros(1, np.int64)  # record r's ids are buf[start[r]:start[r + 1]]
        self.plen = np.zeros(0, np.int32)  # of which the first plen[r] are the prompt
        self.template = np.zeros(0, np.int8)
        self.ins_len = np.zeros(0, np.int32)
        self.spans: dict[int, tuple] = {}  # row -> Encoded.spans, for the (few) multi-turn records
        self._pending: list = []  # appended chunks not yet joined into the arrays
        self._count = 0  # records appended (rows index them)

    def extend(self, ids: Sequence, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
               templates: Sequence[int], ins_lens: Sequence[int], spans: Sequence[tuple] = ()) -> None:
        """Append records; the arrays are joined once, on the next read (no copy per chunk)."""
        lens = np.array([len(p) + len(a) for p, a in zip(prompts, answers)], np.int64)
        self._pending.append((np.fromiter((t for p, a in zip(prompts, answers) for t in (*p, *a)), np.int32,
                                          int(lens.sum())), lens, np.array([len(p) for p in prompts], np.int32),
                              np.array(templates, np.int8), np.array(ins_lens, np.int32)))
        self.rows.update((i, self._count + k) for k, i in enumerate(ids))
        self.spans.update((self._count + k, sp) for k, sp in enumerate(spans) if sp)
        self._count += len(lens)

    def _join(self) -> None:
        if not self._pending:
            return
        bufs, lens, plens, tmpl, ins = zip(*self._pending)
        self.buf = np.concatenate([self.buf, *bufs])
        self.start = np.concatenate([self.start, self.start[-1] + np.cumsum(np.concatenate(lens))])
        self.plen = np.concatenate([self.plen, *plens])
        self.template = np.concatenate([self.template, *tmpl])
        self.ins_len = np.concatenate([self.ins_len, *ins])
        self._pending = []

    def update(self, other: Encodings) -> None:  # type: ignore[override]
        ids = list(other)
        es = [other[i] for i in ids]  # each built once
        self.extend(ids, [e.prompt for e in es], [e.answer for e in es], [e.template for e in es],
                    [e.instruction_len for e in es], [e.spans for e in es])

    def ensure(self, ids: Iterable) -> None:
        """Lazy encodings: tokenise (in chunks) the ids not encoded yet. A round calls this with its
        candidates, so a pool scored a sample at a time is never encoded whole."""
        if self.source is None:
            return
        tokenizer, by_id, template, progress = self.source
        missing = [i for i in dict.fromkeys(ids) if i not in self.rows]
        if missing:
            self._encode(tokenizer, [by_id[i] for i in missing], template, progress)

    def _encode(self, tokenizer, records: Sequence[dict], template: str, progress: bool) -> None:
        chunks = range(0, len(records), ENCODE_CHUNK)
        for lo in tqdm(chunks, desc="tokenising", unit="chunk", disable=not progress or len(chunks) < 2,
                       file=sys.stderr):
            part = records[lo: lo + ENCODE_CHUNK]
            self.extend([r["id"] for r in part], *(_encode_chat if template == "chat" else _encode_alpaca)(
                tokenizer, part))

    def __getitem__(self, i: Any) -> Encoded:
        if i not in self.rows:  # lazy, and asked for one nobody ensured: encode it alone
            self.ensure([i])
        self._join()
        r = self.rows[i]
        a, b, p = int(self.start[r]), int(self.start[r + 1]), int(self.plen[r])
        return Encoded(self.buf[a: a + p].tolist(), self.buf[a + p: b].tolist(), int(self.template[r]),
                       int(self.ins_len[r]), self.spans.get(r, ()))

    def __iter__(self) -> Iterator:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def encode_records(tokenizer, records: Sequence[dict], template: str = "alpaca", progress: bool = False) -> Encodings:
    """Tokenise prompt and prompt+answer once per record, in chunks, into compact Encodings."""
    enc = Encodings()
    enc._encode(tokenizer, records, template, progress)
    return enc


def lazy_encodings(tokenizer, by_id: Mapping, template: str = "alpaca", progress: bool = False) -> Encodings:
    """Encodings of a pool that tokenise a record when a round first needs it (Encodings.ensure);
    iteration and len() cover what is encoded so far. Same ids as encode_records, chunking aside."""
    return Encodings((tokenizer, by_id, template, progress))


def _instruction_lens(tokenizer, records: Sequence[dict]) -> list[int]:
    return [len(x) for x in tokenizer([r["instruction"] for r in records], return_attention_mask=False).input_ids]


def _answers(records: Sequence[dict], p_ids: list, fulls: list, answer_of: Callable) -> list[list[int]]:
    """Each record's answer ids, from its prompt ids and the ids of prompt + answer (`fulls` holds
    those of the records with an answer, in order); no answer: empty."""
    full_of = dict(zip([i for i, r in enumerate(records) if r["output"]], fulls))
    return [answer_of(r, p_ids[i], full_of[i]) if i in full_of else [] for i, r in enumerate(records)]


def _encode_alpaca(tokenizer, records: Sequence[dict]) -> tuple[list, list, list, list]:
    """(prompt ids, answer ids, template kind, instruction length) per record. The answer's ids are
    the tail of the joint tokenisation, so prompt + answer is exactly what the tokenizer makes of
    the whole text."""
    prompts = [format_prompt(r["instruction"], r["input"]) for r in records]
    p_ids = tokenizer(prompts, return_attention_mask=False).input_ids
    texts = [p + ANSWER_SEP + r["output"] for p, r in zip(prompts, records) if r["output"]]
    fulls = tokenizer(texts, return_attention_mask=False).input_ids if texts else []  # (no empty batches)

    def answer_of(r: dict, p: list, full: list) -> list[int]:
        if full[: len(p)] == p:
            return full[len(p):] + [tokenizer.eos_token_id]
        # the boundary merged into one token: tokenise the answer on its own
        return tokenizer(ANSWER_SEP + r["output"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]

    return (p_ids, _answers(records, p_ids, fulls, answer_of), [int(bool(r["input"].strip())) for r in records],
            _instruction_lens(tokenizer, records))


def _encode_chat(tokenizer, records: Sequence[dict]) -> tuple[list, list, list, list, list]:
    """--prompt_template chat: the prompt is the rendered turns before the answer with the assistant's
    turn opened; the answer is the rest of the rendered conversation with the answer (its text and
    the template's end-of-turn tokens); a multi-turn conversation's earlier assistant turns are
    spans of the prompt, cut the same way. Boundaries are found on token ids (each shorter rendering
    must begin the longer one), never by re-tokenising text pieces."""
    contexts = [chat_context(r) for r in records]
    p_ids = _chat_ids(tokenizer, contexts, True)
    convs = [c + [{"role": "assistant", "content": r["output"]}] for c, r in zip(contexts, records) if r["output"]]
    fulls = _chat_ids(tokenizer, convs, False) if convs else []

    def refuse(r: dict) -> InputError:
        return InputError(f"{tokenizer.name_or_path}: chat template: record {r['id']!r}: the conversation with its "
                          "answer does not begin with the prompt's tokens (the template renders earlier turns "
                          "differently once more follow); use --prompt_template alpaca or single-turn records")

    def answer_of(r: dict, p: list, full: list) -> list[int]:
        if full[: len(p)] != p:
            raise refuse(r)
        return full[len(p):]

    def spans_of(r: dict, context: list[dict], p: list) -> tuple:
        out = []
        for k, m in enumerate(context):
            if m["role"] != "assistant":
                continue
            opened = _chat_ids(tokenizer, [context[:k]], True)[0]  # ... up to this turn's header
            closed = _chat_ids(tokenizer, [context[: k + 1]], False)[0]  # ... through its end of turn
            if closed[: len(opened)] != opened or p[: len(closed)] != closed:
                raise refuse(r)
            out.append((len(opened), len(closed)))
        return tuple(out)

    spans = [spans_of(r, c, p) for r, c, p in zip(records, contexts, p_ids)]
    return (p_ids, _answers(records, p_ids, fulls, answer_of), [0] * len(records),
            _instruction_lens(tokenizer, records), spans)


def truncate_prompt(prompt: Sequence[int], max_len: int) -> list[int]:
    """The one prompt-truncation rule (scoring, generation, training, evaluation): keep BOS and the
    last max_len - 1 tokens, so the template's "### Response:" always survives."""
    if len(prompt) <= max_len:
        return list(prompt)
    return list(prompt[:1]) + list(prompt[len(prompt) - max_len + 1:])


def truncate_pair(prompt: list[int], answer: list[int], max_len: int) -> tuple[list[int], list[int], bool]:
    """Fit prompt + answer into max_len keeping answer tokens: the prompt is cut by truncate_prompt,
    down to half the context at most; the answer is cut at the end."""
    if len(prompt) + len(answer) <= max_len:
        return prompt, answer, False
    keep_p = min(len(prompt), max(max_len - len(answer), max_len // 2))
    return truncate_prompt(prompt, keep_p), answer[: max_len - keep_p], True


def round_rng(seed: int, rnd: int, purpose: int) -> np.random.Generator:
    """Independent, reproducible random streams per (seed, round, purpose): a resumed run draws
    exactly what the uninterrupted run drew, with no RNG state to carry."""
    return np.random.default_rng([seed, rnd, purpose])


def describe(x: np.ndarray) -> str:
    if len(x) == 0:
        return "n/a"
    return f"mean {np.mean(x):.3f} min {np.min(x):.3f} max {np.max(x):.3f}"

