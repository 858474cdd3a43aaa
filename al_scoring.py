"""Per-example loss scoring and generation over token ids: length-sorted batches under a token
budget, masked NLL sums with a shared-prefix cache, answer NLL (held-out and test loss), padding,
and batched generation with per-row caps. Every strategy, the loop's losses and evaluation use these.
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import fsdp_utils
from al_prompts import Encoded, truncate_pair
from al_utils import InputError, flag_of, progress_bar, setting

CLUSTER_EMBEDDINGS = ("tfidf", "hidden")
GRAD_ANSWERS = ("generated", "pool")
GRAD_PROJECTIONS = ("countsketch", "kronecker")
TARGET_AGGREGATIONS = ("mean", "round_robin", "coverage")


@dataclass(frozen=True)
class ScoreConfig:
    """Scoring settings. A field made by setting() is its flag too (al_strategies.add_score_args,
    in this order under --help; the target_ ones under the target section); the strategies that do
    not read one refuse it (check_flag_use)."""
    max_length: int = setting(1024, "scoring truncation in tokens: prompts keep BOS and their last tokens",
                              "model_max_length")
    token_budget: int = setting(2048, "tokens per length-sorted scoring batch; 0 = fixed --batch_size rows",
                                "score_token_budget")
    batch_size: int = setting(4, "rows per scoring batch when --score_token_budget is 0")
    gen_max_new_tokens: int = setting(32, "generation_ppl: tokens generated")
    self_ask_positions: int = setting(3, "self_ask: generated positions whose P(no) is averaged (after EOS: 0)")
    num_clusters: int = setting(10, "cluster: KMeans clusters")
    cluster_embedding: str = setting("tfidf", "cluster: what KMeans clusters (TF-IDF of the text, or mean-pooled "
                                     "hidden states)", choices=CLUSTER_EMBEDDINGS)
    grad_dim: int = setting(8192, "less: dimensions of the randomly projected gradient features")
    grad_projection: str = setting(
        "countsketch", "less: how a gradient becomes --grad_dim features. countsketch: each weight entry added, with a "
        "hashed sign, to a hashed dimension (closest to exact gradients: benchmarks/results/less_projection.md); "
        "kronecker: A^T G B per weight (this project's less before 2026-12-01, as its SmolLM2 experiments ran). "
        "LoRA adapters: countsketch only", choices=GRAD_PROJECTIONS, before="kronecker")
    grad_answers: str = setting("generated", "less: candidates' gradients on the model's own greedy answer (an "
                                "unlabelled pool has no other), or on the pool's answers (an oracle upper bound)",
                                choices=GRAD_ANSWERS)
    shortlist: int = setting(0, "less: take gradients only for the K candidates that rds (prompt embeddings, the "
                             "same target rule) ranks highest, at least the round's batch; the others wait for a "
                             "later round. 0: every candidate")
    ifd_max: float = setting(1.0, "ifd: candidates with IFD above this are never selected (Cherry_LLM drops IFD "
                                  "> 1: the prompt makes the answer harder, a sign of a mismatched pair)")
    target_aggregation: str = setting(
        "mean", "rds, less, bm25: from similarities to each target example to one order. mean: by the mean "
        "similarity (LESS, RDS); round_robin: target examples take turns taking their most similar candidate (RDS+); "
        "coverage: greedy facility location, each pick the one that most raises every target example's best "
        "similarity (near-duplicates wait)", choices=TARGET_AGGREGATIONS, section="target")
    target_normalize: bool = setting(False, "rds, less, bm25 with mean or coverage: z-score each target example's "
                                     "similarities over the candidates first, so no target example dominates (BIDS)",
                                     section="target")
    progress: bool = True

    def __post_init__(self) -> None:
        lows = {"max_length": (2, " (BOS and at least one scored token)"), "token_budget": (0, ""),
                "batch_size": (1, ""), "gen_max_new_tokens": (1, ""), "self_ask_positions": (1, ""),
                "num_clusters": (1, ""), "grad_dim": (1, ""), "shortlist": (0, "")}
        for name, (lo, why) in lows.items():
            if getattr(self, name) < lo:
                raise InputError(f"{flag_of(ScoreConfig, name)}: must be >= {lo}{why}")
        if not self.ifd_max > 0:
            raise InputError("--ifd_max: must be > 0")
        if self.target_normalize and self.target_aggregation == "round_robin":
            raise InputError("--target_normalize: has no effect with --target_aggregation round_robin (each target "
                             "example ranks candidates by its own similarities); leave it out")

    @property
    def max_rows(self) -> int:  # rows per batch (scoring and generation)
        return MAX_BATCH_ROWS if self.token_budget else self.batch_size

    def batches(self, lengths: Sequence[int], groups: Sequence[int] | None = None) -> list[list[int]]:
        return make_batches(lengths, self.token_budget or sys.maxsize, self.max_rows, groups)


# a token budget alone would let thousands of 2-token rows into one batch: cap the rows too
MAX_BATCH_ROWS = 256
# a scoring generation batch's KV cache, in prompt + new tokens: 256 rows of long prompts would hold
# SmolLM2's ~12 GB at 1024 tokens (a 7B's >100 GB), and padding 256 rows to the longest is slow
GEN_KV_TOKENS = 8192


def model_kv_tokens(model, most: int = GEN_KV_TOKENS) -> int:
    """A generation batch's KV budget (tokens) that holds at most the model's own size in KV cache,
    and at most `most`: a small model's batches otherwise hold several times its weights in
    activations (the default model's less answers peaked at 2x forward_ppl's memory; SmolLM2 stays at
    `most`: benchmarks/results/less_gen_memory.md). `most` where the config does not say its shape."""
    c = model.config.get_text_config()
    layers, heads = getattr(c, "num_hidden_layers", None), getattr(c, "num_attention_heads", None)
    if not layers or not heads:
        return most
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    per_token = 2 * layers * (getattr(c, "num_key_value_heads", None) or heads) * head_dim  # K and V, elements
    weights = sum(p.numel() for p in model.parameters())
    return max(1, min(most, weights // per_token))


def make_batches(lengths: Sequence[int], token_budget: int, max_rows: int,
                 groups: Sequence[int] | None = None) -> list[list[int]]:
    """Group row indices sorted by (group, length) so each padded batch holds <= token_budget
    tokens and <= max_rows rows; rows of one group (one template variant) share their prefix."""
    groups = groups if groups is not None else [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (groups[i], lengths[i], i))
    batches, cur = [], []
    for i in order:
        if cur and ((len(cur) + 1) * lengths[i] > token_budget or len(cur) >= max_rows
                    or groups[i] != groups[cur[-1]]):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


PREFIX_MIN_SAVED_TOKENS = 128


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for j in range(n):
        if any(s[j] != first[j] for s in seqs):
            return j
    return n


def _cache_kwarg(model) -> str:
    """The KV cache's name in forward() and its output: transformers 5.24 renamed past_key_values to
    cache (the old name warns until 5.40, then goes); requirements.txt allows either."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def batch_nll(model, seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int,
              prefix_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of NLL over targets seqs[b][starts[b]:] for one batch (starts >= 1).

    The batch's shared token prefix (the alpaca template) is run once and its KV cache reused
    by every row: same numbers, less compute. Rows are right-padded and only their own
    targets count, so a row's score does not depend on its batch-mates.
    """
    dev = next(model.parameters()).device
    B, lens = len(seqs), [len(s) for s in seqs]
    P = min(_common_prefix(seqs), min(lens) - 1) if prefix_cache else 0
    # the prefix's own forward call costs about what ~128 tokens of compute do (tiny model, CPU):
    # take the cache only when it saves more than that
    if P < 2 or (B - 1) * P < PREFIX_MIN_SAVED_TOKENS:
        P = 0
    sums = torch.zeros(B, dtype=torch.float64)
    counts = torch.tensor([max(0, n - s) for n, s in zip(lens, starts)], dtype=torch.float64)
    cache, kv_name = None, _cache_kwarg(model) if P else ""
    if P:
        pre = torch.tensor([list(seqs[0][:P])], device=dev)
        out = model(input_ids=pre, use_cache=True)
        pre_logits = out.logits[0].float()  # [P, V]: position t-1 predicts token t
        pre_nll = F.cross_entropy(pre_logits[:-1], pre[0, 1:], reduction="none").double().cpu()
        csum = torch.cat([torch.zeros(1, dtype=torch.float64), pre_nll.cumsum(0)])  # csum[t] = sum over targets 1..t
        for b, s in enumerate(starts):
            if s < P:
                sums[b] += csum[P - 1] - csum[max(s, 1) - 1]
        # the first token after the prefix is predicted by the prefix's last position
        nxt = torch.tensor([s[P] for s in seqs], device=dev)
        first = F.cross_entropy(pre_logits[-1:].expand(B, -1), nxt, reduction="none").double().cpu()
        sums += torch.where(torch.tensor(starts) <= P, first, torch.zeros_like(first))
        cache = getattr(out, kv_name)
        cache.batch_repeat_interleave(B)
    S = max(lens) - P
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    tgt = torch.full((B, S), -100, dtype=torch.long)
    for b, s in enumerate(seqs):
        row = torch.tensor(s[P:], dtype=torch.long)
        ids[b, : len(row)] = row
        lo = max(starts[b], P + 1)  # first target predicted by the suffix logits
        if lo < len(s):
            tgt[b, lo - P - 1: len(s) - P - 1] = torch.tensor(s[lo:], dtype=torch.long)
    pos = torch.arange(P, P + S).unsqueeze(0).expand(B, -1)
    # Right padding under causal attention: a real token never sees the pads after it, so no
    # padding mask is needed (pads' own outputs are never scored). Without a mask, attention
    # takes its causal fast path, which is what makes padded batches cheap on CPU.
    kv = {kv_name: cache} if cache is not None else {}
    logits = model(input_ids=ids.to(dev), position_ids=pos.to(dev), use_cache=cache is not None, **kv).logits.float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.to(dev).reshape(-1),
                          ignore_index=-100, reduction="none").view(B, S)
    sums += nll.double().sum(1).cpu()
    return sums, counts


def sequence_nll(model, seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int, cfg: ScoreConfig,
                 desc: str = "scoring", prefix_cache: bool = True,
                 groups: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (sum, count) of NLL over seqs[i][starts[i]:], batched by length and token budget."""
    sums, counts = np.zeros(len(seqs)), np.zeros(len(seqs))
    was_training = model.training
    model.eval()
    with progress_bar(total=len(seqs), desc=desc, enabled=cfg.progress, leave=False) as bar:
        for idx in cfg.batches([len(s) for s in seqs], groups):
            s, c = batch_nll(model, [seqs[i] for i in idx], [starts[i] for i in idx], pad_id, prefix_cache)
            sums[idx], counts[idx] = s.numpy(), c.numpy()
            bar.update(len(idx))
    model.train(was_training)
    return sums, counts


