"""Rewards: the extraction policy, the grader table, the echo probe and the timeout-bounded pool."""

from __future__ import annotations

import random
import threading
import time
from multiprocessing import Pipe
from pathlib import Path

import pytest
import yaml

from vespo_cli.errors import UserError
from vespo_cli.rewards import (
    MAX_RESPONSE_CHARS,
    NORMALISERS,
    RewardScorer,
    Score,
    extract_answer,
    failure_counts,
    normalise,
    score_one,
)

TABLE = yaml.safe_load((Path(__file__).parent / "data" / "grader_table.yaml").read_text(encoding="utf-8"))["cases"]
CASES = [(c["response"], c["gold"], c["expected"]) for c in TABLE if "fallback" not in c]
CATEGORIES = {
    "fraction",
    "mixed",
    "decimal",
    "separator",
    "unit",
    "currency",
    "degree",
    "percent",
    "pi",
    "sqrt",
    "interval",
    "set",
    "tuple",
    "inequality",
    "matrix",
    "symbolic",
    "boxes",
    "truncated",
    "phrase",
    "no-answer",
    "final-number",
    "chain",
    "negative",
    "scientific",
    "unicode",
}


def test_the_table_covers_what_it_should():
    assert len(TABLE) >= 150
    assert {c["cat"] for c in TABLE} == CATEGORIES
    assert sum(c["expected"] for c in TABLE) > 40 and sum(not c["expected"] for c in TABLE) > 40


@pytest.mark.parametrize("case", TABLE, ids=[f"{i}-{c['cat']}" for i, c in enumerate(TABLE)])
def test_grader_table(case):
    s = score_one(case["response"], case["gold"], case.get("fallback", "none"))
    assert s.correct is case["expected"], case.get("why", "")
    assert s.reward == (1.0 if case["expected"] else 0.0)
    assert s.timed_out is False and s.error == ""


def test_extract_answer():
    assert extract_answer("x \\boxed{1} y \\boxed{\\frac{2}{3}} z") == "\\frac{2}{3}"
    assert extract_answer("\\boxed{a{b}c}") == "a{b}c"
    assert extract_answer("\\boxed{\\{1\\}}") == "\\{1\\}"
    assert extract_answer("work\nAnswer: $12$.\n") == "12"
    assert extract_answer("Final answer: 5") == "5"
    assert extract_answer("\\boxed{3}\nAnswer: 4") == "3"  # a box beats an Answer line
    assert extract_answer("nothing to see") is None
    assert extract_answer("\\boxed{}") is None
    assert extract_answer("The answer is in the form $\\frac{m}{n}$.") is None  # prose, not an answer
    # only the tail is read
    assert extract_answer("\\boxed{1}" + " " * MAX_RESPONSE_CHARS) is None


def test_over_long_box_is_no_answer_and_nothing_is_mined_from_it():
    long_box = "\\boxed{" + "1 + " * 200 + "42}"
    assert extract_answer(long_box, "final_number") is None
    assert extract_answer("Answer: 42\n" + long_box) is None  # the box is the last word, and it is void
    assert score_one(long_box + "\n= 42", "42", "final_number").reward == 0.0  # a void box ends the search


def test_final_number_rule_is_opt_in():
    assert extract_answer("2 + 8 = 10") is None
    assert extract_answer("2 + 8 = 10", "final_number") == "10"
    assert extract_answer("What is 2 + 8?", "final_number") is None
    assert extract_answer("12\nI am not sure.", "final_number") is None


def test_answers_copied_from_the_question_are_not_answers():
    q = "If the equation has no solution, then the answer is 0. Find x."
    assert extract_answer(q) == "0"  # without the question the phrase looks like an answer ...
    assert extract_answer(q, question=q) is None  # ... with it, it is an echo
    assert extract_answer(q + "\nSo the answer is 3.", question=q) == "3"
    assert extract_answer("Compute \\boxed{5} squared.", question="Compute \\boxed{5} squared.") is None
    assert extract_answer("x\n= 7", "final_number", question="Solve\nx\n= 7") is None


