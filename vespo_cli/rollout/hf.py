"""Rollout with plain HF transformers: a hand-written batched sampling loop.

Why not `model.generate`: we need (1) the log-probability of every sampled token under the raw
model distribution (temperature 1, no top-p/top-k), exactly as vLLM's `logprobs=0` reports it, and
(2) sampling from an explicit `torch.Generator`, never the global RNG. The loop does both; it
left-pads prompts, prefills each distinct prompt once and repeats its KV cache `n` times, and drops
finished rows from the batch as they stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os

import torch

from vespo_cli.errors import UserError
from vespo_cli.rollout.base import Completion, Sampling, request_seed


def process_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, top-k, top-p on fp32 logits [B, V] (tokens removed get -inf)."""
    logits = logits / sampling.temperature
    if sampling.top_k is not None and 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (the first is always kept)
        drop_sorted = (probs.cumsum(-1) - probs) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator], owner: torch.Tensor
) -> torch.Tensor:
    """One token per row of fp32 logits [B, V]; temperature 0 is greedy. Row r draws from
    `generators[owner[r]]` (its prompt's own stream; a prompt's rows are contiguous), so a prompt's
    samples do not depend on the other prompts in the batch."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = process_logits(logits, sampling).softmax(-1)
    prompts, counts = torch.unique_consecutive(owner, return_counts=True)
    parts, start = [], 0
    for p, c in zip(prompts.tolist(), counts.tolist()):
        parts.append(torch.multinomial(probs[start : start + c], 1, generator=generators[p]))
        start += c
    return torch.cat(parts).squeeze(-1)


def _validate(sampling: Sampling, n: int) -> None:
    if n < 1:
        raise UserError(f"rollout.n={n}: expected at least 1 sample per prompt")
    if sampling.temperature < 0:
        raise UserError(f"sampling.temperature={sampling.temperature}: expected >= 0")
    if not 0 < sampling.top_p <= 1:
        raise UserError(f"sampling.top_p={sampling.top_p}: expected 0 < top_p <= 1")
    if sampling.max_tokens < 1:
        raise UserError(f"sampling.max_tokens={sampling.max_tokens}: expected >= 1")


def read_safetensors_dir(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory (one or several *.safetensors files)."""
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(checkpoint_dir, "*.safetensors")))
    if not files:
        raise UserError(f"{checkpoint_dir}: no *.safetensors files (expected an HF checkpoint directory)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


@dataclasses.dataclass
class _Rows:
    """The completions of one chunk as they grow, indexed by completion row: sampled tokens, their raw
    logprobs, the experts behind each logprob (None unless recording routing), whether the row hit eos."""

    tokens: list[list[int]]
    logps: list[list[float]]
    routing: list[list[list[int]]] | None
    stopped: list[bool]

    @classmethod
    def empty(cls, rows: int, routing: bool) -> _Rows:
        return cls(
            tokens=[[] for _ in range(rows)],
            logps=[[] for _ in range(rows)],
            routing=[[] for _ in range(rows)] if routing else None,
            stopped=[False] * rows,
        )

    def add(self, alive: torch.Tensor, tok: torch.Tensor, tok_logp: torch.Tensor, is_eos: torch.Tensor, route) -> None:
        """One sampled token for each batch row; `alive` maps batch rows to completion rows."""
        for r, t, lp, e in zip(alive.tolist(), tok.tolist(), tok_logp.tolist(), is_eos.tolist()):
            self.tokens[r].append(t)
            self.logps[r].append(lp)
            self.stopped[r] = e
        if self.routing is not None:  # the experts behind the logits sampled from (this step's batch rows)
            for r, ids in zip(alive.tolist(), route.tolist()):
                self.routing[r].append(ids)


class HFEngine:
    """The `Engine` interface over an HF causal LM held in this process."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        max_batch_size: int = 256,
        trust_remote_code: bool = False,
        record_routing: bool = False,
    ):
        from vespo_cli.models import load_model, load_tokenizer

        model = load_model(model_path, dtype, trust_remote_code=trust_remote_code).to(device)
        tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        self._setup(model, tokenizer, seed=seed, max_batch_size=max_batch_size, record_routing=record_routing)

    @classmethod
    def from_module(
        cls, model: torch.nn.Module, tokenizer, seed: int = 0, max_batch_size: int = 256, record_routing: bool = False
    ) -> HFEngine:
        """Share an already-loaded model (e.g. the trainer's): no copy, weights stay live."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, seed=seed, max_batch_size=max_batch_size, record_routing=record_routing)
        return engine

    def _setup(self, model, tokenizer, seed: int, max_batch_size: int, record_routing: bool = False) -> None:
        from vespo_cli.models import eos_token_ids
        from vespo_cli.routing import moe_routers

        self.model = model
        # MoE routing replay: Completion.routing[t] = experts of the position that gave logprob t (routing.py)
        self.record_routing = bool(record_routing)
        if self.record_routing:
            moe_routers(model)  # a model we cannot capture fails here, not mid-rollout
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.max_batch_size = max(1, int(max_batch_size))
        self.eos_ids = eos_token_ids(model, tokenizer)
        if not self.eos_ids:
            raise UserError("model: no eos token id in generation_config, config or tokenizer")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._seed_stream = torch.Generator().manual_seed(int(seed))  # seeds for Sampling(seed=None)

    # -- weights --------------------------------------------------------------------------------

    def load_state_dict(self, state_dict) -> None:
        """Copy tensors (name → tensor, or an iterable of pairs) into the live model, casting dtype.
        Keys missing from `state_dict` must be tied aliases of keys present (e.g. lm_head.weight)."""
        state = dict(state_dict.items() if hasattr(state_dict, "items") else state_dict)
        own = self.model.state_dict()
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise UserError(f"weights: unexpected tensors {unexpected[:5]} (expected this model's parameter names)")
        loaded_ptrs = {own[k].data_ptr() for k in state}
        missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded_ptrs]
        if missing:
            raise UserError(f"weights: missing tensors {missing[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                if own[k].shape != v.shape:
                    raise UserError(f"weights: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
                own[k].copy_(v)

    def load_weights(self, checkpoint_dir: str) -> None:
        self.load_state_dict(read_safetensors_dir(checkpoint_dir))

    def close(self) -> None:
        self.model = None

    # -- sampling -------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling) -> list[Completion]:
        _validate(sampling, n)
        if any(len(p) == 0 for p in prompts):
            raise UserError("rollout: empty prompt (expected at least one token)")
        seed = sampling.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seed_stream))
        first = sampling.prompt_offset
        generators = [
            torch.Generator(device=self.device).manual_seed(request_seed(int(seed), first + i))
            for i in range(len(prompts))
        ]
        per_chunk = max(1, self.max_batch_size // n)  # whole prompts per forward batch
        out: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with self._capture() as rec:
                for start in range(0, len(prompts), per_chunk):
                    chunk = prompts[start : start + per_chunk]
                    gens = generators[start : start + per_chunk]
                    out.extend(self._generate_chunk(chunk, start, n, sampling, gens, rec))
        finally:
            self.model.train(was_training)
        return out

    def _capture(self):
        from vespo_cli.routing import capture_routing

        return capture_routing(self.model) if self.record_routing else contextlib.nullcontext()

    @torch.inference_mode()
    def _generate_chunk(self, prompts, offset, n, sampling, generators, rec=None) -> list[Completion]:
        cache, logits, route, mask, pos = self._prefill(prompts, rec)
        if n > 1:  # prefill once per prompt, then n rows per prompt (prompt-major order)
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            route = route.repeat_interleave(n, dim=0) if route is not None else None
            mask = mask.repeat_interleave(n, dim=0)
            pos = pos.repeat_interleave(n, dim=0)
        rows = self._decode(cache, logits, route, mask, pos, n, sampling, generators, rec)
        return [
            Completion(
                prompt_index=offset + r // n,
                sample_idx=r % n,
                prompt_token_ids=list(prompts[r // n]),
                response_token_ids=rows.tokens[r],
                rollout_logprobs=rows.logps[r],
                finish_reason="stop" if rows.stopped[r] else "length",
                text=self.tokenizer.decode(rows.tokens[r], skip_special_tokens=True),
                routing=rows.routing[r] if rows.routing is not None else None,
            )
            for r in range(len(rows.tokens))
        ]

    def _prefill(self, prompts, rec):
        """Left-pad the prompts and run them once: (KV cache, last-position fp32 logits, the experts behind
        them or None, attention mask, position ids)."""
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, logits = self._forward(
            DynamicCache(config=self.model.config),
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            logits_to_keep=1,
        )
        route = rec.take().view(len(prompts), width, -1)[:, -1] if rec is not None else None  # last prompt token
        return cache, logits, route, mask, pos

    def _forward(self, cache, **inputs):
        """One cached forward pass: (the updated KV cache, fp32 logits of each row's last position)."""
        out = self.model(past_key_values=cache, use_cache=True, **inputs)
        return out.past_key_values, out.logits[:, -1, :].float()

    def _decode(self, cache, logits, route, mask, pos, n, sampling, generators, rec) -> _Rows:
        """Sample up to max_tokens tokens per row (row r belongs to prompt r // n), one forward pass a token;
        rows that sampled an eos token leave the batch."""
        rows = _Rows.empty(mask.shape[0], routing=rec is not None)
        alive = torch.arange(mask.shape[0])  # batch row → completion row
        next_pos = pos[:, -1:] + 1
        eos = torch.tensor(self.eos_ids, device=self.device)
        for step in range(sampling.max_tokens):
            logp_raw = torch.log_softmax(logits, dim=-1)
            tok = sample_tokens(logits, sampling, generators, torch.div(alive, n, rounding_mode="floor"))
            is_eos = torch.isin(tok, eos)
            rows.add(alive, tok, logp_raw.gather(-1, tok[:, None]).squeeze(-1), is_eos, route)
            if step + 1 == sampling.max_tokens:
                break
            keep = (~is_eos).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            if keep.numel() < alive.numel():
                cache.batch_select_indices(keep)
                alive, tok, mask, next_pos = alive[keep.cpu()], tok[keep], mask[keep], next_pos[keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            cache, logits = self._forward(cache, input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos)
            route = rec.take() if rec is not None else None
            next_pos = next_pos + 1
        return rows
