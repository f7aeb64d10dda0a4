"""`policy_loss`: what every objective shares — params validation, masking, the train-inference
mismatch correction (TIS/MIS), aggregation with global denominators, the autograd hook-up, metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from pydantic import TypeAdapter, ValidationError
from torch import Tensor

from ..errors import UserError
from ..objective_params import CORRECTION_CAP, PARAMS, CorrectionCap, ObjectiveParams
from ..schema import describe_type, user_error
from . import losses  # noqa: F401  (registers the objectives in OBJECTIVES)
from .base import (
    AGGREGATION,
    CORRECTIONS,
    OBJECTIVES,
    SEQUENCE_CORRECTION,
    Reshaped,
    Tokens,
    as_float_mask,
    indicator,
)

# --------------------------------------------------------------------------- validation

_CAP = TypeAdapter(CorrectionCap, config={"strict": True, "allow_inf_nan": False})


def objective_params(objective: str, params: Mapping | None = None) -> ObjectiveParams:
    """The params model of `objective`: its paper defaults updated with `params`; UserError on an
    unknown objective, an unknown parameter or a bad value."""
    if objective not in OBJECTIVES:
        raise UserError(f"objective: unknown {objective!r} (known: {', '.join(sorted(OBJECTIVES))})")
    try:
        return PARAMS[objective].model_validate({**(params or {}), "objective": objective})
    except ValidationError as e:
        raise user_error(e, PARAMS[objective], prefix="params.") from None


def check_correction_cap(value) -> float:
    """`value` as C of TIS/MIS (`CorrectionCap`); UserError otherwise."""
    try:
        return _CAP.validate_python(value)
    except ValidationError:
        raise UserError(f"correction_cap: expected {describe_type(CorrectionCap)}, got {value!r}") from None


def resolve_params(objective: str, params: dict | None = None) -> dict:
    """The objective's validated keyword arguments, plus correction_cap (default CORRECTION_CAP)."""
    params = dict(params or {})
    cap = check_correction_cap(params.pop("correction_cap", CORRECTION_CAP))
    return {**objective_params(objective, params), "correction_cap": cap}


def _check_correction(correction):
    if correction == "none":
        return None
    if correction not in CORRECTIONS:
        raise UserError(f"correction: unknown {correction!r} (known: null, tis, mis)")
    return correction


# --------------------------------------------------------------------------- entry point


