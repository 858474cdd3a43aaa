"""Pools stored the Hugging Face way: a `.parquet` file, a `save_to_disk` folder (`DIR`, or
`DIR:SPLIT` for a DatasetDict), or `hf:NAME[:SPLIT]` read from the local Hugging Face cache only.

read_rows() hands these sources to dataset_rows(); records then go through the same checks as a
JSON pool, and errors keep the `SOURCE:ROW: FIELD: message` form (ROW = 1-based row index).
Nothing here touches the network: `hf:` sources come from the cache or are refused.

Also every pool format's records (load_records: .json/.jsonl/.csv, conversations, ids, aliases)
and a source's content hash (file_sha256: what --resume compares).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from al_utils import InputError

DEFAULT_SPLIT = "train"


def is_dataset_source(path: str) -> bool:
    """A parquet file, an `hf:` name, or a save_to_disk folder (optionally with :SPLIT)."""
    folder = _folder(path)[0]
    return path.endswith(".parquet") or path.startswith("hf:") or (
        os.path.isdir(folder) and any(os.path.isfile(os.path.join(folder, f))
                                      for f in ("dataset_info.json", "dataset_dict.json", "state.json")))


def _folder(path: str) -> tuple[str, str | None]:
    """save_to_disk source -> (folder, split or None)."""
    head, sep, tail = path.rpartition(":")
    if sep and head and os.path.isdir(head) and not os.path.isdir(path):
        return head, tail
    return path, None


def _offline() -> Any:
    """datasets with the hub switched off (set before import, and on the loaded modules)."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if hasattr(datasets.config, "HF_HUB_OFFLINE"):
        datasets.config.HF_HUB_OFFLINE = True
    return datasets


def _pick_split(obj: Any, split: str | None, where: str) -> Any:
    """A Dataset, or the named (default: only, else train) split of a DatasetDict."""
    if not hasattr(obj, "keys"):
        if split:
            raise InputError(f"{where}: (dataset): holds a single split; leave out :{split}")
        return obj
    names = sorted(obj.keys())
    split = split or (names[0] if len(names) == 1 else DEFAULT_SPLIT)
    if split not in obj:
        raise InputError(f"{where}: (dataset): no split {split!r} (splits: {', '.join(names)}); name one as "
                         f"{where}:SPLIT")
    return obj[split]


def load_dataset_source(path: str) -> Any:
    """An `hf:` or save_to_disk source as a `datasets.Dataset` (one split; memory-mapped Arrow)."""
    datasets = _offline()
    if path.startswith("hf:"):
        name, _, split = path[3:].partition(":")
        try:
            obj = datasets.load_dataset(name)
        except Exception as e:  # noqa: BLE001 - offline: every failure is "not in the cache"
            cache = datasets.config.HF_DATASETS_CACHE
            raise InputError(f"{path}: (dataset): not in the local Hugging Face cache ({cache}) and nothing is "
                             f"downloaded ({type(e).__name__}); fetch it once where there is network "
                             f"(python -c \"import datasets; datasets.load_dataset('{name}')\") or pass a .parquet or "
                             "save_to_disk copy") from None
        return _pick_split(obj, split or None, path)
    folder, split = _folder(path)
    try:
        obj = datasets.load_from_disk(folder)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: (dataset): not a save_to_disk folder ({type(e).__name__}: {e})") from None
    return _pick_split(obj, split, path)


ROWS_PER_BATCH = 10_000  # rows made Python objects at a time: a pool is never one list of row dicts


def source_table(path: str) -> pa.Table:
    """A dataset source as one memory-mapped Arrow table (pyarrow.Table): a save_to_disk folder or
    an `hf:` cache entry as stored; a .parquet file through datasets' parquet loader, which writes
    it once as Arrow into the datasets cache (HF_DATASETS_CACHE) and maps that, so no source is
    ever read into memory whole (ten million records are ~9 GB of text)."""
    if not path.endswith(".parquet"):
        return load_dataset_source(path).data.table
    if not os.path.isfile(path):
        raise InputError(f"{path}: file: no such file")
    datasets = _offline()
    import pyarrow.dataset as pds

    # without pre-buffering: by default pyarrow buffers every row group it will read (the whole file)
    scan = pds.ParquetFragmentScanOptions(pre_buffer=False)
    try:
        return datasets.Dataset.from_parquet(path, keep_in_memory=False, fragment_scan_options=scan).data.table
    except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file here
        raise InputError(f"{path}: (parquet): unreadable: {e}") from None


