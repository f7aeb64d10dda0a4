"""reports/rewards.md: the grader's agreement on the hand-judged table and the echo rate, before and after.

    .venv/bin/python reports/rewards/run.py [--before REV]

- Agreement: tests/data/grader_table.yaml, scored by vespo's grader (its policy per case) and by
  math-verify alone (`parse` of the whole response with its default extraction, `verify` against the
  parsed gold), against the hand labels.
- Echo rate: the fraction of problems where a response that only restates the question (or the
  question + " I am not sure.") is paid, on every bundled eval set and a 2,000-problem seeded sample
  of each training set; for the grader as it was at REV (default: the commit before the rewrite,
  loaded from git as a standalone module) and for today's grader, both policies.
- Correct answers refused: the fraction of payable correct answers (the reference as a bare final
  number, paid under `final_number` when no question is given) that the question-copy guard refuses,
  for the guard as it was at GUARD_REV (it refused a final number whenever the question contained it)
  and today's (it refuses question text).
Writes reports/rewards.md and reports/rewards/results.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vespo_cli.data import load_problems  # noqa: E402
from vespo_cli.rewards import extract_answer, score_one  # noqa: E402

BEFORE_REV = "60f367d"  # the last commit with the single-file grader (vespo_cli/rewards.py)
GUARD_REV = "9eca00e"  # the last commit whose guard refused a final number the question contains
EVAL_SETS = ("gsm8k", "math500", "aime24", "aime25", "amc23")
TRAIN_SETS = ("dapo-math-17k", "gsm8k-train")
SAMPLE = 2000
SUFFIX = " I am not sure."


def module_at(rev: str, path: str, name: str):
    """The standalone module (stdlib + math-verify imports only) `path` as it was at git `rev`."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def old_grader(rev: str):
    """`score_one(response, reference)` of vespo_cli/rewards.py at `rev`."""
    return module_at(rev, "vespo_cli/rewards.py", "rewards_before").score_one


def math_verify_alone(response: str, gold: str) -> bool:
    import math_verify as mv

    pred = mv.parse(response, parsing_timeout=None)
    ref = mv.parse(f"${gold}$", parsing_timeout=None)
    return bool(pred and ref and mv.verify(ref, pred, timeout_seconds=None))


def agreement(cases: list[dict]) -> dict:
    rows = {"vespo": [], "math-verify alone": []}
    for c in cases:
        rows["vespo"].append(score_one(c["response"], c["gold"], c.get("fallback", "none")).correct == c["expected"])
        rows["math-verify alone"].append(math_verify_alone(c["response"], c["gold"]) == c["expected"])
    by_cat: dict[str, dict[str, list[bool]]] = {}
    for c, v, m in zip(cases, rows["vespo"], rows["math-verify alone"]):
        by_cat.setdefault(c["cat"], {"vespo": [], "math-verify alone": []})
        by_cat[c["cat"]]["vespo"].append(v)
        by_cat[c["cat"]]["math-verify alone"].append(m)
    return {
        "overall": {k: sum(v) / len(v) for k, v in rows.items()},
        "n": len(cases),
        "by_category": {
            cat: {"n": len(d["vespo"]), **{k: sum(v) / len(v) for k, v in d.items()}}
            for cat, d in sorted(by_cat.items())
        },
    }


def echo_problems() -> dict[str, list]:
    out = {name: list(load_problems(name)) for name in EVAL_SETS}
    for name in TRAIN_SETS:
        out[name] = random.Random(0).sample(list(load_problems(name)), SAMPLE)
    return out


def echo_rates(problems: dict[str, list], before) -> dict:
    graders = {
        "before": lambda r, p: before(r, p.answer).correct,
        "after (default policy)": lambda r, p: score_one(r, p.answer, "none", p.problem).correct,
        "after (final_number)": lambda r, p: score_one(r, p.answer, "final_number", p.problem).correct,
        "after, no question given": lambda r, p: score_one(r, p.answer, "final_number").correct,
    }
    out = {}
    for name, ps in problems.items():
        out[name] = {"n": len(ps)}
        for label, grade in graders.items():
            paid = sum(any(grade(p.problem + s, p) for s in ("", SUFFIX)) for p in ps)
            out[name][label] = paid / len(ps)
    return out


REFUSAL_PROBES = {  # a correct answer written as a bare final number, after a line of work or the question
    "work, then the number": "Adding it up.\n{answer}",
    "the question, then the number": "{problem}\n{answer}",
}


