"""Acquisition strategies and the selection of a round: score candidate instructions with the
current model (or without one), then choose the batch from the scores.

Conventions (see README): a score is a per-example mean NLL over the scored tokens only; higher
means "more uncertain" and sorts first ("top"). Every strategy is one entry of STRATEGIES: the
parser's choices, the dispatch and the error messages all read that table.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import fsdp_utils
from al_datasets import take
from al_prompts import (
    has_input,
    pad_id_of,
    prompt_ids,
    request_text,
    response_marker_ids,
    truncate_pair,
    truncate_prompt,
)
from al_scoring import GEN_KV_TOKENS, ScoreConfig, generate, mean_nll, model_kv_tokens, sequence_nll, stop_ids
from al_selection import (
    STRATEGY_NAMES,
    SelectConfig,
    cluster_round_robin,
    fill_to_cost,
    pick,
)
from al_similarity import (
    Target,
    TargetConfig,
    embed,
    grad_features,
    group_similarity,
    hash_sketches,
    lora_features,
    projections,
    target_rows,
    typicality,
    typiclust_pick,
)
from al_utils import InputError, add_config_args, config_from

SELF_ASK_TEMPLATE = ("Can you answer the following request correctly? Answer yes or no.\n\n"
                     "Request: {instruction}")
NO_SPELLINGS = ("no", "No", "NO")
# less's answers: up to 64 rows a batch (model_kv_tokens bounds them too); a decode step reads every
# weight, so more rows cost little more (SmolLM2: 0.74x the time of 16 rows, identical answers;
# benchmarks/results/less_gen_rows.md)
LESS_GEN_ROWS = 64


@dataclass
class Scoring:
    """What a scorer reads: the round's model (None for model-free strategies), the tokenizer,
    every record and its encoding, the settings and the round's seeded random stream."""
    model: Any
    tokenizer: Any
    enc: Mapping  # id -> Encoded (al_prompts.Encodings)
    records: Mapping  # id -> record (al_datasets.Pool)
    cfg: ScoreConfig
    rng: np.random.Generator
    target: Target | None = None  # rds (and less): what "good" means
    labelled: list = field(default_factory=list)  # typiclust: ids labelled so far
    n: int = 0  # typiclust: examples this round picks
    moments: dict | None = None  # less: the previous round's Adam moments of the weights it differentiates
    adapters: list | None = None  # less under LoRA: the adapters (al_lora.Adapter) it differentiates instead
    betas: tuple[float, float] = (0.9, 0.999)  # less: the Adam betas those moments were made with
    template: str = "alpaca"  # --prompt_template: how ifd's direct pass and self_ask's question are formatted

    @property
    def pad_id(self) -> int:
        return pad_id_of(self.tokenizer)

    @property
    def stop(self) -> list[int]:
        """The ids the model's generation stops at (al_scoring.stop_ids)."""
        return stop_ids(self.model, self.tokenizer)

    def prompt_vectors(self, ids: Sequence) -> np.ndarray:
        """Unit embeddings of the (truncated) prompts of pool records `ids` (al_similarity.embed)."""
        return embed(self.model, [truncate_prompt(self.enc[i].prompt, self.cfg.max_length) for i in ids],
                     self.pad_id, self.cfg)


# ----------------------------------------------------------------------------------------------
# scorers: (Scoring, ids) -> one row {id, score, ...components} per id, in order


def _random(sc: Scoring, ids: list) -> list[dict]:
    return [{"id": i, "score": float(v)} for i, v in zip(ids, sc.rng.random(len(ids)))]


def _instruction_length(sc: Scoring, ids: list) -> list[dict]:
    return [{"id": i, "score": -float(sc.enc[i].instruction_len)} for i in ids]  # shortest first


def forward_ppl(sc: Scoring, ids: Sequence) -> np.ndarray:
    """Mean NLL of every prompt token after BOS (template included), prompts cut by truncate_prompt."""
    seqs = [truncate_prompt(sc.enc[i].prompt, sc.cfg.max_length) for i in ids]
    s, c = sequence_nll(sc.model, seqs, [1] * len(seqs), sc.pad_id, sc.cfg, "scoring forward_ppl",
                        groups=[sc.enc[i].input_block for i in ids])
    return mean_nll(s, c)


