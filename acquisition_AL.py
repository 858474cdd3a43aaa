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
import contextlib
import dataclasses
import fcntl
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import al_lora
import fsdp_utils
from al_annotation import (
    LABEL_STUDIO,
    annotation_mode,
    export_for_annotators,
    load_labels,
    pending_labels,
    save_labels,
)
from al_datasets import file_sha256, load_records
from al_lora import LoraSpec
from al_prompts import Encodings, check_template, encode_records, lazy_encodings, pad_id_of, truncate_prompt
from al_scoring import ScoreConfig, answer_nll_parts, generate, stop_ids
from al_selection import SelectConfig, candidates, fill_to_cost
from al_similarity import Target, less_modules, load_target, similarity_guard, target_keys
from al_strategies import (
    Scoring,
    add_score_args,
    add_selection_args,
    allowed,
    check_flag_use,
    score_candidates,
    score_config,
    select,
    select_by_cost,
    selection_config,
    strategy,
)
from al_training import NonFiniteLoss, TrainConfig, add_train_args, save_trained, summary, train, train_config
from al_utils import (
    PER_INVOCATION,
    InputError,
    RunPaths,
    add_common_args,
    add_save_opt_args,
    answer_words,
    atomic_write_json,
    atomic_write_jsonl,
    check_common_args,
    check_same,
    check_world,
    describe,
    effective_config,
    kill_point,
    parse_flags,
    plot_hist,
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
    waiting_line,
)

RNG_SHUFFLE, RNG_FRACTION, RNG_SELECT, RNG_SCORE = 0, 1, 2, 3
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
    g = p.add_argument_group(ANNOTATION)
    g.add_argument("--annotate_out", default=None,
                   help="write each batch that needs answers here (.jsonl; .csv; NAME.ls.json: Label Studio tasks, "
                        "with the project's labeling configuration beside it) and stop, exit 0; answers then come "
                        "only from annotators (--labels), so the pool needs no answer column")
    g.add_argument("--labels", default=None,
                   help="the annotators' filled batch (.jsonl/.json/.csv: id + output) or the Label Studio "
                        "project's JSON export: checked, imported, then the run goes on (implies --resume); blank "
                        "answers and tasks not annotated (or skipped) stay pending")
    g.add_argument("--draft_answers", action="store_true",
                   help="Label Studio batches: the current model's greedy answer as each task's prediction, which "
                        "annotators edit instead of writing from scratch (drafts can anchor annotators)")
    g.add_argument("--draft_max_new_tokens", type=int, default=256, help="cap on a draft answer's tokens")
    add_selection_args(p)
    add_score_args(p)
    add_train_args(p, rt)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = parse_flags(p, argv, recorded_spec)
    check_flag_use(args, parser())  # against the real defaults, not the file's or the run's
    args.resume = args.resume or bool(args.labels)
    return args


# ----------------------------------------------------------------------------------------------
# checks before any work


@dataclass(frozen=True)
class Configs:
    """What the flags say, checked once: scoring, selection, training (its seed is the run's; each
    round trains with seed + round) and LoRA (None: full fine-tuning)."""
    score: ScoreConfig
    select: SelectConfig
    train: TrainConfig
    lora: LoraSpec | None


def check_numbers(args: argparse.Namespace) -> Configs:
    check_common_args(args)
    for flag, lo in (("num_acquisition_samples", 1), ("heldout_size", 0)):
        if getattr(args, flag) < lo:
            raise InputError(f"--{flag}: must be >= {lo}")
    if args.al_data_fraction <= 0:
        raise InputError("--al_data_fraction: must be > 0")
    if args.draft_answers and not (args.annotate_out or "").endswith(LABEL_STUDIO):
        raise InputError(f"--draft_answers: drafts go to Label Studio tasks: needs --annotate_out NAME{LABEL_STUDIO}")
    if args.draft_max_new_tokens < 1:
        raise InputError("--draft_max_new_tokens: must be >= 1")
    progress = not args.no_progress and fsdp_utils.is_main()
    tcfg, lora = train_config(args, args.seed, progress), al_lora.lora_spec(args, args.seed)
    if lora is not None and args.save_opt:
        raise InputError("--save_opt: a LoRA run keeps no optimizer state (its adapters are merged into each "
                         "round's checkpoint); less then uses plain gradients: drop --save_opt or --lora_r")
    return Configs(score_config(args, progress), selection_config(args), tcfg, lora)


