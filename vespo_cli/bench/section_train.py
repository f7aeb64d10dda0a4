"""The train section: optimizer-step throughput on long sequences and its model FLOP utilisation
against the bf16 matmul peak, under each of the trainer's dtype policies, and the attention kernel
the step calls, timed alone (attention.py), with the MFU bound it sets."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass

from .attention import attention_kernel, capture_attention, step_split
from .flops import matmul_peak, model_shape, train_flops
from .sizes import bench_config, sizes, synthetic_rows

TRAIN_POLICIES = {  # the trainer's dtype policies the train section compares (train/precision.py), fp32 masters
    "bf16_params": {"bf16_params": True, "bf16_autocast": False},  # the presets': bf16 compute weights
    "bf16_autocast": {"bf16_params": False, "bf16_autocast": True},  # TRL's (and the e2e section's)
}
POLICY_WORDS = {"bf16_params": "bf16 compute weights (bf16 params)", "bf16_autocast": "bf16 autocast"}
HEAD_POLICY = "bf16_params"  # the headline's


def section_train(quick: bool) -> dict:
    """Optimizer steps on long synthetic sequences under each of TRAIN_POLICIES, interleaved round by
    round; each step paired with bf16 matmul peak measurements right before and after it. MFU = median
    of the per-round ratios; the headline is the presets' policy (bf16_params)."""
    import torch

    from ..models import load_model, resolve_model
    from ..objectives import group_advantages
    from ..train.step import make_optimizer

    sz = sizes(quick)
    cfgs = _policy_configs(sz)
    cfg = list(cfgs.values())[-1]  # the policies differ only in dtype flags: the model and optimizer are alike
    model = load_model(resolve_model(cfg.model.path), cfg.model.dtype)
    model.config.use_cache = False
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    B, P, R = sz["train_rows"], sz["train_prompt"], sz["train_response"]
    rows = synthetic_rows(torch.Generator().manual_seed(0), model.config.vocab_size, P, [R] * B, 2, "bench")
    adv = group_advantages(rows.rewards, rows.group_ids).float()
    shape = model_shape(model)
    flops = train_flops(shape, [P + R] * B, [R] * B)
    causal_flops = train_flops(shape, [P + R] * B, [R] * B, causal_discount=True)
    step = _Step(model, optimizer, scheduler, rows, list(range(B)), adv, flops, causal_flops)
    rounds: dict[str, list[dict]] = {name: [] for name in cfgs}
    captured: list = []  # the headline policy's first attention call, recorded in the warm-up round
    for r in range(sz["train_rounds"] + 1):  # round 0 warms up
        for name, policy_cfg in cfgs.items():
            capture = capture_attention(model) if r == 0 and name == HEAD_POLICY else contextlib.nullcontext([])
            with capture as calls:
                rounds[name].append(step.measure(policy_cfg, sz["matmul_n"], sz["matmul_window_s"]))
            captured += calls
    return _result(sz, step, shape, rounds, captured[0])


def _policy_configs(sz: dict) -> dict:
    """The bench's vespo configuration under each of TRAIN_POLICIES."""
    cfgs = {}
    for name, flags in TRAIN_POLICIES.items():
        cfgs[name] = cfg = bench_config(sz)
        vars(cfg.trainer).update(flags)
        # a step as the trainer takes it: several sequences, accumulated over microbatches of train_micro_rows
        cfg.trainer.micro_token_budget = sz["train_micro_rows"] * (sz["train_prompt"] + sz["train_response"])
    return cfgs


