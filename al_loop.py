"""The AL loop's rounds: the run they share (Run: built once from the checked flags by
acquisition_AL.open_run; no argparse past that door) and one round's stages: select (score,
stratify), export for annotators, train, finish.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import al_lora
import fsdp_utils
from al_annotation import AnnotationConfig, export_for_annotators
from al_datasets import take
from al_lora import LoraSpec
from al_prompts import Encodings, pad_id_of, truncate_prompt
from al_scoring import GEN_KV_TOKENS, ScoreConfig, answer_nll_parts, generate, stop_ids
from al_selection import SelectConfig, candidates, fill_to_cost
from al_similarity import Target, less_modules, similarity_guard
from al_strategies import (
    Scoring,
    allowed,
    reads_answers,
    score_candidates,
    select,
    select_by_cost,
    shortlist,
    strategy,
)
from al_training import NonFiniteLoss, TrainConfig, save_trained, summary, train
from al_utils import (
    InputError,
    RunPaths,
    answer_words,
    atomic_write_json,
    atomic_write_jsonl,
    describe,
    kill_point,
    plot_hist,
    read_jsonl,
    round_rng,
    waiting_line,
)

RNG_SHUFFLE, RNG_FRACTION, RNG_SELECT, RNG_SCORE = 0, 1, 2, 3


@dataclass(frozen=True)
class Configs:
    """What the flags say, checked once: scoring, selection, training (its seed is the run's; each
    round trains with seed + round), LoRA (None: full fine-tuning) and annotation."""
    score: ScoreConfig
    select: SelectConfig
    train: TrainConfig
    lora: LoraSpec | None
    annotation: AnnotationConfig


@dataclass(frozen=True)
class RunSpec:
    """The settings the rounds read past the script's door (the rest are in Configs)."""
    seed: int
    per_round: int  # --num_acquisition_samples: examples (or answer words) per round
    init_checkpoint: str
    model_config: str | None
    prompt_template: str
    activation_checkpointing: bool
    words_budget: bool  # --budget_unit answer_words
    warm_start: bool
    save_opt: bool
    plot_scores: bool
    save_file_name: str | None


@dataclass
class RunState:
    """What changes as a run goes. `record` is state.json (the flags, held-out ids, rounds done, how
    far the round in progress got, the round log, ...), written by rank 0 through save(); the
    labelled set and the last model's place are rebuilt from the round files on --resume. One
    writer per field: mark() the stage inside a round, finish() a round's end."""
    path: str  # <run>/state.json
    record: dict
    labelled: list = field(default_factory=list)  # in selection order
    model_source: str = ""  # where the last finished round's model is

    @property
    def rounds_done(self) -> int:
        return self.record["rounds_done"]

    def save(self) -> None:
        if fsdp_utils.is_main():
            atomic_write_json(self.path, self.record)

    def mark(self, rnd: int, stage: str, **more) -> None:
        """Record how far round `rnd` got (`in_round`: selection, training; a resume redoes nothing
        before it) and save; finish() clears it."""
        self.record["in_round"] = {"round": rnd, "finished": stage, **more}
        self.save()

    def trained(self, ckpt: str) -> None:
        """The round's model is at `ckpt` (a chained run's first source no longer applies)."""
        self.model_source = ckpt
        self.record.pop("model_source", None)

    def failed(self, rnd: int, step: int, loss: float, lr: float) -> None:
        self.record["failed"] = {"round": rnd, "step": step, "loss": str(loss), "lr": lr}
        self.save()

    def finish(self, rnd: int, log: dict) -> None:
        """Round `rnd` is done: its line of the round log (replacing a redone round's) and save."""
        self.record["rounds_done"] = rnd
        self.record.pop("in_round", None)
        self.record["round_log"] = [x for x in self.record["round_log"] if x["round"] < rnd] + [{"round": rnd, **log}]
        self.save()