def load_pool(args: argparse.Namespace, annotate: bool, prior: dict | None) -> tuple[list[dict], int]:
    """The pool's records and the budget in examples."""
    needs_answers = strategy(args.sampling_strategy).answers or args.grad_answers == "pool"
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
    records = load_records(args.file_path, require_output=why, template=args.prompt_template)
    n = sum(answer_words(r["output"]) for r in records) if words else len(records)
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
    skip = runtime_flags(parser(), ANNOTATION)
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
            check_same(prior, flags, paths.state, parser().get_default)
            check_world(prior, paths.state, fsdp_utils.world())
    elif args.resume and args.resume_checkpoint_path:
        prev = run_of_checkpoint(args.resume_checkpoint_path)
        check_same(read_state(prev.run), flags, prev.state, parser().get_default)
        check_world(read_state(prev.run), prev.state, fsdp_utils.world())


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    """One run directory and what its rounds share."""
    args: argparse.Namespace
    paths: RunPaths
    state: dict
    by_id: dict  # id -> record
    order: list  # candidate ids in the seeded order (held-out slice removed)
    heldout: list
    labels: dict  # annotation mode: id -> the annotators' answer
    annotate: bool
    tok: Any
    enc: Encodings  # id -> Encoded (annotators' answers in annotation mode)
    budget: int
    cfg: Configs  # train and lora carry the run's seed; a round trains with seed + round
    device: torch.device
    target: Target | None = None
    test: list = field(default_factory=list)  # Encoded --test_file examples
    labelled: list = field(default_factory=list)  # in selection order
    model: Any = None  # the current round's model, once loaded
    model_source: str = ""  # where the last finished round's model is
    lock: Any = None  # <run>/.lock, held (rank 0) while this object lives

    @property
    def main(self) -> bool:
        return fsdp_utils.is_main()

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, file=sys.stderr)

    def save_state(self) -> None:
        if self.main:
            atomic_write_json(self.paths.state, self.state)

    def mark(self, rnd: int, stage: str, **more) -> None:
        """Record how far round `rnd` got (state.json `in_round`: selection, training; a resume
        redoes nothing before it) and save the state; finish_round clears it."""
        self.state["in_round"] = {"round": rnd, "finished": stage, **more}
        self.save_state()

    def load(self, path: str, lora: LoraSpec | None = None):
        return fsdp_utils.load_model(path, self.device, self.args.model_config_path,
                                     self.args.activation_checkpointing, lora)

    def record(self, i) -> dict:
        return {**self.by_id[i], "output": self.labels[i]} if self.annotate else self.by_id[i]

    def answer_loss(self, encoded: list) -> tuple[float | None, list, list]:
        """Token-weighted answer NLL of the current model (held-out slice, --test_file), or None,
        and per example its summed answer NLL and answer tokens (so a report can resample examples)."""
        if not encoded:
            return None, [], []
        with fsdp_utils.full_params(self.model):
            s, c = answer_nll_parts(self.model, encoded, pad_id_of(self.tok), self.cfg.train.max_length,
                                    self.cfg.score, fsdp_utils.my_slice(len(encoded)), fsdp_utils.gather_lists)
        return float(s.sum() / c.sum()), s.tolist(), c.tolist()

    def words(self, i) -> int:
        return answer_words(self.record(i)["output"])

    def spent(self) -> int:
        """The budget used so far, in --budget_unit."""
        return sum(map(self.words, self.labelled)) if self.words_budget else len(self.labelled)

    @property
    def words_budget(self) -> bool:
        return self.args.budget_unit == "answer_words"


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
    records, budget = load_pool(args, annotate, prior)
    tok = check_models(args, cfg.lora)
    grads = f"--sampling_strategy {args.sampling_strategy} takes the target's gradients on its answers"
    target = load_target(args.target_file, args.target_group_field, tok, grads if strategy(args.sampling_strategy).grads
                         else "", args.prompt_template) if args.target_file else None
    test = load_records(args.test_file, require_output="--test_file measures the loss on its answers",
                        template=args.prompt_template) if args.test_file else []
    pool_hash = file_sha256(args.file_path)
    flags = run_flags(args, pool_hash, annotate)
    check_run_dir(args, paths, prior, flags)
    by_id = {r["id"]: r for r in records}
    labels = load_labels(paths.run) if annotate and args.resume else {}
    new_labels, summary = pending_labels(args.labels, paths, prior, by_id, labels)
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
    perm = [records[i]["id"] for i in round_rng(args.seed, 0, RNG_SHUFFLE).permutation(len(records))]
    keys = target_keys(target) | {(r["instruction"], r["input"]) for r in test}
    order = [i for i in perm[args.heldout_size:] if (by_id[i]["instruction"], by_id[i]["input"]) not in keys]
    state = read_state(paths.run) or {  # read again: a chained run's state was just seeded
        "version": 1, "flags": flags, "pool_sha256": pool_hash, "heldout_ids": perm[: args.heldout_size],
        "rounds_done": -1, "rng": "numpy default_rng([seed, round, purpose]) per draw", "round_log": [],
        "world_size": fsdp_utils.world()}
    state.update(budget=budget, spec=effective_config(parser(), args, PER_INVOCATION), **provenance())
    if state.get("failed") and flags["lr"] != state["flags"]["lr"]:  # going on after a non-finite loss
        state.setdefault("changes", []).append({"from_round": state["failed"]["round"], "lr": flags["lr"],
                                                "was": state["flags"]["lr"]})
        state["flags"]["lr"] = flags["lr"]
        state.pop("failed")
    # prompts (+ the pool's answers, if any: oracle labels, held-out), tokenised when a round needs them
    enc = lazy_encodings(tok, by_id, args.prompt_template, cfg.score.progress)
    enc.ensure(perm[: args.heldout_size])
    state["excluded_as_target"] = len(perm) - args.heldout_size - len(order)
    run = Run(args, paths, state, by_id, order, perm[: args.heldout_size], labels, annotate, tok, enc, budget,
              cfg, device, target,
              list(encode_records(tok, test, args.prompt_template).values()),
              model_source=state.get("model_source", paths.ckpt), lock=lock)
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
    done = run.state["rounds_done"]
    for r in range(done + 1):
        run.labelled += [row["id"] for row in read_jsonl(run.paths.round_file(r, "selected.jsonl"))]
    if done < 0:
        return
    meta = fsdp_utils.checkpoint_meta(run.model_source)
    if meta.get("round") != done and not os.path.isdir(run.paths.round_dir(done + 1)):
        raise InputError(f"--resume: {run.model_source}: checkpoint is from round {meta.get('round')}, "
                         f"state says round {done} is done")
    run.log(f"resuming {run.paths.run}: {done + 1} rounds done, {len(run.labelled)} labelled")


