"""Eval estimators (pass@k, avg@k, bootstrap CI), summaries, atomic result files, the eval driver."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vespo_cli.evaluate import (
    avg_at_k,
    bootstrap_ci,
    default_k,
    metrics_record,
    pass_at_k,
    read_eval,
    run_eval,
    summarize,
    write_eval,
)
from vespo_cli.rewards import Score
from vespo_cli.rollout.base import Completion, Sampling


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (c correct) containing at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_enumeration(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_closed_form_large_n(nck):
    n, c, k = nck
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    got = pass_at_k(n, c, k)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)  # pass@1 = c/n
    assert pass_at_k(4, 1, 4) == 1.0
    for bad in [(0, 0, 1), (3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_avg_at_k():
    assert avg_at_k([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]) == pytest.approx(0.5)
    assert avg_at_k([[True, False], [True]]) == pytest.approx(0.75)  # problems weigh equally
    assert math.isnan(avg_at_k([]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=6), min_size=1, max_size=8))
def test_avg_at_k_equals_mean_pass_at_1(groups):
    assert avg_at_k(groups) == pytest.approx(sum(pass_at_k(len(g), sum(g), 1) for g in groups) / len(groups))


def test_bootstrap_ci():
    vals = [0.0] * 50 + [1.0] * 50
    lo, hi = bootstrap_ci(vals)
    assert lo < 0.5 < hi
    assert (lo, hi) == bootstrap_ci(vals)  # fixed seed
    assert 0.35 < lo and hi < 0.65  # ~ ±1.96·0.05
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


def _rows(correct_by_problem):
    rows = []
    for p, cs in enumerate(correct_by_problem):
        for i, c in enumerate(cs):
            rows.append(
                {
                    "problem_id": f"p{p}",
                    "sample_idx": i,
                    "response": f"\\boxed{{{int(c)}}}",
                    "extracted_answer": str(int(c)),
                    "correct": bool(c),
                    "reward": float(c),
                    "num_tokens": 10 + i,
                    "finish_reason": "length" if i == 0 else "stop",
                }
            )
    return rows


def test_summarize():
    rows = _rows([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    s = summarize(rows, benchmark="toy")
    assert s["num_problems"] == 3 and s["num_samples"] == 12 and s["k"] == 4
    assert s["metric"] == "avg@4"
    assert s["avg_at_k"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert set(s["pass_at"]) == {"1", "2", "4"}
    assert s["pass_at"]["1"] == pytest.approx(s["avg_at_k"])
    assert s["pass_at"]["4"] == s["pass_at_k"] == pytest.approx(2 / 3)
    assert s["pass_at"]["2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["ci95_low"] <= s["avg_at_k"] <= s["ci95_high"]
    assert s["truncated_fraction"] == pytest.approx(0.25)
    assert s["mean_response_tokens"] == pytest.approx(11.5)
    assert s["per_problem"][0] == {"problem_id": "p0", "n": 4, "correct": 1}
    json.dumps(s)  # serializable
    rec = metrics_record(s)
    assert rec["avg_at_k"] == s["avg_at_k"] and rec["benchmark"] == "toy" and "per_problem" not in rec


def test_summarize_ragged_k():
    rows = _rows([[1, 0, 1, 1], [0, 1]])
    s = summarize(rows)
    assert s["k"] == 2 and s["k_max"] == 4 and set(s["pass_at"]) == {"1", "2"}
    assert s["pass_at"]["2"] == pytest.approx((pass_at_k(4, 3, 2) + 1.0) / 2)


def test_write_and_read_eval(tmp_path):
    rows = _rows([[1, 0], [0, 1]])
    rows[0]["extra_note"] = "x"
    for r in rows[1:]:
        r["extra_note"] = None
    s = summarize(rows)
    out = write_eval(tmp_path / "toy", rows, s)
    assert sorted(p.name for p in out.iterdir()) == ["per_sample.parquet", "summary.json"]  # no temp files
    t = pq.read_table(out / "per_sample.parquet")
    assert t.column_names[:8] == [
        "problem_id",
        "sample_idx",
        "response",
        "extracted_answer",
        "correct",
        "reward",
        "num_tokens",
        "finish_reason",
    ]
    assert str(t.schema.field("reward").type) == "float" and str(t.schema.field("sample_idx").type) == "int32"
    back, summary = read_eval(out)
    assert summary == json.loads(json.dumps(s))
    assert [r["correct"] for r in back] == [True, False, False, True]
    with pytest.raises(ValueError):
        write_eval(tmp_path / "bad", [{"problem_id": "a"}], s)


class FakeEngine:
    """Answers each problem's reference on even sample indices, something wrong on odd ones."""

    name, dtype = "fake", "float32"

    def __init__(self, answers_by_prompt):
        self.answers_by_prompt = answers_by_prompt
        self.calls = []

    def generate(self, prompts, n, sampling):
        self.calls.append((len(prompts), n, sampling.seed))
        out = []
        for i, ids in enumerate(prompts):
            ans = self.answers_by_prompt[tuple(ids)]
            for j in range(n):
                text = f"so \\boxed{{{ans}}}" if j % 2 == 0 else "so \\boxed{-1}"
                out.append(Completion(i, j, list(ids), [1, 2, 3], [-0.1] * 3, "stop", text))
        return out

    def close(self):
        pass