@dataclass
class Run:
    """One run directory and what its rounds share: the frozen settings (spec, cfg), the pool, and
    the state that changes."""
    spec: RunSpec
    paths: RunPaths
    state: RunState
    by_id: Mapping  # id -> record (al_datasets.Pool)
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
    model: Any = None  # the current round's model, once loaded
    lock: Any = None  # <run>/.lock, held (rank 0) while this object lives

    @property
    def main(self) -> bool:
        return fsdp_utils.is_main()

    @property
    def labelled(self) -> list:
        return self.state.labelled

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, file=sys.stderr)

    def round_model(self, rnd: int):
        """The model round `rnd` scores with, loaded once: the last round's, or the base for round 0."""
        if self.model is None:
            self.model = self.load(self.state.model_source if rnd > 0 else self.spec.init_checkpoint)
        return self.model

    def load(self, path: str, lora: LoraSpec | None = None):
        return fsdp_utils.load_model(path, self.device, self.spec.model_config,
                                     self.spec.activation_checkpointing, lora)

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
        return self.words_of([i])[0]

    def words_of(self, ids: list) -> list[int]:
        """Answer words of `ids`: the annotators' answers, or the pool's (its records taken in batches)."""
        if self.annotate:
            return [answer_words(self.labels[i]) for i in ids]
        return [answer_words(r["output"]) for r in take(self.by_id, ids)]

    def spent(self) -> int:
        """The budget used so far, in --budget_unit."""
        return sum(self.words_of(self.labelled)) if self.words_budget else len(self.labelled)

    @property
    def words_budget(self) -> bool:
        return self.spec.words_budget




def round_strategy(run: Run, rnd: int) -> str:
    """Round 0 picks the seed set by --seed_strategy, later rounds by --sampling_strategy."""
    return run.cfg.select.seed_strategy if rnd == 0 else run.cfg.select.strategy


def select_round(run: Run, rnd: int) -> tuple[list[dict], list[dict]]:
    """The round's picks ({id, bucket, score}, selection order) and its candidates' scores; reuses
    a selection made before an interruption. No picks: nothing left to select."""
    sel_file, scores_file = run.paths.round_file(rnd, "selected.jsonl"), run.paths.round_file(rnd, "scores.jsonl")
    taken = set(run.labelled)
    remaining = [i for i in run.order if i not in taken]
    n = want = min(run.spec.per_round, run.budget - run.spent())  # examples, or answer words
    # rank 0 decides what is on disk, so every rank takes the same branch (same collectives)
    if fsdp_utils.broadcast(os.path.isfile(sel_file)):
        return read_jsonl(sel_file), read_jsonl(scores_file) if os.path.isfile(scores_file) else []
    scores: list[dict] = []
    sel = dataclasses.replace(run.cfg.select, strategy=round_strategy(run, rnd))
    if rnd == 0 and sel.strategy == "random":  # the seed set: the first n of the seeded order
        picked = [{"id": i, "bucket": None, "score": None} for i in remaining]
        picked = fill_to_cost(picked, want, run.words) if run.words_budget else picked[:n]
    else:
        cands = candidates(remaining, run.cfg.select.fraction, round_rng(run.spec.seed, rnd, RNG_FRACTION)) \
            if rnd > 0 else remaining
        if run.words_budget and cands:  # examples the strategy picks first: the words over the mean answer
            n = math.ceil(want / np.mean(run.words_of(cands)))
        if len(cands) < n:
            run.log(f"warning: round {rnd}: only {len(cands)} candidates for {n} slots")
        # only what this round scores (and compares with); a pool's answers only where they are read
        run.enc.ensure(cands, answers=reads_answers(sel.strategy, run.cfg.score.grad_answers))
        run.enc.ensure(run.labelled, answers=True)
        scores, keep_of = score_round(run, rnd, sel.strategy, cands, n)
        kill_point("scoring", rnd)
        rng_of = lambda: round_rng(run.spec.seed, rnd, RNG_SELECT)  # noqa: E731
        picked, skipped = fsdp_utils.broadcast(
            select_by_cost(scores, n, want, run.words, rnd, sel, run.cfg.score, rng_of, keep_of) if run.words_budget
            else select(scores, n, rnd, sel, run.cfg.score, rng_of(), keep_of() if keep_of else None))
        skipped = set(skipped)
        for r in scores:
            if r["id"] in skipped:
                r["skipped_similar"] = True
        if run.main:
            atomic_write_jsonl(scores_file, scores)
            if run.spec.plot_scores:
                plot_hist([r["score"] for r in scores], run.paths.round_file(rnd, "scores.png"),
                          f"{sel.strategy} scores, round {rnd}")
    if picked:
        if run.main:
            atomic_write_jsonl(sel_file, picked)
        run.state.mark(rnd, "selection")
    return picked, scores


