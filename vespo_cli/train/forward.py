"""Per-token log-probabilities (and entropy) of response tokens under the trainer's model.

Logits are computed only at response positions (the decoder's hidden states go through the LM
head for those rows alone), and log-softmax is fused with the gather: logp = z[y] − logsumexp(z).

The LM head, log-softmax and gather run chunk by chunk in one autograd function
(`head_logprobs`), so the fp32 [num_response_tokens, vocab] logits are never materialised: the
forward keeps only logsumexp per row (and the head weight cast once to the compute dtype); the
backward recomputes each chunk's logits, forms ∂logp/∂z = onehot(y) − softmax(z) in place, and
collects ∂z in the compute dtype (2 bytes per logit under bf16, in blocks of at most
GRAD_BLOCK_BYTES) for one ∂W matmul per block. That trades one extra head matmul (2·N·V·d FLOPs)
for ~10 fewer passes over an fp32 [N, V] tensor and 12 → ≤2 bytes per logit of peak memory. Under
autocast the matmuls run in the autocast dtype exactly as `nn.Linear` would; softmax statistics
are fp32.

Under FSDP2 the root module (embeddings, final norm, LM head) holds its parameters as shards
outside its forward, so the same computation runs as a registered forward method of the root
(`torch.distributed.fsdp.register_fsdp_forward_method`): FSDP gathers the root's parameters (the
head once per microbatch), the decoder layers gather their own through their hooks, and the
head's gradient reaches the root's reduce-scatter like `nn.Linear`'s would.

The decoder runs without an attention mask on right-padded microbatches (`decoder_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn

from .batch import Microbatch

CHUNK_BYTES = 32 * 2**20  # fp32 logits per chunk: 32 MiB → 170 rows at vocab 49152
GRAD_BLOCK_BYTES = 256 * 2**20  # backward: ∂z rows (compute dtype) gathered for one ∂W matmul: 2730 rows in bf16


def decoder_and_head(model: nn.Module):
    """(decoder, lm_head) for HF causal LMs that expose them, else (None, None)."""
    head = getattr(model, "lm_head", None)
    decoder = getattr(model, "model", None)
    if isinstance(head, nn.Module) and isinstance(decoder, nn.Module):
        return decoder, head
    return None, None


def _is_sharded(model: nn.Module) -> bool:
    return type(model).__name__.startswith("FSDP")


def _chunk_rows(vocab: int) -> int:
    return max(16, CHUNK_BYTES // (4 * vocab))


class _HeadLogprobs(torch.autograd.Function):
    """logp[i] = s_i[y_i] − logsumexp(s_i) with s_i = (h_i · Wᵀ + b) / τ, chunked over rows i.

    Outputs (logp [N] fp32, entropy [N] fp32 or empty; entropy is not differentiable)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_temp: float, compute_dtype, want_entropy: bool):
        n, vocab = hidden.shape[0], weight.shape[0]
        step = _chunk_rows(vocab)
        w = weight.to(compute_dtype)  # kept for backward: one cast of the head per forward+backward
        b = bias.to(compute_dtype) if bias is not None else None
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n if want_entropy else 0, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, step):
            e = min(s + step, n)
            z = _chunk_logits(hidden[s:e], w, b, inv_temp)
            lse_c = torch.logsumexp(z, dim=-1)
            lse[s:e] = lse_c
            logp[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lse_c
            if want_entropy:  # H = lse − Σ p·z with p = exp(z − lse)
                ent[s:e] = lse_c - torch.exp(z - lse_c[:, None]).mul_(z).sum(-1)
        ctx.save_for_backward(hidden, w, b, targets, lse)
        ctx.inv_temp, ctx.weight_dtype = inv_temp, weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        hidden, w, b, targets, lse = ctx.saved_tensors
        inv_temp = ctx.inv_temp
        n, vocab = hidden.shape[0], w.shape[0]
        step = _chunk_rows(vocab)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=w.device) if need_b else None
        g = grad_logp.float() * inv_temp
        h_all = hidden.to(w.dtype)
        block = max(step, GRAD_BLOCK_BYTES // (w.element_size() * vocab)) // step * step
        for bs in range(0, n, block):  # ∂W for a block of rows in one matmul, from its ∂z in the compute dtype
            be = min(bs + block, n)
            gz_block = torch.empty((be - bs, vocab), dtype=w.dtype, device=w.device) if need_w else None
            for s in range(bs, be, step):
                e = min(s + step, be)
                z = _chunk_logits(h_all[s:e], w, b, inv_temp)
                # ∂logp/∂s = onehot(y) − softmax(s), times the upstream gradient and ∂s/∂(hWᵀ+b) = 1/τ
                gz = torch.exp_(z.sub_(lse[s:e, None])).mul_(-g[s:e, None])
                gz[torch.arange(e - s, device=gz.device), targets[s:e]] += g[s:e]
                if need_b:
                    grad_b += gz.sum(0)
                gz_c = gz.to(w.dtype)
                if need_h:
                    grad_h[s:e] = gz_c @ w
                if need_w:
                    gz_block[s - bs : e - bs] = gz_c
            if need_w:
                grad_w += gz_block.t() @ h_all[bs:be]
        return (
            grad_h,
            grad_w.to(ctx.weight_dtype) if need_w else None,
            grad_b.to(ctx.bias_dtype) if need_b else None,
            None,
            None,
            None,
            None,
        )


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, inv_temp: float) -> torch.Tensor:
    """fp32 logits / τ of a chunk of rows (matmul in w's dtype, like nn.Linear under autocast)."""
    z = h.to(w.dtype) @ w.t()
    if b is not None:
        z += b
    z = z.float()
    if inv_temp != 1.0:
        z.mul_(inv_temp)
    return z


