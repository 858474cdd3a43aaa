"""Active-learning loop for one data budget: score the unlabelled pool with the current model,
pick a stratified batch, label it (oracle: the pool's own answers; or real annotators with
--annotate_out/--labels), fine-tune, repeat.

    python acquisition_AL.py --file_path data/dolly-1.5k.jsonl --init_checkpoint_path models/tiny-llama \
        --al_data_fraction 200 --num_acquisition_samples 50 --stratification_strategy bucket \
        --num_k 5 --pick_samples_from top --model_path runs/RUN_200 --seed 42

With annotators (the pool needs no answers): each call exports the batch that needs labels and
stops ("waiting for labels", exit 0); the next call imports the filled file and goes on:
    ... --model_path runs/ann --annotate_out batch.csv            # exports the seed set
    ... --model_path runs/ann --annotate_out batch.csv --labels batch_filled.csv   # train, export next

Writes the run directory <model_path>/ (state.json, selected.json, rounds/<k>/...) after every
round and the trained model to <model_path>_sharded. Chain budgets like the original README:
    ... --al_data_fraction 400 --model_path runs/RUN_400 --resume --resume_checkpoint_path runs/RUN_200_sharded
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version

import numpy as np
import torch

import fsdp_utils
from al_annotation import LABELS_FILE, batch_rows, export_batch, import_labels, load_labels, save_labels
from al_strategies import (
    MODEL_FREE,
    NEEDS_ANSWERS,
    STRATEGIES,
    ScoreConfig,
    cluster_round_robin,
    k_for_round,
    score_candidates,
    stratify,
)
from al_utils import (
    InputError,
    answer_nll,
    atomic_savefig,
    atomic_write_json,
    atomic_write_jsonl,
    describe,
    encode_records,
    file_sha256,
    kill_point,
    load_records,
    pad_id_of,
    read_jsonl,
    read_state,
    round_rng,
    run_cli,
)
from train_AL import add_train_args, train, train_config

# flags that do not change what a run selects or trains: everything else must match on --resume
NON_RUN_FLAGS = {"al_data_fraction", "model_path", "resume", "resume_checkpoint_path", "save_file_name",
                 "plot_ppl_hist", "threads", "overwrite", "stop_after_round", "no_progress", "save_opt",
                 "activation_checkpointing", "annotate_out", "labels"}
RNG_SHUFFLE, RNG_FRACTION, RNG_SELECT, RNG_SCORE = 0, 1, 2, 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and run")
    g.add_argument("--file_path", default="data/dolly-1.5k.jsonl", help="pool (.json/.jsonl)")
    g.add_argument("--init_checkpoint_path", required=True, help="base model (HF folder)")
    g.add_argument("--model_config_path", default=None,
                   help="HF folder with config + tokenizer (default: the init checkpoint's own)")
    g.add_argument("--model_path", required=True,
                   help="run directory; the trained model goes to <model_path>_sharded")
    g.add_argument("--al_data_fraction", type=float, required=True,
                   help="budget: > 1 is a number of examples, <= 1 a fraction of the pool")
    g.add_argument("--heldout_size", type=int, default=0,
                   help="examples drawn (seeded) before the seed set, never selected, for held-out loss")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--save_file_name", default=None, help="also write the selected set here (JSON array)")
    g.add_argument("--resume", action="store_true", help="continue this run, or chain from --resume_checkpoint_path")
    g.add_argument("--resume_checkpoint_path", default=None,
                   help="previous budget's checkpoint X_sharded: its run X's labelled set and rounds carry over")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--stop_after_round", type=int, default=None, help="stop after this round (staged runs)")
    g.add_argument("--plot_ppl_hist", action="store_true", help="save a histogram of each round's scores")
    g.add_argument("--no_progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("annotation (real annotators instead of the pool's answers)")
    g.add_argument("--annotate_out", default=None,
                   help="write each batch that needs answers here (.jsonl, or .csv) and stop, exit 0; answers "
                        "then come only from annotators (--labels), so the pool needs no answer column")
    g.add_argument("--labels", default=None,
                   help="the annotators' filled batch (.jsonl/.json/.csv: id + output): checked, imported, then "
                        "the run goes on (implies --resume); blank answers stay pending")
    g = p.add_argument_group("acquisition")
    g.add_argument("--sampling_strategy", default="forward_ppl", choices=STRATEGIES)
    g.add_argument("--num_acquisition_samples", type=int, default=1000, help="examples labelled per round")
    g.add_argument("--stratification_strategy", default="greedy", choices=("greedy", "bucket", "mixed"))
    g.add_argument("--pick_samples_from", default="top", choices=("top", "bottom", "uniform"))
    g.add_argument("--mixed_sampling_factor", type=float, default=0.7, help="mixed: share taken from the end")
    g.add_argument("--num_k", type=int, default=5, help="bucket: number of buckets")
    g.add_argument("--decay_k", action="store_true", help="one bucket fewer each round, never below 2")
    g.add_argument("--cluster_data_fraction", type=float, default=1.0,
                   help="share of the remaining pool scored each round (seeded random subset)")
    g.add_argument("--random_pool_fraction", action="store_true",
                   help="accepted for compatibility: candidates are always the remaining pool")
    g.add_argument("--model_max_length", type=int, default=1024, help="scoring truncation (tokens)")
    g.add_argument("--batch_size", type=int, default=4,
                   help="rows per scoring batch when --score_token_budget is 0")
    g.add_argument("--score_token_budget", type=int, default=2048,
                   help="scoring batches hold this many tokens (length-sorted); 0 = fixed --batch_size rows")
    g.add_argument("--gen_max_new_tokens", type=int, default=32, help="generation_ppl: tokens generated")
    g.add_argument("--self_ask_positions", type=int, default=3, help="self_ask: generated positions read")
    g.add_argument("--num_clusters", type=int, default=10, help="cluster: KMeans clusters")
    g.add_argument("--cluster_embedding", default="tfidf", choices=("tfidf", "hidden"))
    g.add_argument("--save_opt", action="store_true", help="also save the optimizer state in the checkpoint")
    g.add_argument("--warm_start", action="store_true",
                   help="train each round from the previous round's weights (default: from the base)")
    add_train_args(p)
    return p.parse_args(argv)


def annotation_mode(args: argparse.Namespace, prior: dict | None) -> bool:
    """Answers from annotators: asked for now, or the run being resumed was started that way."""
    return bool(args.annotate_out or args.labels) or bool(
        prior and args.resume and prior["flags"].get("labels_from") == "annotators")


def validate(args: argparse.Namespace, annotate: bool, prior: dict | None):
    """Every check that can fail on bad input, before any work. Returns (records, budget, tokenizer)."""
    if args.num_acquisition_samples < 1:
        raise InputError("--num_acquisition_samples: must be >= 1")
    if args.num_k < 1:
        raise InputError("--num_k: must be >= 1")
    if not 0 < args.cluster_data_fraction <= 1:
        raise InputError("--cluster_data_fraction: must be in (0, 1]")
    if not 0 <= args.mixed_sampling_factor <= 1:
        raise InputError("--mixed_sampling_factor: must be in [0, 1]")
    if args.heldout_size < 0:
        raise InputError("--heldout_size: must be >= 0")
    if args.al_data_fraction <= 0:
        raise InputError("--al_data_fraction: must be > 0")
    train_config(args, args.seed)
    if args.labels and prior is None:
        raise InputError(f"--labels: {args.model_path}: no run there waiting for labels "
                         "(start one with --annotate_out)")
    if annotate and args.sampling_strategy in NEEDS_ANSWERS:
        why = f"--sampling_strategy {args.sampling_strategy} scores answers; pick a prompt-only strategy"
    elif annotate and args.heldout_size:
        why = "--heldout_size measures answer loss on the pool's own answers"
    elif annotate:
        why = ""
    elif args.sampling_strategy in NEEDS_ANSWERS:
        why = f"--sampling_strategy {args.sampling_strategy} scores answers, and oracle labelling needs them"
    else:
        why = "oracle labelling takes answers from the pool; use --annotate_out for an unlabelled pool"
    records = load_records(args.file_path, require_output=why)
    n = len(records)
    budget = int(args.al_data_fraction) if args.al_data_fraction > 1 else int(args.al_data_fraction * n)
    if budget < 1:
        raise InputError(f"--al_data_fraction: {args.al_data_fraction} of {n} records is less than one example")
    if budget + args.heldout_size > n:
        raise InputError(f"--al_data_fraction: budget {budget} + held-out {args.heldout_size} exceeds the pool "
                         f"({n} records in {args.file_path})")
    if budget < args.num_acquisition_samples:
        raise InputError(f"--al_data_fraction: budget {budget} is below the seed set "
                         f"(--num_acquisition_samples {args.num_acquisition_samples})")
    if args.resume and prior and prior["round_log"] and budget < prior["round_log"][-1]["labelled"]:
        raise InputError(f"--al_data_fraction: budget {budget} is below the {prior['round_log'][-1]['labelled']} "
                         f"examples {args.model_path} has already labelled")
    fsdp_utils.check_model_dir(args.init_checkpoint_path, "--init_checkpoint_path")
    if args.model_config_path and not os.path.isfile(os.path.join(args.model_config_path, "config.json")):
        raise InputError(f"--model_config_path: {args.model_config_path}: no config.json there")
    fsdp_utils.check_weights(args.init_checkpoint_path, "--init_checkpoint_path", args.model_config_path)
    run_cfg = args.model_config_path or args.init_checkpoint_path  # every checkpoint must fit this config
    if args.resume_checkpoint_path:
        fsdp_utils.check_model_dir(args.resume_checkpoint_path, "--resume_checkpoint_path")
        prev = args.resume_checkpoint_path.rstrip("/").removesuffix("_sharded")
        if not os.path.isfile(os.path.join(prev, "state.json")):
            raise InputError(f"--resume_checkpoint_path: {prev}/state.json: no run directory beside the checkpoint")
        fsdp_utils.check_weights(args.resume_checkpoint_path, "--resume_checkpoint_path", run_cfg)
    tok = fsdp_utils.load_tokenizer(run_cfg)
    pad_id_of(tok)
    if tok.eos_token_id is None:
        raise InputError(f"{run_cfg}: tokenizer: has no eos token (answers must end with one)")
    return records, budget, tok


def run_flags(args: argparse.Namespace, pool_hash: str, annotate: bool) -> dict:
    flags = {k: v for k, v in sorted(vars(args).items()) if k not in NON_RUN_FLAGS}
    flags["file_path"] = pool_hash  # the pool's content matters, not where it lives
    flags["labels_from"] = "annotators" if annotate else "pool"
    return flags


def provenance() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": sys.argv, "git_commit": commit,
            "versions": {m: version(m) for m in ("torch", "transformers", "numpy", "scikit-learn")}}


def check_run_dir(args: argparse.Namespace, run: str, prior: dict | None, flags: dict) -> None:
    """Read-only checks of the run directory, whose state is `prior` (every rank, before any work)."""
    if prior is not None:
        if not args.resume and not args.overwrite:
            raise InputError(f"--model_path: {run}: run exists; pass --resume to continue or --overwrite")
        if args.resume:
            check_same(prior, flags, os.path.join(run, "state.json"))
    elif args.resume and args.resume_checkpoint_path:
        prev = args.resume_checkpoint_path.rstrip("/").removesuffix("_sharded")
        check_same(read_state(prev), flags, os.path.join(prev, "state.json"))


def prepare_run_dir(args: argparse.Namespace, run: str) -> None:
    """Rank 0: clear an overwritten run, or seed a chained run with the previous run's rounds."""
    state_file = os.path.join(run, "state.json")
    if os.path.isfile(state_file) and args.overwrite and not args.resume:
        for p in (os.path.join(run, "rounds"), state_file, os.path.join(run, "selected.json"),
                  os.path.join(run, LABELS_FILE), run + "_sharded"):
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    if args.resume and not os.path.isfile(state_file) and args.resume_checkpoint_path:
        prev = args.resume_checkpoint_path.rstrip("/").removesuffix("_sharded")
        prev_state = read_state(prev)
        shutil.copytree(os.path.join(prev, "rounds"), os.path.join(run, "rounds"), dirs_exist_ok=True)
        if os.path.isfile(os.path.join(prev, LABELS_FILE)):
            shutil.copy2(os.path.join(prev, LABELS_FILE), os.path.join(run, LABELS_FILE))
        prev_state["chained_from"] = prev
        prev_state["model_source"] = args.resume_checkpoint_path
        atomic_write_json(state_file, prev_state)


