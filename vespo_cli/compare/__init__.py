"""`vespo compare`: the same experiment under several algorithms, side by side.

Given algorithm presets (`vespo grpo vespo:length_norm=sqrt`), every (algorithm, staleness N, seed)
is trained into `OUT/runs/<label>-N<N>-s<seed>` from the same preset, data order and seed (and the
same shards with `--replay`); complete runs are reused and partial ones resumed. Given run
directories, it only reports. The report is `OUT/report.md` (table, differences, verdict,
definitions, plots), `OUT/summary.json` (the numbers, per run and per group) and `OUT/*.png`.

One concept per module:
- `sweep`: running the (algorithm, N, seed) grid (trainer child processes, reuse and resume);
- `runs`: what a compare covers (algorithm items, run directories) and the loaded metrics;
- `labels`: what a run is called (its algorithm preset and overrides, from its config);
- `analysis`: pure functions of `metrics.jsonl` records (smoothing, collapse, a run's numbers);
- `stats`: t and Wilson intervals, differences paired by seed; `groups`: a (label, N) group's
  numbers over its seeds and the paired differences; `claims`: a claims file (forms, endpoints,
  margins); `verdict`: the claims judged;
- `report`: `summary.json` and `report.md` (sections in `markdown`); `plots`: the figures.
"""

from __future__ import annotations

from ..fsio import read_jsonl
from . import analysis, groups, labels, markdown, plots, report, runs, stats, sweep, verdict
from .analysis import (
    DROP,
    FINAL_FRAC,
    FLOOR,
    MIN_PATIENCE,
    MIN_WINDOW,
    NOISE_Z,
    NONFINITE_KEYS,
    PATIENCE_FRAC,
    SMOOTH_FRAC,
    default_patience,
    detect_collapse,
    eval_records,
    moving_average,
    samples_consumed,
    smooth_window,
    summarize_run,
    trailing_sums,
    train_records,
    window_stderr,
    x_values,
)
from .claims import ClaimsFile, load_claims
from .groups import REFERENCE, collapse_rate, paired_differences, seed_values
from .labels import RUN_NAME, describe_algorithm
from .markdown import md_table
from .plots import FIGURES, X_AXES, plot_all, pyplot, save_figure
from .report import jsonable, render_markdown, write_report
from .runs import ALGO_FIELDS, Loaded, RunSpec, existing_run, load_runs, parse_algo_item
from .stats import difference, t_interval, t_quantile, welch_interval, wilson_interval
from .sweep import REFRESH_AFTER_S, compare_command, train
from .verdict import judge

__all__ = [
    "ALGO_FIELDS",
    "DROP",
    "FIGURES",
    "FINAL_FRAC",
    "FLOOR",
    "Loaded",
    "MIN_PATIENCE",
    "MIN_WINDOW",
    "NOISE_Z",
    "NONFINITE_KEYS",
    "PATIENCE_FRAC",
    "REFERENCE",
    "REFRESH_AFTER_S",
    "RUN_NAME",
    "RunSpec",
    "SMOOTH_FRAC",
    "X_AXES",
    "jsonable",
    "pyplot",
    "save_figure",
    "md_table",
    "analysis",
    "collapse_rate",
    "compare_command",
    "default_patience",
    "describe_algorithm",
    "detect_collapse",
    "difference",
    "eval_records",
    "existing_run",
    "groups",
    "labels",
    "load_runs",
    "markdown",
    "moving_average",
    "paired_differences",
    "judge",
    "load_claims",
    "ClaimsFile",
    "parse_algo_item",
    "plot_all",
    "plots",
    "read_jsonl",
    "render_markdown",
    "report",
    "runs",
    "samples_consumed",
    "seed_values",
    "smooth_window",
    "stats",
    "summarize_run",
    "sweep",
    "t_interval",
    "t_quantile",
    "train",
    "train_records",
    "trailing_sums",
    "verdict",
    "welch_interval",
    "wilson_interval",
    "window_stderr",
    "write_report",
    "x_values",
]
