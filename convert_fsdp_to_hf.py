r"""Convert a sharded (torch.distributed.checkpoint) checkpoint back into a HF model folder.

    python convert_fsdp_to_hf.py --load_path runs/RUN_400_sharded --save_path out/RUN_400_hf \
        [--config_path models/tiny-llama]
    python convert_fsdp_to_hf.py --load_path runs/LORA_RUN_sharded --save_path out/adapter --adapter

A LoRA run's checkpoint holds merged weights (converted like any other) and its adapters:
--adapter writes those as a PEFT adapter folder instead (adapter_config.json +
adapter_model.safetensors + the tokenizer), for `PeftModel.from_pretrained(base, folder)` on the
model named in adapter_config.json's base_model_name_or_path.

Single process, no process group. Tensors are read a group at a time (up to --shard_size bytes)
and written to safetensors files of that size, so memory stays near one output shard; dtypes are
kept. Config, generation config and tokenizer come from --config_path (default: the checkpoint's
own copies). Tied embeddings are written once, as HF expects. The result loads with
`from_pretrained` and gives the same logits.
"""
import argparse
import json
import os
import shutil
import sys

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from al_lora import ADAPTER_DIR
from al_utils import InputError, atomic_dir, progress_bar, run_cli
from fsdp_utils import TOKENIZER_FILES, copy_meta, safe_reader


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load_path", required=True, help="sharded checkpoint folder (with .metadata)")
    p.add_argument("--save_path", required=True, help="output HF folder")
    p.add_argument("--config_path", default=None, help="HF folder with config + tokenizer (default: load_path)")
    p.add_argument("--shard_size", type=float, default=5.0, help="GB per safetensors file")
    p.add_argument("--adapter", action="store_true",
                   help="write a LoRA run's adapters as a PEFT adapter folder instead of the merged weights")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.load_path, ".metadata")):
        raise InputError(f"--load_path: {args.load_path}: not a sharded checkpoint (no .metadata)")
    if os.path.exists(args.save_path):
        raise InputError(f"--save_path: {args.save_path}: exists; remove it first")
    if args.adapter:
        write_adapter(args)
        return
    cfg_dir = args.config_path or args.load_path
    if not os.path.isfile(os.path.join(cfg_dir, "config.json")):
        raise InputError(f"--config_path: {cfg_dir}: no config.json (pass --config_path)")
    with open(os.path.join(cfg_dir, "config.json")) as f:
        tied = json.load(f).get("tie_word_embeddings", False)
    try:  # a crafted .metadata is refused before anything in it runs
        meta = safe_reader(args.load_path).read_metadata()
    except InputError as e:
        raise InputError(f"--load_path: {e}") from None
    keys = [k for k, m in meta.state_dict_metadata.items()
            if k.startswith("model.") and isinstance(m, TensorStorageMetadata)]
    if tied:  # HF keeps one copy of a tied embedding
        keys = [k for k in keys if k != "model.lm_head.weight"]
    groups, cur, size = [], [], 0
    limit = args.shard_size * 1e9
    for k in keys:
        m = meta.state_dict_metadata[k]
        nbytes = torch.Size(m.size).numel() * m.properties.dtype.itemsize
        if cur and size + nbytes > limit:
            groups.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += nbytes
    groups.append(cur)
    with atomic_dir(args.save_path) as tmp:
        index, bar = {}, progress_bar(total=len(keys), desc="tensors")
        for g, group in enumerate(groups):
            m = meta.state_dict_metadata
            sd = {k: torch.empty(m[k].size, dtype=m[k].properties.dtype) for k in group}
            dcp.load(sd, storage_reader=safe_reader(args.load_path),  # (metadata checked above)
                     planner=DefaultLoadPlanner(allow_partial_load=True), no_dist=True)
            name = "model.safetensors" if len(groups) == 1 else f"model-{g + 1:05d}-of-{len(groups):05d}.safetensors"
            out = {k.removeprefix("model."): t for k, t in sd.items()}
            save_file(out, os.path.join(tmp, name), metadata={"format": "pt"})
            index.update({k: name for k in out})
            bar.update(len(group))
            del sd, out
        bar.close()
        if len(groups) > 1:
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": index}, f, indent=2)
        copy_meta(cfg_dir, tmp)
        copy_meta(args.load_path, tmp, ("al_checkpoint.json",))  # how it was trained (eval's prompt template)
    print(f"{len(keys)} tensors in {len(groups)} file(s) -> {args.save_path}", file=sys.stderr)


def write_adapter(args: argparse.Namespace) -> None:
    src = os.path.join(args.load_path, ADAPTER_DIR)
    if not os.path.isfile(os.path.join(src, "adapter_config.json")):
        raise InputError(f"--adapter: {args.load_path}: not a LoRA run's checkpoint (no {ADAPTER_DIR}/"
                         "adapter_config.json); without --adapter the merged weights are converted")
    with atomic_dir(args.save_path) as tmp:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        copy_meta(args.config_path or args.load_path, tmp, TOKENIZER_FILES)  # no config.json: not a model folder
    print(f"PEFT adapter -> {args.save_path}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
