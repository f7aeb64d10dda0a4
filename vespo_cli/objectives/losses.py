"""The objectives, side by side: one function each, registered by name with its params model
(`vespo_cli/objective_params.py`; docs/objectives.md: the equations and their sources). Each maps a
detached microbatch (`Tokens`) to its per-token loss and gradient coefficient (`Reshaped`);
`loss.policy_loss` does the rest."""

from __future__ import annotations

import math

import torch

from ..objective_params import (
    CispoParams,
    GrpoParams,
    GspoParams,
    ReinforceParams,
    SapoParams,
    ToprParams,
    VespoParams,
)
from .base import (
    LN_EPS,
    MAX_LOG,
    Reshaped,
    Tokens,
    _per_sign,
    exp_,
    indicator,
    log_clip_bounds,
    ratio,
    register,
    select,
    vespo_kernel,
)

# --------------------------------------------------------------------------- objectives
# Each returns fresh tensors (policy_loss scales them in place) and works in place on its own
# temporaries: on CPU, every new [B, T] tensor costs more than the arithmetic done in it.


@register("vespo", "token-mean", VespoParams, sequence_correction=True)
def vespo(t: Tokens, *, c1_pos, c2_pos, c1_neg, c2_neg, length_norm) -> Reshaped:
    """VESPO (docs/objectives.md "VESPO"): ℓ_i = clamp(Σ_t m·clamp(Δ_t, ±20) [+ Σ_t m·clamp(ln w_t, ln 1e-8, 20)],
    ln 1e-8, 20), divided first by √T_i or T_i for the length_norm ablation; W_i = exp(ℓ_i);
    (c1, c2) = (c1_pos, c2_pos) if A_i ≥ 0 else (c1_neg, c2_neg); φ_i = W^c1·exp(c2(1−W)), detached;
    loss_{i,t} = −φ_i·A_i·logp_t. With a correction the sequence log-weight is clamped once, after
    adding Σ ln w_t (the authors' code); the spec's clamp-then-add differs only where |ℓ| passes the
    clamp range, where φ ≈ 0 either way."""
    log_w = t.delta.clamp(-MAX_LOG, MAX_LOG).sum(-1)
    if t.log_corr is not None:  # token-truncated TIS/MIS log-weights enter log W before the kernel
        log_w = log_w + t.log_corr.clamp(LN_EPS, MAX_LOG).sum(-1)
    if length_norm == "sqrt":
        log_w = log_w / t.lengths.clamp(min=1.0).sqrt()
    elif length_norm == "linear":
        log_w = log_w / t.lengths.clamp(min=1.0)
    log_w = log_w.clamp(LN_EPS, MAX_LOG)
    phi = vespo_kernel(log_w, _per_sign(t.adv, c1_pos, c1_neg), _per_sign(t.adv, c2_pos, c2_neg))
    nonempty = (t.lengths > 0).to(phi.dtype)
    n = nonempty.sum().clamp(min=1.0)
    extra = {"suppressed_frac": ((phi < 1e-3) * nonempty).sum() / n, "phi_mean": (phi * nonempty).sum() / n}
    return Reshaped(coef=-(phi * t.adv)[:, None], log_w=log_w, seq_weight=phi, extra=extra)


@register("grpo", "token-mean", GrpoParams)
def grpo(t: Tokens, *, eps_low, eps_high, dual_clip) -> Reshaped:
    """GRPO/DAPO (docs/objectives.md "GRPO / DAPO"): r_t = exp(Δ_t), loss = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A);
    dual clip for A < 0: loss = min(loss, −c·A), c = dual_clip (null: none). Computed as
    −A·exp(clamp(Δ, lo, hi)), whose gradient is −A·r·∇logp inside the bounds and 0 outside."""
    lo, hi = log_clip_bounds(t.adv, 1.0 - eps_low, 1.0 + eps_high, dual_clip or math.inf)
    d = torch.maximum(t.delta, lo)
    torch.minimum(d, hi, out=d)
    inside = indicator(torch.eq, d, t.delta)  # padding: Δ = 0, always inside
    clipped = inside.numel() - inside.sum()
    clip_r = exp_(d)
    neg_adv = -t.adv[:, None]  # value −A·clip(r), coef −A·r·1[inside]
    return Reshaped(coef=inside.mul_(clip_r), value=clip_r, coef_row=neg_adv, value_row=neg_adv, clipped=clipped)


