"""Micro-benchmark of the policy objectives: forward + backward time relative to plain REINFORCE."""
from __future__ import annotations

import time

import torch

from .objectives import OBJECTIVES, policy_loss


def bench_objectives(B: int = 256, T: int = 4096, repeats: int = 3, seed: int = 0) -> dict:
    """Best-of-`repeats` forward+backward (metrics included) of every objective on the same random
    float32 CPU tensors. Returns {name: time / reinforce time, ..., "reinforce_s": seconds}."""
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    old_logp = logp.detach() + 0.05 * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    adv = torch.randn(B, generator=g)

    def step(name):
        def run():
            logp.grad = None
            loss, _ = policy_loss(name, logp, old_logp, adv, mask)
            loss.backward()
        return run

    runs = {name: step(name) for name in OBJECTIVES}
    best = dict.fromkeys(runs, float("inf"))
    for name, run in runs.items():  # warm-up
        run()
    for _ in range(repeats):  # interleaved, so that machine load hits every objective alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    base = best["reinforce"]
    out = {name: t / base for name, t in best.items()}
    out["reinforce_s"] = base
    return out


if __name__ == "__main__":
    for key, value in bench_objectives().items():
        print(f"{key:12s} {value:.3f}")
