"""Math-verify 0/1 rewards against a reference answer.

`extract.py` is the answer-extraction policy and its normaliser table, `score.py` one comparison,
`pool.py` the timeout-bounded worker pool the rollout and eval stages score with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..errors import UserError
from .extract import FALLBACKS, MAX_ANSWER_CHARS, MAX_RESPONSE_CHARS, NORMALISERS, extract_answer, normalise
from .pool import RewardScorer
from .score import Score, score_one

MAX_FAILED_FRACTION = 0.5  # a batch where more samples than this failed to score stops the run

__all__ = [
    "FALLBACKS",
    "MAX_ANSWER_CHARS",
    "MAX_RESPONSE_CHARS",
    "NORMALISERS",
    "RewardScorer",
    "Score",
    "extract_answer",
    "failure_counts",
    "normalise",
    "score_one",
    "scorer_for",
]


def scorer_for(cfg) -> RewardScorer:
    """The scorer a config asks for (`rollout.reward_workers`, `reward_timeout_s`, `answer_fallback`)."""
    r = cfg.rollout
    return RewardScorer(workers=r.reward_workers, timeout_s=r.reward_timeout_s, fallback=r.answer_fallback)


def failure_counts(scores: Sequence[Score], where: str = "reward scoring") -> dict[str, int]:
    """`{"reward_errors", "reward_timeouts"}` of one batch; raises UserError when most samples failed
    (a broken grader would otherwise train on all-zero advantages with no sign of it)."""
    errors = Counter(s.error.split(":", 1)[0] for s in scores if s.error)
    timeouts = sum(s.timed_out for s in scores)
    failed = sum(errors.values()) + timeouts
    if scores and failed > MAX_FAILED_FRACTION * len(scores):
        kinds = ", ".join(f"{k}: {n}" for k, n in errors.most_common()) + (f", timeout: {timeouts}" if timeouts else "")
        raise UserError(
            f"{where}: {failed} of {len(scores)} samples failed to score ({kinds.strip(', ')}); "
            f"the grader is broken or rollout.reward_timeout_s is too small"
        )
    return {"reward_errors": sum(errors.values()), "reward_timeouts": timeouts}
