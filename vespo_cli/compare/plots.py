"""The compare figures (matplotlib, Agg): one PNG per group of metrics, one column per staleness N."""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fsio import atomic_path
from .analysis import _num, _series_key, moving_average
from .runs import Loaded

FIGURES: list[tuple[str, str, list[tuple[str, tuple[str, ...]]]]] = [
    ("reward.png", "Reward and training accuracy", [("reward", ("reward",)), ("accuracy", ("accuracy",))]),
    ("response_length.png", "Response length", [("response length (tokens)", ("response_length",))]),
    ("entropy.png", "Policy entropy on response tokens", [("entropy (nats)", ("entropy",))]),
    ("grad_norm.png", "Gradient norm (before clipping)", [("grad norm", ("grad_norm",))]),
    ("weights.png", "Importance weights", [("mean log W", ("log_w_mean",)), ("max log W", ("log_w_max",)),
                                           ("ESS / n", ("ess",)),
                                           ("suppressed (φ<1e-3) / clip frac", ("suppressed_frac", "clip_frac"))]),
    ("offpolicy.png", "Off-policyness", [("staleness (steps)", ("staleness",)), ("mean |Δ|", ("delta_abs_mean",)),
                                         ("mismatch KL", ("mismatch_kl",))]),
]


def _pyplot():
    if not os.environ.get("MPLCONFIGDIR"):  # a writable cache dir, kept between runs (font cache)
        cache = Path(tempfile.gettempdir()) / f"vespo-mpl-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        cache.mkdir(mode=0o700, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(cache)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _aligned(members: Sequence[Loaded], key_choices: tuple[str, ...], window: int):
    """steps, raw mean, smoothed mean / min / max over seeds (NaN where a seed has no value)."""
    series = []
    for m in members:
        key = _series_key(m.rows, key_choices)
        if key is None:
            continue
        steps = np.array([int(r["step"]) for r in m.rows])
        raw = np.array([_num(r.get(key)) for r in m.rows])
        series.append((steps, raw, moving_average(raw, window)))
    if not series:
        return None
    all_steps = np.unique(np.concatenate([s[0] for s in series]))
    raw_m = np.full((len(series), len(all_steps)), np.nan)
    sm_m = np.full_like(raw_m, np.nan)
    for j, (steps, raw, sm) in enumerate(series):
        pos = np.searchsorted(all_steps, steps)
        raw_m[j, pos] = np.where(np.isfinite(raw), raw, np.nan)
        sm_m[j, pos] = sm
    with warnings.catch_warnings():  # all-NaN columns (a step only some seeds have) are fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return (all_steps, np.nanmean(raw_m, 0), np.nanmean(sm_m, 0), np.nanmin(sm_m, 0), np.nanmax(sm_m, 0),
                len(series))


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_all(runs: Sequence[Loaded], groups: dict, out: Path, window: int) -> list[dict]:
    """Write one PNG per figure with data; returns [{"file", "title"}] in order."""
    if not any(r.rows for r in runs) and not any(r.evals for r in runs):
        return []
    plt = _pyplot()
    labels = list(dict.fromkeys(r.spec.label for r in runs))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colors = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    ns = sorted({r.spec.staleness for r in runs})
    images = []
    for fname, title, panels in FIGURES:
        panels = [(name, keys) for name, keys in panels
                  if any(_series_key(r.rows, keys) for r in runs)]
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), len(ns), figsize=(5.2 * len(ns), 2.8 * len(panels) + 0.6),
                                 squeeze=False, layout="constrained", sharex="col")
        for col, n in enumerate(ns):
            for row, (name, keys) in enumerate(panels):
                ax = axes[row][col]
                for (label, gn), members in groups.items():
                    if gn != n:
                        continue
                    a = _aligned(members, keys, window)
                    if a is None:
                        continue
                    steps, raw, mean, lo, hi, k = a
                    color = colors[label]
                    ax.plot(steps, raw, color=color, alpha=0.2, linewidth=0.8)
                    ax.plot(steps, mean, color=color, linewidth=1.6, label=label + (f" ({k} seeds)" if k > 1 else ""))
                    if k > 1:
                        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
                    if fname == "reward.png" and row == 0:
                        for m in members:
                            col_ = m.summary["collapse"]
                            if col_["status"] == "collapsed":
                                ax.axvline(col_["step"], color=color, linestyle=":", alpha=0.7)
                if name == "grad norm":
                    _maybe_log(ax)
                _flat_ylim(ax)
                ax.set_ylabel(name)
                ax.ticklabel_format(axis="y", useOffset=False)
                ax.grid(alpha=0.3)
                if row == 0 and len(ns) > 1:
                    ax.set_title(f"N = {n}")
                if row == len(panels) - 1:
                    ax.set_xlabel("optimizer step")
                if row == 0 and ax.get_legend_handles_labels()[0]:  # each column: its own algorithms
                    ax.legend(fontsize="small")
        fig.suptitle(f"{title} (moving average over {window} steps; faint: raw)", fontsize="medium")
        _save(fig, out / fname)
        plt.close(fig)
        images.append({"file": fname, "title": title})
    if any(r.evals for r in runs):
        images.append(_plot_eval(plt, runs, groups, ns, colors, out))
    return images


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


def _plot_eval(plt, runs, groups, ns, colors, out: Path) -> dict:
    benches = sorted({str(e["benchmark"]) for r in runs for e in r.evals})
    fig, axes = plt.subplots(len(benches), len(ns), figsize=(5.2 * len(ns), 2.8 * len(benches) + 0.6),
                             squeeze=False, layout="constrained")
    for col, n in enumerate(ns):
        for row, b in enumerate(benches):
            ax = axes[row][col]
            for (label, gn), members in groups.items():
                if gn != n:
                    continue
                by_step: dict[float, list[tuple[float, float, float]]] = {}
                for m in members:
                    for e in m.evals:
                        if str(e["benchmark"]) == b and math.isfinite(_num(e.get("avg_at_k"))):
                            v = _num(e["avg_at_k"])
                            lo, hi = _num(e.get("ci95_low")), _num(e.get("ci95_high"))
                            by_step.setdefault(_num(e.get("step")), []).append(
                                (v, lo if math.isfinite(lo) else v, hi if math.isfinite(hi) else v))
                if not by_step:
                    continue
                xs = sorted(by_step)
                mean = np.array([np.mean([t[0] for t in by_step[x]]) for x in xs])
                lo = np.array([np.mean([t[1] for t in by_step[x]]) for x in xs])
                hi = np.array([np.mean([t[2] for t in by_step[x]]) for x in xs])
                ax.errorbar(xs, mean, yerr=[np.maximum(mean - lo, 0), np.maximum(hi - mean, 0)], color=colors[label],
                            marker="o", capsize=3, label=label)
            ks = sorted({e.get("k") for r in runs for e in r.evals if str(e["benchmark"]) == b and e.get("k")})
            ax.set_ylabel(f"{b} avg@{'/'.join(map(str, ks)) or 'k'}")
            ax.grid(alpha=0.3)
            if row == 0 and len(ns) > 1:
                ax.set_title(f"N = {n}")
            if row == len(benches) - 1:
                ax.set_xlabel("optimizer step")
            if row == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    fig.suptitle("Eval accuracy (mean over seeds; bars: 95% interval)", fontsize="medium")
    _save(fig, out / "eval.png")
    plt.close(fig)
    return {"file": "eval.png", "title": "Eval accuracy"}
