"""Procedural arithmetic problems: the endless deterministic `arith` prompt source.

`difficulty` 1..5 runs from bare sums of two digits up to multi-step word problems with 3-digit
numbers; problem `index` of the (seed, difficulty) stream is drawn by random access.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

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


def _arith(seed: int, difficulty: int, index: int) -> tuple[str, str, int]:
    """(problem text, Python expression, answer) of problem `index` in the (seed, difficulty) stream."""
    if difficulty not in _LEVELS:
        raise UserError(f"arith difficulty {difficulty}: expected an integer in 1..5")
    steps, start, operand, ops, groups, sizes, times = _LEVELS[difficulty]
    rng = random.Random(f"vespo-arith/{seed}/{difficulty}/{index}")  # str seeds hash deterministically
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


def arith_problem(seed: int, difficulty: int, index: int) -> Problem:
    """Problem `index` of the arithmetic stream: random access, independent of how many are drawn."""
    text, _, answer = _arith(seed, difficulty, index)
    return Problem(id=f"arith-d{difficulty}-s{seed}-{index}", problem=text, answer=str(answer), source="arith")


def iter_arith(seed: int = 0, difficulty: int = 1, start: int = 0) -> Iterator[Problem]:
    """The endless arithmetic stream from problem `start` on."""
    i = start
    while True:
        yield arith_problem(seed, difficulty, i)
        i += 1
