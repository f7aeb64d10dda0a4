"""Bootstrap over prompt groups on sketched gradients: every figure is a cosine or a norm of sums of
per-group vectors, so it is a quadratic form in the groups' resample counts w and the Gram matrix of
the per-group sketches:

    ⟨Σ_g w_g a_g, Σ_g w_g b_g⟩ = wᵀ G_ab w,   G_ab[g, h] = ⟨S a_g, S b_h⟩.

The Gram matrix is computed once per staleness; each resample costs O(groups²). Series that share
prompts (the behaviour data and the fresh samples of the same prompts) are resampled with the same
counts (a paired bootstrap). Intervals are percentile intervals.
"""

from __future__ import annotations

import numpy as np
import torch

LEVEL = 0.95


def resample_counts(groups: int, resamples: int, seed: int) -> np.ndarray:
    """[1 + resamples, groups] multiplicities: row 0 all ones (the point estimate), then one
    multinomial draw of `groups` from `groups` per resample."""
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(groups, np.full(groups, 1.0 / groups), size=resamples)
    return np.vstack([np.ones((1, groups)), draws]).astype(np.float64)


class Gram:
    """The Gram matrix of named series of per-group sketches ({name: [groups, k]})."""

    def __init__(self, series: dict[str, torch.Tensor]):
        names = list(series)
        self.groups = int(series[names[0]].shape[0])
        self.index = {name: i for i, name in enumerate(names)}
        m = torch.cat([series[n].to(torch.float64) for n in names])
        self.matrix = (m @ m.T).numpy()

    def block(self, a: str, b: str) -> np.ndarray:
        g, i, j = self.groups, self.index[a], self.index[b]
        return self.matrix[i * g : (i + 1) * g, j * g : (j + 1) * g]

    def inner(self, a: str, b: str, counts: np.ndarray) -> np.ndarray:
        """wᵀ G_ab w for every row w of `counts`."""
        return np.einsum("rg,gh,rh->r", counts, self.block(a, b), counts)

    def cosine(self, a: str, b: str, counts: np.ndarray) -> np.ndarray:
        """cos(Σ w a, Σ w b) per row (NaN where either sum is 0)."""
        den = np.sqrt(self.inner(a, a, counts) * self.inner(b, b, counts))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, self.inner(a, b, counts) / np.where(den > 0, den, 1.0), np.nan)

    def norm(self, a: str, counts: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(self.inner(a, a, counts), 0.0))


def summarize(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(point, low, high): row 0 and the percentile interval of the finite resamples (NaN if none)."""
    rest = samples[1:][np.isfinite(samples[1:])]
    if not rest.size:
        return float(samples[0]), float("nan"), float("nan")
    lo, hi = np.percentile(rest, [50 * (1 - level), 50 * (1 + level)])
    return float(samples[0]), float(lo), float(hi)
