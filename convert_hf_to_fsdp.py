"""Convert a HF model folder into a sharded (torch.distributed.checkpoint) checkpoint.

    python convert_hf_to_fsdp.py --load_path models/tiny-llama --save_path models/tiny-llama_sharded

Single process, no process group. Tensors keep their dtype; config, generation config and
tokenizer files are copied beside the shards, so the output is a complete checkpoint that every
script accepts (--init_checkpoint_path, --resume_checkpoint_path, eval's --sharded_model) and that
N ranks load each reading only their own shards. No vocabulary resize: padding uses the
tokenizer's pad, unk or eos token.
"""
import argparse
import json
import os
import shutil
import sys

import torch.distributed.checkpoint as dcp

from al_utils import InputError, run_cli
from fsdp_utils import check_model_dir, read_safetensors

META_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "tokenizer.model", "special_tokens_map.json", "chat_template.jinja")


def copy_meta(src: str, dst: str) -> None:
    for name in META_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load_path", required=True, help="HF folder (config.json + *.safetensors)")
    p.add_argument("--save_path", required=True, help="output sharded checkpoint folder")
    args = p.parse_args(argv)
    check_model_dir(args.load_path, "--load_path")
    if os.path.exists(args.save_path):
        raise InputError(f"--save_path: {args.save_path}: exists; remove it first")
    sd = read_safetensors(args.load_path, progress=True)
    with open(os.path.join(args.load_path, "config.json")) as f:
        tied = json.load(f).get("tie_word_embeddings", False)
    if tied and "lm_head.weight" not in sd:  # HF stores a tied head once; the model's state dict has both
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    tmp = args.save_path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dcp.save({"model": sd}, checkpoint_id=tmp, no_dist=True)
    copy_meta(args.load_path, tmp)
    os.replace(tmp, args.save_path)
    n = sum(t.numel() for t in sd.values())
    print(f"{len(sd)} tensors, {n / 1e6:.2f}M parameters -> {args.save_path}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
