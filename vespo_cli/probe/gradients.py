"""Per-prompt-group gradients of the objectives at θ, sketched, and the drift of θ from the behaviour
policy θ₀ on the behaviour data.

Every objective's gradient is g = Σ_{i,t} c_{i,t} ∇_θ logp_{i,t}, c = ∂loss/∂logp (objectives/: a
reshaped REINFORCE), so c is taken from `policy_loss` itself and only ∇logp needs the model. It is
measured on a stated parameter subset θ_S: the last `blocks` decoder layers and the final norm. With
h_t the final hidden state at response position t and the LM head acting per position,

    ∂loss/∂θ_S = (∂h/∂θ_S)ᵀ u,   u_t = c_t · ∂logp_t/∂h_t,   ∂logp_t/∂h_t = (W_{y_t} − p_tᵀ W) / τ,

so one forward per group gives h (with a graph back to θ_S only) and ∂logp/∂h, and each objective
costs one backward through the subset. A group whose rewards are all equal has A = 0 and contributes
exactly 0 to every objective: it gets no backward. Log-probs and gradients are computed in the
weights' dtype (fp32 masters in the presets), so a drift below bf16's resolution is still measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AlgorithmConfig
from ..errors import UserError
from ..objectives import group_advantages, policy_loss
from ..train.batch import Microbatch, Rows, make_microbatch, padded
from ..train.forward import decoder_and_head, head_logprobs, response_hidden, shared_prompt_hidden
from .sketch import CountSketch

REFERENCE = AlgorithmConfig(objective="reinforce")  # the common reference, fed A_i = r_i − mean_g r


@dataclass
class Batch:
    """Prompt groups of sampled responses (the behaviour data, or one fresh draw at θ_K)."""

    rows: Rows
    groups: list[list[int]]  # row indices of each prompt group, in prompt order

    def __post_init__(self):
        r = self.rows.rewards.double()
        self.adv = group_advantages(self.rows.rewards, self.rows.group_ids).float()
        mean = torch.zeros(len(r), dtype=torch.float64)
        for idx in self.groups:
            mean[idx] = r[idx].mean()
        self.adv_pg = (r - mean).float()  # group-mean baseline: ∝ the unbiased leave-one-out baseline
        self.informative = [bool(r[idx].max() > r[idx].min()) for idx in self.groups]
        self.num_tokens = max(sum(len(y) for y in self.rows.response_ids), 1)
        self.num_seqs = len(self.rows)


def batch_of(rows: Rows) -> Batch:
    """Rows → Batch with groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(rows.group_ids):
        groups.setdefault(g, []).append(i)
    return Batch(rows, list(groups.values()))


