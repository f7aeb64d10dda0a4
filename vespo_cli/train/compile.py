"""`trainer.compile`: torch.compile of each decoder block (inductor; on the CPU its C++ backend), as
torchtitan and prime-rl compile per block. Inductor fuses a block's elementwise chains (RMSNorm, RoPE,
SiLU · up, residual adds) into single passes that keep their intermediates in fp32 registers instead of
rounding each one to bf16 in memory; the matmuls and the attention kernel stay aten's.

`nn.Module.compile` compiles in place: parameter names, state dicts, checkpoints, FSDP wrapping and
weight publishing see the same module tree. Shapes are dynamic (every microbatch has its own length), so
one compiled graph serves every step after the first; the first forward and backward pay the compile
(the trainer's first step time, reported apart by `vespo bench`'s study section)."""

from __future__ import annotations

from torch import nn

from ..errors import UserError


def compile_decoder_blocks(model: nn.Module) -> int:
    """Compile every decoder block of an HF causal LM in place; the number compiled."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        raise UserError(
            f"trainer.compile: true: {type(model).__name__} has no decoder blocks at model.model.layers "
            f"to compile (set trainer.compile: false)"
        )
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
