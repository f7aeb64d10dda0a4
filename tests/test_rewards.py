"""Rewards: answer extraction, math-verify scoring of tricky answers, and the timeout-bounded pool."""
from __future__ import annotations

import threading

import pytest

from vespo_cli.rewards import MAX_RESPONSE_CHARS, RewardScorer, Score, extract_answer, score_one

# (response, reference, expected correct)
CASES = [
    ("So $x = \\boxed{\\frac{1}{2}}$.", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12", True),
    ("\\boxed{\\tfrac{3}{4}}", "0.75", True),
    ("\\boxed{1/3}", "\\frac{1}{3}", True),
    ("\\boxed{0.33}", "\\frac{1}{3}", False),
    ("First \\boxed{3}, wait, actually \\boxed{4}", "4", True),  # the last box counts
    ("First \\boxed{4}, wait, actually \\boxed{3}", "4", False),
    ("\\boxed{7} and an echoed empty \\boxed{}", "7", True),  # empty boxes are skipped
    ("\\fbox{7}", "7", True),
    ("\\boxed{\\frac{a}{b}} is not \\boxed{\\frac{1}{2}", "\\frac{a}{b}", True),  # truncated last box
    ("blah\nAnswer: 42", "42", True),  # DAPO style
    ("Answer: 41\nHmm, no.\nAnswer: 42.", "42", True),  # the last Answer line counts
    ("blah\nAnswer: $\\frac{7}{3}$", "\\frac{7}{3}", True),
    ("**Answer:** 42", "42", True),
    ("Answer: \\boxed{9}", "9", True),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{3}", "-3", False),
    ("\\boxed{5 \\text{ cm}}", "5", True),  # units
    ("\\boxed{5\\,\\mathrm{cm}^2}", "5", True),
    ("\\boxed{\\$18}", "18", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{336^\\circ}", "336", True),
    ("\\boxed{10\\%}", "10", True),
    ("\\boxed{18.0}", "18", True),
    ("\\boxed{[1, 2)}", "[1,2)", True),  # intervals
    ("\\boxed{(1, 2]}", "[1,2)", False),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", True),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", True),  # sets
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),  # symbolic equality
    ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}", True),
    ("\\boxed{x = 2}", "2", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{\\text{Monday}}", "\\text{Monday}", True),
    ("\\boxed{C}", "\\text{(C)}", True),
    ("The answer is 7.", "7", True),  # math-verify's own extraction as the fallback
    ("no answer here", "7", False),
    ("", "7", False),
]


@pytest.mark.parametrize("response,reference,expected", CASES)
def test_score_one_table(response, reference, expected):
    s = score_one(response, reference)
    assert s.correct is expected
    assert s.reward == (1.0 if expected else 0.0)
    assert s.timed_out is False


def test_extract_answer():
    assert extract_answer("x \\boxed{1} y \\boxed{\\frac{2}{3}} z") == "\\frac{2}{3}"
    assert extract_answer("\\boxed{a{b}c}") == "a{b}c"
    assert extract_answer("\\boxed{\\{1\\}}") == "\\{1\\}"
    assert extract_answer("work\nAnswer: $12$.\n") == "12"
    assert extract_answer("Final answer: 5") == "5"
    assert extract_answer("\\boxed{3}\nAnswer: 4") == "3"  # a box beats an Answer line
    assert extract_answer("nothing to see") is None
    assert extract_answer("\\boxed{}") is None
    # only the tail is read
    assert extract_answer("\\boxed{1}" + " " * MAX_RESPONSE_CHARS) is None


def test_extract_answer_linear_on_adversarial_input():
    # many unclosed boxes and braces: a single linear pass, no quadratic rescans
    s = "\\boxed{" * 2000 + "{" * 10_000
    assert extract_answer(s) is None
    assert extract_answer("}" * 100_000 + "\\boxed{2}") == "2"


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer(workers=2, timeout_s=2.0) as sc:
        yield sc


def test_pool_matches_in_process():
    responses = [c[0] for c in CASES]
    references = [c[1] for c in CASES]
    with RewardScorer(workers=2, timeout_s=60.0) as scorer:  # generous: a loaded machine is not a timeout
        got = scorer.score(responses, references)
        assert scorer.score([], []) == []
    assert [s.correct for s in got] == [c[2] for c in CASES]
    assert got == [score_one(r, a) for r, a in zip(responses, references)]


