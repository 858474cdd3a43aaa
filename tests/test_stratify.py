"""Stratification: exact picks on hand-built sorted lists (best first)."""
import itertools

import numpy as np
import pytest

from al_selection import bucket_quota, bucket_sizes, cluster_round_robin, k_for_round, stratify

D = list(range(10))


def pick(strategy, pick_from, n, k=3, factor=0.5, items=D, seed=0):
    return [i for i, _ in stratify(items, n, strategy, pick_from, k, factor, np.random.default_rng(seed))]


def test_greedy():
    assert pick("greedy", "top", 3) == [0, 1, 2]
    assert pick("greedy", "bottom", 3) == [7, 8, 9]
    u = pick("greedy", "uniform", 4)
    assert len(set(u)) == 4 and set(u) <= set(D)
    assert u == pick("greedy", "uniform", 4)  # seeded
    assert u != pick("greedy", "uniform", 4, seed=1)


def test_mixed():
    top = pick("mixed", "top", 4, factor=0.5)
    assert top[:2] == [0, 1] and set(top[2:]) <= set(range(2, 10)) and len(set(top)) == 4
    bottom = pick("mixed", "bottom", 4, factor=0.5)
    assert bottom[:2] == [8, 9] and set(bottom[2:]) <= set(range(0, 8)) and len(set(bottom)) == 4
    assert pick("mixed", "top", 4, factor=1.0) == [0, 1, 2, 3]
    uni = pick("mixed", "uniform", 4)
    assert uni == pick("greedy", "uniform", 4)  # mixed/uniform is a seeded random n


def test_bucket_sizes_and_quota():
    assert bucket_sizes(10, 3) == [4, 3, 3]  # the first M mod k get one extra
    assert bucket_quota([4, 3, 3], 5) == [1, 1, 3]  # n mod k from the last bucket
    # the last bucket is short by 2: take from i-1 (i+1 does not exist), then i-2
    assert bucket_quota([2, 2, 2, 2], 7) == [1, 2, 2, 2]
    assert bucket_quota([3, 2, 2], 7) == [3, 2, 2]


def quota_by_rule(sizes, n):
    """The README's rule, one missing item at a time: n // k from each bucket, n mod k more from the
    last; each item a bucket lacks comes from the nearest bucket with an item to spare, looking at
    i+1, i-1, i+2, i-2, ... in that order."""
    k = len(sizes)
    want = [n // k] * k
    want[-1] += n % k
    take = [min(w, s) for w, s in zip(want, sizes)]
    for i in range(k):
        for _ in range(max(0, want[i] - sizes[i])):  # what bucket i itself lacks
            for j in [x for d in range(1, k) for x in (i + d, i - d) if 0 <= x < k]:
                if take[j] < sizes[j]:
                    take[j] += 1
                    break
    return take


def test_bucket_quota_against_the_rule_brute_force():
    assert bucket_quota([1, 5, 5], 6) == [1, 3, 2]  # bucket 1 received bucket 0's shortfall: it has none
    checked = 0
    for k in range(1, 5):
        for sizes in itertools.product(range(0, 5), repeat=k):
            for n in range(0, sum(sizes) + 1):
                got = bucket_quota(list(sizes), n)
                assert got == quota_by_rule(list(sizes), n), (sizes, n)
                assert sum(got) == n and all(0 <= g <= s for g, s in zip(got, sizes))
                checked += 1
    assert checked > 5000


def test_bucket_top_bottom_uniform():
    # M=10, k=3: buckets [0..3] [4..6] [7..9]; n=5: 1, 1 and 1+2 from the last
    assert pick("bucket", "top", 5) == [0, 4, 7, 8, 9]
    assert pick("bucket", "bottom", 5) == [3, 6, 7, 8, 9]
    got = stratify(D, 5, "bucket", "uniform", 3, 0.5, np.random.default_rng(0))
    assert [b for _, b in got] == [0, 1, 2, 2, 2]
    assert got[0][0] in range(0, 4) and got[1][0] in range(4, 7) and {i for i, _ in got[2:]} == {7, 8, 9}
    # M=8, k=4, n=7: last bucket short -> filled from buckets 2 then 1
    assert pick("bucket", "top", 7, k=4, items=list(range(8))) == [0, 2, 3, 4, 5, 6, 7]
    assert pick("bucket", "bottom", 7, k=4, items=list(range(8))) == [1, 2, 3, 4, 5, 6, 7]
    # n divisible by k
    assert pick("bucket", "top", 6, k=3) == [0, 1, 4, 5, 7, 8]


@pytest.mark.parametrize("strategy", ["greedy", "bucket", "mixed"])
@pytest.mark.parametrize("pick_from", ["top", "bottom", "uniform"])
def test_never_twice_and_n_capped(strategy, pick_from):
    for n in (1, 4, 7, 10, 12):
        got = pick(strategy, pick_from, n)
        assert len(got) == min(n, 10) and len(set(got)) == len(got)


def test_decay_k():
    assert [k_for_round(5, True, r) for r in range(1, 7)] == [5, 4, 3, 2, 2, 2]
    assert [k_for_round(2, True, r) for r in range(1, 4)] == [2, 2, 2]
    assert [k_for_round(1, True, r) for r in range(1, 4)] == [1, 1, 1]
    assert [k_for_round(5, False, r) for r in range(1, 4)] == [5, 5, 5]


def test_cluster_round_robin():
    rows = [{"id": "a", "score": 3, "cluster": 0}, {"id": "b", "score": 5, "cluster": 1},
            {"id": "c", "score": 4, "cluster": 0}, {"id": "d", "score": 1, "cluster": 1},
            {"id": "e", "score": 2, "cluster": 2}]
    assert [i for i, _ in cluster_round_robin(rows, 4)] == ["b", "c", "e", "d"]
    assert [i for i, _ in cluster_round_robin(rows, 9)] == ["b", "c", "e", "d", "a"]
