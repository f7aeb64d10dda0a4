"""The FLOP model (model FLOPs of a forward+backward) and the bf16 matmul peak MFU is measured against."""

from __future__ import annotations

import time


def model_shape(model) -> dict:
    """The shape the FLOP model needs, from a loaded HF causal LM."""
    c = model.config
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {
        "params": total,
        "decoder_params": total - embed - (0 if c.tie_word_embeddings else head),
        "head_params": head,
        "layers": c.num_hidden_layers,
        "attn_width": heads * head_dim,
    }


def shape_from_plan(ms) -> dict:
    """The same shape from `vespo plan`'s ModelShape (plan/models.py: exact counts from the model's
    config, no weights loaded), so the FLOP model prices any model the planner knows. Per token the
    decoder is the active parameters outside the root (embeddings, final norm, LM head; the final
    norm's `hidden` weights are the only difference from `model_shape`)."""
    return {
        "params": ms.params,
        "decoder_params": ms.active_params - ms.root_params + ms.hidden,
        "head_params": ms.vocab * ms.hidden,
        "layers": ms.layers,
        "attn_width": ms.heads * ms.head_dim,
    }


def train_flops(shape: dict, seq_lens: list[int], resp_lens: list[int], causal_discount: bool = False) -> float:
    """Model FLOPs of one forward+backward: 6·decoder_params per token, 6·vocab·d per response token
    (the LM head runs on response positions only), and attention 12·layers·width·L² per sequence:
    QKᵀ and AV, 4·L²·width forward, ×3 for backward, the convention of PaLM (appendix B), Megatron,
    nanoGPT and torchtitan, which do not discount causal masking. causal_discount=True halves the
    attention term (the FlashAttention papers' count; reported alongside). Padding and the
    backward's recomputation are not model FLOPs."""
    linear = 6 * shape["decoder_params"] * sum(seq_lens)
    head = 6 * shape["head_params"] * sum(resp_lens)
    return float(linear + head + shape["layers"] * attention_flops(shape["attn_width"], seq_lens, causal_discount))


def attention_flops(width: int, seq_lens: list[int], causal_discount: bool = False) -> int:
    """Forward+backward FLOPs of one attention layer of `width` (heads × head_dim) over sequences
    of `seq_lens`: 12·width·L² each, half that with causal_discount (see `train_flops`)."""
    return (6 if causal_discount else 12) * width * sum(L * L for L in seq_lens)


def matmul_peak(n: int, window_s: float = 1.0, dtype=None) -> tuple[float, float]:
    """(FLOP per wall second, FLOP per CPU second of this process) of back-to-back n×n×n
    torch.matmul (bf16 by default) over `window_s` seconds, after one warm-up product."""
    import torch

    dtype = dtype or torch.bfloat16
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    count, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        torch.matmul(a, b)
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= window_s:
            flops = 2 * n**3 * count
            return flops / elapsed, flops / max(time.process_time() - c0, 1e-9)
