"""The compare figures (matplotlib, Agg): one PNG per group of metrics, one column per staleness N."""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..fsio import atomic_path
from .analysis import _num, _series_key, moving_average, x_values
from .runs import Loaded

X_AXES = {"steps": "optimizer step", "samples": "samples consumed (sequences)"}  # --x: the curves' x-axis

FIGURES: list[tuple[str, str, list[tuple[str, tuple[str, ...]]]]] = [
    ("reward.png", "Reward and training accuracy", [("reward", ("reward",)), ("accuracy", ("accuracy",))]),
    ("response_length.png", "Response length", [("response length (tokens)", ("response_length",))]),
    ("entropy.png", "Policy entropy on response tokens", [("entropy (nats)", ("entropy",))]),
    ("grad_norm.png", "Gradient norm (before clipping)", [("grad norm", ("grad_norm",))]),
    (
        "weights.png",
        "Importance weights",
        [
            ("mean log W", ("log_w_mean",)),
            ("max log W", ("log_w_max",)),
            ("ESS / n", ("ess",)),
            ("suppressed (φ<1e-3) / clip frac", ("suppressed_frac", "clip_frac")),
        ],
    ),
    (
        "offpolicy.png",
        "Off-policyness",
        [("staleness (steps)", ("staleness",)), ("mean |Δ|", ("delta_abs_mean",)), ("mismatch KL", ("mismatch_kl",))],
    ),
]


def pyplot():
    """matplotlib.pyplot on the Agg backend, with a writable config dir (the probe's plots use it too)."""
    if not os.environ.get("MPLCONFIGDIR"):  # a writable cache dir, kept between runs (font cache)
        cache = Path(tempfile.gettempdir()) / f"vespo-mpl-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        cache.mkdir(mode=0o700, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(cache)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _aligned(members: Sequence[Loaded], key_choices: tuple[str, ...], window: int, x: str = "steps"):
    """x, raw mean, smoothed mean / min / max over seeds (NaN where a seed has no value), seeds.
    Seeds are aligned on the optimizer step; with x = "samples" a step's x is the seeds' mean
    number of samples consumed by then."""
    series = []
    for m in members:
        key = _series_key(m.rows, key_choices)
        if key is None:
            continue
        steps = np.array([int(r["step"]) for r in m.rows])
        raw = np.array([_num(r.get(key)) for r in m.rows])
        series.append((steps, x_values(m.rows, x), raw, moving_average(raw, window)))
    if not series:
        return None
    all_steps = np.unique(np.concatenate([s[0] for s in series]))
    x_m, raw_m, sm_m = (np.full((len(series), len(all_steps)), np.nan) for _ in range(3))
    for j, (steps, xs, raw, sm) in enumerate(series):
        pos = np.searchsorted(all_steps, steps)
        x_m[j, pos] = xs
        raw_m[j, pos] = np.where(np.isfinite(raw), raw, np.nan)
        sm_m[j, pos] = sm
    with warnings.catch_warnings():  # all-NaN columns (a step only some seeds have) are fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return (
            np.nanmean(x_m, 0),
            np.nanmean(raw_m, 0),
            np.nanmean(sm_m, 0),
            np.nanmin(sm_m, 0),
            np.nanmax(sm_m, 0),
            len(series),
        )


def _x_at(m: Loaded, step: float, x: str) -> float:
    """The x coordinate of optimizer step `step` of run `m` (interpolated between its records)."""
    if x == "steps" or not m.rows:
        return float(step)
    return float(np.interp(step, [float(r["step"]) for r in m.rows], x_values(m.rows, x)))


def save_figure(fig, path: Path) -> None:
    """Write a figure to `path` as a PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_all(runs: Sequence[Loaded], groups: dict, out: Path, window: int, x: str = "steps") -> list[dict]:
    """Write one PNG per figure with data, curves over `x` (X_AXES); returns [{"file", "title"}] in order."""
    if not any(r.rows for r in runs) and not any(r.evals for r in runs):
        return []
    plt = pyplot()
    labels = list(dict.fromkeys(r.spec.label for r in runs))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colors = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    ns = sorted({r.spec.staleness for r in runs})
    images = []
    for fname, title, panels in FIGURES:
        panels = [(name, keys) for name, keys in panels if any(_series_key(r.rows, keys) for r in runs)]
        if not panels:
            continue
        fig, axes = plt.subplots(
            len(panels),
            len(ns),
            figsize=(5.2 * len(ns), 2.8 * len(panels) + 0.6),
            squeeze=False,
            layout="constrained",
            sharex="col",
        )
        for col, n in enumerate(ns):
            for row, (name, keys) in enumerate(panels):
                ax = axes[row][col]
                for (label, gn), members in groups.items():
                    if gn == n:
                        _draw_group(
                            ax,
                            members,
                            keys,
                            window,
                            x,
                            colors[label],
                            label,
                            collapses=fname == "reward.png" and row == 0,
                        )
                if name == "grad norm":
                    _maybe_log(ax)
                _flat_ylim(ax)
                ax.set_ylabel(name)
                ax.ticklabel_format(axis="y", useOffset=False)
                _frame(
                    ax,
                    f"N = {n}" if row == 0 and len(ns) > 1 else None,
                    X_AXES[x] if row == len(panels) - 1 else None,
                    legend=row == 0,
                )
        fig.suptitle(f"{title} (moving average over {window} steps; faint: raw)", fontsize="medium")
        save_figure(fig, out / fname)
        plt.close(fig)
        images.append({"file": fname, "title": title})
    if any(r.evals for r in runs):
        images.append(_plot_eval(plt, runs, groups, ns, colors, out, x))
    return images


def _draw_group(
    ax, members: Sequence[Loaded], keys: tuple[str, ...], window: int, x: str, color, label: str, collapses: bool
) -> None:
    """One (label, N) group in a panel: faint raw mean, smoothed mean, min–max band over seeds, and
    a dotted line at each seed's collapse step when `collapses`."""
    a = _aligned(members, keys, window, x)
    if a is None:
        return
    xs, raw, mean, lo, hi, k = a
    ax.plot(xs, raw, color=color, alpha=0.2, linewidth=0.8)
    ax.plot(xs, mean, color=color, linewidth=1.6, label=label + (f" ({k} seeds)" if k > 1 else ""))
    if k > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    for m in members if collapses else []:
        if m.summary["collapse"]["status"] == "collapsed":
            ax.axvline(_x_at(m, m.summary["collapse"]["step"], x), color=color, linestyle=":", alpha=0.7)


