"""Fine-tuning as a library: the training config and its flags, the loss on answer tokens, the
train loop (data-parallel under torchrun), and saving a trained checkpoint. train_AL.py is its
command line; acquisition_AL.py calls train() once per round.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import al_lora
import fsdp_utils
from al_lora import LoraSpec
from al_prompts import Encoded, truncate_pair, truncate_prompt
from al_scoring import pad
from al_utils import InputError, add_config_args, config_from, flag_of, progress_bar, setting


class NonFiniteLoss(InputError):
    """The training loss became NaN or infinite: nothing of this training is saved."""

    def __init__(self, step: int, total: int, loss: float, lr: float):
        super().__init__(f"training: the loss became {loss} at optimizer step {step} of {total} (peak lr {lr:.3g}); "
                         "nothing was saved: lower --lr")
        self.step, self.loss, self.lr = step, loss, lr


@dataclass
class TrainConfig:
    """Training settings. A field made by setting() is its flag too (add_train_args), with the
    original's values as defaults; seed and progress come from the run."""
    lr: float = setting(2e-5, "peak learning rate (AdamW)")
    epochs: int = setting(3, "passes over the labelled set")
    train_batch_size: int = setting(1, "rows per micro-batch")
    grad_accum: int = setting(16, "micro-batches per optimizer step")
    max_length: int = setting(2048, "training context length; longer examples keep their answer tokens",
                              flag="train_max_length")
    weight_decay: float = setting(0.0, "AdamW weight decay (on weight matrices; none on vectors)")
    adam_beta1: float = setting(0.9, "AdamW beta1 (PyTorch's default, as the original used)")
    adam_beta2: float = setting(0.999, "AdamW beta2 (PyTorch's default)")
    warmup_ratio: float = setting(0.03, "share of steps in linear warmup")
    max_grad_norm: float = setting(1.0, "gradient clipping")
    seed: int = 42  # of the epoch order: the run's seed + the round
    progress: bool = True

    def __post_init__(self) -> None:
        """Out-of-range and non-finite values, named by their flag, before anything is created
        (a NaN learning rate would otherwise fail inside torch, an infinite one train to NaN)."""
        def flag(name: str) -> str:
            return flag_of(TrainConfig, name)

        for f in ("lr", "weight_decay", "adam_beta1", "adam_beta2", "warmup_ratio", "max_grad_norm"):
            if not math.isfinite(getattr(self, f)):
                raise InputError(f"{flag(f)}: must be a finite number, not {getattr(self, f)}")
        for f in ("epochs", "train_batch_size", "grad_accum", "max_length"):
            if getattr(self, f) < 1:
                raise InputError(f"{flag(f)}: must be >= 1")
        if self.lr <= 0:
            raise InputError("--lr: must be > 0")
        if self.max_grad_norm <= 0:
            raise InputError("--max_grad_norm: must be > 0")
        if self.weight_decay < 0:
            raise InputError("--weight_decay: must be >= 0")
        for f in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, f) < 1:
                raise InputError(f"--{f}: must be in [0, 1)")
        if not 0 <= self.warmup_ratio <= 1:
            raise InputError("--warmup_ratio: must be in [0, 1]")


def add_train_args(p: argparse.ArgumentParser, runtime: Any) -> None:
    """Training flags shared by train_AL.py and acquisition_AL.py, from TrainConfig's fields;
    `runtime` is the script's runtime group (al_utils.add_common_args)."""
    add_config_args(p.add_argument_group("training"), TrainConfig)
    runtime.add_argument("--activation_checkpointing", action="store_true",
                         help="recompute layer activations in backward: less memory, ~30%% more compute")
    al_lora.add_lora_args(p)


def train_config(args: argparse.Namespace, seed: int, progress: bool = True) -> TrainConfig:
    return config_from(TrainConfig, args, seed=seed, progress=progress)


def lr_at(step: int, total: int, warmup: int) -> float:
    """Multiplier for optimizer step `step` (0-based): linear warmup, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


Example = tuple  # (prompt ids, answer ids[, 0/1 per prompt token: learnt too (earlier assistant turns)])


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding, except the
    prompt tokens an example's mask marks)."""
    ids, mask = pad([e[0] + e[1] for e in examples], pad_id)
    labels = torch.full_like(ids, -100)
    for b, (p, a, *m) in enumerate(examples):
        labels[b, len(p): len(p) + len(a)] = torch.tensor(a)
        if m and m[0] is not None:
            keep = torch.tensor(m[0], dtype=torch.bool)
            labels[b, : len(p)][keep] = torch.tensor(p)[keep]
    return ids, mask, labels


def learnt_tokens(e: Example) -> int:
    return len(e[1]) + (sum(e[2]) if len(e) > 2 and e[2] is not None else 0)


