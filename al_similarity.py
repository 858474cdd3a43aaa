"""Similarity-based selection: prompt embeddings (rds, typiclust, the --max_similarity guard and
cluster --cluster_embedding hidden), the target set that says what "good" means, and the
selection rules built on them.

Embeddings (docs/design.md): the current model's final hidden states, mean-pooled over the prompt
tokens after BOS (the first token), L2-normalised; cosine = dot product.
"""
from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor

import fsdp_utils
from al_datasets import load_records, read_rows
from al_lora import Adapter
from al_prompts import Encoded, encode_records
from al_scoring import ScoreConfig, pad
from al_selection import take_in_turns
from al_utils import InputError, setting


@torch.no_grad()
def embed(model, seqs: Sequence[Sequence[int]], pad_id: int, cfg: ScoreConfig) -> np.ndarray:
    """[N, hidden] unit vectors: each sequence's final hidden states averaged over its tokens after
    the first. Right-padded length-sorted batches; causal attention means a real token never sees
    the pads after it, so no mask is needed and a row's vector does not depend on its batch."""
    out = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)
    if not len(seqs):
        return out
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    for idx in cfg.batches([len(s) for s in seqs]):
        x, m = pad([seqs[i] for i in idx], pad_id)
        m = m.float()
        m[:, 0] = 0  # after BOS
        h = model.model(input_ids=x.to(dev)).last_hidden_state.float().cpu()
        v = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        out[idx] = torch.nn.functional.normalize(v, dim=-1).numpy()
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------
# the target set


@dataclass
class Target:
    """Examples of what the model should get good at, split into groups scored separately."""
    path: str
    records: list[dict]
    enc: list[Encoded]
    groups: list[str]  # group of each record ("" when there is no --target_group_field)


@dataclass(frozen=True)
class TargetConfig:
    """What the model should get good at: each field is its flag too (al_strategies.add_selection_args);
    how similarities to it become an order is ScoreConfig's (target_aggregation, target_normalize)."""
    file: str | None = setting(None, "examples of the wanted behaviour (any pool format; answers optional); pool "
                               "records with the same instruction and input are never selected", flag="target_file",
                               type=str)
    group_field: str | None = setting(
        None, "a target column (e.g. category) splitting it into groups scored separately: a candidate's score is "
        "the max over groups of its mean similarity to the group (--target_aggregation mean only)",
        flag="target_group_field", type=str)


def load_target(path: str, group_field: str | None, tok, needs_answers: str = "", template: str = "alpaca") -> Target:
    """Read and check a target file like a pool; `needs_answers` (the reason) makes a record
    without an answer an error. Every group needs 2 examples for a mean similarity."""
    records = load_records(path, require_output=needs_answers, template=template)
    groups = [""] * len(records)
    if group_field:
        for j, ((line, row), rec) in enumerate(zip(read_rows(path), records)):
            value = rec.get(group_field, row.get(group_field) if isinstance(row, dict) else None)
            if value is None or not str(value).strip():
                raise InputError(f"{path}:{line}: {group_field}: missing (--target_group_field names a column "
                                 "every target record needs)")
            groups[j] = str(value)
    for g in sorted(set(groups)):
        n = groups.count(g)
        if n < 2:
            where = f"group {g!r} of --target_group_field {group_field}" if group_field else "the target"
            raise InputError(f"{path}: (records): {where} has {n} example; a mean similarity needs at least 2")
    enc = encode_records(tok, records, template)
    return Target(path, records, [enc[r["id"]] for r in records], groups)


def target_keys(target: Target | None) -> set[tuple[str, str]]:
    """(instruction, input) of every target record: pool records equal to one are never selected."""
    return {(r["instruction"], r["input"]) for r in target.records} if target else set()


