"""SmolLM2-135M: the GGUF -> plain HF step (CI, on a tiny model, no download) and, when the real model
is present (bash scripts/get_smollm2.sh), a quick scoring check on it."""
import json
import os

import pytest
import torch

import fsdp_utils
from al_datasets import load_records
from al_prompts import encode_records
from al_scoring import ScoreConfig
from al_strategies import Scoring, forward_ppl
from conftest import ROOT, prompt_text
from convert_gguf_to_hf import plain_copy, save_folder

SMOLLM2 = os.environ.get("AL_SMOLLM2", os.path.join(ROOT, "models", "SmolLM2-135M"))


def test_plain_copy_of_a_quantized_config(tiny_model, tmp_path):
    """What the converter does after transformers dequantises a GGUF: drop quantization_config,
    rebuild a plain model, same weights; the folder loads in the suite with identical logits."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    src = AutoModelForCausalLM.from_config(cfg).eval()
    src.config.quantization_config = {"quant_method": "gguf"}  # how a GGUF-loaded model looks
    tok = fsdp_utils.load_tokenizer(tiny_model)
    save_folder(plain_copy(src), tok, str(tmp_path / "plain"))
    saved = json.load(open(tmp_path / "plain" / "config.json"))
    assert "quantization_config" not in saved and saved["tie_word_embeddings"] is True
    assert not (tmp_path / "plain.tmp").exists()
    loaded = fsdp_utils.load_model(str(tmp_path / "plain"), torch.device("cpu"))
    x = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, src(input_ids=x).logits)


@pytest.mark.skipif(not os.path.isfile(os.path.join(SMOLLM2, "config.json")),
                    reason=f"SmolLM2-135M not at {SMOLLM2} (run bash scripts/get_smollm2.sh)")
def test_smollm2_scoring():
    tok = fsdp_utils.load_tokenizer(SMOLLM2)
    model = fsdp_utils.load_model(SMOLLM2, torch.device("cpu"))
    assert tok.pad_token_id == tok.eos_token_id  # pad = eos = <|im_end|>, masked anyway
    records = load_records(os.path.join(ROOT, "data", "dolly-1.5k.jsonl"))[:24]
    enc = encode_records(tok, records)
    assert all(e.answer[-1] == tok.eos_token_id for e in enc.values())
    ids = [r["id"] for r in records]
    cfg = ScoreConfig(token_budget=2048, max_length=4096, progress=False)
    batched = forward_ppl(Scoring(model, tok, enc, {r["id"]: r for r in records}, cfg, None), ids)
    # by hand: transformers' own loss of each prompt alone (mean NLL of every token after the first)
    for i, v in zip(ids, batched):
        x = torch.tensor([tok(prompt_text(records[i])).input_ids])
        with torch.no_grad():
            assert abs(model(input_ids=x, labels=x).loss.item() - v) < 1e-4