@contextlib.contextmanager
def gradient_subset(model: nn.Module, blocks: int) -> Iterator[list[nn.Parameter]]:
    """Inside: only the last `blocks` decoder layers and the final norm take gradients (the measured
    subset, returned); on exit every parameter's requires_grad is as before."""
    decoder, _ = decoder_and_head(model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise UserError(f"model: {type(model).__name__} has no decoder layers the probe knows (model.model.layers)")
    modules = list(layers[-blocks:]) + [m for m in (getattr(decoder, "norm", None),) if m is not None]
    chosen = [p for m in modules for p in m.parameters()]
    ids = {id(p) for p in chosen}
    before = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in before:
            p.requires_grad_(id(p) in ids)
        yield chosen
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


@dataclass
class GroupPass:
    mb: Microbatch
    logp: torch.Tensor  # [b, T] detached
    hidden: torch.Tensor | None = None  # [N, d] response hidden states, graph back to the subset
    dlogp_dh: torch.Tensor | None = None  # [N, d] ∂logp_t/∂h_t


def group_pass(model: nn.Module, rows: Rows, idx: list[int], temperature: float, grad: bool) -> GroupPass:
    """One forward over rows `idx`: log-probs, and with `grad` h and ∂logp/∂h (module docstring). The rows of
    a prompt group share their prompt, which then runs once (`shared_prompt_hidden`)."""
    decoder, head = decoder_and_head(model)
    mb = make_microbatch(rows, idx).to(next(model.parameters()).device)
    targets = mb.input_ids[:, 1:][mb.response_mask[:, 1:]]
    prompt = rows.prompt_ids[idx[0]]
    shared = 0 < len(prompt) < mb.input_ids.shape[1] and all(rows.prompt_ids[i] == prompt for i in idx[1:])
    with torch.set_grad_enabled(grad):
        hidden = shared_prompt_hidden(decoder, mb, len(prompt)) if shared else response_hidden(decoder, mb)
        leaf = hidden.detach().requires_grad_(grad)
        logp, _ = head_logprobs(leaf, head, targets, temperature)
        dlogp_dh = torch.autograd.grad(logp.sum(), leaf)[0] if grad else None
    return GroupPass(mb, mb.unflatten(logp.detach()), hidden if grad else None, dlogp_dh)


def objective_params(algo: AlgorithmConfig) -> dict:
    """`policy_loss` keyword parameters of an algorithm section (as the trainer passes them), the
    `algorithm.aggregation` override included (None: the objective's own)."""
    return {
        **algo.params,
        **({"correction_cap": algo.correction_cap} if algo.correction else {}),
        "aggregation": algo.aggregation,
    }


def loss_coef(
    algo: AlgorithmConfig,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask,
    rollout_logp: torch.Tensor | None,
    num_tokens: float,
    num_seqs: float,
) -> tuple[torch.Tensor, dict]:
    """(c = ∂loss/∂logp [b, T], metrics) of `algo`'s objective on one group, with the batch's
    denominators (so the groups' gradients sum to the batch gradient)."""
    leaf = logp.detach().requires_grad_()
    loss, metrics = policy_loss(
        algo.objective,
        leaf,
        old_logp,
        adv,
        mask,
        rollout_logp=rollout_logp,
        correction=algo.correction,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        **objective_params(algo),
    )
    return torch.autograd.grad(loss, leaf)[0], metrics


def sketch_gradient(gp: GroupPass, coef: torch.Tensor, params: list[nn.Parameter], sketch: CountSketch) -> torch.Tensor:
    """S ∇_θS Σ_t c_t logp_t for one group: one backward through the subset."""
    c = coef[gp.mb.mask].to(gp.dlogp_dh.dtype)
    if not bool(c.any()):
        return torch.zeros(sketch.dim, dtype=torch.float64)
    upstream = (c[:, None] * gp.dlogp_dh).to(gp.hidden.dtype)
    grads = torch.autograd.grad(gp.hidden, params, grad_outputs=upstream, retain_graph=True, allow_unused=True)
    return sketch([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])


def batch_sketches(
    model: nn.Module,
    batch: Batch,
    recipes: dict[str, AlgorithmConfig | None],
    old_logp: list[torch.Tensor] | None,
    params: list[nn.Parameter],
    sketch: CountSketch,
    temperature: float,
    on_group=None,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor | None]]:
    """({recipe: [groups, k] per-group gradient sketches}, per-row logp at θ) on `batch`.

    A recipe is an algorithm section, or None for the reference (sequence-level REINFORCE with the
    group-mean baseline: c_{i,t} = −(r_i − mean_g r) / n). `old_logp` None: on-policy (old = this
    forward's own log-probs, Δ = 0); else the behaviour policy's log-probs per row, and every row's
    logp is returned (the drift statistics need them), else only those of informative groups."""
    out = {name: torch.zeros(len(batch.groups), sketch.dim) for name in recipes}  # float32 storage; Gram in float64
    logp_rows: list[torch.Tensor | None] = [None] * len(batch.rows)
    for g, idx in enumerate(batch.groups):
        grad = batch.informative[g]
        if grad or old_logp is not None:
            gp = group_pass(model, batch.rows, idx, temperature, grad)
            for r, i in enumerate(idx):
                logp_rows[i] = gp.logp[r, : len(batch.rows.response_ids[i])].float().cpu()
            if grad and recipes:
                _sketch_group(gp, batch, idx, recipes, old_logp, params, sketch, [s[g] for s in out.values()])
        if on_group is not None:
            on_group()
    return out, logp_rows


