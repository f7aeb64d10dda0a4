"""probe.json, settings.json, report.md and plots (plots.py) of `vespo probe` (tables and JSON output
through `vespo compare`'s report helpers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..compare import _jsonable, _table
from ..fsio import atomic_write_json, atomic_write_text
from ..models import describe_model
from .plots import plot_all

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
    """report.md: the setup, the drift and fidelity tables, the reading, the definitions and the plots."""
    lines = ["# vespo probe: gradient fidelity on stale data", ""]
    lines += _setup(records, settings)
    lines += _drift_table(records)
    lines += _fidelity_table(records)
    lines += ["## Reading (computed from the intervals above)", ""] + reading(records) + [""]
    lines += DEFINITIONS
    for im in images:
        lines += [f"### {im['title']}", "", f"![{im['title']}]({im['file']})", ""]
    lines += ["Numbers: `probe.json` (one record per objective and K), settings: `settings.json`."]
    return "\n".join(lines) + "\n"


def _setup(records: Sequence[dict], s: dict) -> list[str]:
    """The paragraphs on the behaviour data, θ_K, the objectives and how the gradients are measured."""
    ks = sorted({r["staleness"] for r in records})
    source = f"shards `{s['shards']}`" if s.get("shards") else "sampled from θ₀"
    model = f", model {describe_model(s['model'])}" if s.get("model") else ""
    drift = (
        f"checkpoints of `{s['run']}` (θ_K = step K)"
        if s.get("run")
        else f"K on-policy optimizer steps of the preset's algorithm ({s['optimizer']['algorithm']}, AdamW lr "
        f"{s['optimizer']['lr']:g}, {s['optimizer']['minibatch_prompts']} prompts × {s['n']} per step) on "
        f"prompts other than D₀'s"
    )
    return [
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
    ]


def _drift_table(records: Sequence[dict]) -> list[str]:
    """Per K (from its first record: the drift is the same for every objective), the drift of θ_K on D₀."""
    ks = sorted({r["staleness"] for r in records})
    by_k = {k: next(r for r in records if r["staleness"] == k) for k in ks}
    header = [
        "K",
        "mean |Δ| / token",
        "KL(θ₀‖θ_K) / token",
        "std log W",
        "max |log W|",
        "ESS/n of W",
        "reward D₀",
        "reward fresh",
        "informative groups D₀ / fresh",
    ]
    rows = [
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
    ]
    return ["## Drift of θ_K on the behaviour data", ""] + _table(header, rows) + [""]


def _fidelity_table(records: Sequence[dict]) -> list[str]:
    """Per objective and K, the cosines with their intervals, the norm ratio, ESS/n and the weight figure."""
    header = [
        "objective",
        "K",
        "cosine to own on-policy",
        "noise floor",
        "cosine to reference",
        "reference level",
        "norm ratio",
        "ESS/n",
        "suppressed / clipped",
    ]
    rows = [
        [
            r["objective"],
            str(r["staleness"]),
            _ci(r, "cosine"),
            _ci(r, "noise_floor"),
            _ci(r, "cosine_pg"),
            _fmt(r.get("noise_floor_pg")),
            _ci(r, "norm_ratio"),
            _fmt(r["ess"]),
            _weight(r),
        ]
        for r in sorted(records, key=lambda r: (r["objective"], r["staleness"]))
    ]
    return ["## Gradient fidelity", ""] + _table(header, rows) + [""]


def _weight(r: dict) -> str:
    """The share of suppressed sequences (VESPO) or clipped tokens, whichever the objective reports."""
    if r.get("suppressed_frac") is not None:
        return "supp. " + _fmt(r["suppressed_frac"])
    if r.get("clip_frac") is not None:
        return "clip " + _fmt(r["clip_frac"])
    return "–"


DEFINITIONS = (  # report.md's closing section: what each figure is
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
)
