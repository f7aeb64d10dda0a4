"""MoE routing capture and replay (R2, docs/objectives.md "Routing replay") for HF transformers models.

The rollout engine records, for every response token, the experts its logits were computed with;
the trainer forces the same experts when it recomputes log-probabilities, so that old_logp and
logp differ by parameters, not by which experts a drifted (or numerically noisy) router picked.

Alignment. `routing[t]` (shard column `routing`, `Completion.routing`) belongs to the forward
position whose logits gave `rollout_logprobs[t]`: the last prompt token for t = 0, response token
t−1 otherwise. It is a flat list of `num_moe_layers × top_k` expert ids, layer-major (layer 0's k
ids, then layer 1's, ...), in the router's own top-k order.

Prompt tokens. Routing of prompt positions (except the last) is not stored: they route freely in
the trainer, i.e. with the trainer's current router. The response positions (and the last prompt
position) replay. The last response token's own position routes freely too: nothing reads it.
Consequence: when the router has drifted, the prompt's hidden states can still differ from the
rollout's, so replay removes the routing noise of the response span, not all of it.

Gate weights. Replay forces only the choice of experts. Their mixing weights are recomputed from
the current router logits, exactly as the model does it (softmax over all experts in fp32, gather
the forced k, renormalise when the router's `norm_topk_prob` is set — Mixtral always does), so the
router still gets gradients through the gate values; only the discrete top-k is frozen.

vLLM. Only the HF engine records routing. vLLM 0.32 can return it (`LLM(enable_return_routed_experts=
True)` → `CompletionOutput.routed_experts`, [tokens, layers, top_k]; `SamplingParams(
routed_experts_prompt_start=len(prompt) - 1)` gives exactly the rows of the convention above), but only
with its V2 model runner (`VLLM_USE_V2_MODEL_RUNNER=1`), which needs Triton, i.e. CUDA: not on the CPU
backend, and not wired into `rollout/vllm.py`. So `train` with `algorithm.routing_replay: true` and
`rollout.engine: vllm` stops at start with a one-line `UserError`.

Supported routers: the softmax-then-top-k routers of transformers 5 (`Qwen3MoeTopKRouter`,
`Qwen2MoeTopKRouter`, `Qwen3NextTopKRouter`, `OlmoeTopKRouter`, `MixtralTopKRouter`). They return
`(router_logits, top_k_weights, top_k_index)` over the flattened `batch × seq` tokens; capture and
replay are forward hooks on them. Other MoE families raise a `UserError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .errors import UserError

SOFTMAX_TOPK_ROUTERS = frozenset(
    {"Qwen3MoeTopKRouter", "Qwen2MoeTopKRouter", "Qwen3NextTopKRouter", "OlmoeTopKRouter", "MixtralTopKRouter"}
)
FREE = -1  # in a forced-routing tensor: this position routes with the current router


def moe_routers(model: nn.Module) -> list[nn.Module]:
    """The model's MoE routers in layer order; a `UserError` when it has none we can replay."""
    routers = [m for m in model.modules() if type(m).__name__.removeprefix("FSDP") in SOFTMAX_TOPK_ROUTERS]
    if not routers:
        other = sorted({type(m).__name__ for m in model.modules() if "router" in type(m).__name__.lower()})
        what = f"its routers ({', '.join(other)}) are not supported" if other else "it has no MoE router"
        raise UserError(
            f"model.moe / algorithm.routing_replay: cannot capture routing of "
            f"{type(model).__name__}: {what} (supported: {', '.join(sorted(SOFTMAX_TOPK_ROUTERS))})"
        )
    if len({int(r.top_k) for r in routers}) != 1:
        raise UserError(f"{type(model).__name__}: MoE layers with different top_k are not supported by routing replay")
    if max(int(r.num_experts) for r in routers) > 2**15:
        raise UserError(f"{type(model).__name__}: more than 32768 experts do not fit the int16 shard column `routing`")
    return routers


def routing_width(model: nn.Module) -> tuple[int, int]:
    """(number of MoE layers, top_k): one token's routing has `layers * top_k` ids."""
    routers = moe_routers(model)
    return len(routers), int(routers[0].top_k)


class RoutingRecorder:
    """Expert ids chosen by every MoE layer in the latest forward (see `capture_routing`)."""

    def __init__(self, routers: list[nn.Module]):
        self.num_layers = len(routers)
        self.top_k = int(routers[0].top_k)
        self._ids: list[torch.Tensor | None] = [None] * self.num_layers

    def _hook(self, layer: int):
        def hook(module, args, output):
            self._ids[layer] = output[2].detach()

        return hook

    def take(self) -> torch.Tensor:
        """[num_tokens, num_layers * top_k] int64 expert ids of the latest forward (tokens in the
        row-major order of its `batch × seq` input, layer-major per token); then forgets them."""
        if any(x is None for x in self._ids):
            raise RuntimeError("routing recorder: no complete forward since the last take()")
        ids = torch.stack(self._ids, dim=1)  # [N, layers, k]
        self._ids = [None] * self.num_layers
        return ids.reshape(ids.shape[0], -1)


