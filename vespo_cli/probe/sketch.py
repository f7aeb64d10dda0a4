"""A fixed random projection of gradients (CountSketch), so that a bootstrap resample of prompt
groups is a weighted sum of per-group sketches.

    S: R^d → R^k,  (S x)_j = Σ_{i: h(i) = j} σ_i x_i,   h(i) uniform on [k], σ_i uniform on {±1}

(Charikar, Chen & Farach-Colton 2002; the sparse Johnson–Lindenstrauss transform with one nonzero
per column, Kane & Nelson 2014). S is linear, so S(Σ_g w_g x_g) = Σ_g w_g S x_g, and it is drawn once
from a seed, independently of the gradients it is applied to. For fixed x, y (4-wise independent
h and σ suffice; here they are fully random):

    E ⟨Sx, Sy⟩ = ⟨x, y⟩,   Var ⟨Sx, Sy⟩ = (‖x‖²‖y‖² + ⟨x, y⟩² − 2 Σ_i x_i² y_i²) / k  ≤ 2‖x‖²‖y‖² / k.   (1)

Cosine error bound (`cosine_error_bound`). For unit u = x/‖x‖, v = y/‖y‖ (the cosine is scale-free
and S linear), Chebyshev on (1) for ⟨Su, Sv⟩, ‖Su‖² and ‖Sv‖² and a union bound give, with
probability ≥ 1 − δ, all three within η = √(6 / (k δ)) of their true values; then
ĉ = (c + e₁) / √((1 + e₂)(1 + e₃)) with |eᵢ| ≤ η gives

    |ĉ − c| ≤ (1 + |c|) η / (1 − η) ≤ 2η / (1 − η).                                            (2)

For k = 2^16 and δ = 0.05 that is 0.089; the typical error is far smaller, the standard deviation
of (1) for unit vectors, √((1 + c²)/k) ≤ 0.0055.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SKETCH_DIM = 2**16  # k: buckets of the sketch


def cosine_error_bound(dim: int, delta: float) -> float:
    """ε of (2): |ĉ − c| ≤ ε with probability ≥ 1 − δ for one pair of vectors (inf when η ≥ 1)."""
    eta = math.sqrt(6.0 / (dim * delta))
    return 2.0 * eta / (1.0 - eta) if eta < 1.0 else math.inf


class CountSketch:
    """S of the module docstring over a list of tensors of fixed sizes (a parameter subset),
    drawn from `seed`: each coordinate's code is h(i) + k·[σ_i = −1], one int32 per coordinate."""

    def __init__(self, sizes: Sequence[int], dim: int = SKETCH_DIM, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.codes = [torch.randint(0, 2 * dim, (int(n),), generator=gen, dtype=torch.int32) for n in sizes]

    def __call__(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """S x for x = the concatenation of `tensors` flattened (same sizes as at construction), float64."""
        acc = torch.zeros(2 * self.dim, dtype=torch.float64)
        for code, t in zip(self.codes, tensors, strict=True):
            acc.index_add_(0, code, t.detach().reshape(-1).to(torch.float64))
        return acc[: self.dim] - acc[self.dim :]
