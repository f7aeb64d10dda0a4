"""The objective registry and the pieces objectives share: `Tokens` (a detached microbatch),
`Reshaped` (an objective as a reshaped REINFORCE), `register`, and the ratio / clip / kernel helpers.
The params models are torch-free, in `vespo_cli/objective_params.py`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..objective_params import PARAMS, ObjectiveParams

LN_EPS = math.log(1e-8)  # lower clamp of VESPO's log W and of per-token log correction weights
LOG2E = 1.0 / math.log(2.0)
MAX_LOG = 20.0  # clamp of per-token log-ratios before exp (exp(20) ≈ 4.9e8: finite, no NaN grads)

CORRECTIONS = (None, "tis", "mis")
LENGTH_NORMS = ("none", "sqrt", "linear")

OBJECTIVES: dict[str, Callable] = {}  # name -> fn(Tokens, **params) -> Reshaped
OBJECTIVE_DEFAULTS: dict[str, dict] = {}  # name -> {param: paper default}
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")  # verl's loss_agg_mode names
AGGREGATION: dict[str, str] = {}  # name -> its registered mode, "token-mean" | "seq-mean-token-mean"
SEQUENCE_CORRECTION: set[str] = set()  # objectives taking the correction inside their sequence weight


class Tokens(NamedTuple):
    """One microbatch, detached (objectives compute values and gradient coefficients, not graphs)."""

    logp: Tensor  # [B, T] current policy
    delta: Tensor  # [B, T] Δ = logp − old_logp, 0 at padding
    adv: Tensor  # [B] advantages
    mask: Tensor  # [B, T] float 0/1
    lengths: Tensor  # [B] response lengths T_i (float)
    log_corr: Tensor | None  # [B, T] ln w_t of TIS/MIS (−inf = MIS-masked, 0 at padding), or None


class Reshaped(NamedTuple):
    """An objective as a reshaped REINFORCE: per-token loss ℓ_{i,t} and its gradient ∂ℓ_{i,t}/∂logp_t.

    Every objective here has a gradient of the form coef_{i,t}·∇logp_t (the VESPO paper's view:
    φ(W) is the coefficient on ∇log π), so `policy_loss` needs no autograd graph through the ratio
    computations: one pass builds the gradient, which is what keeps them as cheap as REINFORCE."""

    coef: Tensor  # ∂ℓ/∂logp_t, [B, T] or [B, 1] (times coef_row)
    value: Tensor | None = None  # ℓ, [B, T] or [B, 1] (times value_row); None = coef·logp (REINFORCE form)
    coef_row: Tensor | None = None  # [B, 1] factor of coef, applied in the aggregation pass for free
    value_row: Tensor | None = None  # [B, 1] factor of value, likewise
    log_w: Tensor | None = None  # [B] sequence log-weight used (metrics; default Σ_t Δ_t)
    seq_weight: Tensor | None = None  # [B] sequence weights for the ESS (default exp(Σ_t Δ_t))
    clipped: Tensor | None = None  # 0-d: number of response tokens whose gradient was clipped
    extra: dict | None = None  # name -> 0-d tensor, objective-specific metrics


def register(name: str, aggregation: str, params: type[ObjectiveParams], sequence_correction: bool = False):
    """Register an objective under `name` with its aggregation and its params model."""
    assert params.model_fields["objective"].default == name, (name, params)

    def deco(fn: Callable) -> Callable:
        OBJECTIVES[name] = fn
        PARAMS[name] = params
        OBJECTIVE_DEFAULTS[name] = dict(params())
        AGGREGATION[name] = aggregation
        if sequence_correction:
            SEQUENCE_CORRECTION.add(name)
        return fn

    return deco


# --------------------------------------------------------------------------- shared pieces


def exp_(x: Tensor) -> Tensor:
    """exp(x) in place, computed as exp2(x·log2 e) (kept for bit-identical objectives across
    versions; on torch 2.13 CPU exp is no slower, so a new kernel need not copy it)."""
    return x.mul_(LOG2E).exp2_()


def ratio(delta: Tensor) -> Tensor:
    """r_t = exp(Δ_t), with Δ clamped to ±20 so that r stays finite (exp(20) ≈ 4.9e8). New tensor."""
    return exp_(delta.clamp(-MAX_LOG, MAX_LOG))


def indicator(compare: Callable, a: Tensor, b) -> Tensor:
    """compare(a, b) as a new 0./1. float tensor (writing floats directly is faster on CPU than a
    bool tensor and a cast: reports/bench/micro.json)."""
    return compare(a, b, out=torch.empty_like(a))


def as_float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A 0/1 mask as `dtype`; bool goes through a uint8 view (faster on CPU: reports/bench/micro.json)."""
    return (mask.view(torch.uint8) if mask.dtype == torch.bool else mask).to(dtype)


def select(cond: Tensor, a: float, b: float, dtype: torch.dtype) -> Tensor:
    """torch.where(cond, a, b) for two python numbers, in `dtype` (not torch's default float32)."""
    return torch.where(
        cond, torch.tensor(a, dtype=dtype, device=cond.device), torch.tensor(b, dtype=dtype, device=cond.device)
    )


def log_clip_bounds(adv: Tensor, low: float, high: float, neg_high: float = math.inf) -> tuple[Tensor, Tensor]:
    """[B, 1] bounds on log r such that the PPO surrogate −min(r·A, clip(r, low, high)·A), with the
    dual clip min(·, −neg_high·A) for A < 0, equals −A·exp(clamp(log r, lo, hi)): A > 0: r ≤ high;
    A < 0: low ≤ r ≤ neg_high; A = 0: unbounded. hi ≤ 20 always (the ±20 guard of `ratio`)."""
    neg, pos = adv < 0, adv > 0
    ln = lambda x: math.log(x) if x > 0 else -math.inf  # noqa: E731
    lo = select(neg, ln(low), -math.inf, adv.dtype)
    hi = torch.where(pos, ln(high), select(neg, ln(neg_high), MAX_LOG, adv.dtype)).clamp(max=MAX_LOG)
    return lo[:, None], hi[:, None]


def vespo_kernel(log_w: Tensor, c1: Tensor | float, c2: Tensor | float) -> Tensor:
    """φ(W) = W^c1 · exp(c2·(1 − W)) from ℓ = log W, in log space; non-finite → 0."""
    log_phi = c2 + c1 * log_w - c2 * torch.exp(log_w)
    return torch.nan_to_num(torch.exp(log_phi), nan=0.0, posinf=0.0, neginf=0.0)


def _per_sign(adv: Tensor, pos, neg) -> Tensor:
    """[B] parameter: `pos` where A ≥ 0, `neg` where A < 0."""
    return select(adv >= 0, pos, neg, adv.dtype)
