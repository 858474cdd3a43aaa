"""Process setup, model loading/wrapping and checkpoint save/load.

Every script goes through these few functions, so sharding (FSDP2 `fully_shard` + DCP) plugs in
here without touching training or the AL loop. Checkpoint folders are HF folders
(config.json + *.safetensors + tokenizer); saves are atomic at the directory level.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

import torch

from al_utils import InputError


def setup(threads: int) -> torch.device:
    """Fix the thread count (results are bitwise reproducible for a given count) and pick the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("WORLD_SIZE: multi-process runs (torchrun) are not supported yet; run with plain python")
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def checkpoint_kind(path: str) -> str | None:
    """'hf' for a HF model folder, 'dcp' for a torch.distributed.checkpoint folder, else None."""
    if os.path.isfile(os.path.join(path, "config.json")) and glob.glob(os.path.join(path, "*.safetensors")):
        return "hf"
    if os.path.isfile(os.path.join(path, ".metadata")):
        return "dcp"
    return None


def check_model_dir(path: str, flag: str) -> None:
    """Fail early, naming the flag, when `path` is not a model folder."""
    kind = checkpoint_kind(path) if os.path.isdir(path) else None
    if kind is None:
        raise InputError(f"{flag}: {path}: not a model folder (expected config.json + *.safetensors)")
    if kind == "dcp":
        raise InputError(f"{flag}: {path}: sharded (DCP) checkpoints are not supported yet; pass a HF folder")


def _quiet_transformers() -> None:
    """Per-file 'Loading weights' bars and hub notices only clutter a loop that loads every round."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_model(path: str, device: torch.device) -> torch.nn.Module:
    """Load a HF causal LM folder in fp32 (fp32 master weights; bf16 compute comes from autocast)."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to(device)


def wrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The one place a model is prepared for training (sharding goes here). Single process: as is."""
    return model


def save_checkpoint(model: torch.nn.Module, tokenizer, path: str, meta: dict) -> None:
    """Save a HF folder atomically: write a temp sibling, then swap it in. A crash at any point
    leaves either the old or the new checkpoint, never a half-written one. `meta` goes to
    al_checkpoint.json (the AL loop records which round produced the weights)."""
    path = path.rstrip("/")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "al_checkpoint.json"), "w") as f:
        json.dump(meta, f, indent=2)
    old = None
    if os.path.exists(path):
        old = tmp + ".old"
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old)


def recover_checkpoint(path: str) -> None:
    """Undo a swap cut short by a crash: if the checkpoint is missing but its previous version
    was parked as *.old, put it back; drop leftover temp folders."""
    path = path.rstrip("/")
    parent, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    leftovers = sorted(glob.glob(os.path.join(parent, f".{base}.tmp-*")))
    olds = [p for p in leftovers if p.endswith(".old")]
    if not os.path.exists(path) and olds:
        os.replace(olds[-1], path)
    for p in leftovers:
        if os.path.exists(p):
            shutil.rmtree(p)


def checkpoint_meta(path: str) -> dict:
    f = os.path.join(path, "al_checkpoint.json")
    if not os.path.isfile(f):
        return {}
    with open(f) as fh:
        return json.load(fh)