def check_same(state: dict, flags: dict, where: str) -> None:
    old = state["flags"]
    diff = [f"{k}: {old.get(k)!r} -> {flags.get(k)!r}" for k in sorted(set(old) | set(flags))
            if old.get(k) != flags.get(k)]
    if diff:
        raise InputError(f"--resume: {where}: flags or pool differ from the run being resumed: " + "; ".join(diff))


def plot_hist(scores: list[float], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=50)
    ax.set_title(title)
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = args.model_path.rstrip("/")
    ckpt = run + "_sharded"
    args.resume = args.resume or bool(args.labels)
    prior = read_state(run)
    annotate = annotation_mode(args, prior)
    records, budget, tok = validate(args, annotate, prior)
    pool_hash = file_sha256(args.file_path)
    flags = run_flags(args, pool_hash, annotate)
    check_run_dir(args, run, prior, flags)
    by_id = {r["id"]: r for r in records}
    labels = load_labels(run) if annotate and args.resume else {}
    new_labels: dict = {}
    if args.labels:  # checked in full before anything changes
        pending_round = prior["rounds_done"] + 1
        sel = os.path.join(run, "rounds", str(pending_round), "selected.jsonl")
        if not os.path.isfile(sel):
            raise InputError(f"--labels: {run}: no batch is waiting for labels")
        batch = [r["id"] for r in read_jsonl(sel)]
        new_labels, blank, again = import_labels(args.labels, batch, pending_round, by_id, labels)
    device = fsdp_utils.setup(args.threads)
    main_rank = fsdp_utils.is_main()
    lock = None
    if main_rank:  # one lock per run, held by rank 0 for the whole run
        os.makedirs(run, exist_ok=True)
        lock = open(os.path.join(run, ".lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock = None
    if not fsdp_utils.broadcast(lock is not None if main_rank else None):
        raise InputError(f"--model_path: {run}: another run holds its lock ({run}/.lock)")
    if main_rank:
        prepare_run_dir(args, run)
        fsdp_utils.recover_checkpoint(ckpt)
        if new_labels:
            save_labels(run, {**labels, **new_labels})
    labels.update(new_labels)
    log = print if main_rank else (lambda *a, **k: None)
    if args.labels:
        still = sum(i not in labels for i in batch)
        log(f"imported {len(new_labels)} answers from {args.labels} ({again} already imported, {blank} left "
            f"blank); round {pending_round}: {len(batch) - still} of {len(batch)} labelled", file=sys.stderr)
    fsdp_utils.barrier()
    state = read_state(run)  # again: a chained run's state was just seeded
    progress = not args.no_progress and main_rank

    # the seeded order: held-out slice first, then the seed set, then candidates in this order
    perm = [records[i]["id"] for i in round_rng(args.seed, 0, RNG_SHUFFLE).permutation(len(records))]
    heldout = perm[: args.heldout_size]
    order = perm[args.heldout_size:]
    pad_id = pad_id_of(tok)
    def labelled_record(i) -> dict:
        return {**by_id[i], "output": labels[i]} if annotate else by_id[i]

    enc = encode_records(tok, records)  # prompts (+ the pool's answers, if any: oracle labels, held-out)
    if annotate and labels:  # the annotators' answers, never the pool's, are what training sees
        enc.update(encode_records(tok, [labelled_record(i) for i in labels]))

    scfg = ScoreConfig(token_budget=args.score_token_budget or 10**9,
                       max_rows=256 if args.score_token_budget else args.batch_size,
                       max_length=args.model_max_length, gen_max_new_tokens=args.gen_max_new_tokens,
                       self_ask_positions=args.self_ask_positions, num_clusters=args.num_clusters,
                       cluster_embedding=args.cluster_embedding, progress=progress)

    done = state["rounds_done"] if state else -1
    if state is None:
        state = {"version": 1, "flags": flags, "pool_sha256": pool_hash, "heldout_ids": heldout,
                 "rounds_done": -1, "rng": "numpy default_rng([seed, round, purpose]) per draw",
                 "round_log": []}
    state.update(budget=budget, **provenance())
    # labelled set from the finished rounds, in selection order
    labelled: list = []
    for r in range(done + 1):
        labelled += [row["id"] for row in read_jsonl(os.path.join(run, "rounds", str(r), "selected.jsonl"))]
    model_source = state.get("model_source", ckpt)
    model = None
    if done >= 0:
        meta = fsdp_utils.checkpoint_meta(model_source)
        if meta.get("round") != done and not os.path.isdir(os.path.join(run, "rounds", str(done + 1))):
            raise InputError(f"--resume: {model_source}: checkpoint is from round {meta.get('round')}, "
                             f"state says round {done} is done")
        log(f"resuming {run}: {done + 1} rounds done, {len(labelled)} labelled", file=sys.stderr)

    def load(path: str):
        return fsdp_utils.load_model(path, device, args.model_config_path, args.activation_checkpointing)

    def save_state() -> None:
        if main_rank:
            atomic_write_json(os.path.join(run, "state.json"), state)

    rnd = done + 1
    waiting = False
    while len(labelled) < budget and (args.stop_after_round is None or rnd <= args.stop_after_round):
        t0 = time.time()
        rdir = os.path.join(run, "rounds", str(rnd))
        sel_file = os.path.join(rdir, "selected.jsonl")
        taken = set(labelled)
        remaining = [i for i in order if i not in taken]
        n = min(args.num_acquisition_samples, budget - len(labelled))
        scores: list[dict] = []
        # rank 0 decides what is on disk, so every rank takes the same branch (same collectives)
        if fsdp_utils.broadcast(os.path.isfile(sel_file)):  # selected before an interruption: reuse
            picked = read_jsonl(sel_file)
            if os.path.isfile(os.path.join(rdir, "scores.jsonl")):  # for this round's metrics
                scores = read_jsonl(os.path.join(rdir, "scores.jsonl"))
        elif rnd == 0:
            picked = [{"id": i, "bucket": None, "score": None} for i in remaining[:n]]
        else:
            if not remaining:
                break
            if model is None and args.sampling_strategy not in MODEL_FREE:
                model = load(model_source)
            cands = remaining
            if args.cluster_data_fraction < 1:
                m = max(1, math.ceil(args.cluster_data_fraction * len(remaining)))
                keep = np.sort(round_rng(args.seed, rnd, RNG_FRACTION).choice(len(remaining), m, replace=False))
                cands = [remaining[j] for j in keep]
            with fsdp_utils.full_params(model) if model is not None else contextlib.nullcontext():
                scores = score_candidates(args.sampling_strategy, by_id, cands, enc, model, tok, scfg,
                                          round_rng(args.seed, rnd, RNG_SCORE), fsdp_utils.my_slice(len(cands)),
                                          fsdp_utils.gather_lists)
            kill_point("scoring", rnd)
            if len(cands) < n:
                log(f"warning: round {rnd}: only {len(cands)} candidates for {n} slots", file=sys.stderr)
            score_of = {r["id"]: r["score"] for r in scores}
            if args.sampling_strategy == "cluster":
                chosen = cluster_round_robin(scores, n)
            else:
                ranked = [r["id"] for r in sorted(scores, key=lambda r: -r["score"])]  # stable: ties keep order
                k = k_for_round(args.num_k, args.decay_k, rnd)
                chosen = stratify(ranked, n, args.stratification_strategy, args.pick_samples_from, k,
                                  args.mixed_sampling_factor, round_rng(args.seed, rnd, RNG_SELECT))
            picked = fsdp_utils.broadcast([{"id": i, "bucket": b, "score": score_of[i]} for i, b in chosen])
            if main_rank:
                atomic_write_jsonl(os.path.join(rdir, "scores.jsonl"), scores)
                if args.plot_ppl_hist:
                    plot_hist([r["score"] for r in scores], os.path.join(rdir, "scores.png"),
                              f"{args.sampling_strategy} scores, round {rnd}")
        if main_rank and not os.path.isfile(sel_file):
            atomic_write_jsonl(sel_file, picked)
            state["in_round"] = {"round": rnd, "finished": "selection"}
            save_state()
        kill_point("selected", rnd)
        missing = [r for r in picked if annotate and r["id"] not in labels]
        if missing:  # annotation mode: hand the batch out and stop until its answers come back
            rows = batch_rows(missing, by_id, rnd)
            dest = args.annotate_out or os.path.join(rdir, "to_annotate.jsonl")
            state["in_round"] = {"round": rnd, "finished": "selection", "waiting_for_labels": len(missing),
                                 "batch": len(picked), "exported_to": dest}
            if main_rank:
                export_batch(os.path.join(rdir, "to_annotate.jsonl"), rows)
                if args.annotate_out:
                    export_batch(args.annotate_out, rows)
                save_state()
            log(f"waiting for labels: {len(missing)} of round {rnd}'s {len(picked)} examples are in {dest}; "
                "fill their `output`, then run again with --labels FILE", file=sys.stderr)
            waiting = True
            break
        labelled += [r["id"] for r in picked]
        t_score = time.time() - t0

        # train: from the base each round (as the original), or from the last round's weights
        meta = fsdp_utils.broadcast(fsdp_utils.checkpoint_meta(ckpt) if os.path.isdir(ckpt) else {})
        if meta.get("round") == rnd:  # trained before an interruption
            model = load(ckpt)
            tstats = meta["train"]
        else:
            if not (args.warm_start and rnd > 0):
                model = load(args.init_checkpoint_path)
            elif model is None:  # warm start after a resume that skipped scoring
                model = load(model_source)
            torch.manual_seed(args.seed + rnd)
            tcfg = train_config(args, args.seed + rnd, progress)
            stats, opt = train(model, [enc[i] for i in labelled], tcfg, pad_id,
                               on_step=lambda step, r=rnd: kill_point("training", r))
            tstats = {k: v for k, v in stats.items() if k not in ("losses", "lrs")}
            fsdp_utils.save_checkpoint(model, tok, ckpt, {"round": rnd, "labelled": len(labelled), "train": tstats},
                                       opt if args.save_opt else None)
            del opt
            state["in_round"] = {"round": rnd, "finished": "training"}
            save_state()
        model_source = ckpt
        state.pop("model_source", None)
        t_train = time.time() - t0 - t_score
        with fsdp_utils.full_params(model):
            held = answer_nll(model, [enc[i] for i in heldout], pad_id, args.train_max_length, progress,
                              fsdp_utils.my_slice(len(heldout)), fsdp_utils.gather_lists)[0] if heldout else None
        sc = np.array([r["score"] for r in scores])
        metrics = {"round": rnd, "labelled": len(labelled), "selected": len(picked), "train": tstats,
                   "heldout_loss": held, "heldout_examples": len(heldout), "candidates_scored": len(scores),
                   "score_stats": describe(sc),
                   "seconds": {"select": t_score, "train": t_train, "total": time.time() - t0}}
        state["rounds_done"] = rnd
        state.pop("in_round", None)
        state["round_log"] = [x for x in state["round_log"] if x["round"] < rnd] + [
            {"round": rnd, "labelled": len(labelled), "train_loss": tstats["train_loss"], "heldout_loss": held}]
        if main_rank:
            atomic_write_json(os.path.join(rdir, "metrics.json"), metrics)
            selected = [labelled_record(i) for i in labelled]
            atomic_write_json(os.path.join(run, "selected.json"), selected)
            if args.save_file_name:
                atomic_write_json(args.save_file_name, selected)
        save_state()  # last: marks the round done
        done = rnd
        held_s = f"{held:.4f}" if held is not None else "n/a"
        log(f"round {rnd} | labelled {len(labelled)}/{budget} | scores {describe(sc)} | "
            f"train loss {tstats['train_loss']:.4f} | held-out {held_s} | {time.time() - t0:.1f}s", file=sys.stderr)
        rnd += 1
    if not waiting:
        log(f"run {run}: {len(labelled)} labelled in {done + 1} rounds; selected set {run}/selected.json, "
            f"model {ckpt}", file=sys.stderr)
    fsdp_utils.barrier()
    fsdp_utils.teardown()


if __name__ == "__main__":
    run_cli(main)
