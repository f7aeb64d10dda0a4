"""Micro-measurements behind docs/performance.md: each figure is a pair of timings taken in the same
process (or, for the allocator, two child processes run back to back), on the same tensors.

    python reports/bench/micro.py            # writes reports/bench/micro.json

1. bool mask → float32: `mask.to(float32)` vs through a uint8 view (`objectives.as_float_mask`).
2. τ(r − 1) with a per-row τ: `torch.addcmul(-τ, r, τ)` (broadcast input) vs `torch.sub(r, 1).mul_(τ)`.
3. AdamW step over SmolLM2-135M-shaped parameters: foreach (torch's default) vs fused.
4. glibc allocator thresholds (`vespo_cli/malloc.py`) on and off: REINFORCE and SAPO losses.
5. torch.compile (static shapes) of a plain SAPO loss vs the same code eager, and vespo's eager one.
6. The gradient hand-back of `objectives._Reshaped.backward`: `grad * g` (g a 0-d tensor, as it
   was) vs no multiply when g = 1 (the trainer's case on one process), inside the REINFORCE and SAPO
   losses, forward + backward, interleaved rounds.
7. The floor of the objective ratio: REINFORCE and SAPO each written as one closed-form function
   (value and gradient, token-mean / seq-mean-token-mean) and fused by torch.compile(dynamic=True),
   with the mask as uint8; plus a masked multiply compiled with a bool vs a uint8 mask, and the cost
   of exp / of SAPO's gate math per [B, T] fused pass.
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
    """SAPO written the obvious way (docs/objectives.md), value and gradient by autograd."""
    delta = (lp - old) * m
    tau = torch.where(adv > 0, tau_pos, tau_neg)[:, None]
    gate = torch.sigmoid(tau * (torch.exp(delta.clamp(-20, 20)) - 1)) * 4 / tau
    return -(gate * adv[:, None] * m).sum(-1).div(m.sum(-1).clamp(min=1)).mean()


def reinforce_closed_form(lp, old, m, adv):
    """REINFORCE, token-mean: (loss value, ∂loss/∂logp, Σ|Δ|), m a uint8 mask."""
    mf = m.float()
    delta_abs = ((lp - old) * mf).abs().sum(-1).sum()
    coef = -adv[:, None] * mf / mf.sum(-1).sum().clamp(min=1.0)
    return (coef * lp).sum(-1).sum(), coef, delta_abs


def sapo_closed_form(lp, old, m, adv, tau_pos: float = 1.0, tau_neg: float = 1.05):
    """SAPO, seq-mean-token-mean: (loss value, ∂loss/∂logp, Σ|Δ|), m a uint8 mask."""
    mf = m.float()
    delta = (lp - old) * mf
    tau = torch.where(adv > 0, tau_pos, tau_neg)[:, None]
    r = torch.exp(delta.clamp(-20, 20))
    sig = torch.sigmoid(tau * (r - 1))
    row = -4 * adv[:, None] / (mf.sum(-1, keepdim=True).clamp(min=1.0) * lp.shape[0])
    return (
        (sig * mf).sum(-1, keepdim=True).mul(row / tau).sum(),
        r * sig * (1 - sig) * mf * row,
        delta.abs().sum(-1).sum(),
    )


def main() -> None:
    if sys.argv[1:] == ["--loss-times"]:
        print(json.dumps(loss_times()))
        return
    torch.set_num_threads(1)
    import vespo_cli  # noqa: F401  (allocator thresholds, as every vespo process)
    from vespo_cli.bench_objectives import objective_inputs
    from vespo_cli.objectives import as_float_mask, policy_loss

    res: dict = {
        "command": "python reports/bench/micro.py",
        "torch": torch.__version__,
        "threads": 1,
        "shape": [B, T],
        "load_avg_at_start": list(os.getloadavg()),
    }
    logp, old, mask, adv = objective_inputs(B, T)
    res["mask_to_float_s"] = {
        "bool.to(float32)": timed(lambda: mask.to(torch.float32)),
        "as_float_mask (uint8 view)": timed(lambda: as_float_mask(mask, torch.float32)),
    }
    r, tau = old.exp(), torch.rand(B, 1) + 0.5
    res["scaled_shift_s"] = {
        "addcmul(-tau, r, tau)": timed(lambda: torch.addcmul(-tau, r, tau)),
        "sub(r, 1).mul_(tau)": timed(lambda: torch.sub(r, 1.0).mul_(tau)),
    }

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
        out = subprocess.run(
            [sys.executable, __file__, "--loss-times"],
            capture_output=True,
            text=True,
            check=True,
            env={**env, "VESPO_MALLOC_TUNING": setting},
        )
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

    def run_loss(name):
        lp.grad = None
        policy_loss(name, lp, old, adv, mask)[0].backward()

    res["sapo_fwd_bwd_s"] = {
        "plain eager": timed(backward_of(sapo_plain), n=20),
        "plain torch.compile (static shape)": timed(backward_of(compiled), n=20),
        "vespo policy_loss (eager, metrics included)": timed(lambda: run_loss("sapo"), n=20),
    }

    from vespo_cli import objectives

    def multiply_always(ctx, g):
        (grad,) = ctx.saved_tensors
        return (g * grad).to(ctx.dtype), None, None

    hand_back = {"grad * g": staticmethod(multiply_always), "grad as is when g = 1": objectives._Reshaped.backward}
    rounds: dict = {}
    for _ in range(5):
        for label, backward in hand_back.items():
            objectives._Reshaped.backward = backward
            for name in ("reinforce", "sapo"):
                rounds.setdefault(f"{name}, {label}", []).append(timed(lambda: run_loss(name), n=20, rounds=1))
    objectives._Reshaped.backward = hand_back["grad as is when g = 1"]
    res["backward_hand_back_s"] = {key: statistics.median(ts) for key, ts in rounds.items()}

    mask_u8 = mask.view(torch.uint8)
    masked_mul = torch.compile(lambda a, b, mk: (a - b) * mk.float(), dynamic=True)
    exp_pass = torch.compile(lambda a: torch.exp(a), dynamic=True)
    gate_pass = torch.compile(lambda a: torch.exp(a) * torch.sigmoid(torch.exp(a) - 1), dynamic=True)
    scale_pass = torch.compile(lambda a: a * 2, dynamic=True)
    delta = (logp.detach() - old) * m
    res["compiled_dynamic_pass_s"] = {
        "masked multiply, eager": timed(lambda: (logp.detach() - old) * mask.float()),
        "masked multiply, compiled, bool mask": timed(lambda: masked_mul(logp.detach(), old, mask)),
        "masked multiply, compiled, uint8 mask": timed(lambda: masked_mul(logp.detach(), old, mask_u8)),
        "x * 2": timed(lambda: scale_pass(delta)),
        "exp(x)": timed(lambda: exp_pass(delta)),
        "exp(x) * sigmoid(exp(x) - 1)": timed(lambda: gate_pass(delta)),
    }
    fused = {
        name: torch.compile(fn, dynamic=True)
        for name, fn in (("reinforce", reinforce_closed_form), ("sapo", sapo_closed_form))
    }
    res["fused_closed_form_s"] = {
        name: timed(lambda fn=fn: fn(logp.detach(), old, mask_u8, adv), n=20) for name, fn in fused.items()
    }
    res["fused_closed_form_s"]["sapo / reinforce"] = (
        res["fused_closed_form_s"]["sapo"] / res["fused_closed_form_s"]["reinforce"]
    )
    out = Path(__file__).with_name("micro.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