@contextlib.contextmanager
def capture_routing(model: nn.Module) -> Iterator[RoutingRecorder]:
    """Record the top-k expert ids each MoE layer chooses; `recorder.take()` after each forward.

    Registered after a `replay_routing` on the same model, it records the replayed (forced) ids."""
    routers = moe_routers(model)
    rec = RoutingRecorder(routers)
    handles = [r.register_forward_hook(rec._hook(i)) for i, r in enumerate(routers)]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def _replay_hook(forced: torch.Tensor):
    """Forward hook forcing `forced` [N, k] expert ids (rows of FREE route as computed)."""

    def hook(module, args, output):
        logits, scores, idx = output[0], output[1], output[2]
        if forced.shape != idx.shape:
            raise RuntimeError(
                f"routing replay: forced routing for {tuple(forced.shape)} (tokens, k), "
                f"the router saw {tuple(idx.shape)}"
            )
        want = forced.to(device=idx.device, dtype=idx.dtype)
        pinned = (want >= 0).all(-1, keepdim=True)
        new_idx = torch.where(pinned, want, idx)
        weights = torch.softmax(logits.float(), dim=-1).gather(-1, new_idx)
        if getattr(module, "norm_topk_prob", True):
            weights = weights / weights.sum(dim=-1, keepdim=True)
        new_scores = torch.where(pinned, weights.to(scores.dtype), scores)
        return (logits, new_scores, new_idx, *output[3:])

    return hook


@contextlib.contextmanager
def replay_routing(model: nn.Module, forced: torch.Tensor) -> Iterator[None]:
    """Force MoE expert choices in every forward run inside the context (backward recomputation
    under gradient checkpointing included, as long as it happens inside the context).

    `forced`: [batch, seq, layers * top_k] (or [batch, seq, layers, top_k]) integer expert ids for
    the model's next inputs of exactly that [batch, seq]; `FREE` (−1) where the position routes with
    the current router. Gate weights are the current router's softmax over the forced experts,
    renormalised as the model does (`norm_topk_prob`), so the router still learns; only the choice
    is frozen."""
    routers = moe_routers(model)
    layers, k = len(routers), int(routers[0].top_k)
    forced = forced.reshape(forced.shape[0], forced.shape[1], layers, k)
    ids = forced[forced >= 0]
    num_experts = min(int(r.num_experts) for r in routers)
    if ids.numel() and int(ids.max()) >= num_experts:
        raise UserError(
            f"routing: expert id {int(ids.max())} out of range (the model has {num_experts} experts per layer)"
        )
    if ((forced >= 0).any(-1) != (forced >= 0).all(-1)).any():
        raise UserError("routing: a token has some but not all expert ids of a layer (negative ids)")
    device = routers[0].weight.device
    per_layer = [forced[:, :, i, :].reshape(-1, k).to(device=device, dtype=torch.long) for i in range(layers)]
    handles = [r.register_forward_hook(_replay_hook(per_layer[i])) for i, r in enumerate(routers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forced_routing(mb, num_layers: int, top_k: int) -> torch.Tensor:
    """[b, L, num_layers * top_k] int32 forced routing of a trainer microbatch (`train.batch.Microbatch`,
    right-padded rows, `mb.routing` per row = the shard's per-response-token lists): response token
    t's routing goes to the position that predicts it (prompt length − 1 + t); the rest is FREE."""
    b, L = mb.input_ids.shape
    width = num_layers * top_k
    out = torch.full((b, L, width), FREE, dtype=torch.int32)
    if mb.routing is None or any(r is None for r in mb.routing):
        raise UserError(
            "algorithm.routing_replay: true, but rollout rows carry no routing (shard column "
            "`routing` is empty); record it with rollout.engine=hf and algorithm.routing_replay=true"
        )
    for r, route in enumerate(mb.routing):
        resp = mb.response_mask[r].nonzero().squeeze(-1)
        if len(route) != len(resp):
            raise UserError(
                f"routing: row {mb.rows[r]} has routing for {len(route)} tokens, "
                f"expected one per response token ({len(resp)})"
            )
        if not len(route):
            continue
        ids = torch.tensor(route, dtype=torch.int32)
        if ids.ndim != 2 or ids.shape[1] != width:
            got = ids.shape[1] if ids.ndim == 2 else "ragged"
            raise UserError(
                f"routing: row {mb.rows[r]} has {got} expert ids per token, expected "
                f"{num_layers} MoE layers x top-{top_k} = {width} for this model"
            )
        start = int(resp[0]) - 1
        out[r, start : start + len(route)] = ids
    return out


@contextlib.contextmanager
def replay_microbatch(model: nn.Module, mb) -> Iterator[None]:
    """`replay_routing` with a trainer microbatch's recorded routing (see `forced_routing`)."""
    layers, k = routing_width(model)
    with replay_routing(model, forced_routing(mb, layers, k)):
        yield
