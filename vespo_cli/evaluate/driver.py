"""The benchmark-eval driver: k samples per problem from an engine, scored, summarized and written.

`run_eval` serves both `vespo eval` (`command.py`) and the trainer's eval callback (`training.py`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data import EVAL_SETS, canonical_source, load_problems
from ..errors import UserError
from ..prompts import Problem, encode_prompt
from ..rewards import failure_counts
from ..seeds import offset_seed
from .results import summarize, write_eval


def benchmark_name(source: str) -> str:
    """Directory name for a benchmark: the source name, or a file's stem."""
    p = Path(source)
    if p.suffix.lower() in (".jsonl", ".json", ".parquet"):
        return p.name.split(".")[0]
    return canonical_source(source).strip().replace("/", "--").replace(":", "-")


def default_k(source: str) -> int:
    """The paper's k for a benchmark (`EVAL_SETS`), 1 for anything else."""
    return EVAL_SETS.get(canonical_source(source), 1)


def eval_sampling(cfg):
    """The sampling settings of an eval under `cfg` (cfg.eval, with the trainer's seed)."""
    from ..rollout.base import Sampling

    e = cfg.eval
    return Sampling(temperature=e.temperature, top_p=e.top_p, top_k=-1, max_tokens=e.max_tokens, seed=cfg.trainer.seed)


@dataclasses.dataclass
class BenchmarkPrompts:
    """One benchmark's problems as token ids, after the prompt budget: `problems[i]` ↔ `prompts[i]`;
    `skipped` are the ids of problems whose prompt was longer than `budget` tokens."""

    problems: list[Problem]
    prompts: list[list[int]]
    skipped: list[str]
    budget: int | None


def encode_benchmarks(
    tokenizer,
    benchmarks: Sequence[str],
    limit: int | None,
    template: str,
    max_prompt_tokens: int | None,
    difficulty: int | Sequence[int] = 1,
) -> dict[str, BenchmarkPrompts]:
    """Every benchmark's prompts (an `arith` benchmark: its held-out split at `difficulty`), encoded
    before an engine is loaded. A prompt longer than `max_prompt_tokens` (the eval's own budget,
    `eval.max_prompt_tokens`) is skipped and counted in the summary, never an error mid-run; a benchmark
    with no prompt left is a UserError."""
    out: dict[str, BenchmarkPrompts] = {}
    for bench in benchmarks:
        problems = load_problems(bench, limit=limit, difficulty=difficulty, split="eval")
        if not problems:
            raise UserError(f"benchmark {bench}: no problems")
        kept = BenchmarkPrompts([], [], [], max_prompt_tokens)
        for p in problems:
            ids = encode_prompt(tokenizer, p, template)
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                kept.skipped.append(p.id)
            else:
                kept.problems.append(p)
                kept.prompts.append(ids)
        if not kept.problems:
            raise UserError(
                f"benchmark {bench}: all {len(problems)} prompts are longer than "
                f"eval.max_prompt_tokens={max_prompt_tokens} (expected a larger budget)"
            )
        out[bench] = kept
    return out