@dataclass
class _Step:
    """The trainer's old-logp forward and optimizer step on one fixed batch; `flops` per step (forward
    + backward), `causal_flops` the same counting only the causal half of attention."""

    model: object
    optimizer: object
    scheduler: object
    rows: object
    idx: list[int]
    adv: object
    flops: float
    causal_flops: float

    def measure(self, cfg, matmul_n: int, window: float) -> dict:
        """One round under `cfg`: the step's seconds (wall and CPU) and MFU against the bf16 matmul
        peak measured right before and right after it."""
        from ..train.step import old_logprobs, optimizer_step

        before = matmul_peak(matmul_n, window)
        t0, c0 = time.perf_counter(), time.process_time()
        old = old_logprobs(self.model, self.rows, cfg)
        t1, c1 = time.perf_counter(), time.process_time()
        optimizer_step(self.model, self.optimizer, self.scheduler, self.rows, self.idx, self.adv, old, cfg)
        t2, c2 = time.perf_counter(), time.process_time()
        after = matmul_peak(matmul_n, window)
        wall_peak, cpu_peak = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        return {
            "peak_flops_before": before[0],
            "peak_flops_after": after[0],
            "peak_flops_per_cpu_s": cpu_peak,
            "old_logprobs_s": t1 - t0,
            "old_logprobs_cpu_s": c1 - c0,
            "step_s": t2 - t1,
            "step_cpu_s": c2 - c1,
            "mfu": self.flops / (c2 - c1) / cpu_peak,
            "mfu_causal_count": self.causal_flops / (c2 - c1) / cpu_peak,
            "fwd_mfu": self.flops / 3 / (c1 - c0) / cpu_peak,  # forward only: a third of forward+backward
            "mfu_wall": self.flops / (t2 - t1) / wall_peak,
            "load_avg": os.getloadavg()[0],
        }


def _summary(measured: list[dict], tokens_per_step: int) -> dict:
    """Medians over a policy's measured rounds."""
    med = lambda key: statistics.median(r[key] for r in measured)  # noqa: E731
    step_s = med("step_s")
    return {
        "mfu": med("mfu"),
        "mfu_causal_count": med("mfu_causal_count"),
        "mfu_wall": med("mfu_wall"),
        "old_logprobs_mfu": med("fwd_mfu"),
        "step_s_median": step_s,
        "tokens_per_s": tokens_per_step / step_s,
        "peak_bf16_gflops": statistics.median((r["peak_flops_before"] + r["peak_flops_after"]) / 2 for r in measured)
        / 1e9,
        "peak_bf16_gflops_per_cpu_s": med("peak_flops_per_cpu_s") / 1e9,
    }


def _result(sz: dict, step: _Step, shape: dict, rounds: dict[str, list[dict]], attention) -> dict:
    """The section's record: sizes, the headline policy's summary, each policy's, the paired speedup of
    bf16_params over autocast, the fp32 matmul peak and the attention kernel (`attention`, the call
    captured in the headline policy's step) timed alone after the steps, with the MFU bound it sets."""
    import torch

    B, P, R = sz["train_rows"], sz["train_prompt"], sz["train_response"]
    window = sz["matmul_window_s"]
    policies = {name: {**_summary(r[1:], B * (P + R)), "rounds": r} for name, r in rounds.items()}
    paired = [a["step_cpu_s"] / b["step_cpu_s"] for a, b in zip(rounds["bf16_autocast"][1:], rounds["bf16_params"][1:])]
    head = policies[HEAD_POLICY]
    return {
        "rows": B,
        "micro_rows": sz["train_micro_rows"],
        "prompt_tokens": P,
        "response_tokens": R,
        "tokens_per_step": B * (P + R),
        "model": shape,
        "flops_per_step": step.flops,
        "policy": HEAD_POLICY,
        "threads": torch.get_num_threads(),
        "matmul_n": sz["matmul_n"],
        "matmul_window_s": window,
        "peak_fp32_gflops_per_cpu_s": matmul_peak(sz["matmul_n"], window, dtype=torch.float32)[1] / 1e9,
        **{k: v for k, v in head.items() if k != "rounds"},
        "bf16_params_speedup_vs_autocast": statistics.median(paired),
        "policies": policies,
        "attention_kernel": step_split(
            attention_kernel(attention, sz["matmul_n"], window),
            shape,
            [P + R] * B,
            step.flops,
            statistics.median(r["step_cpu_s"] for r in head["rounds"][1:]),
            head["peak_bf16_gflops_per_cpu_s"],
        ),
    }