def token_nll_sum(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token NLL over labelled positions (the answer tokens)."""
    dev = next(model.parameters()).device
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                           labels[:, 1:].to(dev).reshape(-1), ignore_index=-100, reduction="sum")


def accumulate_grads(model, rows: list[Example], cfg: TrainConfig, pad_id: int) -> float:
    """Gradients of one global step (rows: every rank's examples of it, in order) on this rank's
    contiguous share; returns the step's loss = answer-token NLL sum / answer tokens, all ranks."""
    W, R = fsdp_utils.world(), fsdp_utils.rank()
    per_rank = cfg.train_batch_size * cfg.grad_accum
    n_tok = sum(map(learnt_tokens, rows))
    # every rank runs the same number of micro-batches (FSDP's collectives need it): a
    # rank whose share of a short last step runs out repeats a row with weight 0
    shares = [rows[r * per_rank: (r + 1) * per_rank] for r in range(W)]
    n_micro = max(math.ceil(len(sh) / cfg.train_batch_size) for sh in shares)
    mine = shares[R]
    step_loss = 0.0
    for j in range(n_micro):
        mb = mine[j * cfg.train_batch_size: (j + 1) * cfg.train_batch_size]
        weight = W / n_tok if mb else 0.0  # FSDP averages gradients over ranks: undo with W
        fsdp_utils.set_grad_sync(model, j == n_micro - 1)
        loss = token_nll_sum(model, *collate(mb or rows[:1], pad_id)) * weight
        loss.backward()
        step_loss += loss.item() / W
    return fsdp_utils.all_reduce_sum(step_loss)


def train(model, examples: Sequence[Encoded], cfg: TrainConfig, pad_id: int,
          on_step: Callable[[int], None] | None = None) -> tuple[dict, torch.optim.Optimizer]:
    """Train `model` (already sharded under torchrun) in place.

    An optimizer step covers train_batch_size x grad_accum x world examples of a seeded epoch
    order; each rank takes a contiguous share, so every example is used exactly once per epoch.
    Loss per step = summed answer-token NLL / answer tokens over the whole global step (answer
    tokens: the answer, and a multi-turn conversation's earlier assistant turns), so it
    does not depend on how the step is split over micro-batches or ranks. Returns stats: steps,
    per-step losses, learning rates and tokens read, truncations, token counts; and the optimizer.
    `on_step(step)` runs after each optimizer step (the loop's crash-test hook)."""
    t0 = time.time()
    pairs, truncated = [], 0
    for e in examples:
        if not e.answer:
            raise InputError("training: an example has no answer tokens")
        p, a, cut = truncate_pair(e.prompt, e.answer, cfg.max_length)
        m = e.prompt_loss()  # cut like the prompt (truncate_prompt picks positions by length alone)
        pairs.append((p, a, truncate_prompt(m, len(p)) if m else None))
        truncated += cut
    per_step = cfg.train_batch_size * cfg.grad_accum * fsdp_utils.world()
    steps_per_epoch = math.ceil(len(pairs) / per_step)
    total = steps_per_epoch * cfg.epochs
    warmup = math.ceil(cfg.warmup_ratio * total)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]  # under LoRA: the adapters only
    opt = fsdp_utils.adamw(params, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, lrs, tokens, step_tokens = [], [], 0, []
    bar = progress_bar(total=total, desc="training", enabled=cfg.progress and fsdp_utils.is_main(),
                       leave=False)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        for s in range(steps_per_epoch):
            rows = [pairs[i] for i in order[s * per_step: (s + 1) * per_step]]
            step_loss = accumulate_grads(model, rows, cfg, pad_id)
            if not math.isfinite(step_loss):  # the same on every rank: the loss is all-reduced
                raise NonFiniteLoss(len(losses) + 1, total, step_loss, cfg.lr)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = cfg.lr * lr_at(len(lrs), total, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            lrs.append(lr)
            tokens += sum(map(learnt_tokens, rows))
            step_tokens.append(sum(len(p) + len(a) for p, a, _ in rows))  # what the step read (benchmarks)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if on_step is not None:
                on_step(len(losses))
    bar.close()
    model.eval()
    last = losses[-steps_per_epoch:]
    return {"steps": total, "warmup_steps": warmup, "losses": losses, "lrs": lrs,
            "train_loss": sum(last) / len(last), "examples": len(pairs), "answer_tokens": tokens,
            "step_tokens": step_tokens, "truncated": truncated, "seconds": time.time() - t0}, opt


def summary(stats: dict) -> dict:
    """train()'s stats without the per-step lists: what a checkpoint's meta and metrics.json keep."""
    return {k: v for k, v in stats.items() if k not in ("losses", "lrs", "step_tokens")}


def save_trained(model, tok, path: str, meta: dict, opt: torch.optim.Optimizer | None,
                 lora: LoraSpec | None, base: str) -> None:
    """Save a trained model as a checkpoint; a LoRA model is first merged into an ordinary one (in
    place: what stays in memory is what the checkpoint loads as) and its adapters, relative to
    `base`, go to the checkpoint's adapter/ folder. `opt` is saved too when given: with the
    checkpoint, or under LoRA the adapters' moments in adapter/ (what less preconditions with)."""
    if lora is None:
        fsdp_utils.save_checkpoint(model, tok, path, meta, opt)
        return
    moments = al_lora.adapter_moments(model, opt) if opt is not None else None
    adapters = al_lora.merge(model)
    fsdp_utils.save_checkpoint(model, tok, path, {**meta, "lora": al_lora.as_meta(lora)}, extra=lambda d: (
        al_lora.save_adapter(os.path.join(d, al_lora.ADAPTER_DIR), lora, adapters, base, moments)))