ADVERSARIAL = [
    "\\boxed{9^{9^{9^{9}}}}",  # sympy would evaluate a power tower forever
    "Answer: 9^9^9^9",
    "\\boxed{" + "{" * 1500 + "1" + "}" * 1500 + "}",  # deep nesting inside the considered tail
    "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    "x" * 1_000_000 + " so \\boxed{(10^{10})!}",  # 1 MB output with a huge factorial
]


def test_adversarial_outputs_are_bounded(scorer):
    responses = ADVERSARIAL + ["\\boxed{42}"]
    got = scorer.score(responses, ["42"] * len(responses))
    assert [s.reward for s in got[:-1]] == [0.0] * len(ADVERSARIAL)
    assert got[0].timed_out and got[0].extracted_answer == "9^{9^{9^{9}}}"
    assert got[-1] == Score(1.0, True, "42", False)
    # the pool replaced its killed workers and still works
    assert scorer.score(["\\boxed{\\frac{1}{2}}"], ["0.5"])[0].correct
    assert scorer.stats["timed_out"] >= 1 and scorer.stats["restarts"] >= scorer.stats["timed_out"]


def test_scorer_from_a_non_main_thread(scorer):
    out: list = []
    errors: list = []

    def work():
        try:
            out.append(scorer.score(["\\boxed{2}", "\\boxed{9^{9^{9^{9}}}}", "Answer: 3"], ["2", "1", "3"]))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not errors and out
    got = out[0]
    assert got[0].correct and got[2].correct
    assert got[1].reward == 0.0 and got[1].timed_out


def test_fresh_scorer_in_thread_then_main():
    """Workers created from a short-lived thread must outlive it."""
    sc = RewardScorer(workers=1, timeout_s=5.0)
    try:
        t = threading.Thread(target=lambda: sc.score(["\\boxed{1}"], ["1"]))
        t.start()
        t.join(60)
        assert sc.score(["\\boxed{1}", "\\boxed{2}"], ["1", "3"]) == [
            Score(1.0, True, "1", False),
            Score(0.0, False, "2", False),
        ]
    finally:
        sc.close()
    with pytest.raises(RuntimeError):
        sc.score(["x"], ["1"])


def test_length_mismatch_and_bad_args():
    with pytest.raises(ValueError):
        RewardScorer(workers=0)
    with pytest.raises(ValueError):
        RewardScorer(timeout_s=0)
    sc = RewardScorer(workers=1)
    try:
        with pytest.raises(ValueError):
            sc.score(["a"], [])
    finally:
        sc.close()


def test_dead_workers_are_replaced_without_losing_samples():
    import os
    import signal
    import time

    with RewardScorer(workers=2, timeout_s=5.0) as sc:
        assert sc.score(["\\boxed{1}"], ["1"])[0].correct
        for w in list(sc._workers):  # simulate an OOM kill of idle workers
            os.kill(w.pid, signal.SIGKILL)
        time.sleep(0.2)
        got = sc.score(["\\boxed{1}", "\\boxed{2}", "Answer: 3"], ["1", "2", "3"])
        assert [s.correct for s in got] == [True, True, True]
        assert not any(s.timed_out for s in got)
        assert sc.stats["restarts"] >= 2


def test_bundled_reference_answers_verify_against_themselves(scorer):
    from vespo_cli.data import load_problems

    problems = [p for name in ("aime24", "aime25", "amc23", "math500") for p in load_problems(name)]
    responses = [f"Thus $\\boxed{{{p.answer}}}$." if i % 2 else f"...\nAnswer: {p.answer}" for i, p in enumerate(problems)]
    got = scorer.score(responses, [p.answer for p in problems])
    assert [p.id for p, s in zip(problems, got) if not s.correct] == []


@pytest.mark.parametrize("response, reference, correct", [
    ("2 + 8", "10", False),  # restating the question is not an answer (no free expression extraction)
    ("What is 2 + 8? 2 + 8", "10", False),
    ("2 + 8 = 10", "10", True),
    ("The answer is 1,234 apples", "1234", True),
])
def test_fallback_takes_the_last_number_literal(response, reference, correct):
    assert score_one(response, reference).correct is correct