# ----------------------------------------------------------------------------------------------
# one round: select, (export for annotators), train, finish


def round_strategy(run: Run, rnd: int) -> str:
    """Round 0 picks the seed set by --seed_strategy, later rounds by --sampling_strategy."""
    return run.cfg.select.seed_strategy if rnd == 0 else run.cfg.select.strategy


def select_round(run: Run, rnd: int) -> tuple[list[dict], list[dict]]:
    """The round's picks ({id, bucket, score}, selection order) and its candidates' scores; reuses
    a selection made before an interruption. No picks: nothing left to select."""
    sel_file, scores_file = run.paths.round_file(rnd, "selected.jsonl"), run.paths.round_file(rnd, "scores.jsonl")
    taken = set(run.labelled)
    remaining = [i for i in run.order if i not in taken]
    n = want = min(run.args.num_acquisition_samples, run.budget - run.spent())  # examples, or answer words
    # rank 0 decides what is on disk, so every rank takes the same branch (same collectives)
    if fsdp_utils.broadcast(os.path.isfile(sel_file)):
        return read_jsonl(sel_file), read_jsonl(scores_file) if os.path.isfile(scores_file) else []
    scores: list[dict] = []
    sel = dataclasses.replace(run.cfg.select, strategy=round_strategy(run, rnd))
    if rnd == 0 and sel.strategy == "random":  # the seed set: the first n of the seeded order
        picked = [{"id": i, "bucket": None, "score": None} for i in remaining]
        picked = fill_to_cost(picked, want, run.words) if run.words_budget else picked[:n]
    else:
        cands = candidates(remaining, run.cfg.select.fraction, round_rng(run.args.seed, rnd, RNG_FRACTION)) \
            if rnd > 0 else remaining
        if run.words_budget and cands:  # examples the strategy picks first: the words over the mean answer
            n = math.ceil(want / np.mean([run.words(i) for i in cands]))
        if len(cands) < n:
            run.log(f"warning: round {rnd}: only {len(cands)} candidates for {n} slots")
        run.enc.ensure(cands + run.labelled)  # only what this round scores (and compares with)
        scores, keep_of = score_round(run, rnd, sel.strategy, cands, n)
        kill_point("scoring", rnd)
        rng_of = lambda: round_rng(run.args.seed, rnd, RNG_SELECT)  # noqa: E731
        picked, skipped = fsdp_utils.broadcast(
            select_by_cost(scores, n, want, run.words, rnd, sel, run.cfg.score, rng_of, keep_of) if run.words_budget
            else select(scores, n, rnd, sel, run.cfg.score, rng_of(), keep_of() if keep_of else None))
        skipped = set(skipped)
        for r in scores:
            if r["id"] in skipped:
                r["skipped_similar"] = True
        if run.main:
            atomic_write_jsonl(scores_file, scores)
            if run.args.plot_ppl_hist:
                plot_hist([r["score"] for r in scores], run.paths.round_file(rnd, "scores.png"),
                          f"{sel.strategy} scores, round {rnd}")
    if picked:
        if run.main:
            atomic_write_jsonl(sel_file, picked)
        run.mark(rnd, "selection")
    return picked, scores


