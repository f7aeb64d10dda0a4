"""Prompt sources: bundled sets, training-set lookup, local files, procedural arithmetic, messages."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from vespo_cli import data
from vespo_cli.arith import arith_eval_problems, draw_arith, held_out
from vespo_cli.data import (
    EVAL_SETS,
    PAPER_TEMPLATE,
    Problem,
    arith_problem,
    build_messages,
    iter_arith,
    load_problems,
)
from vespo_cli.errors import UserError


@pytest.mark.parametrize(
    "name,rows", [("aime24", 30), ("aime25", 30), ("amc23", 40), ("math500", 500), ("gsm8k", 1319)]
)
def test_bundled_sets(name, rows):
    problems = load_problems(name)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    assert all(p.problem and p.answer for p in problems)
    assert name in EVAL_SETS
    assert load_problems(name, limit=3) == problems[:3]


def test_known_answers_and_aliases():
    assert load_problems("aime24")[0].answer == "204"
    assert load_problems("math500")[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert load_problems("GSM8K_test", limit=2) == load_problems("gsm8k", limit=2)
    assert load_problems("math-500", limit=1) == load_problems("math500", limit=1)


def test_shuffle_is_seeded():
    a = load_problems("amc23", shuffle=True, seed=1)
    assert a == load_problems("amc23", shuffle=True, seed=1)
    assert a != load_problems("amc23", shuffle=True, seed=2)
    assert sorted(p.id for p in a) == sorted(p.id for p in load_problems("amc23"))
    assert load_problems("amc23", shuffle=True, seed=1, limit=5) == a[:5]


def test_paper_template_and_messages():
    p = Problem("x-0", "What is {a} + 1?", "2", "x")  # braces in the problem are not format fields
    msgs = build_messages(p, PAPER_TEMPLATE)
    assert msgs == [
        {
            "role": "user",
            "content": "What is {a} + 1?\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]
    with pytest.raises(UserError, match="problem"):
        build_messages(p, "no placeholder")


# ------------------------------------------------------------------------------------ arithmetic


def test_arith_deterministic_and_prefix_stable():
    a = load_problems("arith", limit=50, seed=3)
    assert a == load_problems("arith", limit=50, seed=3)
    assert a[:10] == load_problems("arith", limit=10, seed=3)
    assert a != load_problems("arith", limit=50, seed=4)
    assert a[17].id == "arith-d1-s3-17"
    assert len({p.id for p in a}) == 50
    it = iter_arith(seed=3, difficulty=1, start=17)
    assert next(it) == a[17] == arith_problem(3, 1, 17)
    assert len(load_problems("arith", limit=0)) == 0


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_arith_answers_are_correct(difficulty):
    for i in range(40):
        text, expr, answer = draw_arith(random.Random(f"vespo-arith/7/{difficulty}/{i}"), difficulty)
        assert eval(expr, {"__builtins__": {}}) == answer  # noqa: S307 - our own digits and operators
        assert answer >= 0
        p = arith_problem(7, difficulty, i)
        if not held_out(text):  # attempt 0 of the training stream; a held-out draw is redrawn
            assert p.problem == text and p.answer == str(answer) and p.source == "arith"
        # every operand of the expression appears in the text, in order
        nums = re.findall(r"\d+", expr)
        assert re.findall(r"\d+", text) == nums


def test_arith_difficulty_grows():
    def mean_answer(d):
        return sum(int(p.answer) for p in load_problems("arith", limit=200, difficulty=d)) / 200

    assert all(int(p.answer) <= 18 for p in load_problems("arith", limit=200, difficulty=1))
    means = [mean_answer(d) for d in range(1, 6)]
    assert means == sorted(means)
    with pytest.raises(UserError, match="difficulty"):
        load_problems("arith", limit=1, difficulty=6)


def test_arith_answers_score_correct():
    from vespo_cli.rewards import score_one

    for d in range(1, 6):
        p = arith_problem(0, d, 0)
        assert score_one(f"\\boxed{{{p.answer}}}", p.answer).correct
        assert score_one(str(p.answer), p.answer, "final_number").correct  # the arith preset opts in
        assert not score_one(str(p.answer), p.answer).correct  # a bare number is no stated answer
        assert not score_one(f"\\boxed{{{int(p.answer) + 1}}}", p.answer).correct


# -------------------------------------------------------------------------------- files, training sets


def test_local_jsonl_and_parquet(tmp_path):
    rows = [
        {"question": "1+1?", "answer": "It is 2.\n#### 2"},  # GSM8K style
        {"prompt": [{"role": "user", "content": "2+2?"}], "reward_model": {"ground_truth": "4"}},  # verl style
        {"problem": "3+3?", "solution": "so $\\boxed{6}$", "id": "custom"},  # MATH style
    ]
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_problems(str(f))
    assert [(p.id, p.problem, p.answer) for p in got] == [
        ("mine-0", "1+1?", "2"),
        ("mine-1", "2+2?", "4"),
        ("custom", "3+3?", "6"),
    ]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"problem": "a", "answer": 1}, {"problem": "b", "answer": 2}]), tmp_path / "t.parquet"
    )
    got = load_problems(str(tmp_path / "t.parquet"))
    assert [(p.id, p.answer, p.source) for p in got] == [("t-0", "1", "t"), ("t-1", "2", "t")]


def test_dapo_wrapper_is_stripped(tmp_path):
    text = (
        "Solve the following math problem step by step. The last line of your response should be of the form "
        "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\nWhat is 6*7?\n\n"
        "Remember to put your answer on its own line after \"Answer:\"."
    )
    f = tmp_path / "dapo.jsonl"
    f.write_text(json.dumps({"prompt": [{"role": "user", "content": text}], "reward_model": {"ground_truth": "42"}}))
    assert load_problems(str(f))[0].problem == "What is 6*7?"


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_problems(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "answer": "1"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        load_problems(str(bad))
    nokey = tmp_path / "nokey.jsonl"
    nokey.write_text('{"text": "x"}\n')
    with pytest.raises(UserError, match="problem"):
        load_problems(str(nokey))
    with pytest.raises(UserError, match="expected one of"):
        load_problems("no-such-set")
    with pytest.raises(UserError, match="directory"):
        load_problems(str(tmp_path))


def test_training_set_lookup(tmp_path, monkeypatch):
    (tmp_path / "gsm8k_train.jsonl").write_text(json.dumps({"id": "g-0", "problem": "p", "answer": "5"}) + "\n")
    monkeypatch.setenv("VESPO_DATA_DIR", str(tmp_path))
    assert load_problems("gsm8k-train") == [Problem("g-0", "p", "5", "gsm8k_train")]


def test_missing_training_set_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VESPO_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "data_dirs", lambda: [tmp_path])
    monkeypatch.setattr(data, "_hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError) as e:
        load_problems("dapo-math-17k")
    msg = str(e.value)
    assert "\n" not in msg
    assert "dapo_math_17k.jsonl" in msg and str(tmp_path) in msg and "BytedTsinghua-SIA/DAPO-Math-17k" in msg
    with pytest.raises(UserError, match="someone/nothing"):
        load_problems("someone/nothing:test")


def test_training_sets_from_data_dir_jsonl_and_parquet(tmp_path, monkeypatch):
    """The lookup that finds shared/data's training sets, on files in their exact row format (first
    rows of shared/data/*.jsonl), so it runs where shared/ is absent (CI's clean clone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dapo = [
        {
            "id": f"dapo_math_17k-{i}",
            "problem": f"Find x if x - {i} = 34.",
            "answer": str(34 + i),
            "source": "dapo_math_17k",
            "orig_index": i,
            "lang": "en",
        }
        for i in range(3)
    ]
    gsm = [
        {
            "id": "gsm8k_train-0",
            "problem": "Natalia sold clips to 48 of her friends in April, and then "
            "she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
            "answer": "72",
            "source": "gsm8k_train",
            "solution": "48/2 = 24\n48+24 = 72\n#### 72",
        }
    ]
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "dapo_math_17k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dapo))
    (second / "dapo_math_17k.jsonl").write_text(json.dumps({**dapo[0], "answer": "-1"}) + "\n")
    pq.write_table(pa.Table.from_pylist(gsm), second / "gsm8k_train.parquet")
    monkeypatch.setattr(data, "data_dirs", lambda: [first, second])
    got = load_problems("dapo-math-17k")
    assert [(p.id, p.answer) for p in got] == [(f"dapo_math_17k-{i}", str(34 + i)) for i in range(3)]  # first dir wins
    (g,) = load_problems("gsm8k-train")
    assert (g.id, g.answer) == ("gsm8k_train-0", "72") and g.problem.startswith("Natalia sold clips")
    monkeypatch.undo()  # back to the real data_dirs: $VESPO_DATA_DIR comes first
    monkeypatch.setenv("VESPO_DATA_DIR", str(second))
    assert data.data_dirs()[0] == second
    assert load_problems("dapo-math-17k")[0].answer == "-1"


def test_bundled_training_sets_are_shared_datas_rows():
    """The training sets bundled with the package (the last lookup dir) hold shared/data's rows
    exactly: counts, first answer, and a sha256 over every (id, problem, answer) taken from
    shared/data/*.jsonl when they were converted."""
    import hashlib

    bundled = data.data_dirs()[-1]
    assert bundled == Path(data.__file__).resolve().parent / "data"
    expected = {
        "dapo_math_17k": (17276, "34", "2875e8700d38970d4e6559bc271ce8c5dcb80dbbc48de29a957883e5c936c6e2"),
        "gsm8k_train": (7473, "72", "05a8cc00c083b1b4649f6e84c5555cffafb939a6f7f48c76486a382b17852528"),
    }
    for stem, (rows, first_answer, sha) in expected.items():
        problems = data._read_file(bundled / f"{stem}.parquet", stem)
        assert len(problems) == rows and problems[0].answer == first_answer
        text = "".join(f"{p.id}\t{p.problem}\t{p.answer}\n" for p in problems)
        assert hashlib.sha256(text.encode()).hexdigest() == sha, stem
    assert len(load_problems("dapo-math-17k")) == 17276 and len(load_problems("gsm8k-train")) == 7473


@pytest.mark.parametrize("difficulty", [1, 2, [1, 2], [1, 2, 3]])
def test_arith_held_out_split_never_trained_on(difficulty):
    """No eval problem appears in any training stream, for every seed; the eval set is the same for all seeds."""
    evals = load_problems("arith", split="eval", difficulty=difficulty, limit=640)
    texts = {p.problem for p in evals}
    assert len(texts) == len(evals) and all(held_out(t) for t in texts)  # distinct, all held out
    for seed in range(4):
        train = {p.problem for p in load_problems("arith", limit=1500, seed=seed, difficulty=difficulty)}
        assert not train & texts
    assert evals == arith_eval_problems(difficulty, 640)  # independent of any seed
    if difficulty == 1:  # one-digit sums: 81 problems, about a quarter held out
        assert 10 <= len(evals) <= 30
    else:
        assert len(evals) == 640  # the eval SE bound 0.5/√640 < 2 points needs all of them


def test_arith_mixture_draws_every_level():
    problems = load_problems("arith", limit=400, seed=1, difficulty=[1, 3])
    levels = {p.id.split("-")[1] for p in problems}
    assert levels == {"d1", "d3"}
    assert problems == load_problems("arith", limit=400, seed=1, difficulty=[1, 3])
    with pytest.raises(UserError, match="difficulty 7"):
        load_problems("arith", limit=1, difficulty=[1, 7])
