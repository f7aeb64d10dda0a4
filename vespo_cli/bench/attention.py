"""The attention kernel the trainer calls, timed alone, and the MFU bound it sets on a step.

`capture_attention` records the first call of the model's attention function during a real trainer
forward: transformers' `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` (SDPA, flash, flex) or
the modeling module's `eager_attention_forward`, whichever the model was loaded with, with that call's
tensors (shapes, dtype, GQA layout, mask) and arguments. `attention_kernel` times that call's forward
and forward+backward alone, in this process (same thread count), between two bf16 matmul peak
measurements. `kernel_bound` is the MFU a step reaches with attention at the kernel's measured speed
and every other FLOP at the matmul peak; `step_split`, what the kernel's speed means for a measured step."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .flops import attention_flops, matmul_peak


@dataclass
class AttentionCall:
    """One call of a model's attention function: `fn(module, query, key, value, mask, **kwargs)`, the
    tensors detached copies of the trainer's ([batch, heads, seq, head_dim] each)."""

    implementation: str
    fn: object
    module: object
    query: object
    key: object
    value: object
    mask: object
    kwargs: dict = field(default_factory=dict)


@contextlib.contextmanager
def capture_attention(model) -> Iterator[list[AttentionCall]]:
    """Inside: the model's attention function is wrapped so that its first call is recorded (the list
    yielded holds it afterwards); every call still runs the original. On exit the original is back."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as registry

    impl = model.config._attn_implementation
    original = registry.get(impl)  # None for "eager": the modeling module's own function, found per call
    calls: list[AttentionCall] = []

    def wrapper(module, query, key, value, attention_mask, **kwargs):
        fn = original or sys.modules[type(module).__module__].eager_attention_forward
        if not calls:
            copy = lambda t: t.detach().clone() if hasattr(t, "detach") else t  # noqa: E731
            kw = {k: copy(v) for k, v in kwargs.items()}
            calls.append(AttentionCall(impl, fn, module, copy(query), copy(key), copy(value), copy(attention_mask), kw))
        return fn(module, query, key, value, attention_mask, **kwargs)

    local = registry._local_mapping  # GeneralInterface's per-instance overrides (transformers.utils.generic)
    saved = local.get(impl, _MISSING)
    local[impl] = wrapper
    try:
        yield calls
    finally:
        if saved is _MISSING:
            local.pop(impl, None)
        else:
            local[impl] = saved


_MISSING = object()


def cpu_seconds(fn, window_s: float, at_least: int = 3) -> float:
    """Process CPU seconds per call of `fn`: one warm-up call, then calls until both `at_least` calls
    and `window_s` CPU seconds are done."""
    fn()
    c0, count = time.process_time(), 0
    while count < at_least or time.process_time() - c0 < window_s:
        fn()
        count += 1
    return (time.process_time() - c0) / count


def attention_kernel(call: AttentionCall, matmul_n: int, window_s: float) -> dict:
    """`call` forward+backward (gradients of query, key and value for a random output gradient) and
    forward alone, in CPU seconds per call, and their MFU: the FLOP model's count of the call
    (`attention_flops`, 12·heads·head_dim·L² per row forward+backward, causal masking not discounted,
    as `train_flops` counts it) per CPU second over the bf16 matmul peak per CPU second measured right
    before and after. `utilisation_causal_count` credits the causal half only: the work the kernel does."""
    import torch

    q, k, v = (t.detach().clone().requires_grad_(True) for t in (call.query, call.key, call.value))

    def forward():
        return call.fn(call.module, q, k, v, call.mask, **call.kwargs)[0]

    grad = torch.randn_like(forward())

    def forward_backward():
        torch.autograd.grad(forward(), (q, k, v), grad)

    def forward_only():
        with torch.no_grad():
            forward()

    before = matmul_peak(matmul_n, window_s)[1]
    fwd_bwd_s = cpu_seconds(forward_backward, window_s)
    fwd_s = cpu_seconds(forward_only, window_s)
    after = matmul_peak(matmul_n, window_s)[1]
    peak = (before + after) / 2
    rows, heads, L, head_dim = q.shape
    flops = attention_flops(heads * head_dim, [L] * rows)
    return {
        "implementation": call.implementation,
        "query_shape": list(q.shape),
        "key_shape": list(k.shape),
        "dtype": str(q.dtype).removeprefix("torch."),
        "masked": call.mask is not None,
        "threads": torch.get_num_threads(),
        "flops_per_call": flops,
        "fwd_bwd_cpu_s": fwd_bwd_s,
        "fwd_cpu_s": fwd_s,
        "peak_bf16_gflops_per_cpu_s": peak / 1e9,
        "mfu": flops / fwd_bwd_s / peak,
        "fwd_mfu": flops / 3 / fwd_s / peak,
        "utilisation_causal_count": flops / 2 / fwd_bwd_s / peak,
    }


def kernel_bound(attention_share: float, attention_mfu: float) -> float:
    """The MFU of a step whose FLOPs are `attention_share` attention, run at `attention_mfu` of the
    matmul peak, and the rest at the peak: 1 / (share / attention_mfu + 1 − share)."""
    if attention_share == 0:
        return 1.0
    return 1.0 / (attention_share / attention_mfu + 1.0 - attention_share)


def step_split(
    kernel: dict, shape: dict, seq_lens: list[int], step_flops: float, step_cpu_s: float, peak_gflops: float
):
    """`kernel` (attention_kernel's record) with what it means for a step of `step_flops` (train_flops)
    over sequences `seq_lens` taking `step_cpu_s` against a matmul peak of `peak_gflops` per CPU second:
    attention's share of the FLOPs (`flop_share`, train_flops' count), the MFU bound (`mfu_bound`,
    kernel_bound), attention's share of the step's CPU time (its FLOPs at the kernel's measured FLOPs per
    CPU second) and the MFU of the rest (the other FLOPs over the other CPU seconds)."""
    attn = shape["layers"] * attention_flops(shape["attn_width"], seq_lens)
    share = attn / step_flops
    attn_s = attn / (kernel["mfu"] * kernel["peak_bf16_gflops_per_cpu_s"] * 1e9)
    return {
        **kernel,
        "flop_share": share,
        "mfu_bound": kernel_bound(share, kernel["mfu"]),
        "step_cpu_s": step_cpu_s,
        "time_share": attn_s / step_cpu_s,
        "rest_mfu": (step_flops - attn) / (step_cpu_s - attn_s) / (peak_gflops * 1e9) if step_cpu_s > attn_s else None,
    }