def score_round(run: Run, rnd: int, name: str, cands: list, n: int) -> tuple[list[dict], Any]:
    """Every candidate's score under the last round's model, data-parallel over the ranks, and a
    maker of the --max_similarity guard over the candidates' and the labelled set's embeddings
    (or None)."""
    if not cands:
        return [], None
    tau = run.cfg.select.max_similarity
    if run.model is None and (strategy(name).model or tau is not None):
        run.model = run.load(run.model_source if rnd > 0 else run.args.init_checkpoint_path)
    sc = Scoring(run.model, run.tok, run.enc, run.by_id, run.cfg.score, round_rng(run.args.seed, rnd, RNG_SCORE),
                 run.target, run.labelled, n, template=run.args.prompt_template)
    if strategy(name).grads:  # LESS: Adam moments of the last round (with --save_opt), a plain model copy
        if rnd > 0 and fsdp_utils.has_optimizer_state(run.model_source):
            sc.moments = fsdp_utils.adam_moments(run.model, run.model_source, [k for k, _ in less_modules(run.model)])
            sc.betas = (run.args.adam_beta1, run.args.adam_beta2)
        sc.grad_model = fsdp_utils.plain_replica(run.model)
    with fsdp_utils.full_params(run.model) if run.model is not None else contextlib.nullcontext():
        rows = score_candidates(name, cands, sc, fsdp_utils.my_slice(len(cands)), fsdp_utils.gather_lists)
        if tau is None:
            return rows, None
        ids = cands + run.labelled
        vecs = fsdp_utils.gather_lists(sc.prompt_vectors(ids[fsdp_utils.my_slice(len(ids))]).tolist())
    emb = dict(zip(ids, np.array(vecs, dtype=np.float32)))
    return rows, lambda: similarity_guard(emb, run.labelled, tau)