def mean_nll(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def answer_nll(model, encoded: Sequence[Encoded], pad_id: int, max_len: int, cfg: ScoreConfig,
               part: slice = slice(None), gather: Callable[[list], list] = lambda x: x) -> tuple[float, float]:
    """Mean NLL of the answers given their prompts (truncated as in training): token-weighted,
    and the mean of per-example means."""
    s, c = answer_nll_parts(model, encoded, pad_id, max_len, cfg, part, gather)
    return float(s.sum() / c.sum()), float(np.mean(s / c))


def answer_nll_parts(model, encoded: Sequence[Encoded], pad_id: int, max_len: int, cfg: ScoreConfig,
                     part: slice = slice(None), gather: Callable[[list], list] = lambda x: x
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per example (in order): the summed NLL of its answer tokens and how many were scored.
    Data-parallel like score_candidates: this process scores encoded[part] and `gather`
    concatenates every rank's share."""
    pairs = [truncate_pair(e.prompt, e.answer, max_len) for e in encoded[part]]
    s, c = sequence_nll(model, [p + a for p, a, _ in pairs], [len(p) for p, _, _ in pairs], pad_id, cfg,
                        desc="answer NLL")
    return np.array(gather(s.tolist())), np.array(gather(c.tolist()))


def pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ids and attention mask. Right padding (training, embeddings, gradients): under causal
    attention a real token never sees the pads after it. Left padding (generation): it appends on
    the right, so every row's last real token must sit in the last column."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        cols = slice(L - len(s), L) if left else slice(0, len(s))
        ids[b, cols] = torch.tensor(list(s))
        mask[b, cols] = 1
    return ids, mask


def stop_ids(model, tokenizer) -> list[int]:
    """The ids generation stops at: the tokenizer's EOS and every id of the model's
    generation_config.eos_token_id (an int or a list), as HF's generate() does by default. Llama 3
    Instruct's lists <|eot_id|>, where its chat turns end, beside its tokenizer's <|end_of_text|>;
    Qwen2.5 Instruct's lists <|endoftext|> beside <|im_end|>."""
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(extra if isinstance(extra, (list, tuple)) else [extra])}
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], max_new: Sequence[int], pad_id: int, stop: Sequence[int],
             batch_size: int, progress: bool = True, desc: str = "generating", sampling: dict | None = None,
             seed: int = 0, of_logits: Callable[[list[int], torch.Tensor], Any] | None = None, in_step: bool = False,
             kv_tokens: int | None = None) -> list[tuple[list[int], Any]]:
    """Batched KV-cache decoding (scoring and evaluation), left-padded, batched in length order,
    returned in input order: per prompt (generated ids up to and including the first stop id,
    of_logits(those ids, the raw logits [n, V] that produced them) or None). A row keeps only what
    of_logits makes of its logits, so a batch's [B, n, V] (6 MB a row on a 49k vocabulary) is freed
    before the next batch (benchmarks/results/gen_logits.md).

    Row i stops at a stop id (stop_ids) or after max_new[i] tokens, whatever its batch-mates do, so
    greedy output does not depend on the batch size or the rank count. `sampling` (generate()'s
    temperature, top_p) samples instead of greedy, seeded per batch from `seed`.

    `in_step`: the model is sharded (FSDP2, outside full_params) and gathers each layer as it runs,
    a collective: every rank makes as many generate() calls (a rank short of batches decodes a
    1-token dummy) and steps until every rank's batch is done (HF's synced_gpus).

    `kv_tokens`: a batch also holds at most this many prompt + new tokens (its KV cache), so short
    prompts decode many rows at a time: a decode step reads every weight whatever the rows, so more
    rows per step cost little more (benchmarks/results/less_gen_rows.md)."""
    dev = next(model.parameters()).device
    lengths = [len(p) + m for p, m in zip(prompts, max_new)] if kv_tokens else [len(p) for p in prompts]
    batches = make_batches(lengths, kv_tokens or sys.maxsize, batch_size)
    results: list = [None] * len(prompts)
    model.eval()
    kw = {"do_sample": True, **sampling} if sampling else {"do_sample": False}
    stops = set(stop)
    if in_step:
        kw["synced_gpus"] = True
        for _ in range(fsdp_utils.max_over_ranks(len(batches)) - len(batches)):
            model.generate(input_ids=torch.full((1, 1), pad_id, device=dev), max_new_tokens=1, pad_token_id=pad_id,
                           **kw)
    first = 0  # the batch's first position in length order: its sampling seed, as before batches had sizes
    for idx in progress_bar(batches, desc=desc, enabled=progress, leave=False):
        ids, mask = pad([prompts[i] for i in idx], pad_id, left=True)
        L = ids.size(1)
        torch.manual_seed(seed + first)
        first += len(idx)
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                             max_new_tokens=max(max_new[i] for i in idx), pad_token_id=pad_id,
                             eos_token_id=list(stop) or None,
                             output_logits=of_logits is not None, return_dict_in_generate=True, **kw)
        gen = out.sequences[:, L:].cpu()
        for b, i in enumerate(idx):
            row = gen[b, : max_new[i]].tolist()
            n = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
            # one row's [n, V] at a time: no second copy of the batch's logits beside generate()'s
            kept = of_logits(row[:n], torch.stack([step[b] for step in out.logits[:n]]).float().cpu()) \
                if of_logits else None
            results[i] = (row[:n], kept)
        del out  # else this batch's logits stay alive through the next batch's generate()
    return results
