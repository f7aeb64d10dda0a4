"""One 0/1 reward: extract the final answer (`extract.py`), normalise both sides, compare with math-verify.

Conventions where graders differ (tests/test_rewards.py holds the table):
  - a decimal equals a fraction only to math-verify's numeric precision: `0.5` = `1/2`, `0.333` ≠ `1/3`
    (a rounded decimal is a different answer), `0.3333333` = `1/3`;
  - a percentage is its number (`10\\%` = `10`), degrees are their number (`90^\\circ` = `90`);
  - a one-variable inequality equals its interval (`x > 2` = `(2, \\infty)`);
  - a list `1, 2` is a set, never the number 12; a mixed number `1\\frac{1}{2}` is 3/2.
When either side does not parse, the normalised strings are compared exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from .extract import MAX_RESPONSE_CHARS, Fallback, extract_answer, normalise


@dataclass(frozen=True)
class Score:
    reward: float
    correct: bool
    extracted_answer: str
    timed_out: bool
    error: str = ""  # the exception type when scoring raised ("timeout" is `timed_out`)


class _DropTimeoutDisabledWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_mv_ready = False


def _mv():
    """Import math-verify lazily (it loads sympy and the LaTeX grammar)."""
    global _mv_ready
    import math_verify

    if not _mv_ready:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        _mv_ready = True
    return math_verify


def _parse(answer: str) -> list:
    """math-verify's parse of a normalised answer, as inline math."""
    return _mv().parse(f"${answer}$", parsing_timeout=None)


@lru_cache(maxsize=4096)
def _parse_reference(reference: str) -> tuple[str, tuple]:
    ref = normalise(reference)
    return ref, tuple(_parse(ref))


def score_one(response: str, reference: str, fallback: Fallback = "none", question: str = "") -> Score:
    """Score one response in-process, with no timeout (`RewardScorer` runs this in killable workers).
    `question`: the problem text, so an answer copied from it is not paid (`extract_answer`)."""
    ans = extract_answer(response[-MAX_RESPONSE_CHARS:], fallback, question)
    if ans is None:
        return Score(0.0, False, "", False)
    ref, gold = _parse_reference(str(reference))
    pred_text = normalise(ans)
    pred = _parse(pred_text)
    if gold and pred:
        correct = bool(_mv().verify(list(gold), pred, timeout_seconds=None))
    else:  # nothing parseable on one side: plain string comparison
        correct = bool(pred_text) and pred_text == ref
    return Score(float(correct), correct, ans, False)