def train_round(run: Run, rnd: int) -> dict:
    """Train on everything labelled: from the base (as the original) or, with --warm_start, from
    the last round's weights (under LoRA: fresh adapters on either, merged after training).
    Reuses a round trained before an interruption. Returns its stats."""
    args, ckpt = run.args, run.paths.ckpt
    meta = fsdp_utils.broadcast(fsdp_utils.checkpoint_meta(ckpt) if os.path.isdir(ckpt) else {})
    if meta.get("round") == rnd:
        run.model = run.load(ckpt)
        tstats = meta["train"]
    else:
        lora = dataclasses.replace(run.cfg.lora, seed=args.seed + rnd) if run.cfg.lora is not None else None
        warm = args.warm_start and rnd > 0
        base = run.model_source if warm else args.init_checkpoint_path
        if lora is not None or not warm or run.model is None:  # else: warm, from the model in memory
            run.model = run.load(base, lora)
        torch.manual_seed(args.seed + rnd)
        tcfg = dataclasses.replace(run.cfg.train, seed=args.seed + rnd)
        run.enc.ensure(run.labelled)
        try:
            stats, opt = train(run.model, [run.enc[i] for i in run.labelled], tcfg, pad_id_of(run.tok),
                               on_step=lambda step: kill_point("training", rnd))
        except NonFiniteLoss as e:  # keep the last good round; say how to go on
            run.state["failed"] = {"round": rnd, "step": e.step, "loss": str(e.loss), "lr": args.lr}
            run.save_state()
            kept = f"as it was after round {rnd - 1}" if rnd else "with its seed set selected"
            raise InputError(f"round {rnd}: training loss became {e.loss} at optimizer step {e.step} (--lr {args.lr}); "
                             f"the run is kept {kept}: go on with a lower --lr, e.g. "
                             f"python acquisition_AL.py --model_path {run.paths.run} --resume --lr {args.lr / 10:g} "
                             "(recorded in state.json `changes`)") from None
        tstats = summary(stats)
        save_trained(run.model, run.tok, ckpt, {"round": rnd, "labelled": len(run.labelled), "train": tstats,
                                                "prompt_template": args.prompt_template},
                     opt if args.save_opt else None, lora, base)
        del opt
        run.mark(rnd, "training")
    run.model_source = ckpt
    run.state.pop("model_source", None)  # a chained run's first source, until its first round is trained
    return tstats


def finish_round(run: Run, rnd: int, picked: list[dict], scores: list[dict], tstats: dict,
                 seconds: dict) -> None:
    """Held-out loss, metrics, the selected set, and state.json last: it marks the round done."""
    held = run.answer_loss([run.enc[i] for i in run.heldout])[0]
    test, test_nll, test_tokens = run.answer_loss(run.test)
    sc = np.array([r["score"] for r in scores])
    n_labelled = len(run.labelled)
    cost = {"answer_tokens": sum(len(run.enc[i].answer) - 1 for i in run.labelled),  # EOS is not written
            "answer_words": sum(map(run.words, run.labelled))}
    metrics = {"round": rnd, "labelled": n_labelled, **cost, "selected": len(picked), "train": tstats,
               "heldout_loss": held, "heldout_examples": len(run.heldout), "test_loss": test,
               "test_examples": len(run.test), "test_example_nll": test_nll, "test_example_tokens": test_tokens,
               "candidates_scored": len(scores),
               "candidates_ruled_out": len(scores) - len(allowed(scores, round_strategy(run, rnd), run.cfg.score)),
               "skipped_as_similar": sum(bool(r.get("skipped_similar")) for r in scores),
               "score_stats": describe(sc), "seconds": seconds}
    run.state["rounds_done"] = rnd
    run.state.pop("in_round", None)
    run.state["round_log"] = [x for x in run.state["round_log"] if x["round"] < rnd] + [
        {"round": rnd, "labelled": n_labelled, **cost, "train_loss": tstats["train_loss"], "heldout_loss": held,
         "test_loss": test}]
    if run.main:
        atomic_write_json(run.paths.round_file(rnd, "metrics.json"), metrics)
        selected = [run.record(i) for i in run.labelled]
        atomic_write_json(run.paths.selected, selected)
        if run.args.save_file_name:
            atomic_write_json(run.args.save_file_name, selected)
    run.save_state()
    losses = " | ".join(f"{k} {v:.4f}" for k, v in (("held-out", held), ("test", test)) if v is not None)
    spent = f"{n_labelled} labelled, {cost['answer_words']}/{run.budget} answer words" if run.words_budget \
        else f"labelled {n_labelled}/{run.budget}"
    run.log(f"round {rnd} | {spent} | scores {describe(sc)} | train loss {tstats['train_loss']:.4f} | "
            f"{losses or 'no held-out or test set'} | {seconds['total']:.1f}s")


