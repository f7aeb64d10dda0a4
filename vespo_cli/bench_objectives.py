"""Micro-benchmark of the policy objectives: forward + backward cost relative to plain REINFORCE."""

from __future__ import annotations

import statistics
import time

import torch

from .objectives import OBJECTIVES, policy_loss


def objective_inputs(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(logp [B,T] requiring grad, old_logp, bool mask, advantages [B]): random float32 CPU tensors,
    off-policy by |Δ| ~ 0.05, response lengths uniform in 1..T."""
    g = torch.Generator().manual_seed(seed)
    logp = (-3 * torch.rand(B, T, generator=g)).requires_grad_()
    old_logp = logp.detach() + 0.05 * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return logp, old_logp, mask, torch.randn(B, generator=g)


def bench_objectives(
    B: int = 256, T: int = 4096, repeats: int = 3, threads: int | None = 1, seed: int = 0, inner: int = 5
) -> dict:
    """Forward + backward (metrics included) of every objective on the same random float32 CPU
    tensors, off-policy (|Δ| ~ 0.05, random lengths). Returns {name: time / reinforce time, ...,
    "reinforce_s": seconds}: the median over `repeats` rounds of the ratio to reinforce's time in the
    same round (rounds interleave the objectives, so machine load hits all alike), each timing
    `inner` back-to-back calls in CPU time of this process, with `threads` torch threads (None =
    leave as set)."""
    logp, old_logp, mask, adv = objective_inputs(B, T, seed)

    def run(name):
        logp.grad = None
        loss, _ = policy_loss(name, logp, old_logp, adv, mask)
        loss.backward()

    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for name in OBJECTIVES:  # warm-up
            run(name)
        times: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
        for _ in range(repeats):  # interleaved, so that machine load hits every objective alike
            for name in OBJECTIVES:
                start = time.process_time()
                for _ in range(inner):
                    run(name)
                times[name].append((time.process_time() - start) / inner)
    finally:
        torch.set_num_threads(saved_threads)
    base = times["reinforce"]
    out = {name: statistics.median(t / b for t, b in zip(ts, base)) for name, ts in times.items()}
    out["reinforce_s"] = statistics.median(base)
    return out


if __name__ == "__main__":
    for key, value in bench_objectives().items():
        print(f"{key:12s} {value:.3f}")
