r"""Active-learning loop for one data budget: score the unlabelled pool with the current model,
pick a stratified batch, label it (oracle: the pool's own answers; or real annotators with
--annotate_out/--labels), fine-tune, repeat.

    python acquisition_AL.py --file_path data/dolly-1.5k.jsonl --init_checkpoint_path models/tiny-llama \
        --al_data_fraction 200 --num_acquisition_samples 50 --stratification_strategy bucket \
        --num_k 5 --pick_samples_from top --model_path runs/RUN_200 --seed 42

With a target set (examples of the task you want more of), the measured choice is the model-free
bm25 (README "Which strategy?"):
    ... --target_file target.jsonl --sampling_strategy bm25 --model_path runs/RUN_200

With annotators (the pool needs no answers): each call exports the batch that needs labels and
stops ("waiting for labels", exit 0); the next call imports the filled file and goes on with the
settings the run recorded:
    ... --model_path runs/ann --annotate_out batch.csv            # exports the seed set
    python acquisition_AL.py --model_path runs/ann --labels batch_filled.csv   # train, export next
Settings can come from a file: --config FILE.yaml (--print_config writes one; configs/ has examples).

Writes the run directory <model_path>/ (state.json, selected.json, rounds/<k>/...) after every
round and the trained model to <model_path>_sharded. Chain budgets like the original README:
    ... --al_data_fraction 400 --model_path runs/RUN_400 --resume --resume_checkpoint_path runs/RUN_200_sharded
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import os
import sys

import al_lora
import fsdp_utils
from al_annotation import (
    AnnotationConfig,
    annotation_mode,
    load_labels,
    pending_labels,
    save_labels,
)
from al_datasets import Pool, file_sha256, load_pool, load_records
from al_loop import RNG_SHUFFLE, Configs, Run, RunSpec, RunState, rebuild_checkpoint, run_rounds
from al_lora import LoraSpec
from al_prompts import check_template, encode_records, lazy_encodings, pad_id_of
from al_similarity import load_target, target_keys
from al_strategies import (
    add_score_args,
    add_selection_args,
    check_flag_use,
    reads_answers,
    score_config,
    selection_config,
    strategy,
)
from al_training import add_train_args, train_config
from al_utils import (
    PER_INVOCATION,
    InputError,
    RunPaths,
    add_common_args,
    add_config_args,
    add_save_opt_args,
    answer_words,
    before_values,
    check_common_args,
    check_same,
    check_world,
    config_from,
    effective_config,
    parse_flags,
    prepare_run_dir,
    provenance,
    read_jsonl,
    read_state,
    recorded_spec,
    round_rng,
    run_cli,
    run_of_checkpoint,
    run_paths,
    run_status,
    runtime_flags,
)

BUDGET_UNITS = ("examples", "answer_words")
ANNOTATION = "annotation (real annotators instead of the pool's answers)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--file_path", default="data/dolly-1.5k.jsonl",
                   help="pool: .json/.jsonl/.csv/.parquet, a save_to_disk folder [DIR:SPLIT] or hf:NAME[:SPLIT] "
                        "from the local Hugging Face cache")
    g.add_argument("--init_checkpoint_path", required=True, help="base model (HF folder or sharded)")
    g.add_argument("--heldout_size", type=int, default=0,
                   help="examples drawn (seeded) before the seed set, never selected, for held-out loss")
    g.add_argument("--num_acquisition_samples", type=int, default=1000,
                   help="examples labelled per round (answer words per round with --budget_unit answer_words)")
    g.add_argument("--budget_unit", default="examples", choices=BUDGET_UNITS,
                   help="what --al_data_fraction and --num_acquisition_samples count: examples, or the words of "
                        "their answers (annotators are paid by the answer): a batch then takes the strategy's picks "
                        "in selection order until the next would exceed its words")
    g.add_argument("--test_file", default=None,
                   help="examples (any pool format, with answers) whose answer NLL under each round's model goes "
                        "into metrics.json as test_loss, e.g. the target task's test set; pool records with the "
                        "same instruction and input are never selected")
    g.add_argument("--warm_start", action="store_true",
                   help="train each round from the previous round's weights (default: from the base)")
    rt = add_common_args(p)
    rt.add_argument("--model_path", required=True,
                    help="run directory; the trained model goes to <model_path>_sharded")
    rt.add_argument("--al_data_fraction", type=float, required=True,
                    help="budget: > 1 is a number of examples, <= 1 a fraction of the pool")
    rt.add_argument("--resume", action="store_true", help="continue this run, or chain from --resume_checkpoint_path")
    rt.add_argument("--resume_checkpoint_path", default=None,
                    help="previous budget's checkpoint X_sharded: its run X's labelled set and rounds carry over")
    rt.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    rt.add_argument("--stop_after_round", type=int, default=None, help="stop after this round (staged runs)")
    rt.add_argument("--status", action="store_true",
                    help="print where the run at --model_path stands (rounds, labelled / budget, what waits for "
                         "labels and where, the last round's losses) and exit; changes nothing, needs no other flag")
    rt.add_argument("--save_file_name", default=None, help="also write the selected set here (JSON array)")
    rt.add_argument("--plot_ppl_hist", action="store_true", help="save a histogram of each round's scores")
    add_save_opt_args(rt, default=False)
    add_config_args(p.add_argument_group(ANNOTATION), AnnotationConfig)
    add_selection_args(p)
    add_score_args(p)
    add_train_args(p, rt)
    return p


@functools.cache
def defaults() -> argparse.ArgumentParser:
    """The parser as declared, built once and never parsed with (parse_flags sets a parser's
    defaults from a config file or a run's spec): the real defaults and the flag groups."""
    return parser()


def before_flag(name: str):
    """What a run made before flag `name` existed did: its declared `before`, else its default."""
    return before_values(defaults()).get(name, defaults().get_default(name))


def with_before_flags(argv: list[str], cfg: dict) -> dict:
    """recorded_spec, plus the declared `before` value of each flag the run's strategy reads and its
    spec lacks (a run made before that flag): such a run resumes doing what it did."""
    spec = recorded_spec(argv, cfg)
    if spec:
        reads = strategy(spec.get("sampling_strategy", defaults().get_default("sampling_strategy"))).flags
        spec.update({k: v for k, v in before_values(defaults()).items() if k not in spec and k in reads})
    return spec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_flags(parser(), argv, with_before_flags)
    check_flag_use(args, defaults())  # against the real defaults, not the file's or the run's
    args.resume = args.resume or bool(args.labels)
    return args


# ----------------------------------------------------------------------------------------------
# checks before any work


def check_numbers(args: argparse.Namespace) -> Configs:
    check_common_args(args)
    for flag, lo in (("num_acquisition_samples", 1), ("heldout_size", 0)):
        if getattr(args, flag) < lo:
            raise InputError(f"--{flag}: must be >= {lo}")
    if args.al_data_fraction <= 0:
        raise InputError("--al_data_fraction: must be > 0")
    progress = not args.no_progress and fsdp_utils.is_main()
    tcfg, lora = train_config(args, args.seed, progress), al_lora.lora_spec(args, args.seed)
    score = score_config(args, progress)
    if lora is not None and score.grad_projection == "kronecker":
        raise InputError("--grad_projection kronecker: under --lora_r less takes the adapters' gradients, which are "
                         "CountSketched; leave the flag out")
    return Configs(score, selection_config(args), tcfg, lora, config_from(AnnotationConfig, args))


def pool_and_budget(args: argparse.Namespace, annotate: bool, prior: dict | None) -> tuple[Pool, int]:
    """The pool's records and the budget in examples."""
    needs_answers = reads_answers(args.sampling_strategy, args.grad_answers)
    if annotate and args.grad_answers == "pool":
        why = "--grad_answers pool takes gradients on the pool's answers; the default takes the model's own"
    elif annotate and needs_answers:
        why = f"--sampling_strategy {args.sampling_strategy} scores answers; pick a prompt-only strategy"
    elif annotate and args.heldout_size:
        why = "--heldout_size measures answer loss on the pool's own answers"
    elif annotate:
        why = ""
    elif needs_answers:
        why = f"--sampling_strategy {args.sampling_strategy} scores answers, and oracle labelling needs them"
    else:
        why = "oracle labelling takes answers from the pool; use --annotate_out for an unlabelled pool"
    words = args.budget_unit == "answer_words"
    if words and annotate:
        raise InputError("--budget_unit: answer_words counts answers before they are labelled; with annotators "
                         "they are not known then (use examples)")
    records = load_pool(args.file_path, require_output=why, template=args.prompt_template)
    n = sum(map(answer_words, records.texts("output"))) if words else len(records)
    unit = "answer words" if words else "examples"
    budget = int(args.al_data_fraction) if args.al_data_fraction > 1 else int(args.al_data_fraction * n)
    if budget < 1:
        raise InputError(f"--al_data_fraction: {args.al_data_fraction} of {n} {unit} is less than one")
    if not words and budget + args.heldout_size > n:
        raise InputError(f"--al_data_fraction: budget {budget} + held-out {args.heldout_size} exceeds the pool "
                         f"({n} records in {args.file_path})")
    if budget < args.num_acquisition_samples:
        raise InputError(f"--al_data_fraction: budget {budget} is below the seed set "
                         f"(--num_acquisition_samples {args.num_acquisition_samples})")
    last = prior["round_log"][-1] if args.resume and prior and prior["round_log"] else {}
    done = last.get("answer_words" if words else "labelled", 0)
    if budget < done:
        raise InputError(f"--al_data_fraction: budget {budget} is below the {done} {unit} "
                         f"{args.model_path} has already labelled")
    return records, budget


def check_models(args: argparse.Namespace, lora: LoraSpec | None):
    """Checkpoints complete and fitting the run's config; returns the run's tokenizer."""
    fsdp_utils.check_model_dir(args.init_checkpoint_path, "--init_checkpoint_path")
    if args.model_config_path and not os.path.isfile(os.path.join(args.model_config_path, "config.json")):
        raise InputError(f"--model_config_path: {args.model_config_path}: no config.json there")
    fsdp_utils.check_weights(args.init_checkpoint_path, "--init_checkpoint_path", args.model_config_path)
    run_cfg = args.model_config_path or args.init_checkpoint_path  # every checkpoint must fit this config
    al_lora.check_targets(lora, run_cfg)
    if args.resume_checkpoint_path:
        fsdp_utils.check_model_dir(args.resume_checkpoint_path, "--resume_checkpoint_path")
        prev = run_of_checkpoint(args.resume_checkpoint_path)
        if not os.path.isfile(prev.state):
            raise InputError(f"--resume_checkpoint_path: {prev.state}: no run directory beside the checkpoint")
        fsdp_utils.check_weights(args.resume_checkpoint_path, "--resume_checkpoint_path", run_cfg)
    tok = fsdp_utils.load_tokenizer(run_cfg)
    pad_id_of(tok)
    check_template(tok, args.prompt_template, run_cfg)
    if tok.eos_token_id is None:
        raise InputError(f"{run_cfg}: tokenizer: has no eos token (answers must end with one)")
    st = strategy(args.sampling_strategy)
    if st.check is not None:  # e.g. self_ask needs a single-token "no"
        st.check(tok)
    return tok


def run_flags(args: argparse.Namespace, pool_hash: str, annotate: bool) -> dict:
    """What a run is: every flag outside the run-control groups; the pool by content. --save_opt
    too where the strategy reads what it saves (less: the Adam moments)."""
    skip = runtime_flags(defaults(), ANNOTATION)
    flags = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
    if strategy(args.sampling_strategy).grads:
        flags["save_opt"] = args.save_opt
    flags["file_path"] = pool_hash  # the pool's content matters, not where it lives
    flags["labels_from"] = "annotators" if annotate else "pool"
    for f in ("target_file", "test_file"):  # by content, like the pool
        if getattr(args, f):
            flags[f] = file_sha256(getattr(args, f))
    return flags


def check_run_dir(args: argparse.Namespace, paths: RunPaths, prior: dict | None, flags: dict) -> None:
    """Read-only checks of the run directory, whose state is `prior` (every rank, before any work)."""
    if prior is not None:
        if not args.resume and not args.overwrite:
            raise InputError(f"--model_path: {paths.run}: run exists; pass --resume to continue or --overwrite")
        if args.resume:
            check_same(prior, flags, paths.state, before_flag)
            check_world(prior, paths.state, fsdp_utils.world())
    elif args.resume and args.resume_checkpoint_path:
        prev = run_of_checkpoint(args.resume_checkpoint_path)
        check_same(read_state(prev.run), flags, prev.state, before_flag)
        check_world(read_state(prev.run), prev.state, fsdp_utils.world())


# ----------------------------------------------------------------------------------------------
# the run


def take_lock(paths: RunPaths):
    """One lock per run, held by rank 0 until the process exits; every rank learns the outcome."""
    lock = None
    if fsdp_utils.is_main():
        os.makedirs(paths.run, exist_ok=True)
        lock = open(paths.lock, "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock = None
    if not fsdp_utils.broadcast(lock is not None if fsdp_utils.is_main() else None):
        raise InputError(f"--model_path: {paths.run}: another run holds its lock ({paths.lock})")
    return lock


def open_run(args: argparse.Namespace) -> Run:
    """Check everything, take the lock, prepare the run directory and rebuild the run's state."""
    paths = run_paths(args.model_path)
    prior = read_state(paths.run)
    annotate = annotation_mode(args.annotate_out, args.labels, args.resume, prior)
    cfg = check_numbers(args)
    records, budget = pool_and_budget(args, annotate, prior)
    tok = check_models(args, cfg.lora)
    grads = f"--sampling_strategy {args.sampling_strategy} takes the target's gradients on its answers"
    target = load_target(args.target_file, args.target_group_field, tok, grads if strategy(args.sampling_strategy).grads
                         else "", args.prompt_template) if args.target_file else None
    test = load_records(args.test_file, require_output="--test_file measures the loss on its answers",
                        template=args.prompt_template) if args.test_file else []
    pool_hash = file_sha256(args.file_path)
    flags = run_flags(args, pool_hash, annotate)
    check_run_dir(args, paths, prior, flags)
    labels = load_labels(paths.run) if annotate and args.resume else {}
    new_labels, summary = pending_labels(args.labels, paths, prior, records, labels)
    device = fsdp_utils.setup(args.threads, args.deterministic)
    lock = take_lock(paths)
    if fsdp_utils.is_main():
        prepare_run_dir(paths, args.overwrite, args.resume, args.resume_checkpoint_path)
        fsdp_utils.recover_checkpoint(paths.ckpt)
        if new_labels:
            save_labels(paths.run, {**labels, **new_labels})
    labels.update(new_labels)
    fsdp_utils.barrier()
    # the seeded order: held-out slice first, then the seed set, then candidates in this order; pool
    # records equal to a target record are left out after the held-out slice is drawn, so a run
    # with a target keeps the held-out slice (and, unless it hits one, the seed set) of one without
    perm = records.ids_at(round_rng(args.seed, 0, RNG_SHUFFLE).permutation(len(records)))
    excluded = records.matching(target_keys(target) | {(r["instruction"], r["input"]) for r in test})
    order = [i for i in perm[args.heldout_size:] if i not in excluded]
    state = read_state(paths.run) or {  # read again: a chained run's state was just seeded
        "version": 1, "flags": flags, "pool_sha256": pool_hash, "heldout_ids": perm[: args.heldout_size],
        "rounds_done": -1, "rng": "numpy default_rng([seed, round, purpose]) per draw", "round_log": [],
        "world_size": fsdp_utils.world()}
    state.update(budget=budget, spec=effective_config(defaults(), args, PER_INVOCATION), **provenance())
    if state.get("failed") and flags["lr"] != state["flags"]["lr"]:  # going on after a non-finite loss
        state.setdefault("changes", []).append({"from_round": state["failed"]["round"], "lr": flags["lr"],
                                                "was": state["flags"]["lr"]})
        state["flags"]["lr"] = flags["lr"]
        state.pop("failed")
    # prompts (+ the pool's answers, if any: oracle labels, held-out), tokenised when a round needs them
    enc = lazy_encodings(tok, records, args.prompt_template, cfg.score.progress)
    enc.ensure(perm[: args.heldout_size], answers=True)
    state["excluded_as_target"] = len(perm) - args.heldout_size - len(order)
    spec = RunSpec(seed=args.seed, per_round=args.num_acquisition_samples, init_checkpoint=args.init_checkpoint_path,
                   model_config=args.model_config_path, prompt_template=args.prompt_template,
                   activation_checkpointing=args.activation_checkpointing,
                   words_budget=args.budget_unit == "answer_words", warm_start=args.warm_start,
                   save_opt=args.save_opt, plot_scores=args.plot_ppl_hist, save_file_name=args.save_file_name)
    run = Run(spec, paths, RunState(paths.state, state, model_source=state.get("model_source", paths.ckpt)), records,
              order, perm[: args.heldout_size], labels, annotate, tok, enc, budget, cfg, device, target,
              list(encode_records(tok, test, args.prompt_template).values()), lock=lock)
    if annotate and labels:  # the annotators' answers, never the pool's, are what training sees
        enc.update(encode_records(tok, [run.record(i) for i in labels], args.prompt_template))
    if summary:
        run.log(summary)
    if (target or test) and state["rounds_done"] < 0:
        what = [f"target {args.target_file}: {len(target.records)} examples in {len(set(target.groups))} group(s)"
                ] if target else []
        what += [f"test {args.test_file}: {len(test)} examples"] if test else []
        run.log("; ".join(what) + f"; {state['excluded_as_target']} pool records equal to one are never selected")
    resume_rounds(run)
    return run


def resume_rounds(run: Run) -> None:
    """The labelled set of the finished rounds, and a check that the checkpoint matches them."""
    done = run.state.rounds_done
    for r in range(done + 1):
        run.state.labelled += [row["id"] for row in read_jsonl(run.paths.round_file(r, "selected.jsonl"))]
    if done < 0:
        return
    if not fsdp_utils.broadcast(os.path.isdir(run.state.model_source)):
        rebuild_checkpoint(run)
    meta = fsdp_utils.checkpoint_meta(run.state.model_source)
    if meta.get("round") != done and not os.path.isdir(run.paths.round_dir(done + 1)):
        raise InputError(f"--resume: {run.state.model_source}: checkpoint is from round {meta.get('round')}, "
                         f"state says round {done} is done")
    run.log(f"resuming {run.paths.run}: {done + 1} rounds done, {len(run.labelled)} labelled")


# ----------------------------------------------------------------------------------------------
# one round: select, (export for annotators), train, finish


def main(argv: list[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model_path")
    pre.add_argument("--status", action="store_true")
    asked = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0]
    if asked.status:  # before the full parse: a status needs no other flag
        print(run_status(asked.model_path))
        return
    args = parse_args(argv)
    run_rounds(open_run(args), args.stop_after_round)
    fsdp_utils.barrier()
    fsdp_utils.teardown()


if __name__ == "__main__":
    run_cli(main)
