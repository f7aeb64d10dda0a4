"""`vespo compare`: the same experiment under several algorithms, side by side.

Given algorithm presets (`vespo grpo vespo:length_norm=sqrt`), every (algorithm, staleness N, seed)
is trained into `OUT/runs/<label>-N<N>-s<seed>` from the same preset, data order and seed (and the
same shards with `--replay`); complete runs are reused and partial ones resumed. Given run
directories, it only reports. The report is `OUT/report.md` (table + definitions + plots),
`OUT/summary.json` (the table's numbers, per run and per group) and `OUT/*.png`.

One concept per module:
- `sweep`: running the (algorithm, N, seed) grid (trainer child processes, reuse and resume);
- `runs`: what a compare covers (algorithm items, run directories, labels) and the loaded metrics;
- `analysis`: pure functions of `metrics.jsonl` records (smoothing, collapse, a run's numbers);
- `groups`: a (label, N) group's numbers over its seeds;
- `report`: `summary.json` and `report.md`; `plots`: the figures.
"""
from __future__ import annotations

from ..fsio import read_jsonl
from . import analysis, groups, plots, report, runs, sweep
from .analysis import (DROP, FINAL_FRAC, FLOOR, MIN_PATIENCE, MIN_WINDOW, NOISE_Z, NONFINITE_KEYS, PATIENCE_FRAC,
                       SMOOTH_FRAC, _finite_mean, _num, _opt, _series_key, default_patience, detect_collapse,
                       eval_records, moving_average, smooth_window, summarize_run, train_records, trailing_sums,
                       window_stderr)
from .groups import _group_summary, _groups, _stats
from .plots import FIGURES, _flat_ylim, _maybe_log, _pyplot, _save, plot_all
from .report import _collapse_cell, _eval_cell, _f, _jsonable, _table, render_markdown, write_report
from .runs import ALGO_FIELDS, RUN_NAME, Loaded, RunSpec, existing_run, load_runs, parse_algo_item
from .sweep import REFRESH_AFTER_S, compare_command, train

__all__ = [
    "ALGO_FIELDS", "DROP", "FIGURES", "FINAL_FRAC", "FLOOR", "Loaded", "MIN_PATIENCE", "MIN_WINDOW", "NOISE_Z",
    "NONFINITE_KEYS", "PATIENCE_FRAC", "REFRESH_AFTER_S", "RUN_NAME", "RunSpec", "SMOOTH_FRAC", "_collapse_cell",
    "_eval_cell", "_f", "_finite_mean", "_flat_ylim", "_group_summary", "_groups", "_jsonable", "_maybe_log", "_num",
    "_opt", "_pyplot", "_save", "_series_key", "_stats", "_table", "analysis", "compare_command", "default_patience",
    "detect_collapse", "eval_records", "existing_run", "groups", "load_runs", "moving_average", "parse_algo_item",
    "plot_all", "plots", "read_jsonl", "render_markdown", "report", "runs", "smooth_window", "summarize_run", "sweep",
    "train", "train_records", "trailing_sums", "window_stderr", "write_report",
]