def draft_answers(run: Run, rnd: int, ids: list) -> list[str]:
    """The current model's greedy answers to `ids` (--draft_answers): the base model's for the seed
    set, then the last round's; each rank generates its share."""
    if run.model is None:
        run.model = run.load(run.model_source if rnd > 0 else run.args.init_checkpoint_path)
    run.enc.ensure(ids)
    cfg, mine = run.cfg.score, ids[fsdp_utils.my_slice(len(ids))]
    prompts = [truncate_prompt(run.enc[i].prompt, cfg.max_length - 1) for i in mine]
    with fsdp_utils.full_params(run.model):
        gens = generate(run.model, prompts, [run.args.draft_max_new_tokens] * len(mine), pad_id_of(run.tok),
                        stop_ids(run.model, run.tok), cfg.max_rows, cfg.progress, "drafts")
    return fsdp_utils.gather_lists([run.tok.decode(g, skip_special_tokens=True).strip() for g, _ in gens])


def wait_for_labels(run: Run, rnd: int, picked: list[dict]) -> bool:
    """Export the round's picks that have no answer yet and record that the run waits (True)."""
    drafts = (lambda ids: draft_answers(run, rnd, ids)) if run.args.draft_answers else None
    waiting = export_for_annotators(picked, rnd, run.by_id, run.labels, run.paths, run.args.annotate_out,
                                    run.main, drafts)
    if waiting is None:
        return False
    run.mark(rnd, "selection", **waiting)
    run.log(waiting_line(run.paths.run, run.state["in_round"]))
    return True


def main(argv: list[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model_path")
    pre.add_argument("--status", action="store_true")
    asked = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0]
    if asked.status:  # before the full parse: a status needs no other flag
        print(run_status(asked.model_path))
        return
    args = parse_args(argv)
    run = open_run(args)
    rnd, waiting = run.state["rounds_done"] + 1, False
    while run.spent() < run.budget and (args.stop_after_round is None or rnd <= args.stop_after_round):
        t0 = time.time()
        picked, scores = select_round(run, rnd)
        kill_point("selected", rnd)
        if not picked:
            why = "every candidate was skipped by --max_similarity" if any(r.get("skipped_similar") for r in scores) \
                else "no candidate left to select"
            if run.words_budget and len(run.labelled) < len(run.order):
                why = f"the strategy's next pick does not fit the {run.budget - run.spent()} answer words left"
            run.log(f"round {rnd}: {why}; stopping at {len(run.labelled)} labelled")
            break
        if run.annotate and wait_for_labels(run, rnd, picked):
            waiting = True
            break
        run.labelled += [r["id"] for r in picked]
        t_select = time.time() - t0
        tstats = train_round(run, rnd)
        t_train = time.time() - t0 - t_select
        finish_round(run, rnd, picked, scores, tstats,
                     {"select": t_select, "train": t_train, "total": time.time() - t0})
        rnd += 1
    if not waiting:
        run.log(f"run {run.paths.run}: {len(run.labelled)} labelled in {run.state['rounds_done'] + 1} rounds; "
                f"selected set {run.paths.selected}, model {run.paths.ckpt}")
    fsdp_utils.barrier()
    fsdp_utils.teardown()


if __name__ == "__main__":
    run_cli(main)
