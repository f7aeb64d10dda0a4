"""Objectives (docs/objectives.md): closed forms, an independent autograd reference of every equation,
on-policy equivalence, gradient accumulation, mismatch correction, ablations, numerics.

Expected values are computed here from the spec's formulas, never pasted. The library computes each
objective as (value, ∂ℓ/∂logp) without an autograd graph; the reference below is the spec written
naively with autograd, so the two are independent implementations of the same equations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tolerance import U_BF16

from vespo_cli.errors import UserError
from vespo_cli.objectives import (
    AGGREGATION,
    OBJECTIVE_DEFAULTS,
    OBJECTIVES,
    group_advantages,
    policy_loss,
    resolve_params,
    vespo_kernel,
)

F64 = torch.float64
LN_EPS = math.log(1e-8)
TOKEN_LEVEL = [n for n in OBJECTIVES if n != "vespo"]
PRESETS = Path(__file__).resolve().parents[1] / "presets" / "algorithms"


# --------------------------------------------------------------------------- reference (spec, autograd)


def ref_loss(
    name, logp, old, adv, mask, rollout=None, correction=None, cap=2.0, num_tokens=None, num_seqs=None, **params
):
    """docs/objectives.md, line by line, with autograd."""
    p = {**OBJECTIVE_DEFAULTS[name], **params}
    m = mask.to(logp.dtype)
    A = adv[:, None]
    delta = (logp - old) * m
    T_i = m.sum(-1)
    ln_w = torch.zeros_like(m)  # ln w_t of TIS/MIS, 0 = no correction
    if correction is not None and rollout is not None:
        ln_rho = torch.nan_to_num(old - rollout, nan=0.0, posinf=0.0, neginf=0.0) * m
        ln_rho = torch.where(torch.isfinite(old - rollout), ln_rho, 0.0)
        if correction == "tis":
            ln_w = torch.clamp(ln_rho, max=math.log(cap))
        else:
            ln_w = torch.where(ln_rho.abs() <= math.log(cap), ln_rho, -math.inf)
    r = torch.exp(delta.clamp(-20, 20))
    if name == "reinforce":
        tok = -A * logp
    elif name == "vespo":
        lw = delta.clamp(-20, 20).sum(-1) + (ln_w.clamp(LN_EPS, 20) * m).sum(-1)
        lw = lw / {"none": 1.0, "sqrt": T_i.clamp(min=1).sqrt(), "linear": T_i.clamp(min=1)}[p["length_norm"]]
        lw = lw.clamp(LN_EPS, 20)
        W = lw.exp()
        c1 = torch.where(adv >= 0, torch.tensor(p["c1_pos"], dtype=F64), torch.tensor(p["c1_neg"], dtype=F64))
        c2 = torch.where(adv >= 0, torch.tensor(p["c2_pos"], dtype=F64), torch.tensor(p["c2_neg"], dtype=F64))
        phi = torch.nan_to_num(torch.exp(c2 + c1 * lw - c2 * W), nan=0.0, posinf=0.0, neginf=0.0).detach()
        tok = -(phi * adv)[:, None] * logp
    elif name == "grpo":
        tok = -torch.min(r * A, torch.clamp(r, 1 - p["eps_low"], 1 + p["eps_high"]) * A)
        if p["dual_clip"]:
            tok = torch.where(A < 0, torch.min(tok, -p["dual_clip"] * A), tok)
    elif name == "gspo":
        s = torch.exp(torch.clamp(delta.sum(-1) / T_i.clamp(min=1), max=10.0))[:, None]
        s_t = s.detach() * torch.exp(logp - logp.detach())
        tok = -torch.min(s_t * A, torch.clamp(s_t, 1 - p["eps_low"], 1 + p["eps_high"]) * A)
    elif name == "sapo":
        tau = torch.where(A > 0, torch.tensor(p["tau_pos"], dtype=F64), torch.tensor(p["tau_neg"], dtype=F64))
        tok = -torch.sigmoid(tau * (r - 1)) * 4 / tau * A
    elif name == "cispo":
        tok = -torch.clamp(r, 1 - p["eps_low"], 1 + p["eps_high"]).detach() * A * logp
    elif name == "topr":
        R = torch.exp(delta.sum(-1))
        weight = torch.where(adv >= 0, torch.ones_like(R), R.clamp(0, 1)).detach()
        tok = -(weight * adv)[:, None] * logp
    if name != "vespo":
        tok = tok * ln_w.exp()
    tok = tok * m
    if AGGREGATION[name] == "token-mean":
        return tok.sum() / torch.as_tensor(m.sum() if num_tokens is None else num_tokens).clamp(min=1)
    per_seq = tok.sum(-1) / T_i.clamp(min=1)
    return per_seq.sum() / (logp.shape[0] if num_seqs is None else num_seqs)


def batch(B=6, T=12, scale=0.3, seed=0, dtype=F64, min_len=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp = -3 * torch.rand(B, T, generator=g, dtype=dtype)
    old = logp - scale * torch.randn(B, T, generator=g, dtype=dtype)
    rollout = old - scale * torch.randn(B, T, generator=g, dtype=dtype)
    adv = torch.randn(B, generator=g, dtype=dtype)
    return logp, old, adv, mask, rollout


def grad_of(fn, logp, *args, **kw):
    x = logp.detach().clone().requires_grad_()
    out = fn(x, *args, **kw)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return loss.detach(), x.grad, (out[1] if isinstance(out, tuple) else None)


def lib(name, **kw):
    return lambda x, *a, **k: policy_loss(name, x, *a, **{**kw, **k})


def ref(name, **kw):
    return lambda x, *a, **k: ref_loss(name, x, *a, **{**kw, **k})


# --------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("correction", [None, "tis", "mis"])
def test_matches_reference(name, correction):
    logp, old, adv, mask, rollout = batch(scale=0.4, seed=1)
    adv[0] = 0.0
    kw = dict(rollout_logp=rollout, correction=correction)
    v_lib, g_lib, _ = grad_of(lib(name), logp, old, adv, mask, **kw)
    v_ref, g_ref, _ = grad_of(ref(name), logp, old, adv, mask, rollout=rollout, correction=correction)
    torch.testing.assert_close(g_lib, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v_lib, v_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_matches_reference_far_off_policy(name):
    """Large |Δ|: clipping, dual clip, suppression and tapering all active."""
    logp, old, adv, mask, _ = batch(B=16, scale=3.0, seed=2)
    _, g_lib, _ = grad_of(lib(name), logp, old, adv, mask)
    _, g_ref, _ = grad_of(ref(name), logp, old, adv, mask)
    torch.testing.assert_close(g_lib, g_ref, rtol=1e-10, atol=1e-12)


F32_TOL = dict(rtol=1e-4, atol=1e-7)  # the float32 objectives against the float64 references


def test_float32_matches_float64_reference():
    logp, old, adv, mask, _ = batch(scale=0.5, seed=3)
    for name in OBJECTIVES:
        _, g32, _ = grad_of(lib(name), logp.float(), old.float(), adv.float(), mask)
        _, g64, _ = grad_of(ref(name), logp, old, adv, mask)
        torch.testing.assert_close(g32.double(), g64, **F32_TOL)


def test_low_precision_logp():
    """bf16 logp (as a model may return): computed in float32, gradient returned in bf16. Against the
    float64 reference at the same (rounded) inputs the float32 gradient is within F32_TOL, and its
    rounding to bf16 adds at most u·|g| (tests/tolerance.py): rtol = u + rtol₃₂(1 + u), atol = atol₃₂(1 + u)."""
    logp, old, adv, mask, _ = batch(scale=0.2, seed=17)
    for name in OBJECTIVES:
        x = logp.to(torch.bfloat16).requires_grad_()
        loss, _ = policy_loss(name, x, old.float(), adv.float(), mask)
        loss.backward()
        assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
        _, g_ref, _ = grad_of(ref(name), x.detach().double(), old.float().double(), adv.float().double(), mask)
        rtol = U_BF16 + F32_TOL["rtol"] * (1 + U_BF16)
        torch.testing.assert_close(x.grad.double(), g_ref, rtol=rtol, atol=F32_TOL["atol"] * (1 + U_BF16))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_upstream_gradient_scales_the_hand_back(name):
    """(k·loss).backward() gives k times the gradient (the trainer scales by the world size), and
    two losses summed give the sum of their gradients (the hand-back at k = 1 is not a shared buffer)."""
    logp, old, adv, mask, _ = batch(scale=0.4, seed=23)
    _, g1, _ = grad_of(lib(name), logp, old, adv, mask)
    x = logp.detach().clone().requires_grad_()
    (3.0 * policy_loss(name, x, old, adv, mask)[0]).backward()
    torch.testing.assert_close(x.grad, 3.0 * g1, rtol=1e-12, atol=0)
    x.grad = None
    (policy_loss(name, x, old, adv, mask)[0] + policy_loss(name, x, old, adv, mask)[0]).backward()
    torch.testing.assert_close(x.grad, 2.0 * g1, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- closed forms


def phi(W, c1, c2):
    return W**c1 * math.exp(c2 * (1 - W))


def test_vespo_kernel_closed_forms():
    ell = lambda W: torch.tensor(math.log(W), dtype=F64)  # noqa: E731
    for c1, c2 in [(2.0, 3.0), (3.0, 2.0)]:
        assert vespo_kernel(ell(1.0), c1, c2).item() == pytest.approx(1.0, abs=1e-15)
        for W in (2 / 3, 2.0, 1.5, 0.1, 7.0):
            assert vespo_kernel(ell(W), c1, c2).item() == pytest.approx(phi(W, c1, c2), rel=1e-12)
    # A ≥ 0 (c1, c2) = (2, 3): φ(2/3) = (4/9)·e ≈ 1.21, φ(2) = 4·e^{-3} ≈ 0.20
    assert vespo_kernel(ell(2 / 3), 2.0, 3.0).item() == pytest.approx(4 / 9 * math.e, rel=1e-12)
    assert vespo_kernel(ell(2.0), 2.0, 3.0).item() == pytest.approx(4 * math.exp(-3), rel=1e-12)
    # φ → 0 at the extremes, and finite (no NaN) for ℓ = ±1e4
    ext = vespo_kernel(torch.tensor([-1e4, 1e4, LN_EPS, 20.0], dtype=F64), 2.0, 3.0)
    assert ext[0] == 0 and ext[1] == 0 and ext[3] == 0
    assert ext[2].item() == pytest.approx(phi(1e-8, 2.0, 3.0), rel=1e-9)  # = 1e-16·e³


@pytest.mark.parametrize("c1,c2,peak", [(2.0, 3.0, 2 / 3), (3.0, 2.0, 1.5)])
def test_vespo_kernel_peak(c1, c2, peak):
    """dφ/dW = 0 at W = c1/c2; φ rises before and falls after (smooth, unimodal)."""
    W = torch.linspace(0.01, 5, 4001, dtype=F64)
    values = vespo_kernel(W.log(), c1, c2)
    assert W[values.argmax()].item() == pytest.approx(peak, abs=2e-3)
    assert values.max().item() == pytest.approx(phi(peak, c1, c2), rel=1e-6)
    i = int(values.argmax())
    assert torch.all(values[: i + 1].diff() > 0) and torch.all(values[i:].diff() < 0)


def test_vespo_gradient_is_phi_of_sequence_weight():
    """One sequence of length T with Σ Δ = ln W: ∂loss/∂logp_t = −φ(W)·A / T (token-mean)."""
    T = 5
    for W, A, (c1, c2) in [(2.0, 1.0, (2, 3)), (2 / 3, 0.5, (2, 3)), (1.5, -1.0, (3, 2)), (1.0, -2.0, (3, 2))]:
        logp = torch.full((1, T), -1.0, dtype=F64)
        old = logp - math.log(W) / T
        _, g, _ = grad_of(lib("vespo"), logp, old, torch.tensor([A], dtype=F64), torch.ones(1, T))
        torch.testing.assert_close(g, torch.full((1, T), -phi(W, c1, c2) * A / T, dtype=F64))


def test_vespo_log_weight_clamps():
    """ℓ = clamp(Σ clamp(Δ_t, ±20), ln 1e-8, 20): reported log_w_max/mean follow the clamps."""
    logp = torch.zeros(2, 3, dtype=F64)
    old = torch.tensor([[-30.0, -30.0, -30.0], [30.0, 0.0, 0.0]], dtype=F64)  # ΣΔ = 60 → 20; −30 → ln 1e-8
    _, metrics = policy_loss("vespo", logp, old, torch.ones(2, dtype=F64), torch.ones(2, 3))
    assert metrics["log_w_max"] == pytest.approx(20.0)
    assert metrics["log_w_mean"] == pytest.approx((20.0 + LN_EPS) / 2)
    assert metrics["suppressed_frac"] == 1.0


def grpo_token_grad(r, A, eps_low=0.2, eps_high=0.28, c=3.0):
    """∂/∂logp of −min(rA, clip(r)A) (then dual clip): −A·r where the ratio branch is active, else 0."""
    if A > 0:
        return -A * r if r <= 1 + eps_high else 0.0
    active = r >= 1 - eps_low and (c is None or -A * r <= -c * A)
    return -A * r if active else 0.0


@pytest.mark.parametrize("A", [1.0, -1.0, 0.7, -2.5])
@pytest.mark.parametrize("r", [0.5, 0.79, 0.81, 1.0, 1.27, 1.29, 2.0, 2.9, 3.1, 10.0])
@pytest.mark.parametrize("dual_clip", [3.0, None])
def test_grpo_clip_boundaries(r, A, dual_clip):
    logp = torch.zeros(1, 1, dtype=F64)
    old = logp - math.log(r)
    loss, g, metrics = grad_of(
        lib("grpo", dual_clip=dual_clip), logp, old, torch.tensor([A], dtype=F64), torch.ones(1, 1)
    )
    expected = -min(r * A, min(max(r, 0.8), 1.28) * A)
    if dual_clip and A < 0:
        expected = min(expected, -dual_clip * A)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert g.item() == pytest.approx(grpo_token_grad(r, A, c=dual_clip), rel=1e-12, abs=1e-15)
    assert metrics["clip_frac"] == (0.0 if grpo_token_grad(r, A, c=dual_clip) != 0 else 1.0)


def test_gspo_gradient_is_sequence_ratio_times_mean_logp_gradient():
    """Unclipped: ∇loss = −A_i·s_i·∇(mean_t logp_{i,t}) / B; clipped sequences contribute 0."""
    B, T = 3, 6
    logp, _, adv, mask, _ = batch(B=B, T=T, seed=4)
    g = torch.Generator().manual_seed(5)
    old = logp - 1e-4 * torch.rand(B, T, generator=g, dtype=F64)  # s_i − 1 ∈ (0, 1e-4): inside the clip
    old[2] = logp[2] - 0.1  # s_2 = e^{0.1}: outside [1 − 3e-4, 1 + 4e-4]
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    _, grad, metrics = grad_of(lib("gspo"), logp, old, adv, mask)
    m = mask.to(F64)
    T_i = m.sum(-1)
    s = torch.exp(((logp - old) * m).sum(-1) / T_i)
    expected = (-adv * s / (T_i * B))[:, None] * m
    expected[2] = 0.0
    torch.testing.assert_close(grad, expected)
    assert metrics["clip_frac"] == pytest.approx(T_i[2].item() / T_i.sum().item())
    # the direction: each row's gradient ∝ ∇ mean_t logp (uniform over its tokens)
    for i in range(2):
        row = grad[i, : int(T_i[i])]
        torch.testing.assert_close(row, row[0].expand_as(row))


def test_sapo_gradient_at_ratio_one_is_reinforce():
    """r = 1: ∇(−gate·A) = −A·∇logp (σ'(0)·4 = 1), for both temperatures."""
    logp, _, adv, mask, _ = batch(seed=6)
    _, grad, _ = grad_of(lib("sapo"), logp, logp.clone(), adv, mask)
    m = mask.to(F64)
    torch.testing.assert_close(grad, (-adv[:, None] / (m.sum(-1, keepdim=True) * logp.shape[0])) * m)


def test_sapo_gradient_formula_off_policy():
    """∂ℓ/∂logp = −A·4σ'(τ(r−1))·r, τ = 1 (A > 0) or 1.05 (A < 0)."""
    logp = torch.zeros(2, 1, dtype=F64)
    r = torch.tensor([[1.7], [0.6]], dtype=F64)
    adv = torch.tensor([0.8, -1.2], dtype=F64)
    _, grad, _ = grad_of(lib("sapo"), logp, logp - r.log(), adv, torch.ones(2, 1))
    tau = torch.tensor([[1.0], [1.05]], dtype=F64)
    sig = torch.sigmoid(tau * (r - 1))
    torch.testing.assert_close(grad, -adv[:, None] * 4 * sig * (1 - sig) * r / 2)  # seq-mean over B = 2


def test_cispo_and_topr_weights():
    logp = torch.zeros(4, 1, dtype=F64)
    r = torch.tensor([[0.5], [1.5], [0.5], [1.5]], dtype=F64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=F64)
    old = logp - r.log()
    mask = torch.ones(4, 1)
    _, g_cispo, _ = grad_of(lib("cispo"), logp, old, adv, mask)
    torch.testing.assert_close(g_cispo, -adv[:, None] * r.clamp(max=1.2) / 4)  # ε_low = 10: no lower clip
    _, g_topr, m_topr = grad_of(lib("topr"), logp, old, adv, mask)
    weight = torch.where(adv[:, None] >= 0, 1.0, r.clamp(0, 1))
    torch.testing.assert_close(g_topr, -adv[:, None] * weight / 4)
    assert m_topr["clip_frac"] == 0.25  # only the A < 0, R < 1 sequence is tapered


# --------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_on_policy_equals_reinforce(name):
    """logp == old_logp: every objective's gradient is −A·∇logp under its own aggregation."""
    logp, _, adv, mask, _ = batch(B=8, seed=7)
    _, grad, metrics = grad_of(lib(name), logp, logp.clone(), adv, mask)
    m = mask.to(F64)
    if AGGREGATION[name] == "token-mean":
        expected = -adv[:, None] * m / m.sum()
    else:
        expected = -adv[:, None] * m / (m.sum(-1, keepdim=True) * logp.shape[0])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    assert metrics["ess"] == pytest.approx(1.0)
    assert metrics["delta_abs_max"] == 0.0 and metrics.get("clip_frac", 0.0) == 0.0


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("correction", [None, "tis"])
def test_gradient_accumulation(name, correction):
    """Microbatches with the minibatch's num_tokens / num_seqs sum to the whole-batch gradient."""
    logp, old, adv, mask, rollout = batch(B=7, T=10, scale=0.5, seed=8)
    mask[3] = False  # an empty row too
    kw = dict(rollout_logp=rollout, correction=correction)
    _, g_full, _ = grad_of(lib(name), logp, old, adv, mask, **kw)
    x = logp.detach().clone().requires_grad_()
    num_tokens, num_seqs = mask.sum(), mask.shape[0]
    total = 0.0
    for rows in ([0, 1], [2, 3, 4], [5], [6]):
        loss, _ = policy_loss(
            name,
            x[rows],
            old[rows],
            adv[rows],
            mask[rows],
            rollout_logp=rollout[rows],
            correction=correction,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
        )
        loss.backward()
        total += loss.item()
    torch.testing.assert_close(x.grad, g_full, rtol=1e-12, atol=1e-15)
    full_loss, _ = policy_loss(name, logp, old, adv, mask, **kw)
    assert total == pytest.approx(full_loss.item(), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- mismatch correction


@pytest.mark.parametrize("name", TOKEN_LEVEL)
@pytest.mark.parametrize("correction", ["tis", "mis"])
def test_token_level_correction_multiplies_token_loss(name, correction):
    logp, old, adv, mask, rollout = batch(scale=0.8, seed=9)
    cap = 1.5
    _, g_none, _ = grad_of(lib(name), logp, old, adv, mask)
    _, g_corr, metrics = grad_of(
        lib(name, correction_cap=cap), logp, old, adv, mask, rollout_logp=rollout, correction=correction
    )
    rho = torch.exp(old - rollout)
    w = rho.clamp(max=cap) if correction == "tis" else torch.where((rho >= 1 / cap) & (rho <= cap), rho, 0.0)
    torch.testing.assert_close(g_corr, g_none * w, rtol=1e-12, atol=1e-15)
    changed = (rho > cap) if correction == "tis" else ((rho < 1 / cap) | (rho > cap))
    assert metrics["correction_frac"] == pytest.approx((changed & mask).sum().item() / mask.sum().item())
    m = mask.to(F64)
    assert metrics["mismatch_kl"] == pytest.approx((((old - rollout) * m).sum() / m.sum()).item())


@pytest.mark.parametrize("correction", ["tis", "mis"])
def test_vespo_correction_enters_log_weight(correction):
    """ℓ_i ← clamp(ℓ_i + Σ_t m·clamp(ln w_t, ln 1e-8, 20)): same as shifting old_logp by ln w_t (no
    clamp active), and not the token-level product."""
    logp, old, adv, mask, rollout = batch(scale=0.3, seed=10)
    cap = 1.3
    ln_rho = old - rollout
    ln_w = (
        ln_rho.clamp(max=math.log(cap))
        if correction == "tis"
        else torch.where(ln_rho.abs() <= math.log(cap), ln_rho, torch.tensor(LN_EPS, dtype=F64))
    )
    _, g_corr, _ = grad_of(
        lib("vespo", correction_cap=cap), logp, old, adv, mask, rollout_logp=rollout, correction=correction
    )
    _, g_shift, _ = grad_of(lib("vespo"), logp, old - ln_w, adv, mask)  # Δ' = Δ + ln w
    torch.testing.assert_close(g_corr, g_shift, rtol=1e-12, atol=1e-15)
    _, g_none, _ = grad_of(lib("vespo"), logp, old, adv, mask)
    w = ln_w.exp()
    assert not torch.allclose(g_corr, g_none * w)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_no_correction_ignores_rollout_logp(name):
    logp, old, adv, mask, rollout = batch(seed=11)
    garbage = rollout.clone()
    garbage[0, 0], garbage[1, 1] = math.nan, -math.inf
    l0, g0, _ = grad_of(lib(name), logp, old, adv, mask)
    l1, g1, m1 = grad_of(lib(name), logp, old, adv, mask, rollout_logp=garbage, correction=None)
    assert torch.equal(g0, g1) and torch.equal(l0, l1)
    assert "correction_frac" not in m1


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("correction", ["tis", "mis"])
def test_missing_rollout_logp_means_no_correction(name, correction):
    """NaN/inf rollout_logp → ρ_t = 1 for that token (counted); rollout_logp=None → all tokens."""
    logp, old, adv, mask, rollout = batch(scale=0.8, seed=12)
    holes = torch.zeros_like(mask)
    holes[0, 0] = holes[2, 0] = holes[4, 0] = True
    with_nan = rollout.clone()
    with_nan[0, 0], with_nan[2, 0], with_nan[4, 0] = math.nan, math.inf, -math.inf
    patched = torch.where(holes, old, rollout)  # ρ = 1 exactly there
    _, g_nan, metrics = grad_of(lib(name), logp, old, adv, mask, rollout_logp=with_nan, correction=correction)
    _, g_one, _ = grad_of(lib(name), logp, old, adv, mask, rollout_logp=patched, correction=correction)
    torch.testing.assert_close(g_nan, g_one, rtol=1e-12, atol=1e-15)
    assert torch.isfinite(g_nan).all()
    assert metrics["rollout_missing_tokens"] == (holes & mask).sum().item()
    _, g_missing, m_missing = grad_of(lib(name), logp, old, adv, mask, rollout_logp=None, correction=correction)
    _, g_plain, _ = grad_of(lib(name), logp, old, adv, mask)
    torch.testing.assert_close(g_missing, g_plain, rtol=1e-12, atol=1e-15)
    assert m_missing["rollout_missing_tokens"] == mask.sum().item()


# --------------------------------------------------------------------------- ablations


def test_vespo_length_norm():
    """length_norm divides ℓ by √T or T before the kernel, and changes nothing else."""
    logp, old, adv, mask, _ = batch(B=5, T=9, scale=0.4, seed=13)
    m = mask.to(F64)
    T_i = m.sum(-1)
    lw = ((logp - old) * m).sum(-1)
    for norm, div in [("none", 1.0), ("sqrt", T_i.sqrt()), ("linear", T_i)]:
        _, g, metrics = grad_of(lib("vespo", length_norm=norm), logp, old, adv, mask)
        ell = lw / div
        c1, c2 = torch.where(adv >= 0, 2.0, 3.0), torch.where(adv >= 0, 3.0, 2.0)
        phi_i = ell.exp() ** c1 * torch.exp(c2 * (1 - ell.exp()))
        torch.testing.assert_close(g, -(phi_i * adv)[:, None] * m / m.sum())
        assert metrics["log_w_max"] == pytest.approx(ell.max().item())


def test_vespo_symmetric_c():
    """c1_neg = c1_pos, c2_neg = c2_pos: negative-advantage sequences get the positive kernel;
    positive ones are untouched by the *_neg parameters."""
    logp, old, adv, mask, _ = batch(B=8, scale=0.2, seed=14)
    m = mask.to(F64)
    _, g_asym, _ = grad_of(lib("vespo"), logp, old, adv, mask)
    _, g_sym, _ = grad_of(lib("vespo", c1_neg=2.0, c2_neg=3.0), logp, old, adv, mask)
    pos = adv >= 0
    assert pos.any() and (~pos).any()
    torch.testing.assert_close(g_sym[pos], g_asym[pos], rtol=0, atol=0)
    W = torch.exp(((logp - old) * m).sum(-1))
    phi_pos = W**2 * torch.exp(3 * (1 - W))
    torch.testing.assert_close(g_sym, -(phi_pos * adv)[:, None] * m / m.sum())
    assert not torch.allclose(g_sym[~pos], g_asym[~pos])


def test_dapo_without_dual_clip():
    """dual_clip: null keeps the plain clip-higher surrogate for A < 0 (no cap at −c·A)."""
    logp = torch.zeros(1, 1, dtype=F64)
    old = logp - math.log(5.0)
    loss, g, _ = grad_of(lib("grpo", dual_clip=None), logp, old, torch.tensor([-1.0], dtype=F64), torch.ones(1, 1))
    assert loss.item() == pytest.approx(5.0) and g.item() == pytest.approx(5.0)


# --------------------------------------------------------------------------- numerics, edge cases


@st.composite
def wild_batch(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 4096))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0, 1e4]))
    adv_scale = draw(st.sampled_from([0.0, 1.0, 1e3]))
    dtype = draw(st.sampled_from([torch.float32, F64]))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = draw(st.integers(1, T))
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp = -20 * torch.rand(B, T, generator=g, dtype=dtype)
    delta = (scale * torch.randn(B, T, generator=g, dtype=dtype)).clamp(-1e4, 1e4)
    if draw(st.booleans()):
        delta[0, -1] = draw(st.sampled_from([1e4, -1e4]))
    old = logp - delta
    rollout = old + (scale * torch.randn(B, T, generator=g, dtype=dtype)).clamp(-1e4, 1e4)
    rollout[torch.rand(B, T, generator=g) < 0.1] = math.nan
    adv = adv_scale * torch.randn(B, generator=g, dtype=dtype)
    return logp, old, adv, mask, rollout


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wild_batch(), st.sampled_from([None, "tis", "mis"]))
def test_finite_for_any_finite_input(data, correction):
    logp, old, adv, mask, rollout = data
    for name in OBJECTIVES:
        loss, grad, metrics = grad_of(lib(name), logp, old, adv, mask, rollout_logp=rollout, correction=correction)
        assert torch.isfinite(loss), name
        assert torch.isfinite(grad).all(), name
        assert all(math.isfinite(v) for v in metrics.values()), (name, metrics)
        assert (grad[~mask] == 0).all(), name


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_empty_rows_and_empty_batch(name):
    logp, old, adv, mask, rollout = batch(seed=15)
    mask[1] = False
    _, grad, metrics = grad_of(lib(name), logp, old, adv, mask, rollout_logp=rollout, correction="tis")
    assert torch.isfinite(grad).all() and (grad[1] == 0).all()
    assert metrics["n_seqs"] == mask.shape[0] - 1
    empty = torch.zeros_like(mask)
    loss, grad, metrics = grad_of(lib(name), logp, old, adv, empty, rollout_logp=rollout, correction="mis")
    assert loss.item() == 0.0 and (grad == 0).all()
    assert all(v == 0.0 for v in metrics.values()), metrics