def run_eval(
    engine,
    tokenizer,
    benchmarks: Sequence[str],
    k: int | None,
    limit: int | None,
    sampling,
    template: str,
    out_dir: str | Path | None,
    scorer,
    *,
    max_prompt_tokens: int | None = None,
    chunk_prompts: int = 64,
    extra_summary: Mapping[str, Any] | None = None,
    on_chunk=None,
    difficulty: int | Sequence[int] = 1,
    encoded: Mapping[str, BenchmarkPrompts] | None = None,
) -> dict[str, dict]:
    """Generate k samples per problem for each benchmark with `engine` (base.Engine), score them with
    `scorer` (rewards.RewardScorer) and, if `out_dir` is given, write `<out_dir>/<benchmark>/`.
    `k=None` uses the paper's k per benchmark (`EVAL_SETS`, else 1). Prompts are generated in
    chunks of `chunk_prompts` (seed offset per chunk); `on_chunk(benchmark, done, total)` reports
    progress. `difficulty`: the levels of an `arith` benchmark, whose problems are its held-out split
    (never in a training stream). Prompts are `encoded` (`encode_benchmarks`, done here when not given):
    those longer than `max_prompt_tokens` are skipped and counted (`skipped_prompts`). Returns
    {benchmark: summary}."""
    if encoded is None:  # user errors before generating
        encoded = encode_benchmarks(tokenizer, benchmarks, limit, template, max_prompt_tokens, difficulty)
    results: dict[str, dict] = {}
    for bench, enc in encoded.items():
        problems = enc.problems
        kb = k if k is not None else default_k(bench)
        if kb < 1:
            raise UserError(f"k={kb}: expected a positive integer")
        t0 = time.perf_counter()
        rows: list[dict] = []
        for start in range(0, len(problems), chunk_prompts):
            chunk = problems[start : start + chunk_prompts]
            prompts = enc.prompts[start : start + chunk_prompts]
            s = _chunk_sampling(sampling, start // chunk_prompts)
            rows += _sample_rows(engine, tokenizer, scorer, chunk, prompts, kb, s, bench)
            if on_chunk is not None:
                on_chunk(bench, min(start + chunk_prompts, len(problems)), len(problems))
        name = benchmark_name(bench)
        summary = summarize(rows, benchmark=name)
        summary.update(_settings(engine, sampling, template, limit, t0))
        if canonical_source(bench) == "arith":  # its held-out split (arith.py): no problem of any training stream
            summary.update(split="held-out", difficulty=difficulty)
        summary.update(skipped_prompts=len(enc.skipped), skipped_ids=enc.skipped, max_prompt_tokens=enc.budget)
        if extra_summary:
            summary.update(extra_summary)
        if out_dir is not None:
            write_eval(Path(out_dir) / name, rows, summary)
        results[name] = summary
    return results


def _chunk_sampling(sampling, index: int):
    """The sampling settings of chunk `index`: its own seed (offset per chunk) when `sampling` has one."""
    if getattr(sampling, "seed", None) is not None:
        return dataclasses.replace(sampling, seed=offset_seed(sampling.seed, index))
    return sampling


def _sample_rows(
    engine, tokenizer, scorer, chunk: Sequence[Problem], prompts: list[list[int]], k: int, sampling, bench: str
) -> list[dict]:
    """k scored samples of each prompt of `chunk`: one per-sample row each."""
    completions = engine.generate(prompts, k, sampling)
    texts = [c.text or tokenizer.decode(c.response_token_ids, skip_special_tokens=True) for c in completions]
    scores = scorer.score(
        texts,
        [chunk[c.prompt_index].answer for c in completions],
        [chunk[c.prompt_index].problem for c in completions],
    )
    failure_counts(scores, where=f"{bench}: reward scoring")
    return [_row(chunk[c.prompt_index], c, text, sc) for c, text, sc in zip(completions, texts, scores)]


def _row(p: Problem, c, text: str, sc) -> dict:
    """The per_sample.parquet row of completion `c` (decoded as `text`, scored as `sc`) of problem `p`."""
    return {
        "problem_id": p.id,
        "sample_idx": int(c.sample_idx),
        "response": text,
        "extracted_answer": sc.extracted_answer,
        "correct": bool(sc.correct),
        "reward": float(sc.reward),
        "num_tokens": len(c.response_token_ids),
        "finish_reason": c.finish_reason,
        "answer": p.answer,
        "timed_out": bool(sc.timed_out),
        "reward_error": sc.error,
    }


def _settings(engine, sampling, template: str, limit: int | None, t0: float) -> dict:
    """What a summary records of how it was sampled, and the seconds since `t0`."""
    return {
        "engine": getattr(engine, "name", None),
        "engine_dtype": getattr(engine, "dtype", None),
        "temperature": getattr(sampling, "temperature", None),
        "top_p": getattr(sampling, "top_p", None),
        "top_k": getattr(sampling, "top_k", None),
        "max_tokens": getattr(sampling, "max_tokens", None),
        "seed": getattr(sampling, "seed", None),
        "template": template,
        "limit": limit,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
