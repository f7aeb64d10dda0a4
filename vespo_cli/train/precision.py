"""The trainer's dtype policy for one pass over a step's microbatches.

Three policies (config: at most one of the two flags), all with the optimizer on `model.dtype`
weights (fp32 masters in the presets); measured side by side in docs/performance.md:

* plain: every op in the weights' dtype.
* `trainer.bf16_autocast`: torch autocast; matmuls in bf16, weights cast to bf16 on every
  microbatch (and their gradients cast back), activations between matmuls mostly fp32.
* `trainer.bf16_params`: a bf16 copy of the weights for the whole step (Megatron's / apex O2's
  bf16 params with fp32 masters; FSDP2's `MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32)` under torchrun, `dist.shard_model`). The forward and backward run in bf16
  end to end, the residual stream included; each weight gradient is added into an fp32 gradient
  as soon as autograd produces it, so accumulation over microbatches is fp32, and the optimizer,
  gradient clipping, checkpoints and weight publishing see the fp32 masters only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .forward import _is_sharded


def autocast(model: nn.Module, enabled: bool):
    """bf16 autocast on the model's device type, or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def bf16_params(model: nn.Module) -> Iterator[None]:
    """Inside: every fp32 parameter holds a bf16 copy of itself, and its gradients accumulate into
    an fp32 `.grad` (added to whatever `.grad` held before). On exit the fp32 values are back.

    Gradient checkpointing and MoE routing replay work inside it: their recomputed forwards run in
    the backward, which is inside too. A no-op for a model that is not fp32 or is FSDP-sharded
    (FSDP2 casts through its own mixed-precision policy)."""
    params = [p for p in model.parameters() if p.dtype == torch.float32]
    if not params or _is_sharded(model):
        yield
        return
    masters = [p.data for p in params]
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
        p.data = p.data.to(torch.bfloat16)

    def accumulate(i: int):
        def hook(p: torch.Tensor) -> None:  # runs right after autograd wrote p.grad (bf16)
            if grads[i] is None:
                grads[i] = p.grad.float()
            else:
                grads[i].add_(p.grad)
            p.grad = None

        return hook

    handles = [p.register_post_accumulate_grad_hook(accumulate(i)) for i, p in enumerate(params)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p, master, grad in zip(params, masters, grads):
            p.data = master
            p.grad = grad


def compute(model: nn.Module, cfg) -> contextlib.AbstractContextManager:
    """The step-wide part of the trainer's policy (`bf16_params`), or a no-op."""
    return bf16_params(model) if cfg.trainer.bf16_params else contextlib.nullcontext()