def test_metrics():
    logp, old, adv, mask, _ = batch(scale=0.5, seed=16)
    m = mask.to(F64)
    _, metrics = policy_loss("grpo", logp, old, adv, mask)
    d = (logp - old) * m
    lw = d.sum(-1)
    W = lw.exp()
    assert metrics["delta_abs_mean"] == pytest.approx((d.abs().sum() / m.sum()).item())
    assert metrics["delta_abs_max"] == pytest.approx(d.abs().max().item())
    assert metrics["log_w_mean"] == pytest.approx(lw.mean().item())
    assert metrics["log_w_max"] == pytest.approx(lw.max().item())
    assert metrics["ess"] == pytest.approx((W.sum() ** 2 / (W**2).sum() / len(W)).item())
    assert metrics["n_tokens"] == m.sum().item() and metrics["n_seqs"] == len(W)
    _, mv = policy_loss("vespo", logp, old, adv, mask)
    c1, c2 = torch.where(adv >= 0, 2.0, 3.0), torch.where(adv >= 0, 3.0, 2.0)
    phis = W**c1 * torch.exp(c2 * (1 - W))
    assert mv["ess"] == pytest.approx((phis.sum() ** 2 / (phis**2).sum() / len(W)).item())
    assert mv["suppressed_frac"] == pytest.approx((phis < 1e-3).double().mean().item())
    assert all(isinstance(v, float) for v in mv.values())