def _table_rows(table: pa.Table) -> Iterator[tuple[int, dict]]:
    """(1-based row, row dict) of every row of an Arrow table, made Python objects a batch at a time."""
    row = 0
    for batch in table.to_batches(max_chunksize=ROWS_PER_BATCH):
        for r in batch.to_pylist():
            row += 1
            yield row, r


def dataset_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(1-based row, row dict) of every row of a dataset source (al_datasets.source_table)."""
    return _table_rows(source_table(path))


def dataset_sha256(path: str) -> str:
    """The source's content: the parquet file, or every data file behind the dataset (sorted by name)."""
    if path.endswith(".parquet"):
        files = [path]
    else:
        files = sorted({f["filename"] for f in load_dataset_source(path).cache_files})
    h = hashlib.sha256()
    for f in files:
        h.update(os.path.basename(f).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# records of any pool format

def file_sha256(path: str) -> str:
    """A data source's content hash (what --resume compares): the file's bytes, or a dataset's files."""
    if is_dataset_source(path):
        return dataset_sha256(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


@functools.lru_cache(maxsize=1024)
def _columns(keys: tuple) -> tuple[tuple, tuple]:
    """A plain row's columns (once per set of keys: the rows of a file mostly share one): the names
    its instruction/input/output are under (None: absent), and its extra columns."""
    names = tuple(next((n for n in ALIASES[f] if n in keys), None) for f in ALIASES)
    return names, tuple(k for k in keys if k not in names and k != "id")


def _aliased_fields(row: dict, where: str) -> tuple[dict, tuple]:
    """instruction/input/output of a plain row under any of their column names, and its extra columns."""
    names, extra = _columns(tuple(row))
    if names[0] is None:
        raise InputError(f"{where}: instruction: missing (columns found: {', '.join(row) or 'none'})")
    rec: dict[str, Any] = {}
    for field, name in zip(ALIASES, names):
        value = "" if name is None else row[name]
        if value is None and field != "instruction":
            value = ""
        if not isinstance(value, str):
            raise InputError(f"{where}: {name}: expected a string, got {type(value).__name__}")
        rec[field] = value
    return rec, extra


# a pool read row by row keeps each record's extra columns in three: the index of its column names
# (key_sets) and their string values, or (-1, a value not a string) the whole as one JSON object
EXTRA_KEYS, EXTRA_VALUES, EXTRA_JSON = "__extra_keys__", "__extra_values__", "__extra_json__"
# str.strip()'s whitespace, for Arrow's regex engine: an instruction of only these is empty
_BLANK = "^[" + "".join(f"\\x{{{c:x}}}" for c in range(0x3001) if chr(c).isspace()) + "]*$"


class Pool(Mapping):
    """A pool's records, id -> {id, instruction, input, output, ...extra columns}, kept in an Arrow
    table (memory-mapped for a save_to_disk, hf: or Parquet source) instead of one Python dict per
    record: those cost ~1.7 KB each, so ten million did not fit. A record is built on access; take()
    builds many at once, a batch of the table at a time."""

    def __init__(self, table: pa.Table, names: dict, extras: list[str] | None, ids: list | None,
                 key_sets: list[tuple] | None = None) -> None:
        self.table = table
        self.names = names  # instruction/input/output -> the table's column (None: absent, "")
        self.extras = extras  # the extra columns, or None: the EXTRA_ columns hold them
        self.key_sets = key_sets or []  # EXTRA_KEYS -> the extra columns' names
        self.ids = ids  # each row's id, or None: ids are row positions
        self.index = None if ids is None else {rid: r for r, rid in enumerate(ids)}
        self.batches = table.to_batches()  # zero-copy; take() works within one (a table's take copies it whole)
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches])

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator:
        return iter(range(len(self)) if self.ids is None else self.ids)

    def row_of(self, i: Any) -> int:
        if self.index is not None:
            return self.index[i]
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < len(self):
            return int(i)
        raise KeyError(i)

    def __contains__(self, i: Any) -> bool:
        try:
            self.row_of(i)
        except (KeyError, TypeError):
            return False
        return True

    def __getitem__(self, i: Any) -> dict:
        return self.rows([self.row_of(i)])[0]

    def take(self, ids: Iterable) -> list[dict]:
        """The records of `ids`, in order."""
        return self.rows([self.row_of(i) for i in ids])

    def rows(self, rows: Sequence[int]) -> list[dict]:
        """The records at table rows `rows`, in order, taken batch by batch."""
        rows = np.asarray(rows, np.int64)
        out: list = [None] * len(rows)
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        order = np.argsort(chunk, kind="stable")
        for grp in np.split(order, np.flatnonzero(np.diff(chunk[order])) + 1):
            if len(grp):
                c = chunk[grp[0]]
                got = self.batches[c].take(pa.array(rows[grp] - self.starts[c])).to_pylist()
                for k, d in zip(grp, got):
                    out[k] = self._record(int(rows[k]), d)
        return out

    def _record(self, row: int, d: dict) -> dict:
        n = self.names
        rec = {"id": row if self.ids is None else self.ids[row], "instruction": d[n["instruction"]],
               "input": (d[n["input"]] or "") if n["input"] else "",
               "output": (d[n["output"]] or "") if n["output"] else ""}
        if self.extras is not None:
            rec.update((k, d[k]) for k in self.extras)
        elif d[EXTRA_KEYS] >= 0:
            rec.update(zip(self.key_sets[d[EXTRA_KEYS]], d[EXTRA_VALUES]))
        else:
            rec.update(json.loads(d[EXTRA_JSON]))
        return rec

    def ids_at(self, rows: Sequence[int]) -> list:
        """The ids of table rows `rows` (a permutation of the pool, say)."""
        return [int(r) for r in rows] if self.ids is None else [self.ids[r] for r in rows]

    def matching(self, keys: set) -> set:
        """Ids of the records whose (instruction, input) is one of `keys`; the instruction column
        is matched in Arrow, so only the (few) hits become Python records."""
        if not keys:
            return set()
        hit = pc.is_in(self.table.column(self.names["instruction"]), value_set=pa.array(sorted({k[0] for k in keys})))
        rows = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
        return {r["id"] for r in self.rows(rows) if (r["instruction"], r["input"]) in keys}

    def texts(self, field: str) -> Iterator[str]:
        """Every record's instruction, input or output, in row order, a batch at a time."""
        name = self.names[field]
        if name is None:
            yield from ("" for _ in range(len(self)))
            return
        for b in self.batches:
            yield from (v or "" for v in b.column(name).to_pylist())


