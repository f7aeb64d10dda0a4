"""Per-token log-probabilities (and entropy) of response tokens under the trainer's model.

Logits are computed only at response positions (the decoder's hidden states go through the LM
head for those rows alone), and log-softmax is fused with the gather: logp = z[y] − logsumexp(z).
The entropy metric reuses the same logsumexp, so the full softmax is materialised once, not twice.
"""
from __future__ import annotations

import torch
from torch import nn

from .batch import Microbatch


def _decoder_and_head(model: nn.Module):
    """(decoder, lm_head) for HF causal LMs that expose them, else (None, None)."""
    head = getattr(model, "lm_head", None)
    decoder = getattr(model, "model", None)
    if isinstance(head, nn.Module) and isinstance(decoder, nn.Module):
        return decoder, head
    return None, None


def response_logits(model: nn.Module, mb: Microbatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits predicting each response token: [num_response_tokens, vocab] (masked rows only)."""
    decoder, head = _decoder_and_head(model)
    # position p predicts token p+1: the rows that predict response tokens
    predict = mb.response_mask[:, 1:]
    if decoder is not None and not _is_sharded(model):
        hidden = decoder(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                         position_ids=mb.position_ids, use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][predict])
    else:  # the root forward (FSDP's hooks gather parameters there); logits for the response span only
        start = max(int(mb.response_mask.float().argmax(-1).min()) - 1, 0)
        out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                    use_cache=False, logits_to_keep=mb.input_ids.shape[1] - start)
        logits = out.logits[:, :-1][predict[:, start:]]
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def _is_sharded(model: nn.Module) -> bool:
    return type(model).__name__.startswith("FSDP")


def token_logprobs(model: nn.Module, mb: Microbatch, temperature: float = 1.0, with_entropy: bool = False):
    """Return (logp [b, T_resp], entropy [b, T_resp] or None) aligned with mb.response_mask_packed."""
    logits = response_logits(model, mb, temperature)
    targets = mb.input_ids[:, 1:][mb.response_mask[:, 1:]]
    lse = torch.logsumexp(logits, dim=-1)
    flat_logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.exp(logits.detach() - lse.detach().unsqueeze(-1))
            flat_ent = lse.detach() - (probs * logits.detach()).sum(-1)
        entropy = mb.unflatten(flat_ent)
    return mb.unflatten(flat_logp), entropy
