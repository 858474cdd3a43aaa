"""Build the embedded default model: a small Llama as a normal Hugging Face folder.

    python build_default_model.py --save_path models/tiny-llama

A SentencePiece BPE tokenizer is trained on the pool's text (templated the way every script
formats it), a LlamaConfig is sized by flags, and the weights are randomly initialised, then
optionally warmed up for a few steps of plain language modelling on the pool's *unlabelled*
text (instructions and contexts, never the answers), so that perplexity means something.
Downstream scripts treat the folder like any local Llama checkpoint. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time

import torch

from al_datasets import load_records
from al_prompts import ANSWER_SEP, format_prompt
from al_utils import InputError, atomic_write_json, progress_bar, run_cli


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: str):
    """SentencePiece BPE with byte fallback; newlines kept (identity normalisation) so the
    template's line structure survives a round trip. Returned as a HF tokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        max_sentence_length=1 << 16, num_threads=2, minloglevel=2)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
            f.write(buf.getvalue())
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False}, f)
        tok = AutoTokenizer.from_pretrained(tmp)
        tok.save_pretrained(out_dir)
    return tok


def warm_up(model, tok, texts: list[str], steps: int, seq_len: int, batch: int, lr: float, seed: int) -> float:
    """A few steps of next-token prediction on packed unlabelled text."""
    ids = [t for text in texts for t in tok(text).input_ids + [tok.eos_token_id]]
    stream = torch.tensor(ids)
    n = (len(stream) - 1) // seq_len
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in (bar := progress_bar(range(steps), desc="warm-up")):
        starts = torch.randint(0, n, (batch,), generator=g) * seq_len
        x = torch.stack([stream[s: s + seq_len] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / 10)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return loss.item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file_path", default="data/dolly-1.5k.jsonl", help="pool whose text trains the tokenizer")
    p.add_argument("--save_path", default="models/tiny-llama", help="output HF folder")
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--intermediate_size", type=int, default=688)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--num_attention_heads", type=int, default=4)
    p.add_argument("--num_key_value_heads", type=int, default=4)
    p.add_argument("--max_position_embeddings", type=int, default=2048)
    p.add_argument("--warmup_steps", type=int, default=150,
                   help="LM steps on the pool's unlabelled text (0 = random weights)")
    p.add_argument("--warmup_seq_len", type=int, default=128)
    p.add_argument("--warmup_batch", type=int, default=8)
    p.add_argument("--warmup_lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args(argv)
    if os.path.exists(os.path.join(args.save_path, "config.json")):
        raise InputError(f"--save_path: {args.save_path}: already holds a model; remove it to rebuild")
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    records = load_records(args.file_path)
    prompts = [format_prompt(r["instruction"], r["input"]) for r in records]
    # the tokenizer sees answers too (it is a vocabulary, not a model); the warm-up does not
    tok_texts = [p + ANSWER_SEP + r["output"] for p, r in zip(prompts, records)]
    parent = os.path.dirname(os.path.abspath(args.save_path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".build-")  # renamed into place when complete
    try:
        tok = train_tokenizer(tok_texts, args.vocab_size, tmp)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
            num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
            num_key_value_heads=args.num_key_value_heads, max_position_embeddings=args.max_position_embeddings,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
        torch.manual_seed(args.seed)
        model = LlamaForCausalLM(config)
        n_params = sum(p.numel() for p in model.parameters())
        loss = warm_up(model, tok, prompts, args.warmup_steps, args.warmup_seq_len, args.warmup_batch,
                       args.warmup_lr, args.seed) if args.warmup_steps else float("nan")
        model.save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(os.path.join(tmp, "build_info.json"),
                          {**vars(args), "parameters": n_params, "warmup_final_loss": loss})
        os.replace(tmp, args.save_path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    print(f"built {n_params / 1e6:.2f}M-parameter Llama (vocab {len(tok)}, warm-up loss {loss:.3f}) "
          f"in {time.time() - t0:.1f}s -> {args.save_path}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
