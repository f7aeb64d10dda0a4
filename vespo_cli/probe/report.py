"""probe.json, settings.json, report.md and plots (plots.py) of `vespo probe`: the records are judged
first (judge.py), the report's sentences come from them (reading.py); tables and JSON output through
`vespo compare`'s report helpers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..compare import jsonable, md_table
from ..fsio import atomic_write_json, atomic_write_text
from ..models import describe_model
from .judge import judge
from .plots import plot_all
from .reading import calibration_lines, ci, floor_lines, fmt, leave_lines

REQUIRED = (
    "objective",
    "staleness",
    "cosine",
    "cosine_low",
    "cosine_high",
    "cosine_pg",
    "noise_floor",
    "floor_stale",
    "gap",
    "gap_low",
    "gap_high",
    "gap_p",
    "norm_ratio",
    "delta_abs_mean",
    "ess",
)
JUDGED = ("cosine_disattenuated", "floor_resolved", "prompts_to_resolve", "gap_p_holm")  # NaN / None allowed


def finite_record(rec: dict) -> bool:
    """Every required figure of a probe.json record is a finite number."""
    return all(isinstance(rec.get(k), (int, float)) and math.isfinite(rec[k]) for k in REQUIRED[2:])


def write_report(records: list[dict], settings: dict, out: Path) -> Path:
    """OUT/probe.json (the records, judged), OUT/settings.json, the plots and OUT/report.md."""
    out = Path(out)
    records = judge(records)
    atomic_write_json(out / "probe.json", jsonable(records))
    atomic_write_json(out / "settings.json", jsonable(settings))
    images = plot_all(records, out)
    path = out / "report.md"
    atomic_write_text(path, render_markdown(records, settings, images))
    return path


# --------------------------------------------------------------------------- markdown


def render_markdown(records: Sequence[dict], settings: dict, images: list[dict]) -> str:
    """report.md: the setup, the drift and fidelity tables, the reading, the definitions and the plots."""
    lines = ["# vespo probe: gradient fidelity on stale data", ""]
    lines += _setup(records, settings)
    lines += _drift_table(records)
    lines += _fidelity_table(records)
    lines += ["## Calibration: K = 0", ""] + calibration_lines(records)
    lines += ["## Noise floor", ""] + floor_lines(records)
    lines += ["## Reading (computed from the intervals and adjusted p-values above)", ""] + leave_lines(records)
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
        f"{source}, and D₀′, an independent draw of the same prompts from θ₀; θ_K: {drift}; "
        f"reward: {s['reward']}; objectives: "
        + ", ".join(f"`{o}`" for o in s["objectives"])
        + f"; K ∈ {{{', '.join(map(str, ks))}}}.",
        "",
        f"Gradients: of the last {s['blocks']} decoder block(s) and the final norm "
        f"({s.get('subset_params', 0):,} of {s.get('model_params', 0):,} parameters), per prompt group, "
        f"as a CountSketch "
        f"of dimension {s['sketch_dim']:,} (cosine error ≤ {s['sketch_cosine_error']:.3f} with probability "
        f"≥ {1 - s['sketch_delta']:.2f} per pair, typically ≤ {math.sqrt(2 / s['sketch_dim']):.4f}); 95% BCa "
        f"intervals from {s['bootstrap']} bootstrap resamples of the prompt groups (never of single sequences), "
        "the same resampled prompts for D₀, D₀′ and the fresh draws, so every difference is a paired bootstrap.",
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
        "informative groups D₀ / D₀′ / fresh",
    ]
    rows = [
        [
            str(k),
            fmt(r["delta_abs_mean"], 4),
            fmt(r["kl"], 5),
            fmt(r["log_w_std"]),
            fmt(r["log_w_max_abs"]),
            fmt(r["ess_w"]),
            fmt(r["reward_stale"]),
            fmt(r["reward_fresh"]),
            f"{r['groups_informative_stale']} / {r.get('groups_informative_redraw', '–')} / "
            f"{r['groups_informative_fresh']:g} of {r['groups']}",
        ]
        for k, r in by_k.items()
    ]
    return ["## Drift of θ_K on the behaviour data", ""] + md_table(header, rows) + [""]


def _fidelity_table(records: Sequence[dict]) -> list[str]:
    """Per objective and K, the cosines and floors with their intervals, the gap with its adjusted
    p-value, the disattenuated cosine, the norm ratio, ESS/n and the weight figure."""
    header = [
        "objective",
        "K",
        "cosine to own on-policy",
        "fresh floor",
        "stale floor",
        "gap (p adj.)",
        "disattenuated",
        "floor resolved",
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
            ci(r, "cosine"),
            ci(r, "noise_floor"),
            ci(r, "floor_stale"),
            f"{ci(r, 'gap')} ({fmt(r.get('gap_p_holm'))})",
            ci(r, "cosine_disattenuated"),
            "yes" if r.get("floor_resolved") else "no",
            ci(r, "cosine_pg"),
            fmt(r.get("noise_floor_pg")),
            ci(r, "norm_ratio"),
            fmt(r["ess"]),
            _weight(r),
        ]
        for r in sorted(records, key=lambda r: (r["objective"], r["staleness"]))
    ]
    return ["## Gradient fidelity", ""] + md_table(header, rows) + [""]


def _weight(r: dict) -> str:
    """The share of suppressed sequences (VESPO) or clipped tokens, whichever the objective reports."""
    if r.get("suppressed_frac") is not None:
        return "supp. " + fmt(r["suppressed_frac"])
    if r.get("clip_frac") is not None:
        return "clip " + fmt(r["clip_frac"])
    return "–"


DEFINITIONS = (  # report.md's closing section: what each figure is
    "## Definitions",
    "",
    "- **Stale gradient** of an objective at θ_K: its gradient on D₀ (sampled from θ₀), with θ₀'s log-probs as the "
    "behaviour policy (Δ = log π_θK − log π_θ0), exactly as the trainer computes it for data K steps old, but in "
    "the weights' dtype (fp32 in the presets), not under the trainer's bf16 compute policy: its rounding would only "
    "add noise, which the floors absorb at a cost in power.",
    "Also on D₀′, a second behaviour draw of the same prompts from θ₀ with an independent seed.",
    "- **Own on-policy gradient**: the same objective on fresh samples of the same prompts from θ_K (Δ = 0); two "
    "independent draws A and B of the same size as D₀.",
    "- **cosine**: the mean of cos(S, F) over S ∈ {D₀, D₀′} and F ∈ {A, B}. **fresh floor** ρ_F: cos(A, B), the "
    "cosine two independent fresh estimates reach; **stale floor** ρ_S: cos(D₀, D₀′), the same for two independent "
    "stale estimates (both are reliabilities: the share of an estimate's squared norm that is signal). "
    "**joint floor**: √(ρ_S ρ_F) (each truncated at 0), the cosine an estimator as noisy as the stale one would reach "
    "without bias.",
    "- **disattenuated cosine**: cosine / √(ρ_S ρ_F) (Spearman's correction for attenuation): the cosine between "
    "the expected stale gradient and the expected on-policy gradient, noise removed; 1 means no directional bias. "
    "**gap**: cosine − joint floor, bootstrapped as one statistic over the same resampled prompts (paired); "
    "**below the floor**: its interval resolved below 0 after Holm's adjustment over the (objective, K > 0) rows; "
    "at K = 0 (the stale data is then one more fresh draw) it must be consistent with 0: the calibration check. "
    "Derivation: `vespo_cli/probe/figures.py`.",
    "- **floor resolved**: the lower bounds of both floors are above 0 (two independent estimates agree "
    "significantly); otherwise the disattenuated cosine is not estimable and no gap can be resolved.",
    "- **Intervals**: 95% BCa (bias-corrected and accelerated) over prompt groups; p-values invert the same "
    "interval (`vespo_cli/probe/bootstrap.py`).",
    "- **cosine to reference**: the mean of cos(S, PG_F) over S ∈ {D₀, D₀′}, F ∈ {A, B}, PG the plain policy "
    "gradient on the fresh "
    "draws: sequence-level REINFORCE, Σ_i (r_i − mean_group r) ∇log π(y_i|x_i) / n. **Reference level**: "
    "½[cos(A, PG_B) + cos(B, PG_A)], what the objective's own fresh estimate reaches against it.",
    "- **norm ratio**: mean(|D₀|, |D₀′|) / mean(|A|, |B|), each normalised by its own batch (token-mean or "
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
