"""The plots of `vespo probe`: fidelity.png, drift.png and offpolicy.png (figure output through
`vespo compare`'s plot helpers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..compare import pyplot, save_figure


def _series(records: Sequence[dict], o: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = sorted((r for r in records if r["objective"] == o), key=lambda r: r["staleness"])
    return (
        np.array([r["staleness"] for r in rows], float),
        np.array([np.nan if r.get(key) is None else r[key] for r in rows], float),
    )


def plot_all(records: Sequence[dict], out: Path) -> list[dict]:
    """fidelity.png (cosine vs K per objective), drift.png (cosine vs measured drift), offpolicy.png."""
    if not records:
        return []
    plt = pyplot()
    objectives = list(dict.fromkeys(r["objective"] for r in records))
    cmap = plt.get_cmap("tab10")
    colors = {o: cmap(i % 10) for i, o in enumerate(objectives)}
    return [
        _plot_fidelity(plt, records, objectives, colors, out),
        _plot_drift(plt, records, objectives, colors, out),
        _plot_offpolicy(plt, records, objectives, colors, out),
    ]


def _symlog_k(ax, ks: Sequence[float]) -> None:
    """x axis: K on a symlog scale (linear below 1, so K = 0 shows), ticks at the measured K."""
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(-0.3, max(ks) * 1.3 if max(ks) > 0 else 1)
    ax.set_xticks(list(ks), [f"{k:g}" for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("age K of D₀ (optimizer steps since θ₀ sampled it)")
    ax.grid(alpha=0.3)


def _plot_fidelity(plt, records, objectives, colors, out: Path) -> dict:
    cols = min(3, len(objectives))
    nrows = math.ceil(len(objectives) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.6 * cols, 3.4 * nrows + 0.6), squeeze=False, layout="constrained", sharey=True
    )
    for ax, o in zip(axes.flat, objectives):
        k, cos = _series(records, o, "cosine")
        ax.plot(k, cos, color=colors[o], marker="o", label="to own on-policy")
        ax.fill_between(
            k,
            _series(records, o, "cosine_low")[1],
            _series(records, o, "cosine_high")[1],
            color=colors[o],
            alpha=0.2,
            linewidth=0,
        )
        ax.plot(k, _series(records, o, "floor_joint")[1], color="gray", linestyle="--", label="joint floor √(ρ_S ρ_F)")
        ax.fill_between(
            k,
            _series(records, o, "floor_joint_low")[1],
            _series(records, o, "floor_joint_high")[1],
            color="gray",
            alpha=0.15,
            linewidth=0,
        )
        ax.plot(
            k,
            _series(records, o, "cosine_pg")[1],
            color=colors[o],
            linestyle=":",
            marker=".",
            label="to the reference PG",
        )
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(o)
        ax.set_ylabel("cosine")
        _symlog_k(ax, k)
    for ax in list(axes.flat)[len(objectives) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Stale gradient vs fresh on-policy gradient (bands: 95% BCa intervals)", fontsize="medium")
    save_figure(fig, out / "fidelity.png")
    plt.close(fig)
    return {"file": "fidelity.png", "title": "Cosine to the on-policy gradient vs age K"}


def _plot_drift(plt, records, objectives, colors, out: Path) -> dict:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for o in objectives:
        _, x = _series(records, o, "kl")
        _, y = _series(records, o, "cosine")
        lo, hi = _series(records, o, "cosine_low")[1], _series(records, o, "cosine_high")[1]
        ax.errorbar(
            x, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], color=colors[o], marker="o", capsize=3, label=o
        )
    positive = [r["kl"] for r in records if r.get("kl") and r["kl"] > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-6)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("measured drift: KL(π_θ0 ‖ π_θK) per token on D₀")
    ax.set_ylabel("cosine to own on-policy gradient")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, out / "drift.png")
    plt.close(fig)
    return {"file": "drift.png", "title": "Cosine to the on-policy gradient vs measured drift"}


def _plot_offpolicy(plt, records, objectives, colors, out: Path) -> dict:
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.6), layout="constrained", squeeze=False)
    (a, b), (c, d) = axes
    k, dabs = _series(records, objectives[0], "delta_abs_mean")
    a.plot(k, dabs, marker="o", color="black", label="mean |Δ| / token")
    a.plot(k, _series(records, objectives[0], "log_w_std")[1], marker="s", color="gray", label="std log W")
    a.set_yscale("symlog", linthresh=1e-3)
    a.set_ylabel("drift on D₀")
    a.legend(fontsize="small")
    b.plot(k, _series(records, objectives[0], "ess_w")[1], color="black", linestyle="--", label="W (all)")
    for o in objectives:
        b.plot(*_series(records, o, "ess"), marker="o", color=colors[o], label=o)
        frac = next(
            (
                key
                for key in ("suppressed_frac", "clip_frac")
                if any(r.get(key) is not None for r in records if r["objective"] == o)
            ),
            None,
        )
        if frac is not None:  # SAPO neither clips nor suppresses
            c.plot(*_series(records, o, frac), marker="o", color=colors[o], label=f"{o} ({frac.split('_')[0]})")
        d.plot(*_series(records, o, "norm_ratio"), marker="o", color=colors[o], label=o)
    b.set_ylabel("ESS / n of sequence weights")
    c.set_ylabel("suppressed (seq) / clipped (token) fraction")
    d.set_ylabel("norm ratio |stale| / |fresh|")
    for ax in (a, b, c, d):
        _symlog_k(ax, k)
    b.legend(fontsize="small")
    c.legend(fontsize="small")
    fig.suptitle("Off-policyness of the behaviour data at θ_K", fontsize="medium")
    save_figure(fig, out / "offpolicy.png")
    plt.close(fig)
    return {"file": "offpolicy.png", "title": "Drift, ESS, suppression/clipping and norm ratio vs age K"}