# --------------------------------------------------------------------------- errors, presets, advantages


def test_user_errors():
    logp, old, adv, mask, _ = batch()
    with pytest.raises(UserError, match="ppo.*vespo") as e:
        policy_loss("ppo", logp, old, adv, mask)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in OBJECTIVES)
    with pytest.raises(UserError, match="params.eps: unknown parameter of grpo.*eps_high"):
        policy_loss("grpo", logp, old, adv, mask, eps=0.1)
    with pytest.raises(UserError, match="correction.*'ratio'.*tis, mis"):
        policy_loss("grpo", logp, old, adv, mask, correction="ratio")
    with pytest.raises(UserError, match="length_norm.*sqrt"):
        policy_loss("vespo", logp, old, adv, mask, length_norm="log")
    with pytest.raises(UserError, match="eps_low.*float.*'3e-4'"):
        resolve_params("gspo", {"eps_low": "3e-4"})  # YAML 1.1 reads 3e-4 as a string
    with pytest.raises(UserError, match="dual_clip"):
        resolve_params("grpo", {"dual_clip": 0.5})
    with pytest.raises(UserError, match="correction_cap"):
        policy_loss("grpo", logp, old, adv, mask, correction="tis", correction_cap=1.0)
    assert resolve_params("vespo")["c1_pos"] == 2.0


