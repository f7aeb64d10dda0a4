"""Evaluation: avg@k and unbiased pass@k with bootstrap intervals, per-sample results, the eval driver.

Output per benchmark (`<out>/<benchmark>/`): `per_sample.parquet` (one row per sampled response) and
`summary.json`, each written atomically (temporary file + rename; the summary is written last).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .data import EVAL_SETS, canonical_source, encode_prompt, load_problems
from .errors import UserError
from .rewards import failure_counts
from .rundir import EVAL_SAMPLES, EVAL_SUMMARY, checkpoint_of, default_dir

CI_METHOD = "percentile bootstrap over problems, 2000 resamples, seed 0, 95%"
_REQUIRED = {  # per_sample.parquet: column -> pyarrow type name (extra row keys are kept as well)
    "problem_id": "string",
    "sample_idx": "int32",
    "response": "string",
    "extracted_answer": "string",
    "correct": "bool_",
    "reward": "float32",
    "num_tokens": "int32",
    "finish_reason": "string",
}


# ------------------------------------------------------------------------------------- estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) from n samples of which c are correct:
    1 - C(n-c, k) / C(n, k), computed as the stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i)."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(per_problem: Iterable[Sequence[float]]) -> float:
    """Mean accuracy over each problem's samples, averaged over problems (avg@k). NaN if empty."""
    means = [_mean(list(map(float, s))) for s in per_problem]
    return _mean(means)


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of `values` (resampled with replacement, fixed seed)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1 or np.all(v == v[0]):
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // v.size)  # bounded memory for large sets
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        means[s:e] = v[rng.integers(0, v.size, size=(e - s, v.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if len(xs) else math.nan


def _pass_ks(k: int) -> list[int]:
    ks, j = [], 1
    while j < k:
        ks.append(j)
        j *= 2
    return ks + [k]


# ----------------------------------------------------------------------------------------- summary


def summarize(per_sample_rows: Sequence[Mapping[str, Any]], *, benchmark: str | None = None) -> dict:
    """Aggregate per-sample rows (problem_id, correct, and optionally reward, num_tokens,
    finish_reason, timed_out) into: `avg_at_k`, its 95% interval `ci95_low`/`ci95_high` (percentile
    bootstrap over problems, fixed seed), `pass_at_k` (unbiased pass@k at k), `pass_at`
    ({"1": pass@1, "2": pass@2, "4": ..., "k": pass@k}) and `per_problem` counts. k = samples per
    problem (the minimum if problems got different numbers; pass@j uses each problem's own n)."""
    groups: OrderedDict[str, list[Mapping[str, Any]]] = OrderedDict()
    for r in per_sample_rows:
        groups.setdefault(str(r["problem_id"]), []).append(r)
    if not groups:
        raise ValueError("summarize: no rows")
    per_problem = [
        {"problem_id": pid, "n": len(rs), "correct": sum(bool(r["correct"]) for r in rs)} for pid, rs in groups.items()
    ]
    ns = [p["n"] for p in per_problem]
    k = min(ns)
    accs = [p["correct"] / p["n"] for p in per_problem]
    rows = list(per_sample_rows)
    lo, hi = bootstrap_ci(accs)
    out: dict[str, Any] = {
        "benchmark": benchmark,
        "num_problems": len(per_problem),
        "num_samples": len(rows),
        "k": k,
        "metric": f"avg@{k}",
        "avg_at_k": _mean(accs),
        "ci95_low": lo,
        "ci95_high": hi,
        "ci_method": CI_METHOD,
        "pass_at": {str(j): _mean([pass_at_k(p["n"], p["correct"], j) for p in per_problem]) for j in _pass_ks(k)},
        "mean_reward": _mean([float(r.get("reward", float(bool(r["correct"])))) for r in rows]),
    }
    out["pass_at_k"] = out["pass_at"][str(k)]
    if max(ns) != k:
        out["k_max"] = max(ns)
    if all("num_tokens" in r for r in rows):
        out["mean_response_tokens"] = _mean([float(r["num_tokens"]) for r in rows])
    if all("finish_reason" in r for r in rows):
        out["truncated_fraction"] = _mean([float(r["finish_reason"] == "length") for r in rows])
    if all("timed_out" in r for r in rows):
        out["reward_timeout_fraction"] = _mean([float(bool(r["timed_out"])) for r in rows])
    out["per_problem"] = per_problem
    return out


def metrics_record(summary: Mapping[str, Any]) -> dict:
    """The flat numbers of a summary, for one `metrics.jsonl` eval line (no per-problem lists)."""
    keys = (
        "benchmark",
        "k",
        "metric",
        "avg_at_k",
        "ci95_low",
        "ci95_high",
        "pass_at_k",
        "num_problems",
        "num_samples",
        "mean_reward",
        "mean_response_tokens",
        "truncated_fraction",
        "reward_timeout_fraction",
    )
    return {key: summary[key] for key in keys if key in summary}


def write_eval(out_dir: str | Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> Path:
    """Write `per_sample.parquet` and then `summary.json` into `out_dir`, each atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .fsio import atomic_path, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = [c for c in _REQUIRED if rows and any(c not in r for r in rows)]
    if missing:
        raise ValueError(f"write_eval: rows lack columns {missing}")
    extra = [c for c in (rows[0].keys() if rows else []) if c not in _REQUIRED]
    fields = [pa.field(c, getattr(pa, t)()) for c, t in _REQUIRED.items()]
    arrays = [pa.array([r[c] for r in rows], type=f.type) for c, f in zip(_REQUIRED, fields)]
    for c in extra:
        arr = pa.array([r.get(c) for r in rows])
        fields.append(pa.field(c, arr.type))
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    with atomic_path(out / EVAL_SAMPLES) as tmp:
        pq.write_table(table, tmp)
    atomic_write_json(out / EVAL_SUMMARY, dict(summary))
    return out


def read_eval(out_dir: str | Path) -> tuple[list[dict], dict]:
    """(per-sample rows, summary) of one benchmark's eval directory."""
    import json

    import pyarrow.parquet as pq

    out = Path(out_dir)
    try:
        summary = json.loads((out / EVAL_SUMMARY).read_text())
        rows = pq.read_table(out / EVAL_SAMPLES).to_pylist()
    except (OSError, ValueError) as e:
        raise UserError(
            f"{out}: not a readable eval directory (expected {EVAL_SAMPLES} + {EVAL_SUMMARY}: {e})"
        ) from None
    return rows, summary


# ------------------------------------------------------------------------------------------ driver


def benchmark_name(source: str) -> str:
    """Directory name for a benchmark: the source name, or a file's stem."""
    p = Path(source)
    if p.suffix.lower() in (".jsonl", ".json", ".parquet"):
        return p.name.split(".")[0]
    return canonical_source(source).strip().replace("/", "--").replace(":", "-")


def default_k(source: str) -> int:
    """The paper's k for a benchmark (`EVAL_SETS`), 1 for anything else."""
    return EVAL_SETS.get(canonical_source(source), 1)


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
) -> dict[str, dict]:
    """Generate k samples per problem for each benchmark with `engine` (base.Engine), score them with
    `scorer` (rewards.RewardScorer) and, if `out_dir` is given, write `<out_dir>/<benchmark>/`.
    `k=None` uses the paper's k per benchmark (`EVAL_SETS`, else 1). Prompts are generated in
    chunks of `chunk_prompts` (seed offset per chunk); `on_chunk(benchmark, done, total)` reports
    progress. Returns {benchmark: summary}."""
    problem_sets = {b: load_problems(b, limit=limit) for b in benchmarks}  # user errors before generating
    results: dict[str, dict] = {}
    for bench, problems in problem_sets.items():
        if not problems:
            raise UserError(f"benchmark {bench}: no problems")
        kb = k if k is not None else default_k(bench)
        if kb < 1:
            raise UserError(f"k={kb}: expected a positive integer")
        t0 = time.perf_counter()
        rows: list[dict] = []
        for start in range(0, len(problems), chunk_prompts):
            chunk = problems[start : start + chunk_prompts]
            prompts = [encode_prompt(tokenizer, p, template, max_prompt_tokens) for p in chunk]
            s = sampling
            if getattr(sampling, "seed", None) is not None:
                s = dataclasses.replace(sampling, seed=sampling.seed + 1_000_003 * (start // chunk_prompts))
            completions = engine.generate(prompts, kb, s)
            texts = [c.text or tokenizer.decode(c.response_token_ids, skip_special_tokens=True) for c in completions]
            scores = scorer.score(
                texts,
                [chunk[c.prompt_index].answer for c in completions],
                [chunk[c.prompt_index].problem for c in completions],
            )
            failure_counts(scores, where=f"{bench}: reward scoring")
            for c, text, sc in zip(completions, texts, scores):
                p = chunk[c.prompt_index]
                rows.append(
                    {
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
                )
            if on_chunk is not None:
                on_chunk(bench, min(start + chunk_prompts, len(problems)), len(problems))
        name = benchmark_name(bench)
        summary = summarize(rows, benchmark=name)
        summary.update(
            {
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
        )
        if extra_summary:
            summary.update(extra_summary)
        if out_dir is not None:
            write_eval(Path(out_dir) / name, rows, summary)
        results[name] = summary
    return results


def default_eval_dir(model_path: str | Path, model_spec: str) -> Path:
    """`<run>/eval/step-K` for a run's checkpoint (as during training), else `runs/eval/<model>`."""
    ckpt = checkpoint_of(model_path)
    if ckpt is not None:
        return ckpt[0].eval_dir(ckpt[1])
    return default_dir("eval") / benchmark_name(Path(model_spec).name or model_spec)


def eval_command(
    cfg,
    benchmarks: Sequence[str],
    *,
    model: str | None = None,
    k: int | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
) -> dict[str, dict]:
    """`vespo eval`: open the configured engine on `model` (default cfg.model.path) and run `run_eval`."""
    from rich.console import Console
    from rich.table import Table

    from .models import load_tokenizer, resolve_model
    from .rewards import scorer_for
    from .rollout.base import Sampling
    from .rollout.sampling import open_engine

    benchmarks = list(benchmarks) or list(cfg.eval.benchmarks)
    if not benchmarks:
        raise UserError("eval: no benchmarks given (expected e.g. aime24 math500, or eval.benchmarks in the preset)")
    k = k if k is not None else cfg.eval.k
    limit = limit if limit is not None else cfg.eval.limit
    if k is not None and k < 1:
        raise UserError(f"--k {k}: expected a positive integer")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a positive integer")
    for b in benchmarks:  # fail on a bad name before loading a model
        load_problems(b, limit=1)
    model_spec = model or cfg.model.path
    model_path = resolve_model(model_spec, trust_remote_code=cfg.model.trust_remote_code)
    out_dir = Path(out) if out is not None else default_eval_dir(model_path, model_spec)
    sampling = Sampling(
        temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p,
        top_k=-1,
        max_tokens=cfg.eval.max_tokens,
        seed=cfg.trainer.seed,
    )
    ecfg = cfg.model_copy(
        update={
            "rollout": cfg.rollout.model_copy(update={"max_tokens": max(cfg.rollout.max_tokens, cfg.eval.max_tokens)})
        }
    )
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    err = Console(stderr=True)
    engine = open_engine(ecfg, model_path)
    try:
        with scorer_for(cfg) as scorer:
            results = run_eval(
                engine,
                tokenizer,
                benchmarks,
                k,
                limit,
                sampling,
                cfg.data.template,
                out_dir,
                scorer,
                max_prompt_tokens=cfg.data.max_prompt_tokens,
                extra_summary={"model": str(model_path)},
                on_chunk=lambda b, done, total: err.print(f"[dim]{b}: {done}/{total} problems[/]"),
            )
    finally:
        engine.close()
    table = Table(title=f"eval: {model_spec}", title_justify="left", show_edge=False)
    for col in ("benchmark", "metric", "value", "95% CI", "pass@k", "tokens", "truncated"):
        table.add_column(col)
    for name, s in results.items():
        lo, hi = s["ci95_low"], s["ci95_high"]
        table.add_row(
            name,
            s["metric"],
            f"{100 * s['avg_at_k']:.1f}",
            f"[{100 * lo:.1f}, {100 * hi:.1f}]",
            f"{100 * s['pass_at_k']:.1f}",
            f"{s.get('mean_response_tokens', 0):.0f}",
            f"{100 * s.get('truncated_fraction', 0):.0f}%",
        )
    Console().print(table)
    err.print(f"results: {out_dir}")
    ckpt = checkpoint_of(model_path)
    if ckpt is not None:  # a run's checkpoint: its eval lines join the run's metrics
        from .fsio import append_jsonl

        for s in results.values():
            append_jsonl(ckpt[0].metrics, {"kind": "eval", "step": ckpt[1], "time": time.time(), **metrics_record(s)})
        err.print(f"appended to {ckpt[0].metrics}")
    return results


def training_eval(cfg, run_dir: str | Path):
    """The trainer's `evaluate(engine, tokenizer, step)` callback (train/loop.py): cfg.eval.benchmarks on
    the weights the engine holds at `step`, written to `<run>/eval/step-K/`; returns the `kind: eval`
    metrics records. None when the config names no benchmarks."""
    if not cfg.eval.benchmarks:
        return None
    from .rewards import scorer_for
    from .rollout.base import Sampling
    from .rundir import RunDir

    e = cfg.eval
    sampling = Sampling(
        temperature=e.temperature, top_p=e.top_p, top_k=-1, max_tokens=e.max_tokens, seed=cfg.trainer.seed
    )

    def evaluate(engine, tokenizer, step: int) -> list[dict]:
        with scorer_for(cfg) as scorer:
            results = run_eval(
                engine,
                tokenizer,
                e.benchmarks,
                e.k,
                e.limit,
                sampling,
                cfg.data.template,
                RunDir(run_dir).eval_dir(step),
                scorer,
                max_prompt_tokens=cfg.data.max_prompt_tokens,
            )
        return [{"kind": "eval", "step": step, "time": time.time(), **metrics_record(s)} for s in results.values()]

    return evaluate
