"""Acquisition strategies and stratified selection: score candidate instructions with the current
model (or without one) and choose a batch from the sorted scores.

Conventions (see README): a score is a per-example mean NLL over the scored tokens only; higher
means "more uncertain" and sorts first ("top").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from al_utils import (
    InputError,
    format_prompt,
    greedy_generate,
    make_batches,
    mean_nll,
    pad_id_of,
    sequence_nll,
    truncate_pair,
)

MODEL_FREE = ("random", "instruction_length")
NEEDS_ANSWERS = ("data_pruning_w_answers", "ifd")
STRATEGIES = ("forward_ppl", "data_pruning_w_answers", "ifd", "generation_ppl", "self_ask",
              "length_and_ppl", "instruction_length", "random", "cluster")
SELF_ASK_TEMPLATE = ("Can you answer the following request correctly? Answer yes or no.\n\n"
                     "Request: {instruction}")


@dataclass
class ScoreConfig:
    token_budget: int = 8192  # tokens per scoring batch (rows x padded length)
    max_rows: int = 64  # rows per scoring batch
    max_length: int = 1024  # scoring truncation (--model_max_length)
    gen_max_new_tokens: int = 32  # generation_ppl
    self_ask_positions: int = 3  # self_ask: first generated positions inspected
    num_clusters: int = 10  # cluster
    cluster_embedding: str = "tfidf"  # cluster: tfidf | hidden
    progress: bool = True


def _clip(ids: Sequence[int], n: int) -> list[int]:
    return list(ids[:n])


def forward_ppl(model, enc: dict, ids: Sequence, pad_id: int, cfg: ScoreConfig) -> np.ndarray:
    """Mean NLL of every prompt token after BOS (template included), truncated at max_length."""
    seqs = [_clip(enc[i].prompt, cfg.max_length) for i in ids]
    s, c = sequence_nll(model, seqs, [1] * len(seqs), pad_id, cfg.token_budget, cfg.max_rows,
                        "scoring forward_ppl", cfg.progress, groups=[enc[i].template for i in ids])
    return mean_nll(s, c)


def answer_losses(model, enc: dict, ids: Sequence, pad_id: int, bos_id: int | None,
                  cfg: ScoreConfig) -> tuple[np.ndarray, np.ndarray]:
    """(L(answer | prompt), L(answer)): mean NLL of answer tokens with and without the prompt."""
    cond, cond_starts, unc = [], [], []
    for i in ids:
        e = enc[i]
        p, a, _ = truncate_pair(e.prompt, e.answer, cfg.max_length)
        cond.append(p + a)
        cond_starts.append(len(p))
        unc.append(([bos_id] if bos_id is not None else [pad_id]) + e.answer[: cfg.max_length - 1])
    s, c = sequence_nll(model, cond, cond_starts, pad_id, cfg.token_budget, cfg.max_rows,
                        "scoring answer|prompt", cfg.progress, groups=[enc[i].template for i in ids])
    s2, c2 = sequence_nll(model, unc, [1] * len(unc), pad_id, cfg.token_budget, cfg.max_rows,
                          "scoring answer", cfg.progress)
    return mean_nll(s, c), mean_nll(s2, c2)


def _first_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    ids = set()
    for w in words:
        for text in (w, " " + w):
            toks = tokenizer(text, add_special_tokens=False).input_ids
            if toks:
                ids.add(toks[0])
    return sorted(ids)


def score_candidates(strategy: str, records: dict, cand_ids: Sequence, enc: dict, model, tokenizer,
                     cfg: ScoreConfig, rng: np.random.Generator, part: slice = slice(None),
                     gather: Callable[[list], list] = lambda rows: rows) -> list[dict]:
    """Score the candidates; rows come back in candidate order. `score` is the sort key: higher
    sorts first ("top"); compound strategies also store their components.

    Data-parallel: this process scores only cand_ids[part] (a contiguous slice) and `gather`
    concatenates every rank's rows in rank order. Model-free strategies score everything."""
    ids = list(cand_ids)
    if strategy == "random":
        return [{"id": i, "score": float(v)} for i, v in zip(ids, rng.random(len(ids)))]
    if strategy == "instruction_length":
        return [{"id": i, "score": -float(len(enc[i].prompt))} for i in ids]
    if strategy not in STRATEGIES:
        raise InputError(f"--sampling_strategy: unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    rows = gather(_model_scores(strategy, records, ids[part], enc, model, tokenizer, cfg))
    if strategy == "cluster":
        if cfg.cluster_embedding == "hidden":
            X = np.array([r.pop("embedding") for r in rows], dtype=np.float32)
        else:
            from sklearn.feature_extraction.text import TfidfVectorizer

            texts = [records[i]["instruction"] + "\n" + records[i]["input"] for i in ids]
            X = TfidfVectorizer(max_features=20000, sublinear_tf=True).fit_transform(texts)
        for r, c in zip(rows, cluster_labels(X, cfg.num_clusters, rng)):
            r["cluster"] = int(c)
    return rows


def _model_scores(strategy: str, records: dict, ids: list, enc: dict, model, tokenizer,
                  cfg: ScoreConfig) -> list[dict]:
    """Per-row scores of the model-based strategies for `ids` (one rank's slice)."""
    pad_id = pad_id_of(tokenizer)
    if strategy in ("forward_ppl", "length_and_ppl", "cluster"):
        ppl = forward_ppl(model, enc, ids, pad_id, cfg)
        if strategy == "forward_ppl":
            return [{"id": i, "score": float(v)} for i, v in zip(ids, ppl)]
        if strategy == "length_and_ppl":
            # lexicographic (length asc, ppl asc) as one number: ppl/(1+ppl) lies in [0, 1)
            return [{"id": i, "score": -(len(enc[i].prompt) + float(v) / (1 + float(v))),
                     "length": len(enc[i].prompt), "forward_ppl": float(v)} for i, v in zip(ids, ppl)]
        rows = [{"id": i, "score": float(v)} for i, v in zip(ids, ppl)]
        if cfg.cluster_embedding == "hidden":
            for r, e in zip(rows, mean_hidden(model, enc, ids, pad_id, cfg)):
                r["embedding"] = e.tolist()
        return rows
    if strategy in NEEDS_ANSWERS:
        cond, unc = answer_losses(model, enc, ids, pad_id, tokenizer.bos_token_id, cfg)
        if strategy == "ifd":
            score = cond / np.maximum(unc, 1e-12)
        else:
            score = np.abs(unc - cond)
        return [{"id": i, "score": float(s), "loss_cond": float(c), "loss_uncond": float(u)}
                for i, s, c, u in zip(ids, score, cond, unc)]
    eos = tokenizer.eos_token_id
    if strategy == "generation_ppl":
        prompts = [_clip(enc[i].prompt, cfg.max_length) for i in ids]
        gens = greedy_generate(model, prompts, cfg.gen_max_new_tokens, pad_id, eos, cfg.max_rows, cfg.progress)
        rows = []
        for i, (toks, logits) in zip(ids, gens):
            nll = F.cross_entropy(logits, torch.tensor(toks), reduction="none") if toks else torch.zeros(1)
            rows.append({"id": i, "score": float(nll.mean()), "generated_tokens": len(toks)})
        return rows
    # self_ask
    no_ids = _first_token_ids(tokenizer, ["no", "No", "NO"])
    prompts = []
    for i in ids:
        r = records[i]
        q = r["instruction"] + ("\n" + r["input"] if r["input"].strip() else "")
        prompts.append(_clip(tokenizer(format_prompt(SELF_ASK_TEMPLATE.format(instruction=q))).input_ids,
                             cfg.max_length))
    gens = greedy_generate(model, prompts, cfg.self_ask_positions, pad_id, eos, cfg.max_rows, cfg.progress)
    return [{"id": i, "score": float(logits.softmax(-1)[:, no_ids].sum(-1).mean())}
            for i, (_, logits) in zip(ids, gens)]


@torch.no_grad()
def mean_hidden(model, enc: dict, ids: Sequence, pad_id: int, cfg: ScoreConfig) -> np.ndarray:
    """Mean-pooled last hidden state of each prompt (padding excluded)."""
    seqs = [_clip(enc[i].prompt, cfg.max_length) for i in ids]
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    dev = next(model.parameters()).device
    for idx in make_batches([len(s) for s in seqs], cfg.token_budget, cfg.max_rows):
        L = max(len(seqs[i]) for i in idx)
        x = torch.full((len(idx), L), pad_id, dtype=torch.long)
        m = torch.zeros((len(idx), L), dtype=torch.long)
        for b, i in enumerate(idx):
            x[b, : len(seqs[i])], m[b, : len(seqs[i])] = torch.tensor(seqs[i]), 1
        h = model.model(input_ids=x.to(dev)).last_hidden_state.float().cpu()  # right padding: no mask needed
        out[idx] = ((h * m[..., None]).sum(1) / m.sum(1, keepdim=True)).numpy()
    return out


def cluster_labels(X, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded KMeans cluster of each row of X (TF-IDF or embeddings)."""
    from sklearn.cluster import KMeans

    k = max(1, min(num_clusters, X.shape[0]))
    return KMeans(n_clusters=k, n_init=3, random_state=int(rng.integers(2**31 - 1))).fit_predict(X)


# ----------------------------------------------------------------------------------------------
# stratified selection over a list sorted by score, best ("top") first


def bucket_sizes(M: int, k: int) -> list[int]:
    """k contiguous buckets over M items; the first M mod k get one extra item."""
    return [M // k + (1 if b < M % k else 0) for b in range(k)]


def bucket_quota(sizes: Sequence[int], n: int) -> list[int]:
    """n // k from each bucket and n mod k more from the last; a bucket short of its share gives
    what it has and the shortfall is taken from bucket i+1, then i-1, i+2, i-2, ... ."""
    k = len(sizes)
    want = [n // k] * k
    want[-1] += n % k
    take = [min(w, s) for w, s in zip(want, sizes)]
    spare = [s - t for s, t in zip(sizes, take)]
    for i in range(k):
        short = want[i] - take[i]
        for d in range(1, k):
            for j in (i + d, i - d):
                if short and 0 <= j < k and spare[j]:
                    g = min(short, spare[j])
                    take[j] += g
                    spare[j] -= g
                    short -= g
    return take


def stratify(sorted_ids: Sequence, n: int, strategy: str, pick: str, k: int, factor: float,
             rng: np.random.Generator) -> list[tuple[Any, int | None]]:
    """Choose n of sorted_ids (best first). Returns (id, bucket) pairs in selection order;
    bucket is None outside `bucket` stratification."""
    D, M = list(sorted_ids), len(sorted_ids)
    n = min(n, M)

    def draw(items: list, m: int) -> list:
        return [items[j] for j in sorted(rng.choice(len(items), size=m, replace=False))]

    def choose(items: list, m: int) -> list:
        if pick == "top":
            return items[:m]
        if pick == "bottom":
            return items[len(items) - m:]
        return draw(items, m)

    if strategy == "greedy":
        return [(i, None) for i in choose(D, n)]
    if strategy == "mixed":
        if pick == "uniform":
            return [(i, None) for i in draw(D, n)]
        t = int(factor * n)
        if pick == "top":
            return [(i, None) for i in D[:t] + draw(D[t:], n - t)]
        return [(i, None) for i in D[M - t:] + draw(D[: M - t], n - t)]
    if strategy == "bucket":
        sizes = bucket_sizes(M, k)
        quota = bucket_quota(sizes, n)
        out, lo = [], 0
        for b, (size, q) in enumerate(zip(sizes, quota)):
            out += [(i, b) for i in choose(D[lo: lo + size], q)]
            lo += size
        return out
    raise InputError(f"--stratification_strategy: unknown {strategy!r} (greedy, bucket, mixed)")


def cluster_round_robin(rows: Sequence[dict], n: int) -> list[tuple[Any, int | None]]:
    """Pick n across clusters in turn (clusters in order of their best score), highest score first
    within each cluster. Rows must carry `cluster`; ties keep candidate order."""
    by: dict[int, list] = {}
    for r in sorted(rows, key=lambda r: -r["score"]):
        by.setdefault(r["cluster"], []).append(r["id"])
    queues = list(by.values())  # dict order = order of each cluster's best row
    out: list = []
    depth = 0
    while len(out) < min(n, len(rows)):
        out += [q[depth] for q in queues if depth < len(q)][: n - len(out)]
        depth += 1
    return [(i, None) for i in out]


def k_for_round(num_k: int, decay: bool, rnd: int) -> int:
    """Buckets used in round rnd >= 1: k_1 = num_k, k_{r+1} = max(2, k_r - 1); num_k = 1 stays 1."""
    if not decay or num_k == 1:
        return num_k
    return max(2, num_k - (rnd - 1))

