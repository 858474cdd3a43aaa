r"""Fine-tune a causal LM on a labelled instruction set (loss on the answers only: with
--prompt_template chat, every assistant turn of a multi-turn conversation).

    python train_AL.py --init_checkpoint_path models/tiny-llama --data_path labelled.jsonl \
        --save_path runs/sft_sharded --epochs 3

The training itself is al_training.py (acquisition_AL.py calls it once per round).
"""
from __future__ import annotations

import argparse
import sys

import torch

import al_lora
import fsdp_utils
from al_datasets import load_records
from al_prompts import check_template, encode_records, pad_id_of
from al_training import add_train_args, save_trained, summary, train, train_config
from al_utils import add_common_args, add_save_opt_args, check_common_args, parse_flags, run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--init_checkpoint_path", required=True, help="model to start from (HF folder or sharded)")
    g.add_argument("--data_path", required=True, help="labelled set with instruction/input/output (any pool format)")
    g.add_argument("--save_path", required=True, help="where the trained sharded checkpoint goes")
    runtime = add_common_args(p, seed_help="seed of the epoch order")
    add_save_opt_args(runtime, default=True)
    add_train_args(p, runtime)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parse_flags(parser(), argv)
    check_common_args(args)
    cfg = train_config(args, args.seed, not args.no_progress)
    lora = al_lora.lora_spec(args, args.seed)
    fsdp_utils.check_model_dir(args.init_checkpoint_path, "--init_checkpoint_path")
    al_lora.check_targets(lora, args.model_config_path or args.init_checkpoint_path)
    records = load_records(args.data_path, require_output="training needs every answer",
                           template=args.prompt_template)
    device = fsdp_utils.setup(args.threads, args.deterministic)
    torch.manual_seed(args.seed)
    tok = fsdp_utils.load_tokenizer(args.model_config_path or args.init_checkpoint_path)
    check_template(tok, args.prompt_template, args.model_config_path or args.init_checkpoint_path)
    model = fsdp_utils.load_model(args.init_checkpoint_path, device, args.model_config_path,
                                  args.activation_checkpointing, lora)
    enc = encode_records(tok, records, args.prompt_template)
    stats, opt = train(model, [enc[r["id"]] for r in records], cfg, pad_id_of(tok))
    meta = {"trained_on": args.data_path, "train": summary(stats), "prompt_template": args.prompt_template}
    save_trained(model, tok, args.save_path, meta, opt if args.save_opt else None, lora, args.init_checkpoint_path)
    if fsdp_utils.is_main():
        print(f"trained {stats['examples']} examples, {stats['steps']} steps, final-epoch loss "
              f"{stats['train_loss']:.4f}, {stats['truncated']} truncated, {stats['seconds']:.1f}s -> {args.save_path}",
              file=sys.stderr)
    fsdp_utils.teardown()


if __name__ == "__main__":
    run_cli(main)
