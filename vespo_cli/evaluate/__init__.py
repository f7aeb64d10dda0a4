"""Evaluation: avg@k and unbiased pass@k with 95% intervals (Wilson for 0/1 rates, else bootstrap),
per-sample results, the eval driver.

Output per benchmark (`<out>/<benchmark>/`): `per_sample.parquet` (one row per sampled response) and
`summary.json`, each written atomically (temporary file + rename; the summary is written last).

One concept per module:
- `estimators`: pass@k, avg@k, the interval of a mean accuracy (Wilson or bootstrap);
- `results`: a benchmark's summary, its metrics line, and its files (write and read);
- `driver`: `encode_benchmarks` (prompts within eval's budget, before an engine loads), `run_eval`, k
  scored samples per problem from an engine, per benchmark;
- `command`: `vespo eval` (engine, results table, a checkpoint's run metrics);
- `training`: the trainer's eval callback (train/ receives it; it never imports the driver).
"""

from .command import default_eval_dir, eval_command
from .driver import BenchmarkPrompts, benchmark_name, default_k, encode_benchmarks, eval_sampling, run_eval
from .estimators import CI_METHOD, avg_at_k, bootstrap_ci, pass_at_k
from .results import metrics_record, read_eval, summarize, write_eval
from .training import training_eval

__all__ = [
    "BenchmarkPrompts",
    "CI_METHOD",
    "avg_at_k",
    "benchmark_name",
    "bootstrap_ci",
    "default_eval_dir",
    "default_k",
    "encode_benchmarks",
    "eval_command",
    "eval_sampling",
    "metrics_record",
    "pass_at_k",
    "read_eval",
    "run_eval",
    "summarize",
    "training_eval",
    "write_eval",
]