def take(records: Mapping, ids: Iterable) -> list[dict]:
    """Records `ids` of a Pool (batched) or of any id -> record mapping."""
    return records.take(ids) if isinstance(records, Pool) else [records[i] for i in ids]


def _is_str(t: pa.DataType, nullable: bool) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or (nullable and pa.types.is_null(t))


def _arrow_pool(path: str, table: pa.Table, require_output: str) -> Pool | None:
    """A pool over an Arrow source's own table (nothing copied), its checks done column-wise; None
    where a row-by-row read is needed (conversations, columns of other types: their errors)."""
    cols = table.column_names
    names = {f: next((n for n in ALIASES[f] if n in cols), None) for f in ALIASES}
    id_type = table.schema.field("id").type if "id" in cols else None
    if (names["instruction"] is None or not _is_str(table.schema.field(names["instruction"]).type, False)
            or any(names[f] and not _is_str(table.schema.field(names[f]).type, True) for f in ("input", "output"))
            or (id_type is not None and not (pa.types.is_integer(id_type) or _is_str(id_type, False)))):
        return None
    if table.num_rows == 0:
        raise InputError(f"{path}: file: no records")

    def first(mask: pa.ChunkedArray) -> int | None:
        k = pc.index(mask, True).as_py()
        return None if k < 0 else k

    ins = table.column(names["instruction"])
    problems = [(first(pc.is_null(ins)), 0, f"{names['instruction']}: expected a string, got NoneType"),
                (first(pc.fill_null(pc.match_substring_regex(ins, _BLANK), False)), 1, "instruction: empty")]
    if require_output:
        out = table.column(names["output"]) if names["output"] else None
        blank = 0 if out is None else first(pc.fill_null(pc.match_substring_regex(out, _BLANK), True))
        problems.append((blank, 2, f"output: empty or missing ({require_output})"))
    ids = None
    if id_type is not None:
        problems.append((first(pc.is_null(table.column("id"))), 3, "id: expected a string or integer, got NoneType"))
        ids = table.column("id").to_pylist()
        if pc.count_distinct(table.column("id")).as_py() < len(ids):
            seen: dict = {}
            for r, rid in enumerate(ids):
                if rid in seen:
                    problems.append((r, 4, f"id: duplicate id {rid!r} (first seen at line {seen[rid] + 1})"))
                    break
                seen[rid] = r
    found = min((p for p in problems if p[0] is not None), default=None)
    if found is not None:
        raise InputError(f"{path}:{found[0] + 1}: {found[2]}")
    used = {n for n in names.values() if n}
    return Pool(table, names, [c for c in cols if c not in used and c != "id"], ids)


