"""Policy objectives: one pure function per objective, registered by name (spec: ALGORITHMS.md).

    loss, metrics = policy_loss("vespo", logp, old_logp, advantages, mask,
                                rollout_logp=None, correction=None, num_tokens=None, num_seqs=None,
                                **params)
    loss, metrics = policy_loss(cfg.algorithm.params, logp, ...)  # params validated at config load

Every objective is a reshaped REINFORCE: its gradient is coef_{i,t}·∇logp_t. An objective function
(registered in OBJECTIVES with its params model, a pydantic model defined right above it; the config's
`algorithm.params` is the union of these models, keyed on `algorithm.objective`) maps the detached
tensors of a microbatch to its per-token loss value and that coefficient (`Reshaped`); `policy_loss`
does what is shared:
masking, the train-inference mismatch correction (TIS/MIS), aggregation with global denominators
(so gradient accumulation gives the one-big-batch gradient), the autograd hook-up and metrics.

Aggregation (each objective declares one, AGGREGATION[name]):
  token-mean           Σ_i Σ_t m ℓ / num_tokens            (num_tokens: None = mask.sum())
  seq-mean-token-mean  Σ_i (Σ_t m ℓ / T_i) / num_seqs      (num_seqs:   None = B, all rows)
With gradient accumulation pass the minibatch totals (tokens, sequences) to every microbatch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Literal, NamedTuple, Union

import torch
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from torch import Tensor

from .errors import UserError
from .schema import Section, describe_type, user_error

LN_EPS = math.log(1e-8)  # lower clamp of VESPO's log W and of per-token log correction weights
LOG2E = 1.0 / math.log(2.0)
MAX_LOG = 20.0  # clamp of per-token log-ratios before exp (exp(20) ≈ 4.9e8: finite, no NaN grads)

CORRECTIONS = (None, "tis", "mis")
LENGTH_NORMS = ("none", "sqrt", "linear")
CORRECTION_CAP = 2.0  # C of TIS/MIS, the default of algorithm.correction_cap
CorrectionCap = Annotated[float, Field(gt=1.0, le=1e6)]  # its range, for the config and `policy_loss`
PARAM_MAX = 1e3  # upper bound of the free positive hyperparameters (clip widths, temperatures)

OBJECTIVES: dict[str, Callable] = {}  # name -> fn(Tokens, **params) -> Reshaped
PARAMS: dict[str, type[ObjectiveParams]] = {}  # name -> its params model
OBJECTIVE_DEFAULTS: dict[str, dict] = {}  # name -> {param: paper default}
AGGREGATION: dict[str, str] = {}  # name -> "token-mean" | "seq-mean-token-mean"
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


class ObjectiveParams(Section):
    """An objective's hyperparameters (defaults: the paper's), validated once when the config loads.

    A read-only mapping of the objective function's keyword arguments: `fn(tokens, **params)`.
    `objective` is the tag of the config's union (set from `algorithm.objective`, never written)."""

    model_config = ConfigDict(frozen=True)
    objective: str = Field(exclude=True)

    def keys(self) -> list[str]:
        return [k for k in type(self).model_fields if k != "objective"]

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default


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
    """exp(x) in place, as exp2(x·log2 e): torch's CPU exp kernel is ~4x slower than its exp2."""
    return x.mul_(LOG2E).exp2_()


def ratio(delta: Tensor) -> Tensor:
    """r_t = exp(Δ_t), with Δ clamped to ±20 so that r stays finite (exp(20) ≈ 4.9e8). New tensor."""
    return exp_(delta.clamp(-MAX_LOG, MAX_LOG))


def indicator(compare: Callable, a: Tensor, b) -> Tensor:
    """compare(a, b) as a new 0./1. float tensor (writing floats directly is several times faster
    on CPU than a bool tensor and a cast)."""
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


# --------------------------------------------------------------------------- objectives
# Each returns fresh tensors (policy_loss scales them in place) and works in place on its own
# temporaries: on CPU, every new [B, T] tensor costs more than the arithmetic done in it.


class VespoParams(ObjectiveParams):
    """Kernel exponents (c1, c2) for A ≥ 0 and A < 0, and the length-normalisation ablation of log W."""

    objective: Literal["vespo"] = Field("vespo", exclude=True)
    c1_pos: float = Field(2.0, ge=0, le=100)
    c2_pos: float = Field(3.0, ge=0, le=100)
    c1_neg: float = Field(3.0, ge=0, le=100)
    c2_neg: float = Field(2.0, ge=0, le=100)
    length_norm: Literal["none", "sqrt", "linear"] = "none"