def test_a_number_the_question_contains_is_still_an_answer():
    """The guard refuses question text, not numbers: a bare final number is judged with its line before."""
    q = "Tom has 42 apples and eats none.\nHow many apples does he have?"
    assert extract_answer("He ate none.\n42", "final_number", question=q) == "42"
    assert extract_answer("42", "final_number", question=q) == "42"
    assert extract_answer(q + "\n42", "final_number", question=q) == "42"  # restated, then answered
    assert extract_answer("so\n= 42", "final_number", question=q) == "42"
    assert extract_answer("Tom has 42 apples and eats none.", "final_number", question=q) is None
    echo = "Find the total.\nThe list is:\n42"
    assert extract_answer(echo, "final_number", question=echo) is None  # the last two lines are question text
    assert extract_answer("The list is:   \n  42", "final_number", question=echo) is None  # rewrapped, still copied
    assert extract_answer("x = 5", "final_number", question="Given x = 5, find y.") is None


@pytest.mark.parametrize(
    "response, want",
    [
        ("所以答案是 5。", "5"),
        ("答案：$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("最终答案为 12", "12"),
        ("答えは5です。", "5"),
        ("答え：7", "7"),
        ("정답은 5입니다.", "5"),
        ("답: 5", "5"),
        ("Antwort: 5", "5"),
        ("Die Antwort ist 5.", "5"),
        ("Die Antwort lautet 7", "7"),
        ("Réponse : 5", "5"),
        ("La réponse est 5.", "5"),
        ("La respuesta es 5", "5"),
        ("A resposta é 5", "5"),
        ("La risposta è 5", "5"),
        ("**Ответ:** 5", "5"),
        ("Die Antwort ist gleich 5", None),  # prose after the copula, as in English
    ],
)
def test_non_english_answer_phrases(response, want):
    assert extract_answer(response) == want
    if want is not None:  # a phrase copied from the question is an echo in every language
        assert extract_answer(response, question="Beispiel. " + response) is None


def test_normaliser_table_is_documented_and_idempotent():
    for what, pattern, _repl, why in NORMALISERS:
        assert what and why and pattern.pattern
    for c in TABLE:
        n = normalise(c["gold"])
        assert normalise(n) == n, c["gold"]


@pytest.mark.parametrize(
    "raw, want",
    [
        ("1\\,000", "1000"),
        ("1{,}000", "1000"),
        ("2\u2009500", "2500"),
        ("1,000,000", "1000000"),
        ("1,2", "1,2"),
        ("\\$18", "18"),
        ("18 dollars", "18"),
        ("5 \\text{ cm}^2", "5"),
        ("12 km/h", "12"),
        ("90^\\circ", "90"),
        ("10\\%", "10"),
        ("\uff12\uff15", "25"),
        ("\u22125", "-5"),
        ("2.5e3", "2.5\\times10^{3}"),
        ("x > 2", "(2,\\infty)"),
        ("x \\le -1", "(-\\infty,-1]"),
        ("\\text{Monday}", "\\text{Monday}"),
        ("3x", "3x"),
        ("2 pi", "2 pi"),
        ("$\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("4\x002", "42"),
    ],
)
def test_normalise(raw, want):
    assert normalise(raw) == want


# ------------------------------------------------------------------------------------- echo probe


def _echo_problems() -> list:
    from vespo_cli.data import load_problems

    problems = [p for name in ("gsm8k", "math500", "aime24", "aime25", "amc23") for p in load_problems(name)]
    for name in ("dapo-math-17k", "gsm8k-train"):
        problems += random.Random(0).sample(list(load_problems(name)), 1000)
    return problems


def test_echoing_the_question_earns_nothing():
    """On every bundled eval set and a sample of the training sets, a response that only restates the
    question (or adds "I am not sure.") is paid 0 under both policies."""
    paid = []
    for p in _echo_problems():
        for response in (p.problem, p.problem + " I am not sure."):
            for fallback in ("none", "final_number"):
                if score_one(response, p.answer, fallback, question=p.problem).reward:
                    paid.append((p.id, fallback, response[-80:]))
    assert paid == []


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


def test_bundled_reference_answers_verify_against_themselves():
    from vespo_cli.data import load_problems

    problems = [p for name in ("aime24", "aime25", "amc23", "math500") for p in load_problems(name)]
    responses = [
        f"Thus $\\boxed{{{p.answer}}}$." if i % 2 else f"...\nAnswer: {p.answer}" for i, p in enumerate(problems)
    ]
    with RewardScorer(workers=2, timeout_s=60.0) as scorer:  # generous: a loaded machine is not a timeout
        got = scorer.score(responses, [p.answer for p in problems])
    assert [(p.id, s) for p, s in zip(problems, got) if not s.correct] == []


@pytest.mark.parametrize(
    "response, reference, correct",
    [
        ("2 + 8", "10", False),  # restating the question is not an answer (no free expression extraction)
        ("What is 2 + 8? 2 + 8", "10", False),
        ("2 + 8 = 10", "10", True),
        ("The answer is 1,234 apples", "1234", True),
        ("The answer is 1,234 apples", "1,234", True),
    ],
)
def test_final_number_policy(response, reference, correct):
    assert score_one(response, reference, "final_number").correct is correct


# ------------------------------------------------------------------------------ adversarial inputs

ADVERSARIAL_TABLE = [  # (response, gold): all must score 0 within the pool's time bound
    ("x" * 100_000, "5"),
    ("\\boxed{" + "\\frac{1}{" * 40 + "2" + "}" * 40 + "}", "1"),
    ("\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}", "2"),
    ("\\boxed{" + "\\sqrt{" * 60 + "2" + "}" * 60 + "}", "2"),
    ("\\boxed{9^{9^{9^9}}}", "9"),
    ("\x00" * 10_000 + "\\boxed{\x00}", "0"),
    ("Answer: " + "1 + " * 120 + "1", "7"),
    ("= 1" * 30_000, "2"),
    ("\\boxed{\\begin{pmatrix}" + "1 & " * 100 + "1\\end{pmatrix}}", "1"),
]


def test_adversarial_table_is_bounded_and_unpaid():
    responses = [r for r, _ in ADVERSARIAL_TABLE]
    t0 = time.monotonic()
    with RewardScorer(workers=2, timeout_s=5.0) as sc:
        got = sc.score(responses, [g for _, g in ADVERSARIAL_TABLE])
    assert [s.reward for s in got] == [0.0] * len(ADVERSARIAL_TABLE)
    # every sample is bounded by the per-sample limit (a generous bound for a loaded machine)
    assert time.monotonic() - t0 < 5.0 * len(ADVERSARIAL_TABLE) + 120


# ------------------------------------------------------------------------------- scoring failures


def test_worker_reports_exceptions_instead_of_hiding_them():
    from vespo_cli.rewards.pool import _worker_loop

    ours, theirs = Pipe()
    t = threading.Thread(target=_worker_loop, args=(theirs,), daemon=True)
    t.start()
    ours.send((0, None, "1", "none", ""))  # a response that is not text: score_one raises TypeError
    idx, reward, correct, extracted, error = ours.recv()
    assert (idx, reward, correct, extracted) == (0, 0.0, False, "") and error.startswith("TypeError")
    ours.send((1, "\\boxed{1}", "1", "none", ""))
    assert ours.recv() == (1, 1.0, True, "1", "")
    ours.send(None)
    t.join(10)


def test_failure_counts():
    ok, err, late = (
        Score(1.0, True, "1", False),
        Score(0.0, False, "", False, "TypeError: x"),
        Score(0.0, False, "", True),
    )
    assert failure_counts([ok, ok, err, late]) == {"reward_errors": 1, "reward_timeouts": 1}
    assert failure_counts([]) == {"reward_errors": 0, "reward_timeouts": 0}
    with pytest.raises(
        UserError,
        match=r"shard.parquet: reward scoring: 3 of 4 samples failed to score "
        r"\(TypeError: 2, timeout: 1\)",
    ):
        failure_counts([ok, err, err, late], where="shard.parquet: reward scoring")


def test_a_crashing_sample_is_counted_as_an_error():
    """A sample whose worker dies twice (here: killed from outside while scoring a slow sample) gets
    reward 0 with error "WorkerCrashed", and the scorer counts it."""
    import os
    import signal

    with RewardScorer(workers=1, timeout_s=60.0) as sc:
        sc.start()
        killer_done = threading.Event()

        def kill_twice():
            for _ in range(2):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    w = sc._workers[0] if sc._workers else None
                    if w is not None and w.task is not None:
                        os.kill(w.pid, signal.SIGKILL)
                        time.sleep(0.5)
                        break
                    time.sleep(0.01)
            killer_done.set()

        threading.Thread(target=kill_twice, daemon=True).start()
        got = sc.score(["\\boxed{9^{9^{9^9}}}"], ["1"])
        killer_done.wait(30)
    assert got[0].reward == 0.0 and got[0].error == "WorkerCrashed"
    assert sc.stats["crashed"] == 2 and sc.stats["errors"] == 1
