"""How many of a run's eval problems its training saw (pure; procedural `arith` runs, recomputed from the config).

An `arith` eval line that records `split: held-out` drew its problems from the held-out split (arith.py), which
no training stream contains; an older line (no `split`) evaluated the first problems of the seed-0, level-1
stream as it was before the split, the same stream the runs trained on. Both sets are regenerated here, and the
count is what it is: expected 0 for held-out evals.
"""

from __future__ import annotations

import random
from functools import lru_cache

from ..arith import arith_eval_problems, arith_problem, draw_arith


@lru_cache(maxsize=64)
def _training_texts(seed: int, difficulty: tuple[int, ...] | int, consumed: int, legacy: bool) -> frozenset[str]:
    if legacy:  # before the split: attempt 0 of every draw, one level
        level = difficulty if isinstance(difficulty, int) else difficulty[0]
        return frozenset(
            draw_arith(random.Random(f"vespo-arith/{seed}/{level}/{i}"), level)[0] for i in range(consumed)
        )
    return frozenset(arith_problem(seed, difficulty, i).problem for i in range(consumed))


def _eval_texts(record: dict) -> list[str]:
    n = int(record.get("num_problems") or 0)
    if record.get("split") == "held-out":
        d = record.get("difficulty", 1)
        return [p.problem for p in arith_eval_problems(tuple(d) if isinstance(d, list) else d, n)]
    return [draw_arith(random.Random(f"vespo-arith/0/1/{i}"), 1)[0] for i in range(n)]  # `load_problems("arith")`


def eval_overlap(config: dict, eval_record: dict | None) -> dict | None:
    """{"problems", "in_training", "split"} for a run's last `arith` eval line: how many of its eval problems
    occur among the prompts its training consumed (trainer.steps × trainer.minibatch_prompts of its stream);
    None for other sources or benchmarks."""
    data, trainer = config.get("data") or {}, config.get("trainer") or {}
    if not eval_record or eval_record.get("benchmark") != "arith" or data.get("train") != "arith":
        return None
    legacy = eval_record.get("split") != "held-out"
    d = data.get("difficulty", 1)
    consumed = int(trainer.get("steps", 0)) * int(trainer.get("minibatch_prompts", 0))
    train = _training_texts(int(trainer.get("seed", 0)), tuple(d) if isinstance(d, list) else d, consumed, legacy)
    texts = _eval_texts(eval_record)
    return {
        "problems": len(texts),
        "in_training": sum(t in train for t in texts),
        "distinct": len(set(texts)),
        "split": "training stream (before the held-out split)" if legacy else "held-out",
    }
