"""The figures of one objective at one K, from the Gram matrix of its per-group gradient sketches on
the two behaviour draws D₀, D₀′ ("stale", "redraw", both at θ_K with θ₀ as the behaviour policy) and
on the two fresh draws A, B from θ_K ("a", "b"), with the reference PG on A and B.

Disattenuation (Spearman's correction, 1904). Given the prompts, each gradient estimate is its
expectation plus noise from sampling the responses: Ŝ = μ_S + ε (stale: on D₀, or on D₀′ for Ŝ′),
F̂ = μ_F + ε (fresh: A or B), the four draws independent, so

    E⟨Ŝ, F̂⟩ = ⟨μ_S, μ_F⟩,  E⟨Ŝ, Ŝ′⟩ = |μ_S|²,  E⟨A, B⟩ = |μ_F|²,  E|X̂|² = |μ_X|² + tr Σ_X.

Taking each quadratic form at its expectation (ratio of expectations: many groups),

    cos(Ŝ, F̂) ≈ ⟨μ_S, μ_F⟩ / √((|μ_S|² + tr Σ_S)(|μ_F|² + tr Σ_F)) = cos(μ_S, μ_F) · √(ρ_S ρ_F),
    cos(Ŝ, Ŝ′) ≈ ρ_S,   cos(A, B) ≈ ρ_F,   ρ_X = |μ_X|² / (|μ_X|² + tr Σ_X),

ρ_X the reliability of estimator X (the share of its expected squared norm that is signal). So

    cos(μ_S, μ_F) ≈ cos(Ŝ, F̂) / √(cos(Ŝ, Ŝ′) · cos(A, B)),                                   (D)

Spearman's r_xy / √(r_xx r_yy) with the test–retest reliabilities of the two estimators being
correlated: the stale one (D₀ against D₀′, both under θ_K's correction) and the fresh one (A against
B). Not the fresh floor twice: at K > 0 the stale estimator's noise is not the fresh one's (importance
weights, clipping, VESPO's suppression change it), and dividing by the fresh floor alone would count
a noisier but unbiased stale estimator as one that lost direction. cos(μ_S, μ_F) is the direction
the stale estimator takes on average against the on-policy one: 1 means no directional bias, and its
noise is in ρ_S (`floor_stale`).

In (D) the numerator is the mean of the four cross cosines {D₀, D₀′} × {A, B} (the same quantity
four times, less noisy as a mean), the reliabilities are truncated at 0 (a negative estimate of a
reliability estimates 0), and the joint floor √(ρ̂_S⁺ ρ̂_F⁺) is the cosine an estimator as noisy
as the stale one would reach without bias. The gap, cosine − joint floor = joint floor ·
(disattenuated − 1), is below 0 exactly when the disattenuated cosine is below 1; it is
bootstrapped as one statistic (the same resampled prompts for both terms: a paired bootstrap), and
its BCa interval and p-value judge "below the floor" (judge.py).

At K = 0, D₀, D₀′, A and B are four independent draws from θ₀ and every objective reduces to
REINFORCE with its aggregation, so μ_S = μ_F and ρ_S = ρ_F: the gap is 0 in expectation and the
disattenuated cosine 1, the probe's calibration check (it also checks the ratio-of-expectations
step at this number of groups).

How well the bootstrap holds (simulated, 100–150 studies each, gradients of dimension 50–200 with
known reliabilities): with `Gram`'s copy correction the floors' intervals cover the true reliability
in 95–99% of studies and hold their point; the gap's test at K = 0 rejects at most its level, 0–1%
with 24 groups (conservative: resampling groups over-disperses the noise × noise part of a cross inner
product, a degenerate U-statistic) and 2–9% with 8 to 4 groups, hence `--quick`'s 8 prompts.
"""

from __future__ import annotations

import numpy as np

from .bootstrap import Gram, bca

PG = "pg"  # the reference: sequence-level REINFORCE with the group-mean baseline
STALE = ("stale", "redraw")  # D₀, D₀′
FRESH = ("a", "b")
WITH_SE = ("noise_floor", "floor_stale", "gap")  # figures whose bootstrap SE goes into the record


def siblings(objectives) -> dict[str, str]:
    """The pairs of independent draws under one estimator, for `Gram`'s copy correction: D₀ and D₀′
    of each objective, A and B of each objective and of the reference."""
    return {**{f"stale/{o}": f"redraw/{o}" for o in objectives}, **{f"a/{o}": f"b/{o}" for o in (*objectives, PG)}}


def values(gram: Gram, o: str, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every figure of objective `o` for each row of `counts` (the module docstring; NaN where a
    resample's sums are 0, or the disattenuated cosine where the joint floor is 0)."""

    def cos(x: str, y: str) -> np.ndarray:
        return gram.cosine(x, y, counts)

    def mean(arrays: list[np.ndarray]) -> np.ndarray:
        return np.mean(arrays, axis=0)

    with np.errstate(invalid="ignore", divide="ignore"):
        cross = mean([cos(f"{s}/{o}", f"{f}/{o}") for s in STALE for f in FRESH])
        fresh, stale = cos(f"a/{o}", f"b/{o}"), cos(f"stale/{o}", f"redraw/{o}")
        joint = np.sqrt(np.maximum(fresh, 0.0) * np.maximum(stale, 0.0))  # NaN stays NaN
        norm = mean([gram.norm(f"{s}/{o}", counts) for s in STALE]) / mean(
            [gram.norm(f"{f}/{o}", counts) for f in FRESH]
        )
        return {
            "cosine": cross,
            "noise_floor": fresh,
            "floor_stale": stale,
            "floor_joint": joint,
            "gap": cross - joint,
            "cosine_disattenuated": np.where(joint > 0, cross / np.where(joint > 0, joint, 1.0), np.nan),
            "cosine_pg": mean([cos(f"{s}/{o}", f"{f}/{PG}") for s in STALE for f in FRESH]),
            "noise_floor_pg": mean([cos(f"a/{o}", f"b/{PG}"), cos(f"b/{o}", f"a/{PG}")]),
            "norm_ratio": norm,
        }


def figures(gram: Gram, counts: np.ndarray, jack: np.ndarray, o: str) -> dict:
    """The record's figures of objective `o`: each point with its BCa interval (`<key>_low`,
    `<key>_high`), the bootstrap SE of the floors and the gap, and the gap's two-sided p-value."""
    boot, jk = values(gram, o, counts), values(gram, o, jack)
    rec: dict = {}
    for key in boot:
        e = bca(boot[key], jk[key])
        rec.update({key: e.point, f"{key}_low": e.low, f"{key}_high": e.high})
        if key in WITH_SE:
            rec[f"{key}_se"] = e.se
        if key == "gap":
            rec["gap_p"] = e.p
    return rec
