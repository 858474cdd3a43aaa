"""The selection of a round from its scored candidates, without torch (report_AL.py reads the
bucket and k rules from here): the round's candidates, the batch a strategy's order gives under
stratification (greedy, bucket, mixed) and the --max_similarity guard, answer-word batches,
cluster round-robin.

The strategies (al_strategies.py) score; this module only orders and picks.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from al_utils import InputError, setting

STRATEGY_NAMES = ("forward_ppl", "data_pruning_w_answers", "ifd", "generation_ppl", "self_ask", "length_and_ppl",
                  "instruction_length", "random", "cluster", "rds", "less", "bm25", "random_format", "typiclust")
"""--sampling_strategy's choices; al_strategies.STRATEGIES defines each, in this order (checked on import).
Named here so the selection settings are declared without importing the scorers (and torch)."""
STRATIFICATIONS = ("greedy", "bucket", "mixed")
PICKS = ("top", "bottom", "uniform")
SEED_STRATEGIES = ("random", "typiclust")
Rule = Callable[[list[dict], int], list[tuple[Any, int | None]]]  # an unranked strategy's own pick


@dataclass(frozen=True)
class SelectConfig:
    """Selection settings: each field is its flag too (al_strategies.add_selection_args). A
    field the strategy does not read keeps its default (al_strategies.check_flag_use)."""
    strategy: str = setting("forward_ppl", "how candidates are scored (README: What is computed)",
                            flag="sampling_strategy", choices=STRATEGY_NAMES)
    stratification: str = setting("greedy", "how the batch is taken from the sorted scores (not cluster: it picks "
                                  "round-robin)", flag="stratification_strategy", choices=STRATIFICATIONS)
    pick: str = setting("top", "which end of the sorted list (or of each bucket) is taken; uniform = seeded random",
                        flag="pick_samples_from", choices=PICKS)
    num_k: int = setting(5, "bucket: number of buckets")
    decay_k: bool = setting(False, "bucket: one bucket fewer each round, never below 2")
    factor: float = setting(0.7, "mixed with top/bottom: share taken from that end, the rest at random",
                            flag="mixed_sampling_factor")
    fraction: float = setting(1.0, "share of the remaining pool scored each round (seeded random subset)",
                              flag="cluster_data_fraction")
    seed_strategy: str = setting("random", "round 0: a seeded random seed set, or TypiClust's most typical examples "
                                 "under the base model", choices=SEED_STRATEGIES)
    max_similarity: float | None = setting(
        None, "diversity guard (any strategy): skip a candidate whose prompt embedding has cosine >= TAU with a "
        "labelled or already picked example, and go on down the strategy's order", type=float, metavar="TAU")

    def __post_init__(self) -> None:
        if self.num_k < 1:
            raise InputError("--num_k: must be >= 1")
        if not 0 < self.fraction <= 1:
            raise InputError("--cluster_data_fraction: must be in (0, 1]")
        if not 0 <= self.factor <= 1:
            raise InputError("--mixed_sampling_factor: must be in [0, 1]")
        if self.max_similarity is not None and not 0 < self.max_similarity <= 1:
            raise InputError("--max_similarity: must be in (0, 1]")


def candidates(remaining: list, fraction: float, rng: np.random.Generator) -> list:
    """The round's candidates: the remaining pool, or a seeded random share of it (kept in order)."""
    if fraction >= 1:
        return remaining
    m = max(1, math.ceil(fraction * len(remaining)))
    return [remaining[j] for j in np.sort(rng.choice(len(remaining), m, replace=False))]


def pick(rows: list[dict], n: int, rnd: int, cfg: SelectConfig, rng: np.random.Generator,
         keep: Callable[[Any], bool] | None = None, rule: Rule | None = None) -> tuple[list[dict], list]:
    """The round's batch from its (allowed) scored candidates: ([{id, bucket, score}] in selection
    order, ids skipped by `keep`). Fewer than n, or none, when fewer candidates are left. `rule` is
    an unranked strategy's own pick; without one, candidates are ranked by score and stratified.

    `keep` is the --max_similarity guard: a candidate it rejects is skipped and the same rule goes
    on over what is left (for greedy: further down the sorted list) until n are kept."""
    score_of = {r["id"]: r["score"] for r in rows}
    chosen: list = []
    skipped: list = []
    while len(chosen) < n and rows:
        batch = _choose(rows, n - len(chosen), rnd, cfg, rng, rule)
        if keep is None:
            chosen = batch
            break
        for i, b in batch:
            (chosen.append((i, b)) if keep(i) else skipped.append(i))
        taken = {i for i, _ in batch}
        rows = [r for r in rows if r["id"] not in taken]
    return [{"id": i, "bucket": b, "score": score_of[i]} for i, b in chosen], skipped