@register("vespo", "token-mean", VespoParams, sequence_correction=True)
def vespo(t: Tokens, *, c1_pos, c2_pos, c1_neg, c2_neg, length_norm) -> Reshaped:
    """VESPO (ALGORITHMS.md "VESPO"): ℓ_i = clamp(Σ_t m·clamp(Δ_t, ±20) [+ Σ_t m·clamp(ln w_t, ln 1e-8, 20)],
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


class GrpoParams(ObjectiveParams):
    """Clip range [1 − eps_low, 1 + eps_high] of the token ratio; dual clip c for A < 0 (null: none)."""

    objective: Literal["grpo"] = Field("grpo", exclude=True)
    eps_low: float = Field(0.2, ge=0, le=1)
    eps_high: float = Field(0.28, ge=0, le=PARAM_MAX)
    dual_clip: float | None = Field(3.0, gt=1, le=1e6)


@register("grpo", "token-mean", GrpoParams)
def grpo(t: Tokens, *, eps_low, eps_high, dual_clip) -> Reshaped:
    """GRPO/DAPO (ALGORITHMS.md "GRPO / DAPO"): r_t = exp(Δ_t), loss = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A);
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


class GspoParams(ObjectiveParams):
    """Clip range [1 − eps_low, 1 + eps_high] of the length-normalised sequence ratio."""

    objective: Literal["gspo"] = Field("gspo", exclude=True)
    eps_low: float = Field(3e-4, ge=0, le=1)
    eps_high: float = Field(4e-4, ge=0, le=PARAM_MAX)


@register("gspo", "seq-mean-token-mean", GspoParams)
def gspo(t: Tokens, *, eps_low, eps_high) -> Reshaped:
    """GSPO (ALGORITHMS.md "GSPO"): s_i = exp(min(Σ_t m Δ_t / T_i, 10)); token form
    s_{i,t} = sg[s_i]·exp(logp_t − sg[logp_t]) (value s_i, gradient s_i·∇logp_t);
    loss = −min(s_{i,t}·A, clip(s_{i,t}, 1−ε_low, 1+ε_high)·A) (per sequence: all [B, 1])."""
    log_s = (t.delta.sum(-1) / t.lengths.clamp(min=1.0)).clamp(max=10.0)[:, None]
    lo, hi = log_clip_bounds(t.adv, 1.0 - eps_low, 1.0 + eps_high)
    log_s_clip = torch.minimum(torch.maximum(log_s, lo), hi)
    inside = (log_s_clip == log_s).to(log_s.dtype)
    value = -t.adv[:, None] * log_s_clip.exp()
    clipped = ((1.0 - inside[:, 0]) * t.lengths).sum()
    return Reshaped(coef=value * inside, value=value, seq_weight=log_s[:, 0].exp(), clipped=clipped)


class SapoParams(ObjectiveParams):
    """Gate temperatures τ for A > 0 and A ≤ 0."""

    objective: Literal["sapo"] = Field("sapo", exclude=True)
    tau_pos: float = Field(1.0, gt=0, le=PARAM_MAX)
    tau_neg: float = Field(1.05, gt=0, le=PARAM_MAX)


@register("sapo", "seq-mean-token-mean", SapoParams)
def sapo(t: Tokens, *, tau_pos, tau_neg) -> Reshaped:
    """SAPO (ALGORITHMS.md "SAPO"): τ = τ_pos if A > 0 else τ_neg, gate_t = σ(τ(r_t − 1))·4/τ,
    loss = −gate_t·A; gradient −A·4σ'(τ(r−1))·r_t·∇logp_t (= −A·∇logp_t at r = 1)."""
    tau = select(t.adv > 0, tau_pos, tau_neg, t.adv.dtype)[:, None]
    r = ratio(t.delta)
    sig = torch.sub(r, 1.0).mul_(tau).sigmoid_()  # σ(τ(r − 1))
    a4 = -4.0 * t.adv[:, None]
    r_sig = r.mul_(sig)
    coef = r_sig.addcmul_(r_sig, sig, value=-1.0)  # r·σ·(1 − σ)
    return Reshaped(coef=coef, value=sig, coef_row=a4, value_row=a4 / tau)


class CispoParams(ObjectiveParams):
    """Clip range [1 − eps_low, 1 + eps_high] of the detached token weight (eps_low ≥ 1: no lower clip)."""

    objective: Literal["cispo"] = Field("cispo", exclude=True)
    eps_low: float = Field(10.0, ge=0, le=PARAM_MAX)
    eps_high: float = Field(0.2, ge=0, le=PARAM_MAX)


