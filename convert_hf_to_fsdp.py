"""Convert a HF model folder into a sharded (torch.distributed.checkpoint) checkpoint.

    python convert_hf_to_fsdp.py --load_path models/tiny-llama --save_path models/tiny-llama_sharded

Single process, no process group. Each safetensors file is read and written as its own part, so
peak memory stays near the largest input file, and one .metadata indexes all parts. Tensors keep
their dtype; config, generation config and
tokenizer files are copied beside the shards, so the output is a complete checkpoint that every
script accepts (--init_checkpoint_path, --resume_checkpoint_path, eval's --sharded_model) and that
N ranks load each reading only their own shards. No vocabulary resize: padding uses the
tokenizer's pad, unk or eos token.
"""
import argparse
import dataclasses
import glob
import json
import os
import pickle
import sys

import torch.distributed.checkpoint as dcp
from safetensors import safe_open

from al_utils import InputError, atomic_dir, progress_bar, run_cli
from fsdp_utils import check_model_dir, copy_meta, safe_reader


def merge_parts(root: str, parts: list[str]) -> None:
    """Write one .metadata for the part checkpoints under root, pointing into their files."""
    merged = None
    for part in parts:
        md = safe_reader(os.path.join(root, part)).read_metadata()
        storage = {i: dataclasses.replace(s, relative_path=f"{part}/{s.relative_path}")
                   for i, s in md.storage_data.items()}
        if merged is None:
            merged, merged.storage_data = md, storage
            merged.planner_data = dict(md.planner_data or {})
        else:
            merged.state_dict_metadata.update(md.state_dict_metadata)
            merged.storage_data.update(storage)
            merged.planner_data.update(md.planner_data or {})
        os.remove(os.path.join(root, part, ".metadata"))  # a part alone is not a checkpoint
    with open(os.path.join(root, ".metadata"), "wb") as f:
        pickle.dump(merged, f)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load_path", required=True, help="HF folder (config.json + *.safetensors)")
    p.add_argument("--save_path", required=True, help="output sharded checkpoint folder")
    args = p.parse_args(argv)
    check_model_dir(args.load_path, "--load_path")
    if os.path.exists(args.save_path):
        raise InputError(f"--save_path: {args.save_path}: exists; remove it first")
    with open(os.path.join(args.load_path, "config.json")) as f:
        tied = json.load(f).get("tie_word_embeddings", False)
    files = sorted(glob.glob(os.path.join(args.load_path, "*.safetensors")))
    parts, n_tensors, n_params = [], 0, 0
    with atomic_dir(args.save_path) as tmp:
        # one safetensors file at a time: peak memory stays near the largest input file
        for g, path in enumerate(files):
            with safe_open(path, framework="pt") as fh:
                sd = {k: fh.get_tensor(k) for k in progress_bar(list(fh.keys()), desc=os.path.basename(path))}
            if tied and "model.embed_tokens.weight" in sd:  # HF stores a tied head once; the model has both keys
                sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
            parts.append(f"part{g:05d}")
            dcp.save({"model": sd}, checkpoint_id=os.path.join(tmp, parts[-1]), no_dist=True)
            n_tensors += len(sd)
            n_params += sum(t.numel() for k, t in sd.items() if not (tied and k == "lm_head.weight"))
            del sd
        merge_parts(tmp, parts)
        copy_meta(args.load_path, tmp)
    print(f"{n_tensors} tensors, {n_params / 1e6:.2f}M parameters -> {args.save_path}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