def _forward_ppl(sc: Scoring, ids: list) -> list[dict]:
    return [{"id": i, "score": float(v)} for i, v in zip(ids, forward_ppl(sc, ids))]


def _length_and_ppl(sc: Scoring, ids: list) -> list[dict]:
    # lexicographic (instruction length asc, ppl asc) as one number: ppl/(1+ppl) lies in [0, 1)
    rows = []
    for i, v in zip(ids, forward_ppl(sc, ids)):
        n = sc.enc[i].instruction_len
        rows.append({"id": i, "score": -(n + float(v) / (1 + float(v))), "length": n, "forward_ppl": float(v)})
    return rows


def _cluster(sc: Scoring, ids: list) -> list[dict]:
    rows = _forward_ppl(sc, ids)
    if sc.cfg.cluster_embedding == "hidden":
        for r, e in zip(rows, sc.prompt_vectors(ids)):
            r["embedding"] = e.tolist()
    return rows


def _rds(sc: Scoring, ids: list) -> list[dict]:
    """RDS+: max over target groups of the mean cosine between the candidate's prompt embedding and
    the group's target prompts' embeddings (or another --target_aggregation of those cosines)."""
    t = sc.target
    T = embed(sc.model, [truncate_prompt(e.prompt, sc.cfg.max_length) for e in t.enc], sc.pad_id, sc.cfg)
    return similarity_rows(sc, ids, sc.prompt_vectors(ids), T)


def similarity_rows(sc: Scoring, ids: list, X: np.ndarray, T: np.ndarray) -> list[dict]:
    """Rows of this rank's candidates from their unit features X and the target's T. The mean rule
    scores each row alone; the others order all candidates together, so the rows carry their
    cosines to every target example (`sims`) to _order_by_target, after gathering."""
    if sc.cfg.target_aggregation == "mean" and not sc.cfg.target_normalize:
        score, group = group_similarity(X, T, sc.target.groups)
        return [{"id": i, "score": float(v), "group": g} for i, v, g in zip(ids, score, group)]
    return [{"id": i, "sims": s} for i, s in zip(ids, (X @ T.T).tolist())]


def _order_by_target(sc: Scoring, rows: list[dict]) -> None:
    """After every rank's rows are in: the --target_aggregation order over all candidates."""
    if rows and "sims" in rows[0]:
        S = np.array([r.pop("sims") for r in rows], dtype=np.float64)
        for r, new in zip(rows, target_rows([r["id"] for r in rows], S, sc.target.groups,
                                            sc.cfg.target_aggregation, sc.cfg.target_normalize)):
            r.update(new)


