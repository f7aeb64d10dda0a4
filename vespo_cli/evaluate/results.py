"""Eval results: a benchmark's summary (avg@k with its interval, pass@k, per-problem counts), its
metrics line, and its files.

Output per benchmark (`<out>/<benchmark>/`): `per_sample.parquet` (one row per sampled response) and
`summary.json`, each written atomically (temporary file + rename; the summary is written last).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..rundir import EVAL_SAMPLES, EVAL_SUMMARY
from .estimators import accuracy_ci, mean_or_nan, pass_at_k, pass_ks

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


def summarize(per_sample_rows: Sequence[Mapping[str, Any]], *, benchmark: str | None = None) -> dict:
    """Aggregate per-sample rows (problem_id, correct, and optionally reward, num_tokens,
    finish_reason, timed_out) into: `avg_at_k`, its 95% interval `ci95_low`/`ci95_high` (`accuracy_ci`:
    Wilson when every problem's accuracy is 0 or 1, else the percentile bootstrap over problems, fixed
    seed), `pass_at_k` (unbiased pass@k at k), `pass_at`
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
    lo, hi, ci_method = accuracy_ci(accs)
    out: dict[str, Any] = {
        "benchmark": benchmark,
        "num_problems": len(per_problem),
        "num_samples": len(rows),
        "k": k,
        "metric": f"avg@{k}",
        "avg_at_k": mean_or_nan(accs),
        "ci95_low": lo,
        "ci95_high": hi,
        "ci_method": ci_method,
        "pass_at": {str(j): mean_or_nan([pass_at_k(p["n"], p["correct"], j) for p in per_problem]) for j in pass_ks(k)},
        "mean_reward": mean_or_nan([float(r.get("reward", float(bool(r["correct"])))) for r in rows]),
    }
    out["pass_at_k"] = out["pass_at"][str(k)]
    if max(ns) != k:
        out["k_max"] = max(ns)
    if all("num_tokens" in r for r in rows):
        out["mean_response_tokens"] = mean_or_nan([float(r["num_tokens"]) for r in rows])
    if all("finish_reason" in r for r in rows):
        out["truncated_fraction"] = mean_or_nan([float(r["finish_reason"] == "length") for r in rows])
    if all("timed_out" in r for r in rows):
        out["reward_timeout_fraction"] = mean_or_nan([float(bool(r["timed_out"])) for r in rows])
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
        "split",
        "difficulty",
        "skipped_prompts",
    )
    return {key: summary[key] for key in keys if key in summary}


def write_eval(out_dir: str | Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> Path:
    """Write `per_sample.parquet` and then `summary.json` into `out_dir`, each atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..fsio import atomic_path, atomic_write_json

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


def summary_line(name: str, summary: Mapping[str, Any], step: int | None = None, seconds: float | None = None) -> str:
    """`eval step 32  arith avg@1 4.1% [2.8, 5.9]  640 problems  118s`: a benchmark's summary in one plain line
    (the training log's eval line, beside the step lines)."""
    at = f" step {step}" if step is not None else ""
    lo, hi = summary["ci95_low"], summary["ci95_high"]
    took = f"  {seconds:.0f}s" if seconds is not None else ""
    return (
        f"eval{at}  {name} {summary['metric']} {100 * summary['avg_at_k']:.1f}% "
        f"[{100 * lo:.1f}, {100 * hi:.1f}]  {summary['num_problems']} problems{took}"
    )
