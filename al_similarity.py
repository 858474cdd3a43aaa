"""Similarity-based selection: prompt embeddings (rds, typiclust, the --max_similarity guard and
cluster --cluster_embedding hidden), the target set that says what "good" means, and the
selection rules built on them.

Embeddings (design.md): the current model's final hidden states, mean-pooled over the prompt
tokens after BOS (the first token), L2-normalised; cosine = dot product.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from al_utils import Encoded, InputError, ScoreConfig, encode_records, load_records, read_rows


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
        L = max(len(seqs[i]) for i in idx)
        x = torch.full((len(idx), L), pad_id, dtype=torch.long)
        m = torch.zeros((len(idx), L))
        for b, i in enumerate(idx):
            x[b, : len(seqs[i])] = torch.tensor(list(seqs[i]))
            m[b, 1: len(seqs[i])] = 1  # after BOS
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

    def group_rows(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for j, g in enumerate(self.groups):
            out.setdefault(g, []).append(j)
        return out


def load_target(path: str, group_field: str | None, tok, needs_answers: str = "") -> Target:
    """Read and check a target file like a pool; `needs_answers` (the reason) makes a record
    without an answer an error. Every group needs 2 examples for a mean similarity."""
    records = load_records(path, require_output=needs_answers)
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
    enc = encode_records(tok, records)
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
    out: list = []
    depth = 0
    while len(out) < min(n, len(rows)):
        out += [by[c][depth]["id"] for c in order if depth < len(by[c])][: n - len(out)]
        depth += 1
    return [(i, None) for i in out]


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