def bm25_matrix(docs: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    """[docs, queries] Okapi BM25 (bm25s, Lucene variant: k1 1.5, b 0.75, idf ln(1 + (N - df + 0.5) /
    (df + 0.5)) over these docs) of each doc for each query; lower-cased word tokens, English stop
    words removed. A query word no doc holds adds nothing."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(docs), stopwords="en", show_progress=False), show_progress=False)
    S = np.zeros((len(docs), len(queries)))
    for j, words in enumerate(bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)):
        ids = retriever.get_tokens_ids(words)
        if ids:
            S[:, j] = retriever.get_scores_from_ids(ids)
    return S


def _bm25(sc: Scoring, ids: list) -> list[dict]:
    """Model-free lexical match (Yin & Rush 2025 found it compute-optimal against small selectors):
    BM25 of the candidate's instruction + input for each target record's, aggregated over the
    target like rds's cosines. IDF comes from the round's candidates."""
    S = bm25_matrix([request_text(r) for r in take(sc.records, ids)], [request_text(r) for r in sc.target.records])
    return target_rows(ids, S, sc.target.groups, sc.cfg.target_aggregation, sc.cfg.target_normalize)


def _random_format(sc: Scoring, ids: list) -> list[dict]:
    """Format-matched random (a baseline): random among the candidates shaped like most target
    records (an input present, or absent; present at a tie), then the others at random. score =
    1 + u for a match, u otherwise (u uniform in [0, 1), the seeded stream)."""
    want = 2 * sum(map(has_input, sc.target.records)) >= len(sc.target.records)
    match = [has_input(r) == want for r in take(sc.records, ids)]
    return [{"id": i, "score": float(v) + m, "format_match": m} for i, v, m in zip(ids, sc.rng.random(len(ids)), match)]


def _less(sc: Scoring, ids: list) -> list[dict]:
    """LESS: cosine between the candidate's and the target examples' gradient features (answer-token
    loss; the LESS_MODULES weights, or under LoRA the adapters; CountSketched or, for full weights
    with --grad_projection kronecker, Kronecker-projected; seeded), max over target groups of the mean. Candidates'
    gradients are Adam-preconditioned when the last round's moments exist (targets' never: LESS
    takes plain gradients for its validation set); their answers are the model's own greedy answer
    (at most --gen_max_new_tokens tokens) unless --grad_answers pool."""
    seed = int(sc.rng.integers(2**31 - 1))
    proj = projections(sc.model, sc.cfg.grad_dim, seed, sc.cfg.grad_projection) if sc.adapters is None else \
        hash_sketches([a.size for a in sc.adapters], sc.cfg.grad_dim, seed)
    answers = less_answers(sc, ids)
    X = less_features(sc, proj, [(sc.enc[i].prompt, a) for i, a in zip(ids, answers)], sc.moments)
    T = target_features(sc, proj)
    rows = similarity_rows(sc, ids, X, T)
    for r, a in zip(rows, answers):
        r["answer_tokens"] = len(a)
    return rows


def less_answers(sc: Scoring, ids: Sequence) -> list[list[int]]:
    """The answers candidates' gradients are taken on: the pool's, or the model's greedy ones."""
    cfg = sc.cfg
    if cfg.grad_answers == "pool":
        return [sc.enc[i].answer for i in ids]
    prompts = [truncate_prompt(sc.enc[i].prompt, cfg.max_length - 1) for i in ids]
    gens = generate(sc.model, prompts, [cfg.gen_max_new_tokens] * len(ids), sc.pad_id, sc.stop,
                    min(cfg.max_rows, LESS_GEN_ROWS), cfg.progress, "less: answers",
                    in_step=fsdp_utils.is_sharded(sc.model), kv_tokens=model_kv_tokens(sc.model))
    return [toks or [sc.tokenizer.eos_token_id] for toks, _ in gens]


def target_features(sc: Scoring, proj: list) -> np.ndarray:
    """The target's unit gradient features (plain: LESS takes plain gradients for its validation
    set). Every rank needs all of them; on a sharded model each rank takes its share and the shares
    are gathered, where every rank taking them all cost W ranks one process's time."""
    pairs = [(e.prompt, e.answer) for e in sc.target.enc]
    if not fsdp_utils.is_sharded(sc.model):
        return less_features(sc, proj, pairs, None)
    mine = less_features(sc, proj, pairs[fsdp_utils.my_slice(len(pairs))], None)
    return np.concatenate(fsdp_utils.gather_lists([mine]))


def less_features(sc: Scoring, proj: list, pairs: Sequence[tuple[list[int], list[int]]],
                  moments: dict | None) -> np.ndarray:
    """Unit gradient features of (prompt, answer) pairs, truncated like training (truncate_pair)."""
    pairs = [truncate_pair(p, a, sc.cfg.max_length)[:2] for p, a in pairs]
    args = (sc.model, [p + a for p, a in pairs], [len(p) for p, _ in pairs], sc.pad_id, sc.cfg)
    X = grad_features(*args, proj, moments, sc.betas) if sc.adapters is None else \
        lora_features(*args, sc.adapters, proj, moments, sc.betas)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _typiclust(sc: Scoring, ids: list) -> list[dict]:
    return [{"id": i, "score": 0.0, "embedding": e.tolist()} for i, e in zip(ids, sc.prompt_vectors(ids))]