def _sketch_group(
    gp: GroupPass, batch: Batch, idx: list[int], recipes: dict, old_logp, params, sketch, dest: list[torch.Tensor]
) -> None:
    """Every recipe's sketch of group `idx` into `dest` (recipes with identical coefficients share one backward)."""
    T, dev = gp.logp.shape[1], gp.logp.device
    old = gp.logp if old_logp is None else padded(old_logp, idx, T).to(dev)
    roll = torch.where(gp.mb.mask, padded(batch.rows.rollout_logprobs, idx, T).to(dev), 0.0)
    done: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (name, algo), slot in zip(recipes.items(), dest):
        if algo is None:
            coef, _ = loss_coef(
                REFERENCE, gp.logp, gp.logp, batch.adv_pg[idx].to(dev), gp.mb.mask, None, batch.num_seqs, batch.num_seqs
            )
        else:
            coef, _ = loss_coef(
                algo, gp.logp, old, batch.adv[idx].to(dev), gp.mb.mask, roll, batch.num_tokens, batch.num_seqs
            )
        same = next((s for c, s in done if torch.equal(c, coef)), None)
        slot.copy_(same if same is not None else sketch_gradient(gp, coef, params, sketch))
        done.append((coef, slot))


def batch_metrics(
    algo: AlgorithmConfig, logp_rows: list[torch.Tensor], old_rows: list[torch.Tensor], batch: Batch
) -> dict[str, float]:
    """`policy_loss` metrics of `algo` on the whole batch (ESS/n of its sequence weights, clip or
    suppressed fraction, mean |Δ|, log W) — the figures the trainer logs for such a batch."""
    idx = list(range(len(batch.rows)))
    T = max([len(x) for x in logp_rows] + [1])
    logp, old = padded(logp_rows, idx, T), padded(old_rows, idx, T)
    mask = torch.arange(T)[None, :] < torch.tensor([len(x) for x in logp_rows])[:, None]
    roll = torch.where(mask, padded(batch.rows.rollout_logprobs, idx, T), 0.0)
    _, metrics = policy_loss(
        algo.objective,
        logp,
        old,
        batch.adv,
        mask,
        rollout_logp=roll,
        correction=algo.correction,
        **objective_params(algo),
    )
    return metrics


def drift_stats(logp_rows: list[torch.Tensor], old_rows: list[torch.Tensor], batch: Batch) -> dict[str, float]:
    """Drift of θ from θ₀ on the behaviour data (sampled from θ₀), Δ_t = logp_t − old_logp_t:
    mean |Δ| per token; KL(π_θ₀ ‖ π_θ) per token by the k3 estimator E_θ₀[e^Δ − 1 − Δ] (unbiased,
    ≥ 0); the sequence log-weights ℓ_i = Σ_t Δ_t: standard deviation and max |ℓ|; ESS/n of
    W_i = e^ℓ_i, (Σ W)² / (n Σ W²) (the objectives' own drift metrics, `w_ess` and `log_w_std`)."""
    m = batch_metrics(REFERENCE, logp_rows, old_rows, batch)
    deltas = [(a - b).double() for a, b in zip(logp_rows, old_rows)]
    flat = torch.cat(deltas)
    return {
        "delta_abs_mean": m["delta_abs_mean"],
        "kl": float((torch.expm1(flat) - flat).mean()) if flat.numel() else 0.0,
        "log_w_std": m["log_w_std"],
        "log_w_max_abs": max(abs(float(d.sum())) for d in deltas),
        "ess_w": m["w_ess"],
    }