def group_similarity(X: np.ndarray, T: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Per row of X: the max over groups of the mean cosine to that group's target vectors
    (= dot product with the group's mean vector), and which group gave it."""
    names = sorted(set(groups))
    centroids = np.stack([T[[j for j, g in enumerate(groups) if g == name]].mean(0) for name in names])
    sims = X @ centroids.T  # [N, groups]
    best = sims.argmax(1)
    return sims[np.arange(len(X)), best], [names[b] for b in best]


def group_mean(S: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """group_similarity from a similarity matrix S [candidates, targets]: per row the max over groups
    of the mean of the group's columns, and which group gave it."""
    names = sorted(set(groups))
    means = np.stack([S[:, [j for j, g in enumerate(groups) if g == name]].mean(1) for name in names], 1)
    best = means.argmax(1)
    return means[np.arange(len(S)), best], [names[b] for b in best]


# ----------------------------------------------------------------------------------------------
# aggregation over target examples (--target_aggregation, --target_normalize): from the matrix
# S [candidates, targets] to one order of the candidates, best first


def normalize_targets(S: np.ndarray) -> np.ndarray:
    """Each target's column z-scored over the candidates (BIDS, Dai et al. 2025: some target
    examples draw larger similarities from everything; normalised, each counts alike). A constant
    column becomes 0."""
    sd = S.std(0)
    return (S - S.mean(0)) / np.where(sd > 0, sd, 1.0)


def round_robin_order(S: np.ndarray) -> tuple[list[int], list[int]]:
    """RDS+'s selection (Ivison et al. 2025): the target examples take turns, in file order, each
    taking its most similar candidate not yet taken; a target whose candidates are all taken
    passes. Returns (candidate rows best first, the target that took each). Ties: the earlier
    candidate."""
    N, T = S.shape
    ranked = [np.argsort(-S[:, j], kind="stable") for j in range(T)]
    at = [0] * T
    taken = np.zeros(N, bool)
    order, by = [], []
    while len(order) < N:
        for j in range(T):
            while at[j] < N and taken[ranked[j][at[j]]]:
                at[j] += 1
            if at[j] < N:
                c = int(ranked[j][at[j]])
                taken[c] = True
                order.append(c)
                by.append(j)
    return order, by


def coverage_order(S: np.ndarray) -> list[int]:
    """Greedy facility location over the target (a diversity-aware rule): the next candidate is
    the one that most raises sum_t max(similarity of target t to a picked candidate), each target
    starting from its least similar candidate. A candidate that adds only what an earlier pick
    already gave its targets gains nothing, so near-duplicates wait. Once no candidate gains
    anything, the rest follow by mean similarity. Lazy greedy (gains only shrink: submodular);
    ties: the earlier candidate. Returns candidate rows best first."""
    N = len(S)
    cur = S.min(0) if N else np.zeros(S.shape[1])
    heap = [(-float(np.maximum(S[c] - cur, 0).sum()), c) for c in range(N)]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, c = heapq.heappop(heap)
        gain = float(np.maximum(S[c] - cur, 0).sum())
        if heap and (-gain, c) > heap[0]:  # its bound was stale and another may gain more
            heapq.heappush(heap, (-gain, c))
            continue
        if gain <= 0:  # nothing left to cover: the rest by mean similarity
            heapq.heappush(heap, (-gain, c))
            rest = sorted((c for _, c in heap), key=lambda c: (-S[c].mean(), c))
            return order + rest
        order.append(c)
        cur = np.maximum(cur, S[c])
    return order


def target_rows(ids: Sequence, S: np.ndarray, groups: Sequence[str], rule: str, normalize: bool) -> list[dict]:
    """A row per candidate from its similarities to the target examples: `score` sorts in the
    rule's order (mean: the value itself; round_robin and coverage: N - position), `similarity`
    is the group-mean similarity of the mean rule (raw), and round_robin says which target took it."""
    raw, group = group_mean(S, groups)
    if normalize:
        S = normalize_targets(S)
    score = group_mean(S, groups)[0] if normalize else raw
    rows = [{"id": i, "score": float(v), "group": g, "similarity": float(r)}
            for i, v, g, r in zip(ids, score, group, raw)]
    if rule == "mean":
        return rows
    order, by = round_robin_order(S) if rule == "round_robin" else (coverage_order(S), None)
    for pos, c in enumerate(order):
        rows[c]["score"] = float(len(order) - pos)
        if by is not None:
            rows[c]["target"] = by[pos]
    return rows


# ----------------------------------------------------------------------------------------------
# selection rules on embeddings


def typicality(X: np.ndarray, labels: np.ndarray, k: int = 20) -> np.ndarray:
    """TypiClust: 1 / mean distance to the point's k nearest neighbours in its own cluster
    (k = 20, or the cluster's other points when fewer); a cluster of one point: 0."""
    out = np.zeros(len(X))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        D = np.linalg.norm(X[idx, None, :] - X[None, idx, :], axis=-1)
        kk = min(k, len(idx) - 1)
        near = np.sort(D, axis=1)[:, 1: kk + 1]  # column 0 is the point itself
        out[idx] = 1.0 / np.maximum(near.mean(1), 1e-12)
    return out


def typiclust_pick(rows: Sequence[dict], n: int) -> list[tuple[Any, int | None]]:
    """The most typical candidate of each cluster that holds no labelled example, largest such
    clusters first; past that, the next most typical in the same order, then covered clusters."""
    by: dict[int, list] = {}
    for r in sorted(rows, key=lambda r: -r["score"]):  # stable: ties keep candidate order
        by.setdefault(r["cluster"], []).append(r)
    order = sorted(by, key=lambda c: (by[c][0]["covered"], -by[c][0]["cluster_size"], c))
    return [(i, None) for i in take_in_turns([[r["id"] for r in by[c]] for c in order], n)]


def similarity_guard(emb: dict, labelled: Sequence, tau: float) -> Callable[[Any], bool]:
    """keep(id): False when the candidate's cosine to a labelled or an already kept example is
    >= tau (DEITA's score-first diversity filter); kept ids join the comparison set."""
    have = [emb[i] for i in labelled if i in emb]
    dim = len(next(iter(emb.values()))) if emb else 0
    ref = np.array(have, dtype=np.float32).reshape(-1, dim)

    def keep(i) -> bool:
        nonlocal ref
        v = emb[i]
        if len(ref) and float((ref @ v).max()) >= tau:
            return False
        ref = np.vstack([ref, v[None]])
        return True

    return keep


# ----------------------------------------------------------------------------------------------
# LESS: Adam-preconditioned, randomly projected gradients (Xia et al. 2024)

# the weights whose gradients make the features: LoRA's classic targets, the attention query and
# value projections of every decoder layer (LESS itself takes LoRA gradients)
LESS_MODULES = ("self_attn.q_proj", "self_attn.v_proj")
GRAD_BUDGET_SHARE = 4


def less_modules(model) -> list[tuple[str, torch.nn.Linear]]:
    return [(f"model.layers.{i}.{m}.weight", layer.get_submodule(m))
            for i, layer in enumerate(model.model.layers) for m in LESS_MODULES]


def kron_dims(dim: int) -> tuple[int, int]:
    """dim = d1 * d2 with d1 the largest divisor <= sqrt(dim) (8192 = 64 x 128)."""
    d1 = max(d for d in range(1, int(dim ** 0.5) + 1) if dim % d == 0)
    return d1, dim // d1


HASH_PRIME = 2**31 - 1  # entries are hashed modulo this Mersenne prime (int64 products never overflow)
SKETCH_TABLE_BYTES = 2**30  # a round's sketches keep their hashed (bucket, sign) tables up to this size


@dataclass(frozen=True)
class HashSketch:
    """A CountSketch of one flattened gradient block of `size` entries: entry k is added, with sign
    s(k), to dimension h(k) of `dim`. h and s are seeded polynomial hashes of k modulo a prime
    (degree 2: a linear one maps the regular rows and columns of a weight onto regular bucket
    patterns), computed, not drawn and stored, so a block of any size has one: a 7B model's q/v
    weights would need gigabytes of stored indices. `table` caches them for the round where they fit
    (hash_sketches); computed or cached, the same numbers. A CountSketch keeps inner products in
    expectation and ranks candidates far closer to exact gradients than a Kronecker projection of
    the same dimension (benchmarks/results/less_projection.md)."""
    dim: int
    size: int
    coeffs: tuple[int, ...]  # (c2, c1, c0) of the bucket's hash, then of the sign's
    table: tuple[torch.Tensor, torch.Tensor] | None = dataclasses.field(default=None, compare=False, repr=False)

    def buckets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket [size] (int64: index_add_ takes int32 indices ~30x slower) and sign [size] (+-1.0)
        of entries 0..size-1."""
        if self.table is not None:
            return self.table
        k = torch.arange(self.size, dtype=torch.int64)

        def poly(c2: int, c1: int, c0: int) -> torch.Tensor:  # ((c2 k + c1) mod p) k + c0, mod p
            return ((c2 * k + c1) % HASH_PRIME * k + c0) % HASH_PRIME

        return poly(*self.coeffs[:3]) % self.dim, 1.0 - 2.0 * (poly(*self.coeffs[3:]) % 2).float()

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        """[B, dim]: each row of G [B, size] sketched."""
        bucket, sign = self.buckets()
        return torch.zeros(len(G), self.dim, dtype=G.dtype).index_add_(1, bucket, G * sign)


def hash_sketches(sizes: Sequence[int], dim: int, seed: int) -> list[HashSketch]:
    """One seeded HashSketch per gradient block of sizes[j] entries (their sum is one CountSketch of
    the concatenated gradient), with their tables when all fit in SKETCH_TABLE_BYTES (12 bytes an
    entry; then hashing costs once a round, not once a batch)."""
    if max(sizes, default=0) > HASH_PRIME:
        raise ValueError(f"a gradient block of {max(sizes):,} entries is more than the sketch's hash covers")
    out = []
    for j, n in enumerate(sizes):
        g = torch.Generator().manual_seed(seed * 1_000_003 + j)
        out.append(HashSketch(dim, n, tuple(int(v) for v in torch.randint(1, HASH_PRIME, (6,), generator=g))))
    if 12 * sum(sizes) <= SKETCH_TABLE_BYTES:
        out = [dataclasses.replace(h, table=h.buckets()) for h in out]
    return out


def kron_projections(model, dim: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per weight W [out, in] a seeded Gaussian pair A [out, d1], B [in, d2]: the feature block of
    a gradient G is A^T G B (flattened d1 * d2 = dim), i.e. a projection by the Kronecker-structured
    matrix A (x) B, and the blocks of all weights are summed (independent blocks of one projection
    of the concatenated gradient). The full dim x params matrix never exists."""
    d1, d2 = kron_dims(dim)
    out = []
    for j, (_, mod) in enumerate(less_modules(model)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + j)
        o, i = mod.weight.shape
        out.append((torch.randn(o, d1, generator=g), torch.randn(i, d2, generator=g)))
    return out


def projections(model, dim: int, seed: int, kind: str) -> list:
    """less's reduction of each LESS_MODULES weight's gradient to `dim` (--grad_projection)."""
    return kron_projections(model, dim, seed) if kind == "kronecker" else \
        hash_sketches([m.weight.numel() for _, m in less_modules(model)], dim, seed)


def adam_direction(G: torch.Tensor, m: torch.Tensor, v: torch.Tensor, betas: tuple[float, float],
                   eps: float = 1e-8) -> torch.Tensor:
    """LESS's preconditioning: the Adam update direction the gradient would cause from the saved
    moments, (b1 m + (1-b1) G) / sqrt(b2 v + (1-b2) G^2 + eps) (LESS: no bias correction)."""
    b1, b2 = betas
    return (b1 * m + (1 - b1) * G) / torch.sqrt(b2 * v + (1 - b2) * G * G + eps)


def project_grad(x: torch.Tensor, d: torch.Tensor, proj: HashSketch | tuple[torch.Tensor, torch.Tensor],
                 moments: tuple[torch.Tensor, torch.Tensor] | None = None,
                 betas: tuple[float, float] = (0.9, 0.999)) -> torch.Tensor:
    """[B, dim]: each row's weight gradient G_b = sum_t d_bt x_bt^T (x [B, T, in]: the layer's
    inputs, d [B, T, out]: the loss's gradient at its outputs), Adam-preconditioned when `moments`,
    then sketched (a HashSketch) or projected by A^T G_b B (a Kronecker pair (A, B)).

    A Kronecker projection without preconditioning never forms G_b: A^T G_b B = sum_t (A^T d_bt)
    (x_bt^T B) = (d_b A)^T (x_b B) (LoGra, Choe et al. 2024). A CountSketch and Adam's elementwise
    direction need G_b itself."""
    if moments is None and not isinstance(proj, HashSketch):
        A, Bm = proj
        return torch.bmm((d @ A).transpose(1, 2), x @ Bm).flatten(1)
    G = torch.bmm(d.transpose(1, 2), x)  # [B, out, in]
    if moments is not None:
        G = adam_direction(G, *moments, betas)
    if isinstance(proj, HashSketch):
        return proj(G.flatten(1))
    A, Bm = proj
    return (A.T @ G @ Bm).flatten(1)


def grad_batches(cfg: ScoreConfig, lengths: Sequence[int]) -> list[list[int]]:
    """The length-sorted batches of a gradient pass: a backward keeps every layer's activations, so
    batches of a quarter of the scoring token budget keep the peak near a no-grad scoring pass's."""
    small = dataclasses.replace(cfg, token_budget=max(1, cfg.token_budget // GRAD_BUDGET_SHARE)) \
        if cfg.token_budget else cfg
    return small.batches(lengths)


def layer_grads(model, seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int, cfg: ScoreConfig,
                mods: Sequence[torch.nn.Module] | None = None):
    """Per batch of rows (length-sorted): (row indices, [(x, d) per linear module of `mods`, by
    default the LESS_MODULES]) with x [B, T, in] the module's inputs and d [B, T, out] the gradient
    of the sum of the rows' mean NLL over seqs[i][starts[i]:] at its outputs (fp32, CPU; zero where
    a row is padding). The backward only asks for those deltas, never touches parameter grads.

    On a model sharded with FSDP2 each rank passes its own rows and FSDP gathers one layer at a
    time, forward and backward (no full copy of the model on any rank); its gathers are collectives,
    so the ranks agree on the number of batches and a rank with fewer passes a 2-token dummy batch
    for each missing one (yielded with no row indices)."""
    mods = [m for _, m in less_modules(model)] if mods is None else list(mods)
    batches = grad_batches(cfg, [len(s) for s in seqs])
    spare = fsdp_utils.max_over_ranks(len(batches)) - len(batches) if fsdp_utils.is_sharded(model) else 0
    for idx in batches:
        ids, _ = pad([seqs[i] for i in idx], pad_id)
        tgt = torch.full_like(ids, -100)  # position t predicts token t + 1
        for b, i in enumerate(idx):
            tgt[b, starts[i] - 1: len(seqs[i]) - 1] = ids[b, starts[i]: len(seqs[i])]
        yield idx, _module_grads(model, ids, tgt, mods)
    for _ in range(spare):  # no rows of this rank's: yielded for what the caller does in step (gathered)
        yield [], _module_grads(model, torch.full((1, 2), pad_id), torch.tensor([[pad_id, -100]]), mods)


def _module_grads(model, ids: torch.Tensor, tgt: torch.Tensor, mods: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One forward + backward of a batch: (x, d) per module of `mods` (layer_grads).

    The output layer sees only the scored positions (a pre-hook on it gathers them): the logits and
    the softmax over the vocabulary at every other position were work thrown away, [B, T, V] of it
    (SmolLM2: 49k a position), and cross-entropy over that layout ([B, V, T]) sums the vocabulary in
    fp32 with an error that reached the deltas: 5.8e-3 of their largest entry away from float64 on
    SmolLM2, where [K, V] rows give 4.1e-4 (benchmarks/results/less_logits_smollm2.md)."""
    dev = next(model.parameters()).device
    keep = (tgt != -100).to(dev)
    seen: dict = {}  # module -> (its input, its output) in this forward
    hooks = [m.register_forward_hook(lambda m, a, o, seen=seen: seen.__setitem__(m, (a[0].detach(), o)))
             for m in mods]
    # frozen weights (a merged LoRA model) leave the graph without grad: start it at the embeddings
    hooks.append(model.get_input_embeddings().register_forward_hook(
        lambda m, a, o: None if o.requires_grad else o.requires_grad_()))
    hooks.append(model.get_output_embeddings().register_forward_pre_hook(lambda m, a: (a[0][keep], *a[1:])))
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids.to(dev)).logits.float()
            if logits.shape[:-1] != (int(keep.sum()),):
                raise RuntimeError(f"{type(model).__name__}: its logits ({tuple(logits.shape)}) do not come from "
                                   "its output embeddings alone; less needs a causal LM that computes them there")
            nll = torch.nn.functional.cross_entropy(logits, tgt.to(dev)[keep], reduction="none")
            sums = torch.zeros(len(ids), dtype=nll.dtype, device=dev).index_add_(0, keep.nonzero()[:, 0], nll)
            loss = (sums / keep.sum(1).clamp(min=1)).sum()  # sum of per-row means
            deltas = torch.autograd.grad(loss, [seen[m][1] for m in mods])
    finally:
        for h in hooks:
            h.remove()
    return [(seen[m][0].float().cpu(), d.float().cpu()) for m, d in zip(mods, deltas)]


def _features(model, seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int, cfg: ScoreConfig,
              mods: Sequence[torch.nn.Module], dim: int, block: Callable) -> np.ndarray:
    """[N, dim]: per row the sum over `mods` of block(j, x, d) (layer_grads' activations of module j)."""
    out = np.zeros((len(seqs), dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    for idx, acts in layer_grads(model, seqs, starts, pad_id, cfg, mods):
        feats = sum(block(j, x, d) for j, (x, d) in enumerate(acts))  # a dummy batch's too: block may gather
        if idx:
            out[idx] = feats.numpy()
    model.train(was_training)
    return out


def gathered(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Whole fp32 CPU tensors: a sharded model's saved moments (DTensors, fsdp_utils.adam_moments)
    are gathered for the batch that uses them and freed after it. A collective: every rank calls it
    for every batch, its dummy ones too (layer_grads)."""
    return tuple(t.full_tensor().float().cpu() if isinstance(t, DTensor) else t for t in tensors)


def grad_features(model, seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int, cfg: ScoreConfig,
                  proj: list, moments: dict | None = None, betas: tuple[float, float] = (0.9, 0.999)) -> np.ndarray:
    """[N, dim] projected gradients of each row's mean NLL over seqs[i][starts[i]:] with respect to
    the LESS_MODULES weights (layer_grads), Adam-preconditioned when `moments` (name -> (exp_avg,
    exp_avg_sq)); the blocks of all weights are summed (project_grad; `proj` from projections()
    for cfg.grad_dim)."""
    named = less_modules(model)

    def block(j: int, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return project_grad(x, d, proj[j], None if moments is None else gathered(moments[named[j][0]]), betas)

    return _features(model, seqs, starts, pad_id, cfg, [m for _, m in named], cfg.grad_dim, block)


# ----------------------------------------------------------------------------------------------
# LESS on LoRA adapters (LESS's own setup): gradients with respect to each adapter's A and B


def lora_grad(x: torch.Tensor, d: torch.Tensor, ad: Adapter) -> torch.Tensor:
    """[B, r in + out r]: each row's gradient with respect to the adapter's A and B (flattened, A
    first), from the module's inputs x [B, T, in] and output gradients d [B, T, out]; the same on
    the merged model as on the adapted one, whose module outputs are equal. dA = s (d B)^T x,
    dB = s d^T (x A^T), each summed over the row's tokens."""
    gA = torch.bmm((d @ ad.B).transpose(1, 2), x)
    gB = torch.bmm(d.transpose(1, 2), x @ ad.A.T)
    return ad.scale * torch.cat([gA.flatten(1), gB.flatten(1)], 1)


def lora_features(model, seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int, cfg: ScoreConfig,
                  adapters: Sequence[Adapter], sketches: Sequence[HashSketch], moments: dict | None = None,
                  betas: tuple[float, float] = (0.9, 0.999)) -> np.ndarray:
    """[N, dim] CountSketched gradients of each row's mean NLL over seqs[i][starts[i]:] with respect
    to every adapter's A and B, on the model with the adapters merged in; Adam-preconditioned when
    `moments` (module -> (exp_avg, exp_avg_sq) of the flattened [A, B]); `sketches` from
    hash_sketches() for cfg.grad_dim."""

    def block(j: int, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        G = lora_grad(x, d, adapters[j])
        if moments is not None:
            G = adam_direction(G, *moments[adapters[j].module], betas)
        return sketches[j](G)

    return _features(model, seqs, starts, pad_id, cfg, [model.get_submodule(a.module) for a in adapters],
                     cfg.grad_dim, block)
