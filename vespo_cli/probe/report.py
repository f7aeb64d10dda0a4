"""probe.json, settings.json, report.md and plots of `vespo probe` (tables, JSON and figure output
through `vespo compare`'s report helpers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..compare import _jsonable, _pyplot, _save, _table
from ..fsio import atomic_write_json, atomic_write_text
from ..models import describe_model

REQUIRED = (
    "objective",
    "staleness",
    "cosine",
    "cosine_low",
    "cosine_high",
    "cosine_pg",
    "noise_floor",
    "norm_ratio",
    "delta_abs_mean",
    "ess",
)


def finite_record(rec: dict) -> bool:
    """Every required figure of a probe.json record is a finite number."""
    return all(isinstance(rec.get(k), (int, float)) and math.isfinite(rec[k]) for k in REQUIRED[2:])


def write_report(records: list[dict], settings: dict, out: Path) -> Path:
    """OUT/probe.json (the records), OUT/settings.json, the plots and OUT/report.md."""
    out = Path(out)
    atomic_write_json(out / "probe.json", _jsonable(records))
    atomic_write_json(out / "settings.json", _jsonable(settings))
    images = plot_all(records, out)
    path = out / "report.md"
    atomic_write_text(path, render_markdown(records, settings, images))
    return path


# --------------------------------------------------------------------------- reading


def reading(records: Sequence[dict]) -> list[str]:
    """Per objective, from the 95% intervals: the K where its stale gradient is as close to the
    on-policy one as an independent fresh estimate is (its cosine interval reaches the noise floor's),
    the K where it is significantly below the noise floor, and the K where it has no significant
    agreement left (cosine interval includes 0) although fresh estimates do agree (noise floor > 0)."""
    lines = []
    for o in dict.fromkeys(r["objective"] for r in records):
        rows = sorted((r for r in records if r["objective"] == o), key=lambda r: r["staleness"])
        below = [r for r in rows if _lt(r.get("cosine_high"), r.get("noise_floor_low"))]
        at = [r["staleness"] for r in rows if r not in below and _finite(r.get("cosine"))]
        lost = [
            r["staleness"]
            for r in rows
            if _lt(r.get("cosine_low"), 0.0, strict=False) and _lt(0.0, r.get("noise_floor_low"))
        ]
        text = f"- **{o}**: at the noise floor at K = {_ks(at)}"
        if below:
            b = below[0]
            text += (
                f"; below it at K = {_ks([r['staleness'] for r in below])} (first: K = {b['staleness']}, cosine "
                f"{_ci(b, 'cosine')} against a floor of {_ci(b, 'noise_floor')})"
            )
        text += f"; no significant agreement left while fresh estimates agree at K = {_ks(lost)}"
        last = rows[-1]
        text += (
            f". At K = {last['staleness']}: cosine {_fmt(last['cosine'])}, to the reference "
            f"{_fmt(last['cosine_pg'])}, norm ratio {_fmt(last['norm_ratio'])}, ESS/n {_fmt(last['ess'])}."
        )
        lines.append(text)
    unresolved = sorted({r["staleness"] for r in records if not _lt(0.0, r.get("noise_floor_low"))})
    if unresolved:
        lines.append(
            f"- Where two fresh estimates do not agree significantly (noise floor interval includes 0), "
            f"for some objective, at K = {_ks(unresolved)}: there the batch is too small to resolve a direction."
        )
    return lines


def _ks(ks: Sequence[int]) -> str:
    return ", ".join(str(k) for k in ks) if ks else "none"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _lt(a: float | None, b: float | None, strict: bool = True) -> bool:
    if not (_finite(a) and _finite(b)):
        return False
    return a < b if strict else a <= b


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ci(r: dict, key: str) -> str:
    return f"{_fmt(r.get(key))} [{_fmt(r.get(key + '_low'))}, {_fmt(r.get(key + '_high'))}]"


# --------------------------------------------------------------------------- markdown


def render_markdown(records: Sequence[dict], settings: dict, images: list[dict]) -> str:
    s = settings
    ks = sorted({r["staleness"] for r in records})
    by_k = {k: next(r for r in records if r["staleness"] == k) for k in ks}
    lines = ["# vespo probe: gradient fidelity on stale data", ""]
    source = f"shards `{s['shards']}`" if s.get("shards") else "sampled from θ₀"
    model = f", model {describe_model(s['model'])}" if s.get("model") else ""
    drift = (
        f"checkpoints of `{s['run']}` (θ_K = step K)"
        if s.get("run")
        else f"K on-policy optimizer steps of the preset's algorithm ({s['optimizer']['algorithm']}, AdamW lr "
        f"{s['optimizer']['lr']:g}, {s['optimizer']['minibatch_prompts']} prompts × {s['n']} per step) on "
        f"prompts other than D₀'s"
    )
    lines += [
        f"Setup: preset `{s.get('preset')}`{model}; "
        f"behaviour data D₀: {s['prompts']} prompt groups × {s['n']} samples, "
        f"{source}; θ_K: {drift}; reward: {s['reward']}; objectives: "
        + ", ".join(f"`{o}`" for o in s["objectives"])
        + f"; K ∈ {{{', '.join(map(str, ks))}}}.",
        "",
        f"Gradients: of the last {s['blocks']} decoder block(s) and the final norm "
        f"({s.get('subset_params', 0):,} of {s.get('model_params', 0):,} parameters), per prompt group, "
        f"as a CountSketch "
        f"of dimension {s['sketch_dim']:,} (cosine error ≤ {s['sketch_cosine_error']:.3f} with probability "
        f"≥ {1 - s['sketch_delta']:.2f} per pair, typically ≤ {math.sqrt(2 / s['sketch_dim']):.4f}); 95% percentile "
        f"intervals from {s['bootstrap']} bootstrap resamples of the prompt groups (paired across D₀ and the "
        "fresh draws, which share prompts).",
        "",
        "## Drift of θ_K on the behaviour data",
        "",
    ]
    lines += _table(
        [
            "K",
            "mean |Δ| / token",
            "KL(θ₀‖θ_K) / token",
            "std log W",
            "max |log W|",
            "ESS/n of W",
            "reward D₀",
            "reward fresh",
            "informative groups D₀ / fresh",
        ],
        [
            [
                str(k),
                _fmt(r["delta_abs_mean"], 4),
                _fmt(r["kl"], 5),
                _fmt(r["log_w_std"]),
                _fmt(r["log_w_max_abs"]),
                _fmt(r["ess_w"]),
                _fmt(r["reward_stale"]),
                _fmt(r["reward_fresh"]),
                f"{r['groups_informative_stale']} / {r['groups_informative_fresh']:g} of {r['groups']}",
            ]
            for k, r in by_k.items()
        ],
    ) + [""]
    lines += ["## Gradient fidelity", ""]
    rows = []
    for r in sorted(records, key=lambda r: (r["objective"], r["staleness"])):
        weight = (
            "supp. " + _fmt(r["suppressed_frac"])
            if r.get("suppressed_frac") is not None
            else "clip " + _fmt(r["clip_frac"])
            if r.get("clip_frac") is not None
            else "–"
        )
        rows.append(
            [
                r["objective"],
                str(r["staleness"]),
                _ci(r, "cosine"),
                _ci(r, "noise_floor"),
                _ci(r, "cosine_pg"),
                _fmt(r.get("noise_floor_pg")),
                _ci(r, "norm_ratio"),
                _fmt(r["ess"]),
                weight,
            ]
        )
    lines += _table(
        [
            "objective",
            "K",
            "cosine to own on-policy",
            "noise floor",
            "cosine to reference",
            "reference level",
            "norm ratio",
            "ESS/n",
            "suppressed / clipped",
        ],
        rows,
    ) + [""]
    lines += ["## Reading (computed from the intervals above)", ""] + reading(records) + [""]
    lines += [
        "## Definitions",
        "",
        "- **Stale gradient** of an objective at θ_K: its gradient on D₀ (sampled from θ₀), with θ₀'s log-probs as the "
        "behaviour policy (Δ = log π_θK − log π_θ0), exactly as the trainer computes it for data K steps old.",
        "- **Own on-policy gradient**: the same objective on fresh samples of the same prompts from θ_K (Δ = 0); two "
        "independent draws A and B of the same size as D₀.",
        "- **cosine**: ½[cos(stale, A) + cos(stale, B)]. **noise floor**: cos(A, B), the cosine two independent fresh "
        "estimates of this size reach: the level an unbiased estimator as noisy as a fresh one would show. A cosine "
        "at the floor means staleness costs nothing measurable; below it, direction is lost to staleness.",
        "- **cosine to reference**: ½[cos(stale, PG_A) + cos(stale, PG_B)], PG the plain policy gradient on the fresh "
        "draws: sequence-level REINFORCE, Σ_i (r_i − mean_group r) ∇log π(y_i|x_i) / n. **Reference level**: "
        "½[cos(A, PG_B) + cos(B, PG_A)], what the objective's own fresh estimate reaches against it.",
        "- **norm ratio**: |stale| / mean(|A|, |B|), each normalised by its own batch (token-mean or "
        "seq-mean-token-mean, as the objective aggregates).",
        "- **Drift**: mean |Δ| per response token of D₀; KL(π_θ0 ‖ π_θK) per token by the k3 estimator "
        "E[e^Δ − 1 − Δ]; log W_i = Σ_t Δ_t per sequence (std and max |·|); ESS/n of W = (Σ W)² / (n Σ W²).",
        "- **ESS/n** (per objective): of its own sequence weights on D₀ (VESPO: φ(W); GSPO: the length-normalised "
        "ratio; the others: W). **Suppressed**: VESPO sequences with φ < 1e-3; **clipped**: tokens whose gradient "
        "the objective clips (GRPO, CISPO, GSPO, TOPR).",
        "- Groups whose rewards are all equal have zero advantage and contribute exactly 0 to every gradient; "
        "they stay in the bootstrap as zero vectors.",
        "",
    ]
    for im in images:
        lines += [f"### {im['title']}", "", f"![{im['title']}]({im['file']})", ""]
    lines += ["Numbers: `probe.json` (one record per objective and K), settings: `settings.json`."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


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
    plt = _pyplot()
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
    ax.set_xlabel("staleness K (optimizer steps since θ₀)")
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
        ax.plot(k, _series(records, o, "noise_floor")[1], color="gray", linestyle="--", label="noise floor")
        ax.fill_between(
            k,
            _series(records, o, "noise_floor_low")[1],
            _series(records, o, "noise_floor_high")[1],
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
    fig.suptitle("Stale gradient vs fresh on-policy gradient (bands: 95% bootstrap intervals)", fontsize="medium")
    _save(fig, out / "fidelity.png")
    plt.close(fig)
    return {"file": "fidelity.png", "title": "Cosine to the on-policy gradient vs staleness"}


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
    _save(fig, out / "drift.png")
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
    _save(fig, out / "offpolicy.png")
    plt.close(fig)
    return {"file": "offpolicy.png", "title": "Drift, ESS, suppression/clipping and norm ratio vs staleness"}
