"""Procedural arithmetic problems: the endless deterministic `arith` prompt source.

`difficulty` 1..5 runs from bare sums of two digits up to multi-step word problems with 3-digit
numbers; a list of levels is a mixture (each problem's level drawn uniformly from it). Problem `index`
of the (seed, difficulty) stream is drawn by random access.

Held-out split: a fixed quarter of all problem texts (by a hash of the text, `held_out`) never appears in
any training stream: a training draw that lands on one is redrawn. `arith_eval_problems` lists distinct
held-out problems, the same for every training seed, so an `arith` eval measures problems the policy
never trained on (a commuted sum, "5 + 3" for a held-out "3 + 5", can still be trained on).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence

from .errors import UserError
from .prompts import Problem

_NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lily", "Omar", "Mei", "Lucas", "Sara", "Ravi", "Emma")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells", "cards", "stamps")

# difficulty -> (steps, start range, add/sub operand range, ops, group count range, group size range, times range)
# Level 1 is a bare sum of two digits ("What is 3 + 5?"): SmolLM2-135M-Instruct at temperature 1 with
# the paper template scored 6/16 on it (0/16 on the one-step word-problem form). Level 2 mixes bare
# and word forms; levels 3-5 are multi-step word problems.
_PLAIN_FRACTION = {1: 1.0, 2: 0.5}
_LEVELS = {
    1: (1, (1, 9), (1, 9), ("add",), None, None, None),
    2: (1, (10, 99), (10, 99), ("add", "sub"), None, None, None),
    3: (2, (10, 99), (2, 99), ("add", "sub", "groups"), (2, 9), (2, 12), None),
    4: (3, (10, 999), (2, 999), ("add", "sub", "groups", "times"), (2, 12), (2, 20), (2, 4)),
    5: (4, (100, 999), (10, 999), ("add", "sub", "groups", "times"), (10, 50), (2, 30), (2, 5)),
}


def _count_noun(count: int, plural: str) -> str:
    return plural[:-1] if count == 1 else plural  # every item above is a regular plural


HELD_OUT_ONE_IN = 4  # one problem text in 4 is held out for evaluation
EVAL_DRAWS_PER_PROBLEM = 64  # arith_eval_problems gives up after this many draws per problem asked for


def held_out(text: str) -> bool:
    """Whether a problem text belongs to the held-out eval split (never trained on)."""
    digest = hashlib.sha256(f"vespo-arith-heldout/{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_ONE_IN == 0


def levels(difficulty: int | Sequence[int]) -> tuple[int, ...]:
    """The levels of a difficulty: (d,) for one level, the mixture's levels for a list."""
    out = (difficulty,) if isinstance(difficulty, int) else tuple(difficulty)
    for d in out:
        if d not in _LEVELS:
            raise UserError(f"arith difficulty {d}: expected an integer in 1..5")
    if not out:
        raise UserError("arith difficulty []: expected a level in 1..5 or a non-empty list of them")
    return out


def _level(seed: int | str, difficulty: int | Sequence[int], index: int) -> int:
    mix = levels(difficulty)
    return mix[0] if len(mix) == 1 else random.Random(f"vespo-arith-mix/{seed}/{index}").choice(mix)


def draw_arith(rng: random.Random, difficulty: int) -> tuple[str, str, int]:
    """(problem text, Python expression, answer) of one problem of level `difficulty` drawn from `rng`."""
    steps, start, operand, ops, groups, sizes, times = _LEVELS[difficulty]
    if rng.random() < _PLAIN_FRACTION.get(difficulty, 0.0):  # bare one-operation question
        a, op = rng.randint(*start), rng.choice(ops)
        b = rng.randint(*operand) if op == "add" else rng.randint(1, a)
        sign = "+" if op == "add" else "-"
        expr = f"{a} {sign} {b}"
        return f"What is {expr}?", expr, a + b if op == "add" else a - b
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    total = rng.randint(*start)
    expr = str(total)
    sentences = [f"{name} has {total} {_count_noun(total, item)}."]
    for step in range(steps):
        op = rng.choice(ops)
        if op == "sub" and total < 1:
            op = "add"
        then = "Then " if step else ""
        if op == "add":
            b = rng.randint(*operand)
            total, expr = total + b, f"{expr} + {b}"
            things = _count_noun(b, item)
            sentences.append(
                rng.choice((f"{then}{name} gets {b} more {things}.", f"{then}{name} finds {b} more {things}."))
            )
        elif op == "sub":
            b = rng.randint(1, min(total, operand[1]))
            total, expr = total - b, f"{expr} - {b}"
            things = _count_noun(b, item)
            sentences.append(
                rng.choice((f"{then}{name} gives {b} {things} to a friend.", f"{then}{name} loses {b} {things}."))
            )
        elif op == "groups":
            k, b = rng.randint(*groups), rng.randint(*sizes)
            total, expr = total + k * b, f"{expr} + {k} * {b}"
            sentences.append(f"{then}{name} buys {k} packs with {b} {item} in each pack.")
        else:  # times
            k = rng.randint(*times)
            total, expr = total * k, f"({expr}) * {k}"
            sentences.append(f"{then}{name} ends up with {k} times as many {item} as before.")
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), expr, total


def arith_problem(seed: int, difficulty: int | Sequence[int], index: int) -> Problem:
    """Problem `index` of the arithmetic training stream: random access, independent of how many are drawn;
    a draw whose text is held out (`held_out`) is redrawn (attempt 0 is the stream as it was before the split)."""
    level = _level(seed, difficulty, index)
    for attempt in range(1000):
        key = f"vespo-arith/{seed}/{level}/{index}" + (f"/{attempt}" if attempt else "")
        text, _, answer = draw_arith(random.Random(key), level)  # str seeds hash deterministically
        if not held_out(text):
            return Problem(id=f"arith-d{level}-s{seed}-{index}", problem=text, answer=str(answer), source="arith")
    raise UserError(f"arith difficulty {level}: no training problem outside the held-out split")  # unreachable


def arith_eval_problems(difficulty: int | Sequence[int], limit: int) -> list[Problem]:
    """The first `limit` distinct held-out problems of the eval stream (the same for every training seed); fewer
    when the levels hold fewer (one-digit sums: 81 problems, about 20 held out)."""
    out: dict[str, Problem] = {}
    for i in range(EVAL_DRAWS_PER_PROBLEM * limit):
        if len(out) >= limit:
            break
        level = _level("eval", difficulty, i)
        text, _, answer = draw_arith(random.Random(f"vespo-arith-eval/{level}/{i}"), level)
        if held_out(text) and text not in out:
            out[text] = Problem(id=f"arith-eval-d{level}-{i}", problem=text, answer=str(answer), source="arith")
    return list(out.values())


def iter_arith(seed: int = 0, difficulty: int | Sequence[int] = 1, start: int = 0) -> Iterator[Problem]:
    """The endless arithmetic stream from problem `start` on."""
    i = start
    while True:
        yield arith_problem(seed, difficulty, i)
        i += 1
