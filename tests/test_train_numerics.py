"""The trainer's numerics against main before issue 33 (`bench.reference.STUDY_REFERENCE_REV`, the trainer of
every cpu-staleness run so far), on the tiny model under the presets' dtype policy (fp32 masters, bf16
compute copy): the default trainer must give the same bits; a trainer that changes where bf16 rounding
happens (`trainer.compile`) must stay within a tolerance derived from the precision, not fitted to a machine.

The tolerance. bf16 keeps 8 significant bits: each rounding of a value to bf16 is a relative error of at
most u = 2⁻⁸ (unit roundoff, round to nearest). The matmuls accumulate in fp32 (error ~ n · 2⁻²⁴ for the
reduction lengths here, n ≤ 1536: below 10⁻⁴, negligible next to u), so the error of the forward is made
of the roundings to bf16 at op boundaries. A Llama block (the tiny model's and SmolLM2's) rounds to bf16
at ROUNDINGS_PER_BLOCK points along its path — input RMSNorm (normalised value, times weight), q/k/v
projections, RoPE (two products and their sum), attention output, o_proj, residual add, post-attention
RMSNorm (2), gate/up projections, SiLU, SiLU · up, down projection, residual add — and the root adds
ROUNDINGS_ROOT (final RMSNorm (2), the head's bf16 matmul output). Two implementations that round at
different points differ by independent rounding errors at up to K = ROUNDINGS_PER_BLOCK · layers +
ROUNDINGS_ROOT points each; errors of random sign add in quadrature, so the relative L2 difference of the
log-probs is at most √(2K) · u, and that of the gradient, whose backward rounds at as many points again,
√(4K) · u. For the loss, first order: Δloss = Σₜ (∂loss/∂logpₜ) Δlogpₜ ≤ ‖∂loss/∂logp‖₂ · ‖Δlogp‖₂, with
‖Δlogp‖₂ ≤ √(2K) · u · ‖logp‖₂. (The same count for SmolLM2-135M, 30 blocks, gives √(4K) · u = 0.16 for the
gradient, above the 7.1% relative L2 error bf16 params measure against fp32 in docs/performance.md: the
bound is of the size of bf16's own error, as it must be, and not tighter than the precision can promise.)
"""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
from tolerance import U_BF16

from vespo_cli.bench.reference import reference_config, reference_step_module
from vespo_cli.bench.sizes import synthetic_rows
from vespo_cli.config import load_config
from vespo_cli.models import load_model, resolve_model
from vespo_cli.objectives import group_advantages, policy_loss
from vespo_cli.train import step as current
from vespo_cli.train.batch import make_microbatch, padded
from vespo_cli.train.compile import compile_decoder_blocks
from vespo_cli.train.forward import token_logprobs

U = U_BF16  # bf16 unit roundoff (tests/tolerance.py)
ROUNDINGS_PER_BLOCK = 16
ROUNDINGS_ROOT = 3


def tolerances(layers: int) -> dict[str, float]:
    """Relative L2 bounds on the difference of two bf16 implementations (module docstring)."""
    k = ROUNDINGS_PER_BLOCK * layers + ROUNDINGS_ROOT
    return {"logp": math.sqrt(2 * k) * U, "grad": math.sqrt(4 * k) * U}


def _setup():
    cfg = load_config("cpu-staleness", None, ["model.path=tiny"])
    model = load_model(resolve_model("tiny"), "float32")
    model.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    rows = synthetic_rows(g, model.config.vocab_size, 50, [16 + 4 * i for i in range(8)], 8, "test")
    adv = group_advantages(rows.rewards, rows.group_ids).float()
    return cfg, model, rows, adv


def _run(step, model, cfg, rows, adv, old_shift: list[torch.Tensor]):
    """(old log-probs, loss, fp32 gradient) of one minibatch under `step`'s trainer: its old_logprobs, then
    its forward+backward over the microbatches with the old log-probs moved by `old_shift` (ratios ≠ 1)."""
    precision = importlib.import_module(step.__name__.rsplit(".", 1)[0] + ".precision")
    idx = list(range(len(rows)))
    old = step.old_logprobs(model, rows, cfg)
    model.zero_grad(set_to_none=True)
    with precision.compute(model, cfg):
        n_tok = float(sum(len(r) for r in rows.response_ids))
        shifted = [o + s for o, s in zip(old, old_shift)]
        sums = step._accumulate(model, rows, idx, adv, shifted, cfg, n_tok, float(len(idx)))
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    return torch.cat(old), sums["loss"], grad


