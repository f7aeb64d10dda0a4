"""Micro-measurements behind docs/performance.md: each figure is a pair of timings taken in the same
process (or, for the allocator, two child processes run back to back), on the same tensors.

    python reports/bench/micro.py            # writes reports/bench/micro.json

1. bool mask → float32: `mask.to(float32)` vs through a uint8 view (`objectives.as_float_mask`).
2. τ(r − 1) with a per-row τ: `torch.addcmul(-τ, r, τ)` (broadcast input) vs `torch.sub(r, 1).mul_(τ)`.
3. AdamW step over SmolLM2-135M-shaped parameters: foreach (torch's default) vs fused.
4. glibc allocator thresholds (`vespo_cli/malloc.py`) on and off: REINFORCE and SAPO losses.
5. torch.compile (static shapes) of a plain SAPO loss vs the same code eager, and vespo's eager one.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

B, T = 256, 4096


def timed(fn, n: int = 50, rounds: int = 5) -> float:
    """Median over `rounds` of the mean wall time of `n` calls, after one warm-up call."""
    fn()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - start) / n)
    return statistics.median(out)


def loss_times() -> dict:
    """Seconds per forward+backward of vespo's REINFORCE and SAPO losses (printed as JSON: run in a
    child process so the allocator setting of its environment applies from the start)."""
    from vespo_cli.bench_objectives import objective_inputs
    from vespo_cli.objectives import policy_loss

    logp, old, mask, adv = objective_inputs(B, T)

    def run(name):
        logp.grad = None
        policy_loss(name, logp, old, adv, mask)[0].backward()

    return {name: timed(lambda: run(name), n=20) for name in ("reinforce", "sapo")}


def sapo_plain(lp, old, m, adv, tau_pos: float = 1.0, tau_neg: float = 1.05):
    """SAPO written the obvious way (ALGORITHMS.md), value and gradient by autograd."""
    delta = (lp - old) * m
    tau = torch.where(adv > 0, tau_pos, tau_neg)[:, None]
    gate = torch.sigmoid(tau * (torch.exp(delta.clamp(-20, 20)) - 1)) * 4 / tau
    return -(gate * adv[:, None] * m).sum(-1).div(m.sum(-1).clamp(min=1)).mean()


def main() -> None:
    if sys.argv[1:] == ["--loss-times"]:
        print(json.dumps(loss_times()))
        return
    torch.set_num_threads(1)
    import vespo_cli  # noqa: F401  (allocator thresholds, as every vespo process)
    from vespo_cli.bench_objectives import objective_inputs
    from vespo_cli.objectives import as_float_mask, policy_loss

    res: dict = {"command": "python reports/bench/micro.py", "torch": torch.__version__, "threads": 1,
                 "shape": [B, T], "load_avg_at_start": list(os.getloadavg())}
    logp, old, mask, adv = objective_inputs(B, T)
    res["mask_to_float_s"] = {"bool.to(float32)": timed(lambda: mask.to(torch.float32)),
                              "as_float_mask (uint8 view)": timed(lambda: as_float_mask(mask, torch.float32))}
    r, tau = old.exp(), torch.rand(B, 1) + 0.5
    res["scaled_shift_s"] = {"addcmul(-tau, r, tau)": timed(lambda: torch.addcmul(-tau, r, tau)),
                             "sub(r, 1).mul_(tau)": timed(lambda: torch.sub(r, 1.0).mul_(tau))}

    torch.set_num_threads(int(os.environ.get("MICRO_ADAM_THREADS", "2")))
    sizes = [49152 * 576] + [576 * 1536] * 90 + [576 * 576] * 60 + [576 * 192] * 60 + [576] * 61
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    for p in params:
        p.grad = torch.randn_like(p)
    res["adamw_step_s"] = {}
    for name, kw in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-5, **kw)
        res["adamw_step_s"][name] = timed(opt.step, n=3, rounds=3)
    res["adamw_params"] = sum(sizes)
    del params, opt
    torch.set_num_threads(1)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res["allocator_loss_s"] = {}
    for setting in ("0", "1"):
        out = subprocess.run([sys.executable, __file__, "--loss-times"], capture_output=True, text=True, check=True,
                             env={**env, "VESPO_MALLOC_TUNING": setting})
        res["allocator_loss_s"]["tuned" if setting == "1" else "glibc default"] = json.loads(out.stdout)

    lp = logp.detach().requires_grad_()
    m = as_float_mask(mask, torch.float32)

    def backward_of(fn):
        def run():
            lp.grad = None
            fn(lp, old, m, adv).backward()
        return run

    start = time.perf_counter()
    compiled = torch.compile(sapo_plain, dynamic=False)
    backward_of(compiled)()
    res["compile_s"] = time.perf_counter() - start

    def vespo_sapo():
        lp.grad = None
        policy_loss("sapo", lp, old, adv, mask)[0].backward()

    res["sapo_fwd_bwd_s"] = {"plain eager": timed(backward_of(sapo_plain), n=20),
                             "plain torch.compile (static shape)": timed(backward_of(compiled), n=20),
                             "vespo policy_loss (eager, metrics included)": timed(vespo_sapo, n=20)}
    out = Path(__file__).with_name("micro.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