def score_round(run: Run, rnd: int, name: str, cands: list, n: int) -> tuple[list[dict], Any]:
    """Every candidate's score under the last round's model, data-parallel over the ranks, and a
    maker of the --max_similarity guard over the candidates' and the labelled set's embeddings
    (or None)."""
    if not cands:
        return [], None
    tau = run.cfg.select.max_similarity
    if strategy(name).model or tau is not None:
        run.round_model(rnd)
    local = (lambda: fsdp_utils.full_params(run.model)) if run.model is not None else contextlib.nullcontext
    sc = Scoring(run.model, run.tok, run.enc, run.by_id, run.cfg.score, round_rng(run.spec.seed, rnd, RNG_SCORE),
                 run.target, run.labelled, n, template=run.spec.prompt_template)
    if strategy(name).grads:  # LESS: Adam moments of the last round (with --save_opt)
        src = run.state.model_source
        sc.betas = (run.cfg.train.adam_beta1, run.cfg.train.adam_beta2)
        if run.cfg.lora is not None:  # the last round's adapters, or (none there) those this round starts from
            saved = al_lora.read_adapters(src) if rnd > 0 else None
            sc.adapters, sc.moments = saved or (al_lora.fresh_adapters(
                run.model, dataclasses.replace(run.cfg.lora, seed=run.spec.seed + rnd)), None)
        elif rnd > 0 and fsdp_utils.has_optimizer_state(src):
            sc.moments = fsdp_utils.adam_moments(run.model, src, [k for k, _ in less_modules(run.model)])
    k, pre = max(run.cfg.score.shortlist, n), None
    if strategy(name).grads and run.cfg.score.shortlist and len(cands) > k:
        with local():
            cands, pre = shortlist(cands, sc, k)
        run.log(f"round {rnd}: less takes gradients for the {k} of {len(pre)} candidates rds ranks highest")
    # every rank holds the full parameters for its own slice, except under less: its answers and
    # gradients run with the ranks in step, the model sharded (a layer gathered at a time)
    with contextlib.nullcontext() if strategy(name).grads else local():
        rows = score_candidates(name, cands, sc, fsdp_utils.my_slice(len(cands)), fsdp_utils.gather_lists)
    for r in rows if pre else ():
        r["rds_score"] = pre[r["id"]]
    if tau is None:
        return rows, None
    ids = cands + run.labelled
    with local():
        vecs = fsdp_utils.gather_lists(sc.prompt_vectors(ids[fsdp_utils.my_slice(len(ids))]).tolist())
    emb = dict(zip(ids, np.array(vecs, dtype=np.float32)))
    return rows, lambda: similarity_guard(emb, run.labelled, tau)


def train_round(run: Run, rnd: int) -> dict:
    """Train on everything labelled (train_labelled), or reuse a round trained before an
    interruption. Returns its stats."""
    ckpt = run.paths.ckpt
    meta = fsdp_utils.broadcast(fsdp_utils.checkpoint_meta(ckpt) if os.path.isdir(ckpt) else {})
    if meta.get("round") == rnd:
        run.model = run.load(ckpt)
        tstats = meta["train"]
    else:
        tstats = train_labelled(run, rnd)
        run.state.mark(rnd, "training")
    run.state.trained(ckpt)
    return tstats


def train_labelled(run: Run, rnd: int) -> dict:
    """Round `rnd`'s training on the labelled set: from the base (as the original) or, with
    --warm_start, from the last round's weights (under LoRA: fresh adapters on either, merged after
    training), seeded by seed + round; saves the checkpoint. Returns its stats."""
    spec, ckpt, lr = run.spec, run.paths.ckpt, run.cfg.train.lr
    lora = dataclasses.replace(run.cfg.lora, seed=spec.seed + rnd) if run.cfg.lora is not None else None
    warm = spec.warm_start and rnd > 0
    base = run.state.model_source if warm else spec.init_checkpoint
    if lora is not None or not warm or run.model is None:  # else: warm, from the model in memory
        run.model = run.load(base, lora)
    torch.manual_seed(spec.seed + rnd)
    tcfg = dataclasses.replace(run.cfg.train, seed=spec.seed + rnd)
    run.enc.ensure(run.labelled, answers=True)
    try:
        stats, opt = train(run.model, [run.enc[i] for i in run.labelled], tcfg, pad_id_of(run.tok),
                           on_step=lambda step: kill_point("training", rnd))
    except NonFiniteLoss as e:  # keep the last good round; say how to go on
        run.state.failed(rnd, e.step, e.loss, lr)
        kept = f"as it was after round {rnd - 1}" if rnd else "with its seed set selected"
        raise InputError(f"round {rnd}: training loss became {e.loss} at optimizer step {e.step} (--lr {lr}); "
                         f"the run is kept {kept}: go on with a lower --lr, e.g. "
                         f"python acquisition_AL.py --model_path {run.paths.run} --resume --lr {lr / 10:g} "
                         "(recorded in state.json `changes`)") from None
    tstats = summary(stats)
    save_trained(run.model, run.tok, ckpt, {"round": rnd, "labelled": len(run.labelled), "train": tstats,
                                            "prompt_template": spec.prompt_template},
                 opt if spec.save_opt else None, lora, base)
    return tstats