PRESET_NAMES = ["vespo", "grpo", "dapo", "gspo", "sapo", "cispo", "topr", "reinforce"]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_algorithm_presets(preset):
    cfg = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())
    assert set(cfg) == {"description", "objective", "params", "correction", "correction_cap"}
    assert cfg["objective"] in OBJECTIVES and cfg["correction"] in (None, "tis", "mis")
    params = resolve_params(cfg["objective"], {**cfg["params"], "correction_cap": cfg["correction_cap"]})
    defaults = OBJECTIVE_DEFAULTS[cfg["objective"]]
    if preset == cfg["objective"]:  # the objective's own preset is the paper's setting = the defaults
        assert {k: params[k] for k in defaults} == defaults
    logp, old, adv, mask, rollout = batch()
    loss, _ = policy_loss(
        cfg["objective"],
        logp.requires_grad_(),
        old,
        adv,
        mask,
        rollout_logp=rollout,
        correction=cfg["correction"],
        **params,
    )
    loss.backward()
    assert torch.isfinite(logp.grad).all()


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5, 0.2, 3.0, 3.0, 3.0])
    groups = torch.tensor([7, 7, 7, 2, 2, 9, 4, 4, 4])
    adv = group_advantages(rewards, groups)
    for gid in groups.unique():
        sel = groups == gid
        r = rewards[sel].double()
        expected = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
        torch.testing.assert_close(adv[sel].double(), expected, rtol=1e-6, atol=1e-6)
    assert (adv[3:] == 0).all()  # identical rewards (and a singleton group) → exactly 0
    assert adv.dtype == torch.float32
    by_name = group_advantages([1.0, 0.0, 0.1, 0.1], ["a", "a", "b", "b"])
    torch.testing.assert_close(by_name, torch.tensor([1.0, -1.0, 0.0, 0.0]), rtol=0, atol=1e-5)
    assert (group_advantages(torch.full((4,), 0.1), [0, 0, 0, 0]) == 0).all()