def _extra_cells(row: dict, extra: tuple, key_sets: dict, where: str) -> tuple[int, list | None, str | None]:
    """A row's extra columns as (EXTRA_KEYS, EXTRA_VALUES, EXTRA_JSON) cells."""
    values = [row[k] for k in extra]
    if all(type(v) is str for v in values):
        return key_sets.setdefault(extra, len(key_sets)), values, None
    try:
        return -1, None, json.dumps(dict(zip(extra, values)), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: (record): an extra column cannot be carried as JSON: {e}") from None


def _rows_pool(path: str, rows: Iterable[tuple[int, Any]], require_output: str, template: str) -> Pool:
    """A pool read and checked row by row (JSON, CSV, conversations), kept as an Arrow table built a
    batch at a time. Extra columns ride along as names + string values (no JSON per row: that cost
    more than the checks), or as JSON where a value is not a string."""
    schema = pa.schema([(f, pa.string()) for f in ALIASES] + [
        (EXTRA_KEYS, pa.int32()), (EXTRA_VALUES, pa.list_(pa.string())), (EXTRA_JSON, pa.string())])
    batches: list = []
    cols: dict[str, list] = {c: [] for c in schema.names}
    key_sets: dict[tuple, int] = {}
    ids: list = []
    own_ids = False
    first_line: dict[Any, int] = {}
    for pos, (line, row) in enumerate(rows):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: (record): expected a JSON object, got {type(row).__name__}")
        has_instruction = any(n in row for n in ALIASES["instruction"])
        conversation = None if has_instruction else conversation_record(row, where, require_output, template == "chat")
        # a conversation column itself is kept as it came
        rec, extra = (conversation, tuple(k for k in row if k != "id")) if conversation is not None else \
            _aliased_fields(row, where)
        if not rec["instruction"].strip():
            raise InputError(f"{where}: instruction: empty")
        if require_output and not rec["output"].strip():
            raise InputError(f"{where}: output: empty or missing ({require_output})")
        own_ids |= "id" in row
        rid = row.get("id", pos)
        if not isinstance(rid, (int, str)) or isinstance(rid, bool):
            raise InputError(f"{where}: id: expected a string or integer, got {type(rid).__name__}")
        if rid in first_line:
            raise InputError(f"{where}: id: duplicate id {rid!r} (first seen at line {first_line[rid]})")
        first_line[rid] = line
        ids.append(rid)
        for f in ALIASES:
            cols[f].append(rec[f])
        for c, v in zip((EXTRA_KEYS, EXTRA_VALUES, EXTRA_JSON), _extra_cells(row, extra, key_sets, where)):
            cols[c].append(v)
        if len(ids) % ROWS_PER_BATCH == 0:
            batches.append(pa.RecordBatch.from_pydict(cols, schema=schema))
            cols = {c: [] for c in cols}
    if not ids:
        raise InputError(f"{path}: file: no records")
    if cols["instruction"]:
        batches.append(pa.RecordBatch.from_pydict(cols, schema=schema))
    return Pool(pa.Table.from_batches(batches, schema), {f: f for f in ALIASES}, None,
                ids if own_ids else None, list(key_sets))


def load_pool(path: str, require_output: str = "", template: str = "alpaca") -> Pool:
    """Load a pool as a Pool of records {id, instruction, input, output, ...extra columns}; a row
    without an instruction column may be a conversation (`messages` or ShareGPT `conversations`):
    single-turn, or under the chat template (--prompt_template chat) any number of turns
    (conversation_record).

    `id` is the row's own id if it has one, else its 0-based position in the file (records only,
    so the first record of a .jsonl is 0 even after blank lines). Extra columns are carried through.
    A non-empty `require_output` (the reason) makes a record without an answer an error. A Parquet,
    save_to_disk or hf: source with string columns is checked column-wise in Arrow and never
    copied; anything else is read row by row.
    """
    if is_dataset_source(path):
        table = source_table(path)
        pool = _arrow_pool(path, table, require_output)
        if pool is not None:
            return pool
        return _rows_pool(path, _table_rows(table), require_output, template)
    return _rows_pool(path, read_rows(path), require_output, template)


def load_records(path: str, require_output: str = "", template: str = "alpaca") -> list[dict]:
    """A (small) file's records as a list (targets, test sets, training sets): load_pool's records."""
    pool = load_pool(path, require_output, template)
    return pool.rows(range(len(pool)))