@register("gspo", "seq-mean-token-mean", GspoParams)
def gspo(t: Tokens, *, eps_low, eps_high) -> Reshaped:
    """GSPO (docs/objectives.md "GSPO"): s_i = exp(min(Σ_t m Δ_t / T_i, 10)); token form
    s_{i,t} = sg[s_i]·exp(logp_t − sg[logp_t]) (value s_i, gradient s_i·∇logp_t);
    loss = −min(s_{i,t}·A, clip(s_{i,t}, 1−ε_low, 1+ε_high)·A) (per sequence: all [B, 1])."""
    log_s = (t.delta.sum(-1) / t.lengths.clamp(min=1.0)).clamp(max=10.0)[:, None]
    lo, hi = log_clip_bounds(t.adv, 1.0 - eps_low, 1.0 + eps_high)
    log_s_clip = torch.minimum(torch.maximum(log_s, lo), hi)
    inside = (log_s_clip == log_s).to(log_s.dtype)
    value = -t.adv[:, None] * log_s_clip.exp()
    clipped = ((1.0 - inside[:, 0]) * t.lengths).sum()
    return Reshaped(coef=value * inside, value=value, seq_weight=log_s[:, 0].exp(), clipped=clipped)


@register("sapo", "seq-mean-token-mean", SapoParams)
def sapo(t: Tokens, *, tau_pos, tau_neg) -> Reshaped:
    """SAPO (docs/objectives.md "SAPO"): τ = τ_pos if A > 0 else τ_neg, gate_t = σ(τ(r_t − 1))·4/τ,
    loss = −gate_t·A; gradient −A·4σ'(τ(r−1))·r_t·∇logp_t (= −A·∇logp_t at r = 1)."""
    tau = select(t.adv > 0, tau_pos, tau_neg, t.adv.dtype)[:, None]
    r = ratio(t.delta)
    sig = torch.sub(r, 1.0).mul_(tau).sigmoid_()  # σ(τ(r − 1))
    a4 = -4.0 * t.adv[:, None]
    r_sig = r.mul_(sig)
    coef = r_sig.addcmul_(r_sig, sig, value=-1.0)  # r·σ·(1 − σ)
    return Reshaped(coef=coef, value=sig, coef_row=a4, value_row=a4 / tau)


@register("cispo", "token-mean", CispoParams)
def cispo(t: Tokens, *, eps_low, eps_high) -> Reshaped:
    """CISPO (docs/objectives.md "CISPO"): loss = −sg[clip(r_t, 1−ε_low, 1+ε_high)]·A·logp_t."""
    log_hi = min(math.log1p(eps_high), MAX_LOG)
    log_lo = math.log(1.0 - eps_low) if eps_low < 1.0 else -MAX_LOG
    d = t.delta.clamp(log_lo, log_hi)
    clipped = d.numel() - indicator(torch.eq, d, t.delta).sum()  # padding: Δ = 0, never clipped
    return Reshaped(coef=exp_(d), coef_row=-t.adv[:, None], clipped=clipped)  # −clip(r)·A


@register("topr", "token-mean", ToprParams)
def topr(t: Tokens) -> Reshaped:
    """TOPR (docs/objectives.md "TOPR"): weight_i = 1 if A_i ≥ 0 else sg[clip(R_i, 0, 1)], R_i = exp(Σ_t m Δ_t);
    loss = −weight_i·A_i·logp_t."""
    log_r = t.delta.sum(-1)
    tapered = (t.adv < 0) & (log_r < 0)
    weight = torch.where(tapered, log_r.clamp(max=0.0).exp(), 1.0)
    return Reshaped(coef=-(weight * t.adv)[:, None], clipped=(tapered * t.lengths).sum())


@register("reinforce", "token-mean", ReinforceParams)
def reinforce(t: Tokens) -> Reshaped:
    """Plain REINFORCE, the baseline: loss = −A_i·logp_t (token-mean)."""
    return Reshaped(coef=-t.adv[:, None])