def test_bench_objectives_smoke():
    from vespo_cli.bench_objectives import bench_objectives

    out = bench_objectives(B=4, T=32, repeats=1)
    assert set(OBJECTIVES) <= set(out) and out["reinforce"] == 1.0 and out["reinforce_s"] >= 0


def test_as_float_mask_bool_float_and_strided():
    from vespo_cli.objectives import as_float_mask

    mask = torch.tensor([[True, False, True], [False, False, True]])
    for m in (mask, mask.t(), mask.float(), mask[:, ::2]):
        out = as_float_mask(m, torch.float32)
        assert out.dtype == torch.float32 and torch.equal(out, m.to(torch.float32))
    assert as_float_mask(mask, torch.float64).dtype == torch.float64


def test_drift_metrics_closed_form():
    """w_ess = (Σ W)² / (Σ W²) / n of W = exp(Σ_t Δ_t), log_w_std = std of Σ_t Δ_t, for every objective;
    W = (1, 2, —): ESS/n = 9 / 5 / 2 = 0.9, std = ln 2 / 2 (the empty third sequence is left out)."""
    from vespo_cli.objectives import drift_metrics

    log_ratio = torch.tensor([0.0, math.log(2.0), 5.0])
    m = drift_metrics(log_ratio, torch.tensor([True, True, False]))
    assert float(m["w_ess"]) == pytest.approx(0.9, rel=1e-6)
    assert float(m["log_w_std"]) == pytest.approx(math.log(2.0) / 2, rel=1e-6)
    on_policy = drift_metrics(torch.zeros(4), torch.ones(4, dtype=torch.bool))
    assert float(on_policy["w_ess"]) == 1.0 and float(on_policy["log_w_std"]) == 0.0
    empty = drift_metrics(torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    assert float(empty["w_ess"]) == 0.0 and float(empty["log_w_std"]) == 0.0


def test_aggregation_override_by_hand():
    """`aggregation` replaces the objective's registered mode (verl's loss_agg_mode names); default unchanged."""
    from vespo_cli.objectives import policy_loss

    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0])
    # REINFORCE: ℓ_{i,t} = −A_i logp_{i,t}; d/dlogp = −A_i × the row's aggregation weight
    expected = {
        "token-mean": [[-1 / 5] * 3, [2 / 5, 2 / 5, 0.0]],
        "seq-mean-token-mean": [[-1 / 6] * 3, [2 / 4, 2 / 4, 0.0]],
        "seq-mean-token-sum": [[-1 / 2] * 3, [2 / 2, 2 / 2, 0.0]],
    }
    for mode, grad in expected.items():
        logp.grad = None
        loss, _ = policy_loss("reinforce", logp, logp.detach(), adv, mask, aggregation=mode)
        loss.backward()
        assert torch.allclose(logp.grad, torch.tensor(grad)), mode
    logp.grad = None
    default, _ = policy_loss("gspo", logp, logp.detach(), adv, mask)
    default.backward()
    g_default = logp.grad.clone()
    logp.grad = None
    same, _ = policy_loss("gspo", logp, logp.detach(), adv, mask, aggregation="seq-mean-token-mean")
    same.backward()
    assert torch.equal(g_default, logp.grad)  # gspo's registered mode: the override to it changes nothing
