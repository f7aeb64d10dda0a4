"""Bootstrap over prompt groups on sketched gradients: every figure is a cosine or a norm of sums of
per-group vectors, so it is a quadratic form in the groups' resample counts w and the Gram matrix of
the per-group sketches:

    ⟨Σ_g w_g a_g, Σ_g w_g b_g⟩ = wᵀ G_ab w,   G_ab[g, h] = ⟨S a_g, S b_h⟩.

The Gram matrix is computed once per K; each resample costs O(groups²). The unit resampled is the
prompt group, never a sequence (a group's samples share a prompt and its baseline). Series that share
prompts (the behaviour draws D₀, D₀′ and the fresh draws of the same prompts) are resampled with the
same counts, so a difference of two figures is bootstrapped as one statistic (a paired bootstrap).

Intervals are BCa (bias-corrected and accelerated; Efron 1987; Efron & Tibshirani 1993, §14.3).
With θ̂ = t(1) the point, θ*_b = t(w_b) the B resamples, θ₍ᵢ₎ = t(1 − e_i) the leave-one-group-out
jackknife values (again a row of counts), θ̄ their mean, Φ the normal cdf and G the empirical cdf of
the θ*:

    z₀ = Φ⁻¹(G̃(θ̂)),   G̃(x) = (#{θ* < x} + ½ #{θ* = x}) / B   (clipped to [½/B, 1 − ½/B]),   (1)
    a  = Σᵢ (θ̄ − θ₍ᵢ₎)³ / (6 [Σᵢ (θ̄ − θ₍ᵢ₎)²]^{3/2}),                                           (2)
    α̃(α) = Φ(z₀ + (z₀ + z_α) / (1 − a (z₀ + z_α))),   interval [G⁻¹(α̃(α/2)), G⁻¹(α̃(1 − α/2))].  (3)

z₀ moves the interval to where the point sits in its own bootstrap distribution (a percentile
interval of a skewed statistic leaves the point at an edge), a corrects for a standard error that
changes with θ. The p-value of θ = θ₀ inverts (3): with u = Φ⁻¹(G̃(θ₀)) − z₀, the level at which an
endpoint equals θ₀ is α(θ₀) = Φ(u / (1 + a u) − z₀), and p = 2 min(α, 1 − α), so p < 1 − level
exactly when the interval excludes θ₀ (up to the interpolation of G⁻¹).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

LEVEL = 0.95
_N = NormalDist()


def resample_counts(groups: int, resamples: int, seed: int) -> np.ndarray:
    """[1 + resamples, groups] multiplicities: row 0 all ones (the point estimate), then one
    multinomial draw of `groups` from `groups` per resample."""
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(groups, np.full(groups, 1.0 / groups), size=resamples)
    return np.vstack([np.ones((1, groups)), draws]).astype(np.float64)


def jackknife_counts(groups: int) -> np.ndarray:
    """[groups, groups] multiplicities of the leave-one-group-out jackknife: row i leaves out group i."""
    return np.ones((groups, groups)) - np.eye(groups)


GRAM_COLUMNS = 2048  # sketch coordinates per float64 chunk of the Gram product (a few hundred MB at most)


def _gram(blocks: list[torch.Tensor]) -> torch.Tensor:
    """M Mᵀ in float64 for M the row-wise concatenation of `blocks` ([groups, k] each), summed over column
    chunks: a float64 copy of M would be 8 bytes per coordinate (3 GB for Probe II's 18 series × 320 groups
    × 2^16), which with a trainer beside it was OOM-killed; a chunk is 5760 × 2048 × 8 bytes."""
    rows, k = sum(int(b.shape[0]) for b in blocks), int(blocks[0].shape[1])
    out = torch.zeros(rows, rows, dtype=torch.float64)
    for c in range(0, k, GRAM_COLUMNS):
        chunk = torch.cat([b[:, c : c + GRAM_COLUMNS] for b in blocks]).to(torch.float64)
        out.addmm_(chunk, chunk.T)
    return out


class Gram:
    """The Gram matrix of named series of per-group sketches ({name: [groups, k]}).

    `siblings` pairs a series with an independent draw of the same prompts under the same estimator
    (D₀ with D₀′, A with B). A resample that takes group g w_g times should hold w_g independent draws
    of its responses; it holds one, repeated, and so counts that group's sampling noise w_g² times in
    a squared norm instead of w_g times: the resampled cosines and floors shrink, and with them their
    spread. For a series with a sibling, the squared norm of a resample replaces those copies by
    independent ones:

        ‖Σ_g w_g x_g‖² → wᵀ G_xx w + Σ_g (w_g² − w_g) (⟨x_g, x′_g⟩ − ‖x_g‖²),                   (4)

    ⟨x_g, x′_g⟩ (two independent draws) estimating ⟨x_g^(i), x_g^(j)⟩ of two copies without bias. Rows
    with w ∈ {0, 1} (the point, the jackknife) are unchanged; inner products of two different draws
    need nothing (their copies' noise is independent already)."""

    def __init__(self, series: dict[str, torch.Tensor], siblings: dict[str, str] | None = None):
        names = list(series)
        self.groups = int(series[names[0]].shape[0])
        self.index = {name: i for i, name in enumerate(names)}
        self.matrix = _gram([series[n] for n in names]).numpy()
        self.siblings = {**(siblings or {}), **{b: a for a, b in (siblings or {}).items()}}

    def block(self, a: str, b: str) -> np.ndarray:
        g, i, j = self.groups, self.index[a], self.index[b]
        return self.matrix[i * g : (i + 1) * g, j * g : (j + 1) * g]

    def inner(self, a: str, b: str, counts: np.ndarray) -> np.ndarray:
        """wᵀ G_ab w for every row w of `counts`, with (4) where a = b has a sibling."""
        out = np.einsum("rg,gh,rh->r", counts, self.block(a, b), counts)
        if a == b and a in self.siblings:
            copies = np.diagonal(self.block(a, self.siblings[a])) - np.diagonal(self.block(a, a))
            out = out + (counts * counts - counts) @ copies
        return out

    def cosine(self, a: str, b: str, counts: np.ndarray) -> np.ndarray:
        """cos(Σ w a, Σ w b) per row (NaN where either squared norm is not positive)."""
        na, nb = self.inner(a, a, counts), self.inner(b, b, counts)
        ok = (na > 0) & (nb > 0)
        den = np.sqrt(np.where(ok, na * nb, 1.0))
        return np.where(ok, self.inner(a, b, counts) / den, np.nan)

    def norm(self, a: str, counts: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(self.inner(a, a, counts), 0.0))


@dataclass(frozen=True)
class Estimate:
    """A bootstrapped figure: the point, its BCa interval, the bootstrap standard error, and the
    two-sided BCa p-value of the figure being 0 (module docstring)."""

    point: float
    low: float
    high: float
    se: float
    p: float


def acceleration(jack: np.ndarray) -> float:
    """a of (2) from the finite jackknife values (0 with fewer than 3, or when they are all equal)."""
    j = jack[np.isfinite(jack)]
    if j.size < 3:
        return 0.0
    d = j.mean() - j
    den = 6.0 * float((d * d).sum()) ** 1.5
    return float((d**3).sum()) / den if den > 0 else 0.0


def _cdf(boot: np.ndarray, x: float) -> float:
    """G̃(x) of (1), clipped away from 0 and 1 by half a resample."""
    b = boot.size
    g = (np.count_nonzero(boot < x) + 0.5 * np.count_nonzero(boot == x)) / b
    return min(max(g, 0.5 / b), 1.0 - 0.5 / b)


def _level(z0: float, a: float, z: float) -> float:
    """α̃ of (3) for the normal quantile z (the limit 0 or 1 where 1 − a(z₀ + z) ≤ 0)."""
    w = z0 + z
    den = 1.0 - a * w
    return _N.cdf(z0 + w / den) if den > 0 else float(w > 0)


def bca(samples: np.ndarray, jack: np.ndarray, level: float = LEVEL, null: float = 0.0) -> Estimate:
    """`samples` row 0 the point and then the resamples (`resample_counts`), `jack` the jackknife
    values (`jackknife_counts`): the Estimate of (1)–(3). NaN resamples (a resample of groups whose
    sums are 0) are dropped; none left: NaN interval, p and se."""
    point = float(samples[0])
    boot = samples[1:][np.isfinite(samples[1:])]
    if not boot.size or not math.isfinite(point):
        return Estimate(point, math.nan, math.nan, math.nan, math.nan)
    z0, a = _N.inv_cdf(_cdf(boot, point)), acceleration(jack)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [_level(z0, a, _N.inv_cdf(tail)), _level(z0, a, _N.inv_cdf(1.0 - tail))])
    u = _N.inv_cdf(_cdf(boot, null)) - z0
    alpha = _N.cdf(u / (1.0 + a * u) - z0) if 1.0 + a * u > 0 else float(u > 0)
    se = float(boot.std(ddof=1)) if boot.size > 1 else 0.0
    return Estimate(point, float(lo), float(hi), se, min(1.0, 2.0 * min(alpha, 1.0 - alpha)))