def _typiclust_clusters(sc: Scoring, rows: list[dict]) -> None:
    """After every rank's rows are in: KMeans over candidates + labelled examples with as many
    clusters as labelled + to pick; score = typicality within the cluster; `covered` = the cluster
    holds a labelled example."""
    X = np.array([r.pop("embedding") for r in rows], dtype=np.float32)
    L = sc.prompt_vectors(sc.labelled)
    k = max(1, min(len(sc.labelled) + sc.n, len(X) + len(L)))
    labels = cluster_labels(np.vstack([X, L]), k, sc.rng)
    typ = typicality(np.vstack([X, L]), labels)
    covered = set(labels[len(X):].tolist())
    sizes = np.bincount(labels)
    for j, r in enumerate(rows):
        c = int(labels[j])
        r.update(score=float(typ[j]), cluster=c, covered=c in covered, cluster_size=int(sizes[c]))


def _cluster_labels(sc: Scoring, rows: list[dict]) -> None:
    """After every rank's rows are in: one seeded KMeans over all candidates."""
    if sc.cfg.cluster_embedding == "hidden":
        X = np.array([r.pop("embedding") for r in rows], dtype=np.float32)
    else:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [request_text(r) for r in take(sc.records, [r["id"] for r in rows])]  # (same features as before)
        X = TfidfVectorizer(max_features=20000, sublinear_tf=True).fit_transform(texts)
    for r, c in zip(rows, cluster_labels(X, sc.cfg.num_clusters, sc.rng)):
        r["cluster"] = int(c)


