"""Policy objectives: one pure function per objective, registered by name (spec: ALGORITHMS.md).

Every objective maps the per-token tensors of one microbatch to a per-token loss; `policy_loss`
does what is shared: masking, the train-inference mismatch correction (TIS/MIS), aggregation with a
global denominator (gradient accumulation gives the one-big-batch gradient), and metrics.

    loss, metrics = policy_loss("vespo", logp, old_logp, advantages, mask,
                                rollout_logp=None, correction=None, num_tokens=None, num_seqs=None,
                                **params)

Aggregation (each objective declares one, `AGGREGATION[name]`):
  token-mean           Σ_i Σ_t m ℓ / num_tokens            (num_tokens: None = mask.sum())
  seq-mean-token-mean  Σ_i (Σ_t m ℓ / T_i) / num_seqs      (num_seqs:   None = B, all rows)
With gradient accumulation pass the minibatch totals (tokens, sequences) to every microbatch.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .errors import UserError

LN_EPS = math.log(1e-8)  # lower clamp of VESPO's log W and of per-token log correction weights
MAX_LOG = 20.0  # clamp of per-token log-ratios before exp (exp(20) ≈ 4.9e8: finite, no NaN grads)

CORRECTIONS = (None, "tis", "mis")
LENGTH_NORMS = ("none", "sqrt", "linear")
COMMON_DEFAULTS = {"correction_cap": 2.0}  # C of TIS/MIS; accepted by every objective

OBJECTIVES: dict[str, Callable] = {}  # name -> fn(Tokens, **params) -> (token loss [B,T], Info)
OBJECTIVE_DEFAULTS: dict[str, dict] = {}  # name -> {param: paper default}
AGGREGATION: dict[str, str] = {}  # name -> "token-mean" | "seq-mean-token-mean"
SEQUENCE_CORRECTION: set[str] = set()  # objectives taking the correction inside their sequence weight


class Tokens(NamedTuple):
    """One microbatch, already masked (padding: logp = delta = log_corr = 0)."""

    logp: Tensor  # [B, T] current policy, with gradient
    delta: Tensor  # [B, T] logp − old_logp, with gradient
    adv: Tensor  # [B] advantages
    mask: Tensor  # [B, T] float 0/1
    lengths: Tensor  # [B] response lengths T_i (float)
    log_corr: Optional[Tensor]  # [B, T] ln w_t of TIS/MIS (−inf = MIS-masked), or None


class Info(NamedTuple):
    """What an objective reports besides its loss (all detached; None = not applicable)."""

    log_w: Optional[Tensor] = None  # [B] the sequence log-weight it used (default: Σ_t Δ_t)
    seq_weight: Optional[Tensor] = None  # [B] sequence weights for the ESS (default: exp(Σ_t Δ_t))
    clipped: Optional[Tensor] = None  # [B, T] or [B, 1] bool: token gradient clipped/tapered
    extra: Optional[dict] = None  # name -> 0-d tensor, objective-specific metrics


def register(name: str, aggregation: str, sequence_correction: bool = False, **defaults):
    """Register an objective under `name` with its aggregation and paper-default parameters."""

    def deco(fn: Callable) -> Callable:
        OBJECTIVES[name] = fn
        OBJECTIVE_DEFAULTS[name] = defaults
        AGGREGATION[name] = aggregation
        if sequence_correction:
            SEQUENCE_CORRECTION.add(name)
        return fn

    return deco


# --------------------------------------------------------------------------- shared pieces


def ratio(delta: Tensor) -> Tensor:
    """r_t = exp(Δ_t), with Δ clamped to ±20 so that neither r nor its gradient overflow."""
    return torch.exp(delta.clamp(-MAX_LOG, MAX_LOG))


def clipped_surrogate(ratio_: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """PPO surrogate −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) and where the clipped branch is active."""
    loss1 = -adv * ratio_
    loss2 = -adv * ratio_.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(loss1, loss2), loss2 > loss1


def vespo_kernel(log_w: Tensor, c1: Tensor | float, c2: Tensor | float) -> Tensor:
    """φ(W) = W^c1 · exp(c2·(1 − W)) from ℓ = log W, computed in log space; non-finite → 0."""
    log_phi = c2 + c1 * log_w - c2 * torch.exp(log_w)
    return torch.nan_to_num(torch.exp(log_phi), nan=0.0, posinf=0.0, neginf=0.0)


def masked_seq_mean(x: Tensor, t: Tokens) -> Tensor:
    """Per-sequence token mean Σ_t m x / T_i (0 for an empty row)."""
    return (x * t.mask).sum(-1) / t.lengths.clamp(min=1.0)


# --------------------------------------------------------------------------- objectives


@register("vespo", "token-mean", sequence_correction=True,
          c1_pos=2.0, c2_pos=3.0, c1_neg=3.0, c2_neg=2.0, length_norm="none")
def vespo(t: Tokens, *, c1_pos, c2_pos, c1_neg, c2_neg, length_norm) -> tuple[Tensor, Info]:
    """VESPO (ALGORITHMS.md "VESPO"): ℓ_i = clamp(Σ_t m·clamp(Δ_t, ±20) [+ Σ_t m·clamp(ln w_t, ln 1e-8, 20)],
    ln 1e-8, 20) — divided by √T_i or T_i first for the length_norm ablation —, W_i = exp(ℓ_i),
    (c1, c2) = (c1_pos, c2_pos) if A_i ≥ 0 else (c1_neg, c2_neg), φ_i = W^c1·exp(c2(1−W)) detached,
    loss_{i,t} = −φ_i·A_i·logp_t."""
    with torch.no_grad():
        log_w = t.delta.clamp(-MAX_LOG, MAX_LOG).sum(-1)
        if t.log_corr is not None:  # token-truncated TIS/MIS log-weights enter log W before the kernel
            log_w = log_w + t.log_corr.clamp(LN_EPS, MAX_LOG).sum(-1)
        if length_norm == "sqrt":
            log_w = log_w / t.lengths.clamp(min=1.0).sqrt()
        elif length_norm == "linear":
            log_w = log_w / t.lengths.clamp(min=1.0)
        log_w = log_w.clamp(LN_EPS, MAX_LOG)
        pos = t.adv >= 0
        c1 = torch.where(pos, c1_pos, c1_neg).to(log_w.dtype)
        c2 = torch.where(pos, c2_pos, c2_neg).to(log_w.dtype)
        phi = vespo_kernel(log_w, c1, c2)
        coef = -(phi * t.adv)
        nonempty = (t.lengths > 0).to(phi.dtype)
        suppressed = ((phi < 1e-3).to(phi.dtype) * nonempty).sum() / nonempty.sum().clamp(min=1.0)
        phi_mean = (phi * nonempty).sum() / nonempty.sum().clamp(min=1.0)
    return coef[:, None] * t.logp, Info(log_w=log_w, seq_weight=phi,
                                        extra={"suppressed_frac": suppressed, "phi_mean": phi_mean})


@register("grpo", "token-mean", eps_low=0.2, eps_high=0.28, dual_clip=3.0)
def grpo(t: Tokens, *, eps_low, eps_high, dual_clip) -> tuple[Tensor, Info]:
    """GRPO/DAPO (ALGORITHMS.md "GRPO / DAPO"): r_t = exp(Δ_t), loss = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A);
    dual clip for A < 0: loss = min(loss, −c·A) (dual_clip = c; null disables it)."""
    adv = t.adv[:, None]
    loss, clipped = clipped_surrogate(ratio(t.delta), adv, eps_low, eps_high)
    if dual_clip:
        cap = -dual_clip * adv
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        clipped = clipped | dual
    return loss, Info(clipped=clipped)


@register("gspo", "seq-mean-token-mean", eps_low=3e-4, eps_high=4e-4)
def gspo(t: Tokens, *, eps_low, eps_high) -> tuple[Tensor, Info]:
    """GSPO (ALGORITHMS.md "GSPO"): s_i = exp(min(Σ_t m Δ_t / T_i, 10)); token form
    s_{i,t} = sg[s_i]·exp(logp_t − sg[logp_t]); loss = −min(s_{i,t}·A, clip(s_{i,t}, 1−ε_low, 1+ε_high)·A)."""
    with torch.no_grad():
        log_s = masked_seq_mean(t.delta, t).clamp(max=10.0)
    s_tok = torch.exp(log_s[:, None] + t.logp - t.logp.detach())
    loss, clipped = clipped_surrogate(s_tok, t.adv[:, None], eps_low, eps_high)
    return loss, Info(seq_weight=log_s.exp(), clipped=clipped)


@register("sapo", "seq-mean-token-mean", tau_pos=1.0, tau_neg=1.05)
def sapo(t: Tokens, *, tau_pos, tau_neg) -> tuple[Tensor, Info]:
    """SAPO (ALGORITHMS.md "SAPO"): τ = τ_pos if A > 0 else τ_neg, gate_t = σ(τ(r_t − 1))·4/τ,
    loss = −gate_t·A (gradient 4σ'·r·A·∇logp, = A·∇logp at r = 1)."""
    tau = torch.where(t.adv > 0, tau_pos, tau_neg).to(t.logp.dtype)[:, None]
    gate = torch.sigmoid(tau * (ratio(t.delta) - 1.0)) * (4.0 / tau)
    return -gate * t.adv[:, None], Info()


@register("cispo", "token-mean", eps_low=10.0, eps_high=0.2)
def cispo(t: Tokens, *, eps_low, eps_high) -> tuple[Tensor, Info]:
    """CISPO (ALGORITHMS.md "CISPO"): loss = −sg[clip(r_t, 1−ε_low, 1+ε_high)]·A·logp_t."""
    with torch.no_grad():
        r = ratio(t.delta)
        w = r.clamp(1.0 - eps_low, 1.0 + eps_high)
        clipped = w != r
        coef = -w * t.adv[:, None]
    return coef * t.logp, Info(clipped=clipped)


@register("topr", "token-mean")
def topr(t: Tokens) -> tuple[Tensor, Info]:
    """TOPR (ALGORITHMS.md "TOPR"): weight_i = 1 if A_i ≥ 0 else sg[clip(R_i, 0, 1)], R_i = exp(Σ_t m Δ_t);
    loss = −weight_i·A_i·logp_t."""
    with torch.no_grad():
        log_r = t.delta.sum(-1)
        tapered = (t.adv < 0) & (log_r < 0)
        weight = torch.where(tapered, log_r.clamp(max=0.0).exp(), 1.0)
        coef = -(weight * t.adv)
    return coef[:, None] * t.logp, Info(clipped=tapered[:, None])


@register("reinforce", "token-mean")
def reinforce(t: Tokens) -> tuple[Tensor, Info]:
    """Plain REINFORCE, the baseline: loss = −A_i·logp_t (token-mean)."""
    return -t.adv[:, None] * t.logp, Info()


# --------------------------------------------------------------------------- validation


def resolve_params(objective: str, params: dict | None = None) -> dict:
    """The objective's paper defaults updated with `params` (plus correction_cap); UserError on
    an unknown objective, an unknown parameter or a value of the wrong type."""
    if objective not in OBJECTIVES:
        raise UserError(f"objective: unknown {objective!r} (known: {', '.join(sorted(OBJECTIVES))})")
    defaults = {**OBJECTIVE_DEFAULTS[objective], **COMMON_DEFAULTS}
    out = dict(defaults)
    for key, value in (params or {}).items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise UserError(f"params.{key}: unknown parameter of {objective} (known: {known})")
        default = defaults[key]
        if isinstance(default, str):
            if value not in LENGTH_NORMS:
                raise UserError(f"params.{key}: expected one of {', '.join(LENGTH_NORMS)}, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            if not (key == "dual_clip" and value is None):
                raise UserError(f"params.{key}: expected a number, got {value!r}")
        out[key] = value
    return out


def _check_correction(correction):
    if correction == "none":
        return None
    if correction not in CORRECTIONS:
        raise UserError(f"correction: unknown {correction!r} (known: null, tis, mis)")
    return correction


# --------------------------------------------------------------------------- entry point


def policy_loss(
    objective: str,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    rollout_logp: Optional[Tensor] = None,
    correction: Optional[str] = None,
    num_tokens: Optional[float | Tensor] = None,
    num_seqs: Optional[float | Tensor] = None,
    **params,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of one microbatch under `objective` and its metrics (python floats).

    logp [B,T] (with grad), old_logp [B,T] (proximal behaviour policy), advantages [B],
    mask [B,T] (response tokens), rollout_logp [B,T] engine logprobs (only read by tis/mis;
    NaN/inf or None → no correction for that token, counted in `rollout_missing_tokens`).
    num_tokens / num_seqs: global denominators of token-mean / seq-mean-token-mean over the whole
    minibatch when it is split into microbatches (None = this microbatch's mask.sum() / B).
    params: objective hyperparameters (OBJECTIVE_DEFAULTS[objective]) and correction_cap (C = 2).
    """
    p = resolve_params(objective, params)
    correction = _check_correction(correction)
    cap = float(p.pop("correction_cap"))
    m_bool = mask.bool()
    m = m_bool.to(logp.dtype)
    lengths = m.sum(-1)
    logp_m = torch.where(m_bool, logp, 0.0)
    old_logp = old_logp.detach().to(logp.dtype)
    delta = logp_m - torch.where(m_bool, old_logp, 0.0)
    adv = advantages.to(logp.dtype).reshape(-1)
    stats: dict[str, Tensor] = {}

    log_corr = None
    if rollout_logp is not None or correction is not None:
        with torch.no_grad():
            if rollout_logp is None:
                valid = torch.zeros_like(m_bool)
                log_rho = torch.zeros_like(logp_m)
            else:
                log_rho = old_logp - rollout_logp.detach().to(logp.dtype)
                valid = m_bool & torch.isfinite(log_rho)
                log_rho = torch.where(valid, log_rho, 0.0)
            n_valid = valid.sum()
            stats["mismatch_kl"] = log_rho.sum() / n_valid.clamp(min=1)
            stats["rollout_missing_tokens"] = (m_bool & ~valid).sum()
            if correction is not None:
                ln_cap = math.log(cap)
                if correction == "tis":  # w = min(ρ, C)
                    log_corr = log_rho.clamp(max=ln_cap)
                    changed = log_rho > ln_cap
                else:  # mis: w = ρ if 1/C ≤ ρ ≤ C else 0
                    changed = log_rho.abs() > ln_cap
                    log_corr = torch.where(changed, -math.inf, log_rho)
                stats["correction_frac"] = changed.sum() / n_valid.clamp(min=1)

    t = Tokens(logp_m, delta, adv, m, lengths, log_corr if objective in SEQUENCE_CORRECTION else None)
    token_loss, info = OBJECTIVES[objective](t, **p)

    with torch.no_grad():  # per-token weights: mask, aggregation denominator, token-level correction
        if AGGREGATION[objective] == "token-mean":
            denom = m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=m.dtype)
            weight = m / denom.clamp(min=1.0)
        else:
            denom = float(m.shape[0]) if num_seqs is None else torch.as_tensor(num_seqs, dtype=m.dtype)
            denom = torch.as_tensor(denom, dtype=m.dtype).clamp(min=1.0)
            weight = m / (lengths.clamp(min=1.0)[:, None] * denom)
        if log_corr is not None and objective not in SEQUENCE_CORRECTION:
            weight = weight * log_corr.exp()
    loss = (token_loss * weight).sum()

    with torch.no_grad():
        stats.update(_metrics(t, info))
        stats["loss"] = loss.detach()
        keys = list(stats)
        values = torch.stack([stats[k].to(torch.float64) for k in keys]).tolist()
    return loss, dict(zip(keys, values))


def _metrics(t: Tokens, info: Info) -> dict[str, Tensor]:
    """Common metrics (ALGORITHMS.md "Metrics"): |Δ| mean/max, log W mean/max, ESS of the sequence
    weights (Σw)²/(Σw²)/n, clip fraction, over non-empty rows/tokens. Empty batch → zeros."""
    n_tok = t.mask.sum()
    nonempty = t.lengths > 0
    n_seq = nonempty.sum()
    abs_delta = t.delta.detach().abs()
    log_w = t.delta.detach().sum(-1) if info.log_w is None else info.log_w
    out = {
        "n_tokens": n_tok,
        "n_seqs": n_seq,
        "delta_abs_mean": abs_delta.sum() / n_tok.clamp(min=1.0),
        "delta_abs_max": abs_delta.amax() if abs_delta.numel() else n_tok * 0,
        "log_w_mean": torch.where(nonempty, log_w, 0.0).sum() / n_seq.clamp(min=1),
        "log_w_max": torch.where(nonempty, log_w, -math.inf).amax() if log_w.numel() else n_tok * 0,
    }
    out["log_w_max"] = torch.where(n_seq > 0, out["log_w_max"], 0.0)
    if info.seq_weight is None:  # ESS of W = exp(log W), in log space
        lw = torch.where(nonempty, log_w, -math.inf)
        ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
    else:
        w = torch.where(nonempty, info.seq_weight, 0.0)
        ess = w.sum() ** 2 / (w * w).sum()
    out["ess"] = torch.nan_to_num(ess / n_seq.clamp(min=1), nan=0.0)
    if info.clipped is not None:
        out["clip_frac"] = (info.clipped * t.mask).sum() / n_tok.clamp(min=1.0)
    if info.extra:
        out.update(info.extra)
    return out


def group_advantages(rewards, group_ids) -> Tensor:
    """GRPO group normalisation A_i = (r_i − mean_g r) / (std_g r + 1e-6), population std; a group of
    identical rewards gives exactly 0. group_ids: [B] tensor or sequence of hashables."""
    r = torch.as_tensor(rewards)
    out_dtype = r.dtype if r.is_floating_point() else torch.float32
    r = r.to(torch.float64).reshape(-1)
    if isinstance(group_ids, Tensor):
        _, gid = torch.unique(group_ids.reshape(-1), return_inverse=True)
    else:
        index: dict = {}
        gid = torch.tensor([index.setdefault(g, len(index)) for g in group_ids], dtype=torch.long)
    if gid.numel() != r.numel():
        raise ValueError(f"group_advantages: {r.numel()} rewards but {gid.numel()} group ids")
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, torch.ones_like(r))
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, r) / count
    centred = r - mean[gid]
    var = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, centred * centred) / count
    lo = torch.full((n_groups,), math.inf, dtype=torch.float64).scatter_reduce(0, gid, r, "amin")
    hi = torch.full((n_groups,), -math.inf, dtype=torch.float64).scatter_reduce(0, gid, r, "amax")
    adv = centred / (var.sqrt()[gid] + 1e-6)
    return torch.where((hi == lo)[gid], 0.0, adv).to(out_dtype)
