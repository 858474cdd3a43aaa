"""Pools stored the Hugging Face way: a `.parquet` file, a `save_to_disk` folder (`DIR`, or
`DIR:SPLIT` for a DatasetDict), or `hf:NAME[:SPLIT]` read from the local Hugging Face cache only.

al_utils.read_rows hands these sources here; records then go through the same checks as a JSON
pool, and errors keep the `SOURCE:ROW: FIELD: message` form (ROW = 1-based row index).
Nothing here touches the network: `hf:` sources come from the cache or are refused.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

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
    """The source as a `datasets.Dataset` (one split)."""
    if path.endswith(".parquet"):
        if not os.path.isfile(path):
            raise InputError(f"{path}: file: no such file")
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file here
            raise InputError(f"{path}: (parquet): unreadable: {e}") from None
        return _offline().Dataset(table)
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


def dataset_rows(path: str) -> list[tuple[int, dict]]:
    """(1-based row, row dict) of every row of the source."""
    return list(enumerate(load_dataset_source(path).to_list(), start=1))


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