def policy_loss(
    objective: str | ObjectiveParams,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    rollout_logp: Tensor | None = None,
    correction: str | None = None,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    correction_cap: float = CORRECTION_CAP,
    aggregation: str | None = None,
    **params,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of one microbatch under `objective`, and its metrics (python floats).

    objective: a name, with its hyperparameters as keyword arguments (`params`, validated here), or
    an `ObjectiveParams` model (e.g. cfg.algorithm.params, validated when the config loaded).

    logp [B,T] current policy (with grad), old_logp [B,T] proximal behaviour policy, advantages [B],
    mask [B,T] (bool or 0/1: response tokens; values at padding may be anything finite).
    rollout_logp [B,T]: engine logprobs, read by the tis/mis correction (NaN/inf or None → no correction
    for that token, counted in `rollout_missing_tokens`) and for the `mismatch_kl` metric; with
    correction=None they never touch the loss.
    num_tokens / num_seqs: the global denominators of token-mean / seq-mean-token-mean when a minibatch
    is split into microbatches (pass the minibatch's token count and sequence count to every one);
    None = this microbatch's mask.sum() / B (all rows, empty ones included).
    correction_cap: C of TIS/MIS (read only with a correction).
    aggregation: one of AGGREGATIONS (verl's loss_agg_mode names) instead of the objective's registered one
    (None: the registered one, so every objective stays equal to its reference implementation).
    Returns a scalar whose gradient w.r.t. logp is Σ weight·coef (see `Reshaped`).
    """
    correction = _check_correction(correction)
    if isinstance(objective, ObjectiveParams):  # validated with the config: nothing to check per microbatch
        if params:
            raise TypeError(f"policy_loss: params {sorted(params)} given with a params model")
        p, cap = objective, correction_cap
    else:
        p = objective_params(objective, params)
        cap = correction_cap if correction is None else check_correction_cap(correction_cap)
    objective = p.objective
    work = torch.promote_types(logp.dtype, torch.float32)
    with torch.no_grad():
        lp = logp.detach().to(work)
        m = as_float_mask(mask, work)
        lengths = m.sum(-1)
        delta = torch.sub(lp, old_logp.detach().to(work)).mul_(m)
        adv = advantages.detach().to(work).reshape(-1)
        stats: dict[str, Tensor] = {}
        log_corr = None
        if rollout_logp is not None or correction is not None:
            log_corr = _mismatch(old_logp.detach().to(work), rollout_logp, m, correction, cap, stats)
        seq_corr = objective in SEQUENCE_CORRECTION
        t = Tokens(lp, delta, adv, m, lengths, log_corr if seq_corr else None)
        out = OBJECTIVES[objective](t, **p)

        mode = aggregation or AGGREGATION[objective]
        if mode == "token-mean":  # per-row scale of the aggregation
            denom = lengths.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=work, device=m.device)
            row_scale = (1.0 / denom.clamp(min=1.0)).expand(m.shape[0], 1)
        else:
            denom = torch.as_tensor(m.shape[0] if num_seqs is None else num_seqs, dtype=work, device=m.device)
            per_row = denom.clamp(min=1.0) * (lengths.clamp(min=1.0) if mode == "seq-mean-token-mean" else 1.0)
            row_scale = (1.0 / per_row).expand(m.shape[0]).reshape(-1, 1)
        token_w = m if log_corr is None or seq_corr else m * log_corr.exp()  # TIS/MIS w_t on ℓ_{i,t}
        value_scale = row_scale if out.value_row is None else row_scale * out.value_row
        value = _aggregate(out.value, token_w, value_scale)
        grad = _aggregate_(out.coef, token_w, row_scale if out.coef_row is None else row_scale * out.coef_row)
        if value is None:  # REINFORCE form ℓ = coef·logp
            value = torch.dot(grad.reshape(-1), lp.reshape(-1))
    loss = _Reshaped.apply(logp, value, grad)

    with torch.no_grad():
        stats.update(_metrics(t, out))
        stats["loss"] = value
        keys = list(stats)
        values = torch.stack([stats[k].to(torch.float64) for k in keys]).tolist()
    return loss, dict(zip(keys, values))


def _aggregate(value: Tensor | None, token_w: Tensor, row_scale: Tensor) -> Tensor | None:
    """Σ_i row_scale_i Σ_t token_w_{i,t}·value_{i,t} (value [B, T], consumed in place, or [B, 1])."""
    if value is None:
        return None
    if value.shape[-1] == 1:
        return (token_w.sum(-1) * value[:, 0] * row_scale[:, 0]).sum()
    return (value.mul_(token_w).sum(-1) * row_scale[:, 0]).sum()


def _aggregate_(coef: Tensor, token_w: Tensor, row_scale: Tensor) -> Tensor:
    """token_w·row_scale·coef as a [B, T] tensor, in place when coef is a full [B, T] tensor."""
    if coef.shape == token_w.shape:
        return coef.mul_(token_w).mul_(row_scale)
    return token_w * (coef * row_scale)


class _Reshaped(torch.autograd.Function):
    """A precomputed scalar loss whose gradient w.r.t. logp is a precomputed tensor."""

    @staticmethod
    def forward(ctx, logp, value, grad):
        ctx.save_for_backward(grad)
        ctx.dtype = logp.dtype
        return value.clone().to(logp.dtype)

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        scale = float(g)  # 1 on one process: hand the gradient back without a [B, T] multiply
        return (grad if scale == 1.0 else grad * scale).to(ctx.dtype), None, None


def _mismatch(old_logp, rollout_logp, m, correction, cap, stats) -> Tensor | None:
    """ln w_t of the TIS/MIS correction (0 at padding and where rollout_logp is missing), or None
    when correction is None; adds mismatch_kl = mean(old_logp − rollout_logp), rollout_missing_tokens
    and correction_frac (tokens truncated by TIS / masked by MIS) to `stats`."""
    if rollout_logp is None:
        valid = torch.zeros_like(m)
        log_rho = torch.zeros_like(m)
    else:
        log_rho = old_logp - rollout_logp.detach().to(m.dtype)
        valid = indicator(torch.lt, log_rho.abs(), math.inf) * m  # NaN/±inf → 0
        log_rho = torch.nan_to_num(log_rho, nan=0.0, posinf=0.0, neginf=0.0) * valid
    n_valid = valid.sum().clamp(min=1.0)
    stats["mismatch_kl"] = log_rho.sum() / n_valid
    stats["rollout_missing_tokens"] = m.sum() - valid.sum()
    if correction is None:
        return None
    ln_cap = math.log(cap)
    if correction == "tis":  # w = min(ρ, C)
        changed = indicator(torch.gt, log_rho, ln_cap)
        log_corr = log_rho.clamp(max=ln_cap)
    else:  # mis: w = ρ if 1/C ≤ ρ ≤ C else 0
        changed = indicator(torch.gt, log_rho.abs(), ln_cap)
        log_corr = log_rho.masked_fill(changed.bool(), -math.inf)
    stats["correction_frac"] = changed.sum() / n_valid
    return log_corr


def drift_metrics(log_ratio: Tensor, nonempty: Tensor) -> dict[str, Tensor]:
    """How far the data is off-policy, the same for every objective: ESS/n of the raw sequence ratios
    W = exp(Σ_t Δ_t), (Σ W)² / (Σ W²) / n, and the standard deviation of log W over the sequences."""
    n = nonempty.sum()
    lw = torch.where(nonempty, log_ratio, -math.inf)
    ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / n.clamp(min=1)
    mean = torch.where(nonempty, log_ratio, 0.0).sum() / n.clamp(min=1)
    var = torch.where(nonempty, (log_ratio - mean) ** 2, 0.0).sum() / n.clamp(min=1)
    return {"w_ess": torch.where(n == 0, 0.0, torch.nan_to_num(ess, nan=0.0)), "log_w_std": var.sqrt()}


def _metrics(t: Tokens, out: Reshaped) -> dict[str, Tensor]:
    """Common metrics (docs/objectives.md "Metrics") over response tokens / non-empty sequences: |Δ| mean
    and max, log W mean and max, ESS (Σw)²/(Σw²)/n of the sequence weights, clip fraction.
    An empty batch gives zeros."""
    n_tok = t.lengths.sum()
    nonempty = t.lengths > 0
    n_seq = nonempty.sum()
    abs_delta = t.delta.abs()
    log_w = t.delta.sum(-1) if out.log_w is None else out.log_w
    lw = torch.where(nonempty, log_w, -math.inf)
    if out.seq_weight is None:  # ESS of W = exp(log W), in log space
        ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
    else:
        w = torch.where(nonempty, out.seq_weight, 0.0)
        ess = w.sum() ** 2 / (w * w).sum()
    empty = n_seq == 0
    metrics = {
        "n_tokens": n_tok,
        "n_seqs": n_seq,
        "delta_abs_mean": abs_delta.sum() / n_tok.clamp(min=1.0),
        "delta_abs_max": abs_delta.amax() if abs_delta.numel() else n_tok * 0,
        "log_w_mean": torch.where(nonempty, log_w, 0.0).sum() / n_seq.clamp(min=1),
        "log_w_max": torch.where(empty, 0.0, lw.amax() if lw.numel() else n_tok * 0),
        "ess": torch.where(empty, 0.0, torch.nan_to_num(ess / n_seq.clamp(min=1), nan=0.0)),
        **drift_metrics(t.delta.sum(-1), nonempty),
    }
    if out.clipped is not None:
        metrics["clip_frac"] = out.clipped / n_tok.clamp(min=1.0)
    metrics.update(out.extra or {})
    return metrics