def answer_losses(sc: Scoring, ids: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(L(answer | prompt), L(answer)) over the same answer tokens: the mean NLL of the answer after
    its (truncated) prompt, and after BOS + "### Response:" alone (Cherry_LLM's direct pass; with
    --prompt_template chat after the first token + the assistant-turn header)."""
    marker = response_marker_ids(sc.tokenizer, sc.template)
    cond, cond_starts, direct = [], [], []
    for i in ids:
        p, a, _ = truncate_pair(sc.enc[i].prompt, sc.enc[i].answer, sc.cfg.max_length)
        cond.append(p + a)
        cond_starts.append(len(p))
        direct.append(marker + a)
    s, c = sequence_nll(sc.model, cond, cond_starts, sc.pad_id, sc.cfg, "scoring answer|prompt",
                        groups=[sc.enc[i].input_block for i in ids])
    s2, c2 = sequence_nll(sc.model, direct, [len(marker)] * len(direct), sc.pad_id, sc.cfg, "scoring answer")
    return mean_nll(s, c), mean_nll(s2, c2)


def _answer_rows(ids: list, score: np.ndarray, cond: np.ndarray, unc: np.ndarray) -> list[dict]:
    return [{"id": i, "score": float(s), "loss_cond": float(c), "loss_uncond": float(u)}
            for i, s, c, u in zip(ids, score, cond, unc)]


def _ifd(sc: Scoring, ids: list) -> list[dict]:
    cond, unc = answer_losses(sc, ids)
    return _answer_rows(ids, cond / np.maximum(unc, 1e-12), cond, unc)


def _data_pruning(sc: Scoring, ids: list) -> list[dict]:
    cond, unc = answer_losses(sc, ids)
    return _answer_rows(ids, np.abs(unc - cond), cond, unc)


def _generation_ppl(sc: Scoring, ids: list) -> list[dict]:
    prompts = [truncate_prompt(sc.enc[i].prompt, sc.cfg.max_length) for i in ids]
    n = sc.cfg.gen_max_new_tokens
    gens = generate(sc.model, prompts, [n] * len(ids), sc.pad_id, sc.stop, sc.cfg.max_rows,
                    sc.cfg.progress, "scoring generation_ppl", of_logits=generated_nll, kv_tokens=GEN_KV_TOKENS)
    return [{"id": i, "score": nll, "generated_tokens": len(toks)} for i, (toks, nll) in zip(ids, gens)]


def generated_nll(toks: list[int], logits: torch.Tensor) -> float:
    """generation_ppl's score of one row: the mean NLL of its greedy tokens under their logits."""
    return float(F.cross_entropy(logits, torch.tensor(toks), reduction="none").mean()) if toks else 0.0


def no_token_ids(tokenizer) -> list[int]:
    """Ids of the spellings of "no" (with and without a leading space) that are one token each:
    the first token of a longer spelling (e.g. "▁N" of "NO") also starts "Not", "New", ..."""
    ids = set()
    for w in NO_SPELLINGS:
        for text in (w, " " + w):
            toks = tokenizer(text, add_special_tokens=False).input_ids
            if len(toks) == 1:
                ids.add(toks[0])
    if not ids:
        raise InputError(f"--sampling_strategy self_ask: tokenizer {tokenizer.name_or_path}: none of "
                         f"{', '.join(NO_SPELLINGS)} is a single token, so P(no) cannot be read")
    return sorted(ids)


def _self_ask(sc: Scoring, ids: list) -> list[dict]:
    """Probability mass on single-token "no" spellings, averaged over the first self_ask_positions
    generated positions; positions after the model's stop id (EOS) count as 0 (it said nothing more), so
    every row averages over the same number of positions."""
    no_ids = no_token_ids(sc.tokenizer)
    prompts = []
    for r in take(sc.records, ids):
        question = {"instruction": SELF_ASK_TEMPLATE.format(instruction=request_text(r)), "input": ""}
        prompts.append(truncate_prompt(prompt_ids(sc.tokenizer, [question], sc.template)[0], sc.cfg.max_length))
    n = sc.cfg.self_ask_positions
    gens = generate(sc.model, prompts, [n] * len(ids), sc.pad_id, sc.stop, sc.cfg.max_rows,
                    sc.cfg.progress, "scoring self_ask", kv_tokens=GEN_KV_TOKENS,
                    of_logits=lambda _, logits: float(logits.softmax(-1)[:, no_ids].sum()) / n)
    return [{"id": i, "score": no_mass} for i, (_, no_mass) in zip(ids, gens)]


def cluster_labels(X, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded KMeans cluster of each row of X (TF-IDF or embeddings)."""
    from sklearn.cluster import KMeans

    k = max(1, min(num_clusters, X.shape[0]))
    return KMeans(n_clusters=k, n_init=3, random_state=int(rng.integers(2**31 - 1))).fit_predict(X)


# ----------------------------------------------------------------------------------------------
# the strategy table


@dataclass(frozen=True)
class Strategy:
    score: Callable[[Scoring, list], list[dict]]
    model: bool = True  # scores with the current model, data-parallel over ranks
    answers: bool = False  # reads the candidates' answers (labelled or simulated pools only)
    flags: tuple[str, ...] = ()  # strategy-specific flags it reads
    finish: Callable[[Scoring, list[dict]], None] | None = None  # on every candidate's rows, after gathering
    choose: Callable[[list[dict], int], list] | None = None  # its own pick rule instead of stratification
    keep: Callable[[float, ScoreConfig], bool] | None = None  # candidates it may select
    check: Callable[[Any], None] | None = None  # up-front check of the tokenizer (raises InputError)
    target: bool = False  # needs --target_file
    grads: bool = False  # needs per-example gradients (a plain model copy under torchrun)

    @property
    def ranked(self) -> bool:  # picks by stratifying the sorted scores
        return self.choose is None


TARGET_FLAGS = ("target_file", "target_group_field", "target_aggregation", "target_normalize")
STRATEGIES: dict[str, Strategy] = {
    "forward_ppl": Strategy(_forward_ppl),
    "data_pruning_w_answers": Strategy(_data_pruning, answers=True),
    "ifd": Strategy(_ifd, answers=True, flags=("ifd_max",), keep=lambda s, cfg: s <= cfg.ifd_max),
    "generation_ppl": Strategy(_generation_ppl, flags=("gen_max_new_tokens",)),
    "self_ask": Strategy(_self_ask, flags=("self_ask_positions",), check=no_token_ids),
    "length_and_ppl": Strategy(_length_and_ppl),
    "instruction_length": Strategy(_instruction_length, model=False),
    "random": Strategy(_random, model=False),
    "cluster": Strategy(_cluster, flags=("num_clusters", "cluster_embedding"), finish=_cluster_labels,
                        choose=lambda rows, n: cluster_round_robin(rows, n)),
    "rds": Strategy(_rds, flags=TARGET_FLAGS, target=True, finish=_order_by_target),
    "less": Strategy(_less, flags=TARGET_FLAGS + ("grad_dim", "grad_projection", "grad_answers", "gen_max_new_tokens",
                                                  "shortlist"), target=True, grads=True, finish=_order_by_target),
    "bm25": Strategy(_bm25, model=False, flags=TARGET_FLAGS, target=True),
    "random_format": Strategy(_random_format, model=False, flags=("target_file",), target=True),
    "typiclust": Strategy(_typiclust, finish=_typiclust_clusters, choose=typiclust_pick),
}
if tuple(STRATEGIES) != STRATEGY_NAMES:  # the flag's choices are declared without this table
    raise ImportError(f"al_selection.STRATEGY_NAMES {STRATEGY_NAMES} != STRATEGIES {tuple(STRATEGIES)}")
STRATEGY_FLAGS = tuple(sorted({f for s in STRATEGIES.values() for f in s.flags}))
SCORING_PASS_FLAGS = ("model_max_length", "batch_size", "score_token_budget")


def strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise InputError(f"--sampling_strategy: unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def reads_answers(name: str, grad_answers: str) -> bool:
    """Whether the strategy reads its candidates' answers (the pool's): a lazy pool then tokenises them."""
    return strategy(name).answers or grad_answers == "pool"


def score_candidates(name: str, cand_ids: Sequence, sc: Scoring, part: slice = slice(None),
                     gather: Callable[[list], list] = lambda rows: rows) -> list[dict]:
    """Score the candidates; rows come back in candidate order.

    Data-parallel: this process scores only cand_ids[part] (a contiguous slice) and `gather`
    concatenates every rank's rows in rank order. Model-free strategies score everything."""
    st, ids = strategy(name), list(cand_ids)
    if not st.model:
        return st.score(sc, ids)
    rows = gather(st.score(sc, ids[part]))
    if st.finish is not None:
        st.finish(sc, rows)
    return rows


def shortlist(cands: list, sc: Scoring, k: int) -> tuple[list, dict]:
    """less --shortlist: the k candidates rds ranks highest (in candidate order; ties go to the
    earlier candidate), and every candidate's rds score. Data-parallel like score_candidates."""
    rows = score_candidates("rds", cands, sc, fsdp_utils.my_slice(len(cands)), fsdp_utils.gather_lists)
    top = sorted(sorted(range(len(rows)), key=lambda j: -rows[j]["score"])[:k])
    return [cands[j] for j in top], {r["id"]: r["score"] for r in rows}


# ----------------------------------------------------------------------------------------------
# flags: defined once, checked once


def add_score_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring (the strategy-specific ones are refused by the strategies that do not read them)")
    add_config_args(g, ScoreConfig)


def score_config(args: argparse.Namespace, progress: bool = True) -> ScoreConfig:
    """ScoreConfig from the flags (checked there); a flag that does not apply (None) keeps its default."""
    rule = args.target_aggregation
    if args.target_group_field and rule not in (None, "mean"):
        raise InputError(f"--target_group_field: groups are scored separately by --target_aggregation mean only; "
                         f"{rule} already gives every target example its share")
    return config_from(ScoreConfig, args, progress=progress)


def add_selection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("acquisition")
    add_config_args(g, SelectConfig)
    g.add_argument("--random_pool_fraction", action="store_true",
                   help="accepted for compatibility: candidates are always the remaining pool")
    g = p.add_argument_group("target (rds, less: what the model should get good at)")
    add_config_args(g, TargetConfig)
    add_config_args(g, ScoreConfig, section="target")


def _flag_applies(args: argparse.Namespace) -> dict[str, tuple[bool, str]]:
    """flag -> (does the chosen strategy read it, where it applies: for the error message)."""
    st = strategy(args.sampling_strategy)
    strat = args.stratification_strategy
    ranked = (st.ranked, "strategies ranked by score (cluster and typiclust pick by their own rule)")
    out = {"stratification_strategy": ranked, "pick_samples_from": ranked,
           "num_k": (st.ranked and strat == "bucket", "--stratification_strategy bucket"),
           "decay_k": (st.ranked and strat == "bucket", "--stratification_strategy bucket"),
           "mixed_sampling_factor": (st.ranked and strat == "mixed" and args.pick_samples_from != "uniform",
                                     "--stratification_strategy mixed with --pick_samples_from top or bottom")}
    for f in STRATEGY_FLAGS:
        users = [n for n, s in STRATEGIES.items() if f in s.flags]
        out[f] = (f in st.flags, "--sampling_strategy " + " or ".join(users))
    return out


def check_flag_use(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """Refuse a flag the chosen strategy would ignore (given with a non-default value); set the
    ones that do not apply to None, so the run's recorded flags say what was used. The scoring
    pass's own settings (context, batching) are accepted with model-free strategies, so one
    flag set serves a loop over strategies, and recorded as None there."""
    for flag, (applies, where) in _flag_applies(args).items():
        if applies:
            continue
        value = getattr(args, flag)
        if value is not None and value != p.get_default(flag):
            used = f"--sampling_strategy {args.sampling_strategy}"
            if strategy(args.sampling_strategy).ranked and flag not in STRATEGY_FLAGS:
                used += f" --stratification_strategy {args.stratification_strategy}"
            raise InputError(f"--{flag}: {value} has no effect with {used} (only {where} reads it); leave it out")
        setattr(args, flag, None)
    if not strategy(args.sampling_strategy).model:
        for flag in SCORING_PASS_FLAGS:
            setattr(args, flag, None)


# ----------------------------------------------------------------------------------------------
# the selection of a round: the strategy's rules around al_selection.pick


def selection_config(args: argparse.Namespace) -> SelectConfig:
    """SelectConfig from the flags (checked there); a flag that does not apply (None) keeps its default."""
    if strategy(args.sampling_strategy).target and not args.target_file:
        raise InputError(f"--target_file: --sampling_strategy {args.sampling_strategy} selects for a target: "
                         "give the examples it should find more of")
    return config_from(SelectConfig, args)


def allowed(rows: list[dict], name: str, scfg: ScoreConfig) -> list[dict]:
    """The scored candidates the strategy may select (ifd: not above --ifd_max)."""
    keep = strategy(name).keep
    return rows if keep is None else [r for r in rows if keep(r["score"], scfg)]


def select(rows: list[dict], n: int, rnd: int, cfg: SelectConfig, scfg: ScoreConfig, rng: np.random.Generator,
           keep: Callable[[Any], bool] | None = None) -> tuple[list[dict], list]:
    """al_selection.pick over the candidates the strategy allows, with its own rule if unranked."""
    st = strategy(cfg.strategy)
    return pick(allowed(rows, cfg.strategy, scfg), n, rnd, cfg, rng, keep, None if st.ranked else st.choose)


def select_by_cost(rows: list[dict], n: int, budget: int, cost: Callable[[Any], int], rnd: int,
                   cfg: SelectConfig, scfg: ScoreConfig, rng_of: Callable[[], np.random.Generator],
                   keep_of: Callable[[], Callable[[Any], bool]] | None = None) -> tuple[list[dict], list]:
    """A batch worth `budget` (answer words): the strategy picks n examples (n = the budget over
    the candidates' mean cost), doubling n while every pick fits and candidates remain, so its
    stratification works on a count as usual; the batch is fill_to_cost of those picks. Each try
    starts from a fresh rng and guard: the result depends only on the final n."""
    while True:
        n = max(1, min(n, len(rows)))
        picked, skipped = select(rows, n, rnd, cfg, scfg, rng_of(), keep_of() if keep_of else None)
        batch = fill_to_cost(picked, budget, cost)
        if len(batch) < len(picked) or len(picked) < n or n == len(rows):
            return batch, skipped
        n *= 2