def rebuild_checkpoint(run: Run) -> None:
    """A run resumed without its last round's weights (its round logs copied to another machine,
    or the checkpoint deleted for disk): train that round again. Every round trains from the base
    on the labelled set with a fixed seed, so the weights (and --save_opt's moments) come back as
    they were, up to the machine's floating-point arithmetic; --warm_start's depend on every round."""
    done, ckpt = run.state.rounds_done, run.paths.ckpt
    if run.spec.warm_start:
        raise InputError(f"--resume: {ckpt}: no checkpoint, and a --warm_start run's weights depend on every "
                         "round, so they cannot be rebuilt: put the checkpoint back")
    run.log(f"--resume: {ckpt}: no checkpoint; training round {done} again on its {len(run.labelled)} "
            "labelled examples to rebuild it")
    train_labelled(run, done)
    run.state.trained(ckpt)
    run.model = None  # the next round scores with what was saved, as after any resume


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
    if run.main:
        atomic_write_json(run.paths.round_file(rnd, "metrics.json"), metrics)
        selected = [run.record(i) for i in run.labelled]
        atomic_write_json(run.paths.selected, selected)
        if run.spec.save_file_name:
            atomic_write_json(run.spec.save_file_name, selected)
    run.state.finish(rnd, {"labelled": n_labelled, **cost, "train_loss": tstats["train_loss"], "heldout_loss": held,
                           "test_loss": test})  # last: it marks the round done
    losses = " | ".join(f"{k} {v:.4f}" for k, v in (("held-out", held), ("test", test)) if v is not None)
    spent = f"{n_labelled} labelled, {cost['answer_words']}/{run.budget} answer words" if run.words_budget \
        else f"labelled {n_labelled}/{run.budget}"
    run.log(f"round {rnd} | {spent} | scores {describe(sc)} | train loss {tstats['train_loss']:.4f} | "
            f"{losses or 'no held-out or test set'} | {seconds['total']:.1f}s")


def draft_answers(run: Run, rnd: int, ids: list) -> list[str]:
    """The current model's greedy answers to `ids` (--draft_answers): the base model's for the seed
    set, then the last round's; each rank generates its share."""
    run.round_model(rnd)
    run.enc.ensure(ids)
    cfg, mine = run.cfg.score, ids[fsdp_utils.my_slice(len(ids))]
    prompts = [truncate_prompt(run.enc[i].prompt, cfg.max_length - 1) for i in mine]
    with fsdp_utils.full_params(run.model):
        gens = generate(run.model, prompts, [run.cfg.annotation.draft_max_new_tokens] * len(mine), pad_id_of(run.tok),
                        stop_ids(run.model, run.tok), cfg.max_rows, cfg.progress, "drafts",
                        kv_tokens=GEN_KV_TOKENS)
    return fsdp_utils.gather_lists([run.tok.decode(g, skip_special_tokens=True).strip() for g, _ in gens])


def wait_for_labels(run: Run, rnd: int, picked: list[dict]) -> bool:
    """Export the round's picks that have no answer yet and record that the run waits (True)."""
    drafts = (lambda ids: draft_answers(run, rnd, ids)) if run.cfg.annotation.draft_answers else None
    waiting = export_for_annotators(picked, rnd, run.by_id, run.labels, run.paths, run.cfg.annotation.annotate_out,
                                    run.main, drafts)
    if waiting is None:
        return False
    run.state.mark(rnd, "selection", **waiting)
    run.log(waiting_line(run.paths.run, run.state.record["in_round"]))
    return True


def run_rounds(run: Run, stop_after_round: int | None) -> None:
    """Rounds until the budget is spent (or `stop_after_round`, or the run waits for labels)."""
    rnd, waiting = run.state.rounds_done + 1, False
    while run.spent() < run.budget and (stop_after_round is None or rnd <= stop_after_round):
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
        run.state.labelled += [r["id"] for r in picked]
        t_select = time.time() - t0
        tstats = train_round(run, rnd)
        t_train = time.time() - t0 - t_select
        finish_round(run, rnd, picked, scores, tstats,
                     {"select": t_select, "train": t_train, "total": time.time() - t0})
        rnd += 1
    if not waiting:
        run.log(f"run {run.paths.run}: {len(run.labelled)} labelled in {run.state.rounds_done + 1} rounds; "
                f"selected set {run.paths.selected}, model {run.paths.ckpt}")