def _choose(rows: list[dict], n: int, rnd: int, cfg: SelectConfig, rng: np.random.Generator,
            rule: Rule | None) -> list:
    if rule is not None:
        return rule(rows, n)
    ranked = [r["id"] for r in sorted(rows, key=lambda r: -r["score"])]  # stable: ties keep order
    k = k_for_round(cfg.num_k, cfg.decay_k, rnd) if cfg.stratification == "bucket" else 0
    return stratify(ranked, n, cfg.stratification, cfg.pick, k, cfg.factor, rng)


def fill_to_cost(picked: list[dict], budget: int, cost: Callable[[Any], int]) -> list[dict]:
    """The picks in selection order up to, not including, the first that would take the summed
    cost past `budget` (a batch of --budget_unit answer_words)."""
    out, total = [], 0
    for r in picked:
        total += cost(r["id"])
        if total > budget:
            break
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# stratified selection over a list sorted by score, best ("top") first


def bucket_sizes(M: int, k: int) -> list[int]:
    """k contiguous buckets over M items; the first M mod k get one extra item."""
    return [M // k + (1 if b < M % k else 0) for b in range(k)]


def bucket_quota(sizes: Sequence[int], n: int) -> list[int]:
    """n // k from each bucket and n mod k more from the last; a bucket short of its share gives
    what it has and its shortfall is taken from bucket i+1, then i-1, i+2, i-2, ... (from what
    those buckets hold beyond their own share)."""
    k = len(sizes)
    want = [n // k] * k
    want[-1] += n % k
    take = [min(w, s) for w, s in zip(want, sizes)]
    spare = [s - t for s, t in zip(sizes, take)]
    for i in range(k):
        short = want[i] - min(want[i], sizes[i])  # this bucket's own shortfall, not what it received
        for d in range(1, k):
            for j in (i + d, i - d):
                if short and 0 <= j < k and spare[j]:
                    g = min(short, spare[j])
                    take[j] += g
                    spare[j] -= g
                    short -= g
    return take


def stratify(sorted_ids: Sequence, n: int, how: str, pick: str, k: int, factor: float,
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

    if how == "greedy":
        return [(i, None) for i in choose(D, n)]
    if how == "mixed":
        if pick == "uniform":
            return [(i, None) for i in draw(D, n)]
        t = int(factor * n)
        if pick == "top":
            return [(i, None) for i in D[:t] + draw(D[t:], n - t)]
        return [(i, None) for i in D[M - t:] + draw(D[: M - t], n - t)]
    if how == "bucket":
        sizes = bucket_sizes(M, k)
        quota = bucket_quota(sizes, n)
        out, lo = [], 0
        for b, (size, q) in enumerate(zip(sizes, quota)):
            out += [(i, b) for i in choose(D[lo: lo + size], q)]
            lo += size
        return out
    raise InputError(f"--stratification_strategy: unknown {how!r} ({', '.join(STRATIFICATIONS)})")


def cluster_round_robin(rows: Sequence[dict], n: int) -> list[tuple[Any, int | None]]:
    """Pick n across clusters in turn (clusters in order of their best score), highest score first
    within each cluster. Rows must carry `cluster`; ties keep candidate order."""
    by: dict[int, list] = {}
    for r in sorted(rows, key=lambda r: -r["score"]):
        by.setdefault(r["cluster"], []).append(r["id"])
    return [(i, None) for i in take_in_turns(list(by.values()), n)]  # dict order: each cluster's best row


def take_in_turns(queues: Sequence[Sequence], n: int) -> list:
    """n items taking turns over the queues in their order: every queue's first, then every
    queue's second, ... (a queue that runs out drops out); fewer when the queues hold fewer."""
    out: list = []
    depth, total = 0, sum(map(len, queues))
    while len(out) < min(n, total):
        out += [q[depth] for q in queues if depth < len(q)][: n - len(out)]
        depth += 1
    return out


def k_for_round(num_k: int, decay: bool, rnd: int) -> int:
    """Buckets used in round rnd >= 1: k_1 = num_k, k_{r+1} = max(2, k_r - 1); num_k = 1 stays 1."""
    if not decay or num_k == 1:
        return num_k
    return max(2, num_k - (rnd - 1))