@register("cispo", "token-mean", CispoParams)
def cispo(t: Tokens, *, eps_low, eps_high) -> Reshaped:
    """CISPO (ALGORITHMS.md "CISPO"): loss = −sg[clip(r_t, 1−ε_low, 1+ε_high)]·A·logp_t."""
    log_hi = min(math.log1p(eps_high), MAX_LOG)
    log_lo = math.log(1.0 - eps_low) if eps_low < 1.0 else -MAX_LOG
    d = t.delta.clamp(log_lo, log_hi)
    clipped = d.numel() - indicator(torch.eq, d, t.delta).sum()  # padding: Δ = 0, never clipped
    return Reshaped(coef=exp_(d), coef_row=-t.adv[:, None], clipped=clipped)  # −clip(r)·A


class ToprParams(ObjectiveParams):
    """TOPR has no hyperparameters."""

    objective: Literal["topr"] = Field("topr", exclude=True)


@register("topr", "token-mean", ToprParams)
def topr(t: Tokens) -> Reshaped:
    """TOPR (ALGORITHMS.md "TOPR"): weight_i = 1 if A_i ≥ 0 else sg[clip(R_i, 0, 1)], R_i = exp(Σ_t m Δ_t);
    loss = −weight_i·A_i·logp_t."""
    log_r = t.delta.sum(-1)
    tapered = (t.adv < 0) & (log_r < 0)
    weight = torch.where(tapered, log_r.clamp(max=0.0).exp(), 1.0)
    return Reshaped(coef=-(weight * t.adv)[:, None], clipped=(tapered * t.lengths).sum())


class ReinforceParams(ObjectiveParams):
    """REINFORCE has no hyperparameters."""

    objective: Literal["reinforce"] = Field("reinforce", exclude=True)


@register("reinforce", "token-mean", ReinforceParams)
def reinforce(t: Tokens) -> Reshaped:
    """Plain REINFORCE, the baseline: loss = −A_i·logp_t (token-mean)."""
    return Reshaped(coef=-t.adv[:, None])


# --------------------------------------------------------------------------- validation


# every objective's params, keyed on the objective's name (the config's `algorithm.params`)
AnyObjectiveParams = Annotated[Union[tuple(PARAMS.values())], Field(discriminator="objective")]  # noqa: UP007
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

        if AGGREGATION[objective] == "token-mean":  # per-row scale of the aggregation
            denom = lengths.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=work, device=m.device)
            row_scale = (1.0 / denom.clamp(min=1.0)).expand(m.shape[0], 1)
        else:
            denom = torch.as_tensor(m.shape[0] if num_seqs is None else num_seqs, dtype=work, device=m.device)
            row_scale = 1.0 / (lengths.clamp(min=1.0) * denom.clamp(min=1.0))[:, None]
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


def _drift_metrics(log_ratio: Tensor, nonempty: Tensor) -> dict[str, Tensor]:
    """How far the data is off-policy, the same for every objective: ESS/n of the raw sequence ratios
    W = exp(Σ_t Δ_t), (Σ W)² / (Σ W²) / n, and the standard deviation of log W over the sequences."""
    n = nonempty.sum()
    lw = torch.where(nonempty, log_ratio, -math.inf)
    ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / n.clamp(min=1)
    mean = torch.where(nonempty, log_ratio, 0.0).sum() / n.clamp(min=1)
    var = torch.where(nonempty, (log_ratio - mean) ** 2, 0.0).sum() / n.clamp(min=1)
    return {"w_ess": torch.where(n == 0, 0.0, torch.nan_to_num(ess, nan=0.0)), "log_w_std": var.sqrt()}


def _metrics(t: Tokens, out: Reshaped) -> dict[str, Tensor]:
    """Common metrics (ALGORITHMS.md "Metrics") over response tokens / non-empty sequences: |Δ| mean
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
        **_drift_metrics(t.delta.sum(-1), nonempty),
    }
    if out.clipped is not None:
        metrics["clip_frac"] = out.clipped / n_tok.clamp(min=1.0)
    metrics.update(out.extra or {})
    return metrics


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
    gid = gid.to(r.device)
    if gid.numel() != r.numel():
        raise ValueError(f"group_advantages: {r.numel()} rewards but {gid.numel()} group ids")
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=r.device)
    count = zeros.index_add(0, gid, torch.ones_like(r))
    mean = zeros.index_add(0, gid, r) / count
    centred = r - mean[gid]
    var = zeros.index_add(0, gid, centred * centred) / count
    lo = zeros.scatter_reduce(0, gid, r, "amin", include_self=False)
    hi = zeros.scatter_reduce(0, gid, r, "amax", include_self=False)
    adv = centred / (var.sqrt()[gid] + 1e-6)
    return torch.where((hi == lo)[gid], 0.0, adv).to(out_dtype)
