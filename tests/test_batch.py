"""train/batch.py: the microbatch planner covers every row once, keeps the token budget, and pads
no more than any other contiguous cut of the length-sorted rows (brute force on small cases)."""

from __future__ import annotations

import itertools
import random

import torch

from vespo_cli.train import batch
from vespo_cli.train.batch import MICROBATCH_OVERHEAD_TOKENS, Rows, plan_microbatches


def rows_of(lengths: list[int]) -> Rows:
    n = len(lengths)
    return Rows(
        [[1]] * n,
        [[2] * (L - 1) for L in lengths],
        [None] * n,
        torch.zeros(n),
        torch.zeros(n, dtype=torch.bool),
        [str(i) for i in range(n)],
        torch.zeros(n, dtype=torch.long),
        ["s"] * n,
    )


def cost(plan, lengths):
    return sum(len(mb) * max(lengths[i] for i in mb) + MICROBATCH_OVERHEAD_TOKENS for mb in plan)


def best_contiguous_cost(lengths, budget):
    widths = sorted(lengths, reverse=True)
    n, best = len(widths), float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        groups, cur = [], [widths[0]]
        for w, cut in zip(widths[1:], cuts):
            if cut:
                groups.append(cur)
                cur = []
            cur.append(w)
        groups.append(cur)
        if all(len(g) == 1 or len(g) * g[0] <= budget for g in groups):
            best = min(best, sum(len(g) * g[0] + MICROBATCH_OVERHEAD_TOKENS for g in groups))
    return best


def test_plan_is_a_budgeted_cover_with_minimal_padding():
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(1, 8)
        lengths = [rng.choice([rng.randint(20, 80), rng.randint(150, 400)]) for _ in range(n)]
        budget = rng.choice([300, 600, 1200])
        plan = plan_microbatches(rows_of(lengths), list(range(n)), budget)
        assert sorted(i for mb in plan for i in mb) == list(range(n))
        for mb in plan:
            widths = [lengths[i] for i in mb]
            assert widths == sorted(widths, reverse=True)
            assert len(mb) == 1 or len(mb) * widths[0] <= budget
        assert cost(plan, lengths) == best_contiguous_cost(lengths, budget)
    assert [len(mb) for mb in plan_microbatches(rows_of([500, 40]), [0, 1], 100)] == [1, 1]


def test_a_few_long_rows_do_not_pad_the_short_ones():
    lengths = [175] * 3 + [100] * 13
    plan = plan_microbatches(rows_of(lengths), list(range(16)), 2048)
    assert [len(mb) for mb in plan] == [3, 13]  # greedy would pad 11 rows to 175


def test_search_window_bounds_rows_per_microbatch(monkeypatch):
    monkeypatch.setattr(batch, "MAX_ROWS_PER_MICROBATCH", 4)
    plan = plan_microbatches(rows_of([3] * 10), list(range(10)), 1000)
    assert max(len(mb) for mb in plan) <= 4 and sum(len(mb) for mb in plan) == 10