def _frame(ax, title: str | None, xlabel: str | None, legend: bool) -> None:
    """Grid, the column's title, the bottom row's x label, and (top row) the legend of its algorithms."""
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _flat_ylim(ax) -> None:
    """A (numerically) constant curve: a readable ±5% axis instead of rounding noise."""
    lo, hi = ax.get_ylim()
    mid = (lo + hi) / 2
    if ax.get_yscale() == "linear" and hi - lo < 1e-6 * max(abs(mid), 1e-6):
        pad = 0.05 * abs(mid) if mid else 0.05
        ax.set_ylim(mid - pad, mid + pad)


def _maybe_log(ax) -> None:
    ys = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()] or [np.array([])])
    ys = ys[np.isfinite(ys)]
    if ys.size and ys.min() > 0 and ys.max() / ys.min() > 100:
        ax.set_yscale("log")


def _plot_eval(plt, runs, groups, ns, colors, out: Path, x: str = "steps") -> dict:
    benches = sorted({str(e["benchmark"]) for r in runs for e in r.evals})
    fig, axes = plt.subplots(
        len(benches),
        len(ns),
        figsize=(5.2 * len(ns), 2.8 * len(benches) + 0.6),
        squeeze=False,
        layout="constrained",
        sharey="row",  # one benchmark's accuracy on one scale across N
    )
    for col, n in enumerate(ns):
        for row, b in enumerate(benches):
            ax = axes[row][col]
            for (label, gn), members in groups.items():
                points = _eval_points(members, b, x) if gn == n else None
                if points:
                    xs, mean, lo, hi = (np.array(v) for v in zip(*points))
                    ax.errorbar(
                        xs,
                        mean,
                        yerr=[np.maximum(mean - lo, 0), np.maximum(hi - mean, 0)],
                        color=colors[label],
                        marker="o",
                        capsize=3,
                        label=label + (f" ({len(members)} seeds)" if len(members) > 1 else ""),
                    )
            ks = sorted({e.get("k") for r in runs for e in r.evals if str(e["benchmark"]) == b and e.get("k")})
            ax.set_ylabel(f"{b} avg@{'/'.join(map(str, ks)) or 'k'}")
            _frame(
                ax,
                f"N = {n}" if row == 0 and len(ns) > 1 else None,
                X_AXES[x] if row == len(benches) - 1 else None,
                legend=row == 0,
            )
    fig.suptitle(
        "Eval accuracy (mean over seeds; bars: min–max over seeds, one seed: its 95% interval)", fontsize="medium"
    )
    save_figure(fig, out / "eval.png")
    plt.close(fig)
    return {"file": "eval.png", "title": "Eval accuracy"}


def _eval_points(members: Sequence[Loaded], bench: str, x: str) -> list[tuple[float, float, float, float]]:
    """(x, avg@k, low, high) per eval step of one benchmark: x and avg@k the mean over the seeds that logged
    it; low–high their min–max, or with one seed its eval's 95% interval (a missing bound counts as the value),
    as in the results table."""
    by_step: dict[float, list[tuple[float, float, float, float]]] = {}
    for m in members:
        for e in m.evals:
            if str(e["benchmark"]) == bench and math.isfinite(_num(e.get("avg_at_k"))):
                v, step = _num(e["avg_at_k"]), _num(e.get("step"))
                lo, hi = _num(e.get("ci95_low")), _num(e.get("ci95_high"))
                by_step.setdefault(step, []).append(
                    (_x_at(m, step, x), v, lo if math.isfinite(lo) else v, hi if math.isfinite(hi) else v)
                )
    points = []
    for step in sorted(by_step):
        seeds = by_step[step]
        xs, vs = float(np.mean([t[0] for t in seeds])), [t[1] for t in seeds]
        lo, hi = (min(vs), max(vs)) if len(seeds) > 1 else seeds[0][2:]
        points.append((xs, float(np.mean(vs)), float(lo), float(hi)))
    return points
