"""The report of a compare: `summary.json` (the numbers per run and per group, the paired
differences, the verdict on the paper's claims) and `report.md` (its sections: `markdown.py`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..fsio import atomic_write_json, atomic_write_text
from .analysis import DROP, FINAL_FRAC, FLOOR, MIN_PATIENCE, NOISE_Z, PATIENCE_FRAC, samples_consumed, trajectory
from .claims import ClaimsFile, claims_commit, load_claims
from .groups import _group_summary, _groups, paired_differences
from .markdown import (
    curves_lines,
    definitions_lines,
    differences_lines,
    drift_lines,
    identical_lines,
    results_lines,
    runs_lines,
    setup_lines,
    verdict_lines,
)
from .plots import X_AXES, plot_all
from .runs import Loaded, RunSpec, load_runs
from .stats import LEVEL
from .verdict import judge


def write_report(
    specs: Sequence[RunSpec],
    out: Path,
    settings: dict | None = None,
    x: str = "steps",
    claims: tuple[ClaimsFile, Path] | None = None,
    planned: dict[int | None, int] | None = None,
) -> Path:
    """report.md + summary.json + PNGs in `out` for these runs (reads their metrics.jsonl), curves
    over `x` ("steps" or "samples"), the verdict on `claims` (claims.load_claims; default the paper's) at the
    planned seeds `planned` ({N: seeds}, None: every N; over the claims file's `planned_seeds`)."""
    claims_file, claims_at = claims or load_claims()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, window = load_runs(specs)
    _check_x(runs, x)
    groups = _groups(runs)
    images = plot_all(runs, groups, out, window, x)
    group_summaries = [_group_summary(key, members) for key, members in groups.items()]
    summary = {
        "settings": {
            **(settings or {}),
            "x": x,
            "smooth_window": window,
            "final_frac": FINAL_FRAC,
            "interval_level": LEVEL,
            "claims": {
                "path": _display_path(claims_at),
                "family": claims_file.family,
                "alpha": claims_file.alpha,
                "power": claims_file.power,
                "endpoint": claims_file.endpoint,
                "planned_seeds": {
                    ("every N" if n is None else str(n)): k for n, k in claims_file.planned(planned).items()
                },
                **claims_commit(Path(claims_at)),
            },
            "collapse": {
                "drop": DROP,
                "patience_frac": PATIENCE_FRAC,
                "min_patience": MIN_PATIENCE,
                "floor": FLOOR,
                "noise_z": NOISE_Z,
            },
        },
        "groups": group_summaries,
        "paired_differences": paired_differences(group_summaries),
        "verdict": judge(group_summaries, claims_file, planned),
        "identical_runs": identical_runs(runs),
        "runs": [
            {
                "label": r.spec.label,
                "staleness": r.spec.staleness,
                "seed": r.spec.seed,
                "path": os.path.relpath(r.spec.path, out),
                "algorithm": r.spec.algorithm,
                **r.summary,
            }
            for r in runs
        ],
        "figures": images,
    }
    atomic_write_json(out / "summary.json", jsonable(summary))
    path = out / "report.md"
    atomic_write_text(path, render_markdown(summary, runs, window, images, out))
    return path


def _display_path(path: Path) -> str:
    """A path relative to the working directory where it lies below it (reports stay machine-independent)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def identical_runs(runs: Sequence[Loaded]) -> list[dict]:
    """Runs of one N and seed under different algorithms whose training is the same at every step
    (analysis.trajectory): on-policy (W = 1) several objectives give one gradient, and a difference between
    such runs measures nothing."""
    same: dict[tuple, set[str]] = {}
    for r in runs:
        if r.rows:
            same.setdefault((r.spec.staleness, r.spec.seed, trajectory(r.rows)), set()).add(r.spec.label)
    return [
        {"staleness": n, "seed": seed, "labels": sorted(labels)}
        for (n, seed, _), labels in same.items()
        if len(labels) > 1
    ]


def _check_x(runs: Sequence[Loaded], x: str) -> None:
    """--x samples needs every training record to say how many sequences it consumed (`n_seqs`)."""
    if x not in X_AXES:
        raise UserError(f"--x {x}: expected one of {', '.join(X_AXES)}")
    for r in runs:
        if x == "samples" and r.rows and samples_consumed(r.rows) is None:
            raise UserError(
                f"--x samples: {r.spec.path / 'metrics.jsonl'}: a training record without n_seqs; use --x steps"
            )


def jsonable(x: Any) -> Any:
    """Non-finite floats → null (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def render_markdown(summary: dict, runs: Sequence[Loaded], window: int, images: list[dict], out: Path) -> str:
    """report.md: setup, results, differences, verdict, definitions, curves, runs (`markdown.py`)."""
    groups = summary["groups"]
    lines = ["# vespo compare", ""]
    lines += setup_lines(summary["settings"], len(runs), len(groups), out)
    lines += results_lines(groups)
    lines += drift_lines(groups)
    lines += differences_lines(summary["paired_differences"])
    lines += verdict_lines(summary["verdict"], summary["settings"].get("claims"))
    lines += identical_lines(summary["identical_runs"])
    lines += definitions_lines(summary["settings"], window)
    lines += curves_lines(images)
    lines += runs_lines(runs, out)
    lines += ["Numbers: `summary.json` (same directory)."]
    return "\n".join(lines) + "\n"