def head_logprobs(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp [N], entropy [N] or None) of `targets` under `head(hidden) / temperature`, chunked."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, head.weight.dtype)
    with torch.autocast(device_type, enabled=False):
        logp, ent = _HeadLogprobs.apply(
            hidden, head.weight, head.bias, targets, 1.0 / temperature, compute_dtype, with_entropy
        )
    return logp, (ent if with_entropy else None)


def response_logits(model: nn.Module, mb: Microbatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits predicting each response token: [num_response_tokens, vocab] (masked rows only).

    Materialises every response row's fp32 logits: the reference path (heads that are not a plain
    nn.Linear); `token_logprobs` avoids it where it can."""
    decoder, head = decoder_and_head(model)
    # position p predicts token p+1: the rows that predict response tokens
    predict = mb.response_mask[:, 1:]
    if decoder is not None and not _is_sharded(model):
        logits = head(response_hidden(decoder, mb))
    else:  # the root forward (FSDP's hooks gather parameters there); logits for the response span only
        start = max(int(mb.response_mask.float().argmax(-1).min()) - 1, 0)
        out = model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            position_ids=mb.position_ids,
            use_cache=False,
            logits_to_keep=mb.input_ids.shape[1] - start,
        )
        logits = out.logits[:, :-1][predict[:, start:]]
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def decoder_inputs(mb: Microbatch) -> dict:
    """input_ids / attention_mask / position_ids for the decoder.

    When every row is right-padded (tokens first, padding after: `make_microbatch`'s layout) the mask
    is dropped and positions run on through the padding: plain causal attention gives every real token
    exactly the keys and positions the padding mask would (all earlier tokens are real), and SDPA takes
    its mask-free causal kernel, which skips the masked half instead of reading a [b, 1, L, L] mask
    (transformers builds one whenever a mask has a zero or positions do not step by one, as they don't
    over padding). Padding positions then see real tokens, but nothing reads their outputs."""
    m = mb.attention_mask
    b, L = m.shape
    if L > 1 and bool((m[:, 1:] <= m[:, :-1]).all()) and bool((m[:, 0] == 1).all()):
        pos = torch.arange(L, device=m.device).expand(b, L)
        return {"input_ids": mb.input_ids, "attention_mask": None, "position_ids": pos}
    return {"input_ids": mb.input_ids, "attention_mask": m, "position_ids": mb.position_ids}


def response_hidden(decoder: nn.Module, mb: Microbatch) -> torch.Tensor:
    """Final hidden states at the positions that predict response tokens: [num_response_tokens, d]."""
    hidden = decoder(**decoder_inputs(mb), use_cache=False).last_hidden_state
    return hidden[:, :-1][mb.response_mask[:, 1:]]


def shared_prompt_hidden(decoder: nn.Module, mb: Microbatch, prompt_len: int) -> torch.Tensor:
    """`response_hidden` of right-padded rows that share their first `prompt_len` tokens (one prompt group):
    the prompt runs once, at batch 1, and its keys and values serve every row (autograd sums the rows'
    gradients through them), so a group of n responses costs one prompt, not n."""
    b, L = mb.input_ids.shape
    prompt = decoder(input_ids=mb.input_ids[:1, :prompt_len], use_cache=True)
    cache = prompt.past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):  # a model without a (dynamic) KV cache: the full forward
        return response_hidden(decoder, mb)
    cache.batch_repeat_interleave(b)
    pos = torch.arange(prompt_len, L, device=mb.input_ids.device).expand(b, L - prompt_len)  # as decoder_inputs
    rest = decoder(input_ids=mb.input_ids[:, prompt_len:], position_ids=pos, past_key_values=cache, use_cache=True)
    hidden = torch.cat([prompt.last_hidden_state[:, -1:].expand(b, 1, -1), rest.last_hidden_state], dim=1)
    return hidden[:, :-1][mb.response_mask[:, prompt_len:]]  # positions prompt_len − 1 … L − 2


_ROOT_METHOD = "vespo_response_logprobs"


def _response_logprobs(model: nn.Module, mb: Microbatch, targets, temperature: float, with_entropy: bool):
    """Chunked (logp [N], entropy [N] or empty) of the response tokens: decoder, then `head_logprobs`."""
    decoder, head = decoder_and_head(model)
    logp, ent = head_logprobs(response_hidden(decoder, mb), head, targets, temperature, with_entropy)
    return logp, (ent if with_entropy else logp.new_empty(0))


def _sharded_response_logprobs(model: nn.Module):
    """`_response_logprobs` bound to an FSDP2 root as a registered forward method (installed once)."""
    method = getattr(model, _ROOT_METHOD, None)
    if method is None:
        from torch.distributed.fsdp import register_fsdp_forward_method

        setattr(model, _ROOT_METHOD, _response_logprobs.__get__(model))
        register_fsdp_forward_method(model, _ROOT_METHOD)
        method = getattr(model, _ROOT_METHOD)
    return method


def token_logprobs(model: nn.Module, mb: Microbatch, temperature: float = 1.0, with_entropy: bool = False):
    """Return (logp [b, T_resp], entropy [b, T_resp] or None) aligned with mb.response_mask_packed."""
    targets = mb.input_ids[:, 1:][mb.response_mask[:, 1:]]
    decoder, head = decoder_and_head(model)
    if decoder is not None and type(head) is nn.Linear:
        chunked = _sharded_response_logprobs(model) if _is_sharded(model) else _response_logprobs.__get__(model)
        flat_logp, flat_ent = chunked(mb, targets, temperature, with_entropy)
        return mb.unflatten(flat_logp), (mb.unflatten(flat_ent) if with_entropy else None)
    flat_logp, flat_ent = logits_logprobs(response_logits(model, mb, temperature), targets, with_entropy)
    return mb.unflatten(flat_logp), (mb.unflatten(flat_ent) if with_entropy else None)


def logits_logprobs(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False):
    """(logp [N], entropy [N] or None) of `targets` from materialised logits [N, vocab]: the
    reference path, logp = z[y] − logsumexp(z); entropy carries no gradient."""
    lse = torch.logsumexp(logits, dim=-1)
    flat_logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return flat_logp, None
    with torch.no_grad():
        probs = torch.exp(logits.detach() - lse.detach().unsqueeze(-1))
        return flat_logp, lse.detach() - (probs * logits.detach()).sum(-1)
