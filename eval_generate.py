r"""Generate answers for an instruction set (AlpacaEval by default) in alpaca_eval's format, plus
offline metrics that need no API judge (reference-answer NLL, ROUGE-L, lengths, and with
--heldout_run the answer loss on an AL run's held-out pool slice).

    python eval_generate.py --sharded_model runs/RUN_400_sharded --file_path alpaca_eval \
        --save_file_name out/RUN_400.json [--metrics] [--greedy] [--debug]
    torchrun --nproc_per_node=N eval_generate.py ...   # data-parallel, output still in input order

Output: a JSON array of {instruction, output, generator, dataset}, one row per instruction in input
order (what `alpaca_eval --model_outputs` reads). With --metrics, <save_file_name stem>.metrics.json
holds the mean NLL the model assigns to the reference answers, ROUGE-L against them (rouge-score
package) and output length statistics.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

import fsdp_utils
from al_datasets import file_sha256, load_records
from al_prompts import check_template, encode_records, pad_id_of, prompt_ids, truncate_prompt
from al_scoring import ScoreConfig, answer_nll, generate, stop_ids
from al_utils import (
    InputError,
    add_common_args,
    atomic_write_json,
    check_common_args,
    parse_flags,
    read_state,
    run_cli,
    run_paths,
)

ALPACA_EVAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "alpaca_eval_text_davinci_003.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--sharded_model", default=None, help="checkpoint to evaluate (sharded or HF folder)")
    g.add_argument("--model_path", default=None, help="the same, for a HF folder (either flag works)")
    g.add_argument("--file_path", default="alpaca_eval",
                   help="'alpaca_eval' = the embedded 805 AlpacaEval instructions, or a pool (any format "
                        "acquisition_AL.py reads)")
    g.add_argument("--save_file_name", required=True, help="output JSON (parent folders are created)")
    g.add_argument("--generator", default=None, help="name in the output's generator field (default: model dir)")
    g.add_argument("--limit", type=int, default=None, help="only the first N instructions")
    g.add_argument("--debug", action="store_true", help="only the first 4 instructions")
    g = p.add_argument_group("generation")
    g.add_argument("--batch_size", type=int, default=4, help="prompts per generation batch (per rank)")
    g.add_argument("--model_context_length", type=int, default=2048,
                   help="prompt + answer tokens at most: longer prompts keep BOS and their last tokens")
    g.add_argument("--max_new_tokens", type=int, default=None,
                   help="cap on generated tokens (default and ceiling: context length minus the row's prompt)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top_p", type=float, default=1.0)
    g.add_argument("--greedy", action="store_true",
                   help="greedy decoding instead of sampling (output independent of batch size and ranks)")
    g = p.add_argument_group("metrics")
    g.add_argument("--metrics", action="store_true", help="also write offline metrics")
    g.add_argument("--heldout_run", default=None,
                   help="with --metrics: an AL run directory whose held-out slice (state.json) to score")
    g.add_argument("--heldout_pool", default="data/dolly-1.5k.jsonl", help="the pool that run drew it from")
    add_common_args(p, seed_help="sampling seed (each batch seeded from it)", template_default=None)
    p.add_argument("--force", action="store_true",
                   help="evaluate with a --prompt_template other than the one the checkpoint was trained with")
    args = parse_flags(p, argv)
    check_common_args(args)
    for flag, lo in (("batch_size", 1), ("model_context_length", 2), ("max_new_tokens", 1), ("limit", 1)):
        if getattr(args, flag) is not None and getattr(args, flag) < lo:
            raise InputError(f"--{flag}: must be >= {lo}")
    if args.deterministic and not args.greedy and args.top_p < 1 and torch.cuda.is_available():
        raise InputError("--deterministic: top-p sampling (--top_p < 1) needs torch.cumsum, which has no "
                         "deterministic CUDA kernel; add --greedy or --top_p 1, or drop --deterministic")
    return args


def template_of(model_dir: str, given: str | None, force: bool) -> str:
    """The prompt template to evaluate with: the one the checkpoint was trained with (recorded beside
    its weights), unless another is given; a different one given is refused unless --force (a model
    trained on chat prompts answers alpaca prompts worse, and nothing would say why)."""
    trained = fsdp_utils.checkpoint_meta(model_dir).get("prompt_template")
    if given is None:
        return trained or "alpaca"
    if trained and given != trained and not force:
        raise InputError(f"--prompt_template: {model_dir} was trained with --prompt_template {trained}, not {given}; "
                         "drop the flag to use its own, or add --force")
    return given


def generate_answers(model, tok, prompts: list[list[int]], args: argparse.Namespace,
                     progress: bool) -> list[list[int]]:
    """Each prompt's answer ids (the stop id it ended on dropped): row i gets at most context - len(prompt i) new
    tokens (and at most --max_new_tokens), whatever the batch it lands in."""
    room = [args.model_context_length - len(p) for p in prompts]
    caps = room if args.max_new_tokens is None else [min(r, args.max_new_tokens) for r in room]
    sampling = None if args.greedy else {"temperature": args.temperature, "top_p": args.top_p}
    stop = stop_ids(model, tok)
    gens = generate(model, prompts, caps, pad_id_of(tok), stop, args.batch_size, progress, sampling=sampling,
                    seed=args.seed)
    return [g[:-1] if g and g[-1] in stop else g for g, _ in gens]


def answer_nll_of(model, tok, records: list[dict], context: int, progress: bool,
                  template: str = "alpaca") -> tuple[float, float]:
    enc = encode_records(tok, records, template)
    return answer_nll(model, [enc[r["id"]] for r in records], pad_id_of(tok), context, ScoreConfig(progress=progress),
                      fsdp_utils.my_slice(len(records)), fsdp_utils.gather_lists)


def heldout_records(run: str, pool: str, template: str) -> list[dict]:
    """The held-out slice an AL run drew (ids in its state.json), from the pool it drew them from."""
    state = read_state(run)
    if state is None:
        raise InputError(f"--heldout_run: {run_paths(run).state}: no run state here")
    if file_sha256(pool) != state["pool_sha256"]:
        raise InputError(f"--heldout_pool: {pool}: not the pool run {run} used (hash differs)")
    by_id = {r["id"]: r for r in load_records(pool, template=template)}
    return [by_id[i] for i in state["heldout_ids"]]


def metrics(model, tok, records: list[dict], outputs: list[str], gen_ids: list[list[int]],
            context: int, progress: bool, template: str = "alpaca") -> dict:
    """Reference NLL (token-weighted and per-example mean), ROUGE-L F1 vs the references, lengths."""
    from rouge_score import rouge_scorer

    res: dict = {"examples": len(records)}
    lens = np.array([len(g) for g in gen_ids])
    res["output_tokens"] = {"mean": float(lens.mean()), "median": float(np.median(lens)), "max": int(lens.max())}
    res["output_words"] = float(np.mean([len(o.split()) for o in outputs]))
    with_ref = [i for i, r in enumerate(records) if r["output"].strip()]
    if not with_ref:
        return res
    res["reference_nll"], res["reference_nll_per_example"] = answer_nll_of(model, tok, [records[i] for i in with_ref],
                                                                             context, progress, template)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    res["rougeL_f1"] = float(np.mean([scorer.score(records[i]["output"], outputs[i])["rougeL"].fmeasure
                                      for i in with_ref]))
    res["reference_examples"] = len(with_ref)
    return res


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model_dir = args.sharded_model or args.model_path
    if not model_dir:
        raise InputError("--sharded_model: give the checkpoint to evaluate (or --model_path)")
    fsdp_utils.check_model_dir(model_dir, "--sharded_model" if args.sharded_model else "--model_path")
    args.prompt_template = template_of(model_dir, args.prompt_template, args.force)
    path = ALPACA_EVAL if args.file_path == "alpaca_eval" else args.file_path
    records = load_records(path, template=args.prompt_template)
    n = 4 if args.debug else args.limit
    records = records[:n] if n else records
    heldout = heldout_records(args.heldout_run, args.heldout_pool, args.prompt_template) if args.heldout_run else None
    device = fsdp_utils.setup(args.threads, args.deterministic)
    progress = not args.no_progress and fsdp_utils.is_main()
    t0 = time.time()
    tok = fsdp_utils.load_tokenizer(args.model_config_path or model_dir)
    check_template(tok, args.prompt_template, args.model_config_path or model_dir)
    model = fsdp_utils.load_model(model_dir, device, args.model_config_path)
    # prompts keep room for at least one new token
    prompts = [truncate_prompt(p, args.model_context_length - 1)
               for p in prompt_ids(tok, records, args.prompt_template)]
    sl = fsdp_utils.my_slice(len(prompts))
    with fsdp_utils.full_params(model):
        gen = fsdp_utils.gather_lists(generate_answers(model, tok, prompts[sl], args, progress))
        texts = [tok.decode(g, skip_special_tokens=True).strip() for g in gen]
        generator = args.generator or os.path.basename(model_dir.rstrip("/"))
        rows = [{"instruction": r["instruction"], "output": t, "generator": generator,
                 "dataset": r.get("dataset", os.path.basename(path))} for r, t in zip(records, texts)]
        m = metrics(model, tok, records, texts, gen, args.model_context_length, progress, args.prompt_template) \
            if args.metrics else None
        if m is not None and heldout is not None:
            m["heldout_loss"] = answer_nll_of(model, tok, heldout, args.model_context_length, progress,
                                              args.prompt_template)[0]
            m["heldout_examples"] = len(heldout)
    if fsdp_utils.is_main():
        atomic_write_json(args.save_file_name, rows)
        if m is not None:
            m["seconds"] = time.time() - t0
            atomic_write_json(os.path.splitext(args.save_file_name)[0] + ".metrics.json", m)
        print(f"{len(rows)} outputs -> {args.save_file_name} ({time.time() - t0:.1f}s)", file=sys.stderr)
    fsdp_utils.teardown()


if __name__ == "__main__":
    run_cli(main)