def refusal_rates(problems: dict[str, list], guard_rev: str) -> dict:
    """Per set and probe: payable correct answers (paid under final_number without the question) and
    how many of them the guard refuses (the question changes the extracted answer), then and now."""
    guards = {"before": module_at(guard_rev, "vespo_cli/rewards/extract.py", "extract_before").extract_answer}
    guards["after"] = extract_answer
    out = {}
    for name, ps in problems.items():
        out[name] = {}
        for probe, form in REFUSAL_PROBES.items():
            row = {"payable": 0, **{label: 0 for label in guards}}
            for p in ps:
                r = form.format(answer=p.answer, problem=p.problem)
                if not score_one(r, p.answer, "final_number").correct:
                    continue
                row["payable"] += 1
                for label, extract in guards.items():
                    row[label] += extract(r, "final_number", p.problem) != extract(r, "final_number")
            out[name][probe] = row
    return out


def render(agree: dict, echo: dict, refused: dict, rev: str, guard_rev: str) -> str:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    lines = [
        "# Rewards: grader agreement and the echo rate",
        "",
        "Generated by `.venv/bin/python reports/rewards/run.py` (this file and `rewards/results.json`).",
        "The extraction policy and its normaliser table are in `vespo_cli/rewards/extract.py`; the conventions",
        "where graders differ are in `vespo_cli/rewards/score.py` and in the table's `why` fields.",
        "",
        f"## Agreement with the hand labels ({agree['n']} cases, `tests/data/grader_table.yaml`)",
        "",
        "| category | cases | vespo | math-verify alone |",
        "|---|---:|---:|---:|",
    ]
    for cat, d in agree["by_category"].items():
        lines.append(f"| {cat} | {d['n']} | {pct(d['vespo'])} | {pct(d['math-verify alone'])} |")
    o = agree["overall"]
    lines += [
        f"| **all** | {agree['n']} | **{pct(o['vespo'])}** | **{pct(o['math-verify alone'])}** |",
        "",
        "The table was written together with the grader, so vespo's figure is in-sample: it shows the",
        "stated conventions hold, not how the grader fares on answers nobody anticipated.",
        "",
        "math-verify alone: its default extraction over the whole response (it also reads numbers out of",
        "prose, which is how it pays unboxed intermediate numbers and echoes).",
        "",
        "## Echo rate: a response that only restates the question, paid",
        "",
        "A problem counts when the question, or the question + \" I am not sure.\", is paid. `before` is",
        f"the grader at `{rev}` (a last-number fallback); `after` is today's, given the question as the",
        "rollout and eval stages give it.",
        "",
        "The last column scores under `rollout.answer_fallback: final_number`, without the question (what a",
        "caller that does not pass it gets): the phrase rule alone then pays a few DAPO problems whose text",
        "says \"then the answer is 0\".",
        "",
        "| problems | n | before | after (default policy) | after (final_number) | no question (final_number) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, d in echo.items():
        sample = f" (seeded sample of {SAMPLE})" if name in TRAIN_SETS else ""
        lines.append(
            f"| {name}{sample} | {d['n']} | {pct(d['before'])} | {pct(d['after (default policy)'])} | "
            f"{pct(d['after (final_number)'])} | {pct(d['after, no question given'])} |"
        )
    lines += [
        "",
        "## Correct answers refused by the question-copy guard",
        "",
        "A correct answer written as a bare number on the last line (after a line of work, or after the",
        "question restated), on problems where it is payable: paid under `final_number` when no question is",
        "given. Refused: given the question, the guard takes the answer away. `before` is the guard at",
        f"`{guard_rev}`, which refused a final number whenever the question contained it; `after` is today's,",
        "which refuses question text (the bare number judged with the line before it), and still pays no",
        "echo above.",
        "",
        "| problems | probe | payable | refused before | refused after |",
        "|---|---|---:|---:|---:|",
    ]
    frac = lambda k, n: f"{k} ({pct(k / n)})" if n else "0"  # noqa: E731
    for name, probes in refused.items():
        for probe, d in probes.items():
            lines.append(
                f"| {name} | {probe} | {d['payable']} | {frac(d['before'], d['payable'])} | "
                f"{frac(d['after'], d['payable'])} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE_REV, help="git revision of the grader to compare with")
    ap.add_argument("--guard-before", default=GUARD_REV, help="git revision of the question-copy guard to compare with")
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    cases = yaml.safe_load((ROOT / "tests" / "data" / "grader_table.yaml").read_text(encoding="utf-8"))["cases"]
    agree = agreement(cases)
    problems = echo_problems()
    echo = echo_rates(problems, old_grader(args.before))
    refused = refusal_rates(problems, args.guard_before)
    out = ROOT / "reports"
    (out / "rewards").mkdir(exist_ok=True)
    results = {"agreement": agree, "echo": echo, "refused": refused, "before": args.before}
    (out / "rewards" / "results.json").write_text(
        json.dumps({**results, "guard_before": args.guard_before}, indent=2) + "\n"
    )
    (out / "rewards.md").write_text(render(agree, echo, refused, args.before, args.guard_before))
    print((out / "rewards.md").read_text())


if __name__ == "__main__":
    main()