def _loss_gradient_norm(model, cfg, rows, adv, old_shift) -> float:
    """‖∂loss/∂logp‖₂ over every response token (the whole minibatch as one microbatch)."""
    from vespo_cli.train import precision

    idx = list(range(len(rows)))
    mb = make_microbatch(rows, idx)
    T = mb.mask.shape[1]
    with precision.compute(model, cfg):
        logp, _ = token_logprobs(model, mb)
        logp = logp.detach().requires_grad_()
        old = padded([o + s for o, s in zip(current.old_logprobs(model, rows, cfg), old_shift)], idx, T, 0.0)
        loss, _ = policy_loss(
            cfg.algorithm.params,
            logp,
            old,
            adv,
            mb.mask,
            rollout_logp=torch.zeros_like(old),
            correction=cfg.algorithm.correction,
            num_tokens=float(mb.num_tokens),
            num_seqs=float(len(idx)),
            correction_cap=cfg.algorithm.correction_cap,
        )
        (g,) = torch.autograd.grad(loss, logp)
    return float(g[mb.mask].norm())


def _compare(variant):
    """Reference trainer vs this tree's (with `variant` applied to a copy of the model): the differences
    and their bounds."""
    cfg, model, rows, adv = _setup()
    shift = [
        0.05 * torch.randn(len(r), generator=torch.Generator().manual_seed(i)) for i, r in enumerate(rows.response_ids)
    ]
    ref = reference_step_module()
    new_model = copy.deepcopy(model)
    variant(new_model)
    old_a, loss_a, grad_a = _run(ref, model, reference_config(ref, cfg), rows, adv, shift)
    old_b, loss_b, grad_b = _run(current, new_model, cfg, rows, adv, shift)
    tol = tolerances(model.config.num_hidden_layers)
    return {
        "logp_rel": float((old_b - old_a).norm() / old_a.norm()),
        "grad_rel": float((grad_b - grad_a).norm() / grad_a.norm()),
        "loss_abs": abs(loss_b - loss_a),
        "tol": tol,
        "loss_tol": tol["logp"] * float(old_a.norm()) * _loss_gradient_norm(model, cfg, rows, adv, shift),
    }


def test_tolerance_is_the_closed_form():
    """K = 16 · 2 + 3 = 35 rounding points on the tiny model: √70 · 2⁻⁸ and √140 · 2⁻⁸."""
    assert tolerances(2) == {"logp": math.sqrt(70) / 256, "grad": math.sqrt(140) / 256}


def test_default_trainer_gives_the_reference_bits():
    """Without trainer.compile the step is the reference's, bit for bit: study runs before and after agree."""
    d = _compare(lambda m: None)
    assert d["logp_rel"] == 0.0 and d["grad_rel"] == 0.0 and d["loss_abs"] == 0.0


@pytest.mark.slow
def test_compiled_trainer_is_within_the_bf16_tolerance():
    """trainer.compile fuses the elementwise chains (fewer bf16 roundings): loss, log-probs and gradient stay
    within the derived bounds of the reference trainer's."""
    d = _compare(compile_decoder_blocks)
    assert d["logp_rel"] <= d["tol"]["logp"], d
    assert d["grad_rel"] <= d["tol"]["grad"], d
    assert d["loss_abs"] <= d["loss_tol"], d


def test_compile_refuses_a_model_without_decoder_blocks_in_one_line():
    """trainer.compile on a model with no model.model.layers: a UserError naming the key, not a traceback."""
    from vespo_cli.errors import UserError

    with pytest.raises(UserError, match=r"^trainer\.compile: true: Linear has no decoder blocks"):
        compile_decoder_blocks(torch.nn.Linear(2, 2))