class FakeTokenizer:
    def __init__(self):
        self.vocab = {}

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        key = messages[0]["content"]
        return {"input_ids": [self.vocab.setdefault(key, len(self.vocab)), 7]}

    def decode(self, ids, skip_special_tokens=True):  # pragma: no cover - completions carry text
        return ""


class FakeScorer:
    def score(self, responses, references, questions=None):
        from vespo_cli.rewards import extract_answer

        out = []
        for r, a in zip(responses, references):
            e = extract_answer(r) or ""
            out.append(Score(float(e == a), e == a, e, False))
        return out


def test_run_eval_with_fake_engine(tmp_path):
    from vespo_cli.data import PAPER_TEMPLATE, build_messages, load_problems

    tok = FakeTokenizer()
    answers = {}
    for p in load_problems("amc23", limit=5):
        ids = tok.apply_chat_template(build_messages(p, PAPER_TEMPLATE))["input_ids"]
        answers[tuple(ids)] = p.answer
    engine = FakeEngine(answers)
    res = run_eval(
        engine, tok, ["amc23"], 4, 5, Sampling(seed=3), PAPER_TEMPLATE, tmp_path, FakeScorer(), chunk_prompts=2
    )
    s = res["amc23"]
    assert s["k"] == 4 and s["num_problems"] == 5 and s["avg_at_k"] == pytest.approx(0.5)
    assert s["pass_at_k"] == 1.0
    assert [c[0] for c in engine.calls] == [2, 2, 1]
    assert len({c[2] for c in engine.calls}) == 3  # a different seed per chunk
    rows, summary = read_eval(tmp_path / "amc23")
    assert len(rows) == 20 and summary["engine"] == "fake"
    assert {r["sample_idx"] for r in rows} == {0, 1, 2, 3}


def test_default_k():
    assert default_k("aime24") == 32 and default_k("math500") == 4 and default_k("amc23") == 16
    assert default_k("gsm8k") == 1 and default_k("arith") == 1


class CharTokenizer(FakeTokenizer):
    """One token per character of the user message (plus the FakeTokenizer's id): prompts of many lengths."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        ids = super().apply_chat_template(messages)["input_ids"]
        return {"input_ids": ids + [9] * len(messages[-1]["content"])}


def test_long_prompts_are_skipped_and_counted(tmp_path):
    """A prompt over eval's budget is skipped and counted in the summary, never an error mid-run (issue 30)."""
    from vespo_cli.data import PAPER_TEMPLATE, build_messages, load_problems
    from vespo_cli.errors import UserError
    from vespo_cli.evaluate import encode_benchmarks

    tok = CharTokenizer()
    problems = load_problems("amc23", limit=6)
    lengths = {p.id: len(tok.apply_chat_template(build_messages(p, PAPER_TEMPLATE))["input_ids"]) for p in problems}
    budget = sorted(lengths.values())[3]
    too_long = [pid for pid, n in lengths.items() if n > budget]
    assert 0 < len(too_long) < 6
    answers = {}
    for p in problems:
        ids = tok.apply_chat_template(build_messages(p, PAPER_TEMPLATE))["input_ids"]
        answers[tuple(ids)] = p.answer
    s = run_eval(
        FakeEngine(answers),
        tok,
        ["amc23"],
        2,
        6,
        Sampling(seed=3),
        PAPER_TEMPLATE,
        tmp_path,
        FakeScorer(),
        max_prompt_tokens=budget,
    )["amc23"]
    assert s["skipped_prompts"] == len(too_long) and s["skipped_ids"] == too_long
    assert s["num_problems"] == 6 - len(too_long) and s["max_prompt_tokens"] == budget
    assert metrics_record(s)["skipped_prompts"] == len(too_long)
    with pytest.raises(UserError, match=r"amc23: all 6 prompts are longer than eval.max_prompt_tokens=3"):
        encode_benchmarks(tok, ["amc23"], 6, PAPER_TEMPLATE, 3)


def test_pass_rates_get_the_wilson_interval():
    """0 of 4 is [0, 0.490] (Wilson, z = 1.96), not a bootstrap's [0, 0]; graded accuracies keep the bootstrap."""
    from vespo_cli.compare.stats import wilson_interval
    from vespo_cli.evaluate.estimators import CI_METHOD, WILSON_METHOD

    s = summarize(_rows([[0], [0], [0], [0]]))
    assert s["ci_method"] == WILSON_METHOD and s["ci95_low"] == 0.0
    assert s["ci95_high"] == pytest.approx(0.48990, abs=1e-5)
    s = summarize(_rows([[1, 1], [0, 0], [1, 1]]))  # k = 2, every problem all-or-nothing: a rate of 2/3
    w = wilson_interval(2, 3)
    assert (s["ci95_low"], s["ci95_high"], s["ci_method"]) == (w["low"], w["high"], WILSON_METHOD)
    assert summarize(_rows([[1, 0], [0, 0]]))["ci_method"] == CI_METHOD


def test_summary_line():
    """The training log's eval line: benchmark, metric, accuracy with its interval, problems, seconds."""
    from vespo_cli.evaluate.results import summary_line

    s = summarize([{"problem_id": i, "correct": i < 1} for i in range(4)])  # 1 of 4: Wilson [4.6, 69.9]
    assert summary_line("arith", s, 32, 118.4) == "eval step 32  arith avg@1 25.0% [4.6, 69.9]  4 problems  118s"
    assert summary_line("gsm8k", s) == "eval  gsm8k avg@1 25.0% [4.6, 69.9]  4 problems"
