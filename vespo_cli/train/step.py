"""One optimizer step (docs/training.md "One optimizer step"): the proximal log-probs of a rollout batch, and a
minibatch's exact gradient accumulation over token-budget microbatches, clip, and a skip on a
non-finite gradient. Phase times (forward, backward, optimizer) are summed into the step's metrics."""

from __future__ import annotations

import contextlib
import math
import time
import warnings

import torch

from ..config import Config
from ..errors import UserError
from ..objectives import policy_loss
from ..routing import replay_microbatch
from . import dist, precision
from .batch import Rows, make_microbatch, padded, plan_microbatches
from .forward import token_logprobs

SUMMED = {"loss", "n_tokens", "n_seqs", "rollout_missing_tokens", "_entropy", "_tokens"}  # add up over microbatches


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over the model's parameters; torch's fused kernel where it has one for them (one pass
    per tensor, reports/bench/micro.json), else foreach."""
    t = cfg.trainer
    kwargs = dict(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(model.parameters(), **kwargs)


def make_scheduler(optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over trainer.lr_warmup_steps, then constant."""
    warmup = max(cfg.trainer.lr_warmup_steps, 0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


def compute_logprobs(model, rows: Rows, idx: list[int], cfg: Config, with_entropy: bool, grad: bool):
    """Yield (microbatch, logp [b,T], entropy) over `idx` in token-budget microbatches, on the
    model's device."""
    device = next(model.parameters()).device
    ctx = precision.autocast(model, cfg.trainer.bf16_autocast)
    for mb_idx in plan_microbatches(rows, idx, cfg.trainer.micro_token_budget):
        mb = make_microbatch(rows, mb_idx).to(device)
        # R2 (routing.py): response positions replay the rollout's experts, the prompt routes freely; the
        # replay spans the yield so the caller's backward (gradient checkpointing re-runs forwards) sees it
        with replay_microbatch(model, mb) if cfg.algorithm.routing_replay else contextlib.nullcontext():
            with ctx, contextlib.nullcontext() if grad else torch.no_grad():
                logp, ent = token_logprobs(model, mb, cfg.rollout.temperature, with_entropy)
            yield mb, logp, ent


def old_logprobs(model, rows: Rows, cfg: Config, minibatches: list[list[int]] | None = None) -> list[torch.Tensor]:
    """The proximal policy's log-probs of every response token, once per rollout batch.

    With the rollout batch's `minibatches`, each is planned into microbatches as its optimizer step
    will plan it: the same shapes give the same bf16 numerics, so Δ is exactly 0 on the first
    minibatch and the drift later minibatches show is the policy's, not the batch layout's. Rows in
    no minibatch get an empty tensor."""
    out: list[torch.Tensor] = [torch.zeros(0)] * len(rows)
    model.eval()
    with precision.compute(model, cfg):  # the training forward's numerics
        for idx in minibatches if minibatches is not None else [list(range(len(rows)))]:
            for mb, logp, _ in compute_logprobs(model, rows, idx, cfg, False, grad=False):
                for r, i in enumerate(mb.rows):
                    out[i] = logp[r, : len(rows.response_ids[i])].float().cpu()
    return out


def _clock(model) -> float:
    """perf_counter after the device's queued work (CUDA kernels run asynchronously)."""
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _accumulate(model, rows: Rows, idx: list[int], advantages, old_lp, cfg: Config, num_tokens, num_seqs) -> dict:
    """Forward + backward over `idx`'s microbatches; this rank's metric sums and phase times."""
    algo = cfg.algorithm
    sums: dict[str, float] = {"_entropy": 0.0, "_tokens": 0.0}
    fwd_s = bwd_s = 0.0
    microbatches = compute_logprobs(model, rows, idx, cfg, with_entropy=True, grad=True)
    while True:
        t0 = _clock(model)
        item = next(microbatches, None)
        if item is None:
            break
        mb, logp, ent = item
        T = mb.mask.shape[1]
        old = logp.detach() if old_lp is None else padded(old_lp, mb.rows, T).to(logp.device)
        roll = padded(rows.rollout_logprobs, mb.rows, T).to(logp.device)
        roll = torch.where(mb.mask, roll, torch.zeros_like(roll))  # NaN (engine gave none) only on tokens
        adv = advantages[mb.rows].to(logp.device)
        loss, metrics = policy_loss(
            algo.params,
            logp,
            old,
            adv,
            mb.mask,
            rollout_logp=roll,
            correction=algo.correction,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            correction_cap=algo.correction_cap,
            aggregation=algo.aggregation,
        )
        t1 = _clock(model)
        (loss * dist.world_size()).backward()  # FSDP averages gradients over ranks; we want the sum
        t2 = _clock(model)
        fwd_s, bwd_s = fwd_s + t1 - t0, bwd_s + t2 - t1
        n = mb.num_tokens
        for k, v in metrics.items():
            if k.endswith("_max"):
                sums[k] = max(sums.get(k, -math.inf), v)
            else:  # loss and counts add up over microbatches; the rest are token-weighted means
                sums[k] = sums.get(k, 0.0) + (v if k in SUMMED else v * n)
        sums["_entropy"] += float((ent * mb.mask).sum())
        sums["_tokens"] += n
    return {**sums, "_forward_s": fwd_s, "_backward_s": bwd_s}


def _apply(model, optimizer, scheduler, cfg: Config) -> tuple[float, bool]:
    """Clip, step (skipped on a non-finite gradient: it would corrupt the weights), zero, schedule."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    skipped = not math.isfinite(grad_norm)
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # the schedule advances over a skipped step too, deliberately
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()
    return grad_norm, skipped


def optimizer_step(
    model,
    optimizer,
    scheduler,
    rows: Rows,
    idx: list[int],
    advantages: torch.Tensor,
    old_lp: list[torch.Tensor] | None,
    cfg: Config,
) -> dict:
    """One optimizer step on minibatch `idx` with exact gradient accumulation over microbatches.
    `old_lp` None: on-policy, the proximal log-probs are this forward's own, detached."""
    model.train()
    totals = torch.tensor([sum(len(rows.response_ids[i]) for i in idx), len(idx)], dtype=torch.float64)
    dist.all_reduce_sum(totals)
    num_tokens, num_seqs = max(float(totals[0]), 1.0), float(totals[1])
    with precision.compute(model, cfg):
        sums = _accumulate(model, rows, idx, advantages, old_lp, cfg, num_tokens, num_seqs)
    times = {"time_forward_s": sums.pop("_forward_s"), "time_backward_s": sums.pop("_backward_s")}
    sums = _all_reduce_metrics(sums)
    tok = sums.pop("_tokens")
    t0 = _clock(model)
    grad_norm, skipped = _apply(model, optimizer, scheduler, cfg)
    times["time_optimizer_s"] = _clock(model) - t0
    out = {
        k: (v if k in SUMMED or k.endswith("_max") else v / max(tok, 1))
        for k, v in sums.items()
        if not k.startswith("_")
    }
    out.update(
        entropy=sums["_entropy"] / max(tok, 1),
        grad_norm=grad_norm,
        skipped_nonfinite=int(skipped),
        train_tokens=tok,
        **times,
    )
    return out


def count_nonfinite(state: dict, rec: dict, limit: int) -> None:
    """Count skipped (non-finite) steps in a row in `state`; stop the run at `limit` of them."""
    state["nonfinite_in_a_row"] = state.get("nonfinite_in_a_row", 0) + 1 if rec["skipped_nonfinite"] else 0
    if state["nonfinite_in_a_row"] >= limit:
        raise UserError(
            f"step {rec['step']}: {limit} optimizer steps in a row had a non-finite gradient (loss "
            f"{rec['loss']}), none applied (trainer.max_nonfinite_steps={limit}); lower trainer.lr "
            f"or check the data"
        )


def _all_reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Combine per-rank metric sums (maxima for *_max keys); every rank holds the same keys."""
    if dist.world_size() == 1:
        return sums
    keys = sorted(sums)
    is_max = torch.tensor([k.endswith("_max") for k in keys])
    vals = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    total = dist.all_reduce_sum(torch.where(is_max, 0.0, vals))
    peak = dist.all_reduce_max(torch.where(is_max, vals, -math.inf))
    return dict(zip(keys, torch.where(is_max, peak, total).tolist()))
