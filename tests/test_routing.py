"""MoE routing capture and replay (R2) on a tiny random Qwen3-MoE: the HF engine records the experts
behind every rollout logprob, the routing survives a shard and the trainer's batching, and the
trainer's recompute forces those experts even after the router has drifted."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import make_shard_rows

from vespo_cli.config import Config, load_config
from vespo_cli.errors import UserError
from vespo_cli.rollout.base import Sampling
from vespo_cli.rollout.hf import HFEngine
from vespo_cli.routing import (
    capture_routing,
    forced_routing,
    moe_routers,
    replay_microbatch,
    replay_routing,
    routing_width,
)
from vespo_cli.shards import read_shard, write_shard
from vespo_cli.train.batch import make_microbatch, rows_from_table
from vespo_cli.train.forward import token_logprobs
from vespo_cli.train.step import compute_logprobs, old_logprobs

LAYERS, EXPERTS = 2, 4


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def moe_model(vocab: int, top_k: int = 2, seed: int = 0, router_std: float = 1.0):
    """Tiny random Qwen3-MoE (fp32); router weights ~ N(0, router_std²) (router logits' std ≈ 8 · router_std)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=EXPERTS,
        num_experts_per_tok=top_k,
        norm_topk_prob=True,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for r in moe_routers(model):
            r.weight.normal_(0.0, router_std)
    return model


def drift_routers(model, scale: float, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r in moe_routers(model):
            r.weight.add_(scale * torch.randn(r.weight.shape, generator=g))


def rollout(model, tokenizer, prompts, n=2, max_tokens=8):
    engine = HFEngine.from_module(model, tokenizer, seed=0, record_routing=True)
    return engine.generate(prompts, n, Sampling(temperature=1.0, max_tokens=max_tokens, seed=0))


def shard_rows(completions, tmp_path):
    """Completions → shard file → trainer Rows (the real round trip)."""
    k = len(completions)
    cols = make_shard_rows(
        k,
        prompt_id=[f"p{c.prompt_index}" for c in completions],
        group_id=[f"g{c.prompt_index}" for c in completions],
        sample_idx=[c.sample_idx for c in completions],
        prompt_token_ids=[c.prompt_token_ids for c in completions],
        response_token_ids=[c.response_token_ids for c in completions],
        rollout_logprobs=[c.rollout_logprobs for c in completions],
        reward=[0.0] * k,
        finish_reason=[c.finish_reason for c in completions],
        routing=[c.routing for c in completions],
    )
    path = write_shard(cols, tmp_path / "v000000-test-000000.parquet")
    return rows_from_table(read_shard(path))


def trainer_cfg(replay: bool) -> Config:
    cfg = Config()
    cfg.algorithm.routing_replay = replay
    cfg.rollout.temperature = 1.0
    cfg.trainer.micro_token_budget = 64  # several microbatches
    return cfg


def logprob_gap(model, rows, replay: bool) -> float:
    """max |trainer old_logp − engine rollout_logprobs| over every response token."""
    old = old_logprobs(model, rows, trainer_cfg(replay))
    return max(float((o - torch.tensor(rows.rollout_logprobs[i])).abs().max()) for i, o in enumerate(old))


def trainer_choices(model, rows, replay: bool):
    """(experts the trainer's forward chose, experts recorded at rollout) at the replayed positions."""
    mb = make_microbatch(rows, list(range(len(rows))))
    forced = forced_routing(mb, *routing_width(model))
    replaying = replay_microbatch(model, mb) if replay else contextlib.nullcontext()
    with replaying, capture_routing(model) as rec, torch.no_grad():  # registered after replay: sees forced ids
        token_logprobs(model, mb)
        got = rec.take().view(forced.shape)
    pinned = forced[..., 0] >= 0
    assert int(pinned.sum()) == sum(len(r) for r in rows.response_ids)
    return got[pinned], forced[pinned].long()


def rerouted(got: torch.Tensor, recorded: torch.Tensor) -> torch.Tensor:
    """Per position: some layer chose another *set* of experts (the order within top-k is irrelevant)."""
    as_set = lambda x: x.view(len(x), LAYERS, -1).sort(-1).values  # noqa: E731
    return (as_set(got) != as_set(recorded)).flatten(1).any(-1)


@pytest.fixture(scope="module")
def vocab(tokenizer) -> int:
    return len(tokenizer)


def test_engine_records_routing_and_it_round_trips(tokenizer, chat_prompts, vocab, tmp_path):
    model = moe_model(vocab)
    comps = rollout(model, tokenizer, chat_prompts[:2], n=2, max_tokens=8)
    for c in comps:  # one entry per response token, layers × top-k ids each
        assert len(c.routing) == len(c.response_token_ids)
        assert all(len(ids) == LAYERS * 2 and all(0 <= e < EXPERTS for e in ids) for ids in c.routing)
    rows = shard_rows(comps, tmp_path)
    assert rows.routing == [c.routing for c in comps]
    mb = make_microbatch(rows, [3, 0])
    assert mb.routing == [comps[3].routing, comps[0].routing]
    # alignment: the trainer's own (free) choices at the replayed positions are the recorded ones
    got, recorded = trainer_choices(model, rows, replay=False)
    assert torch.equal(got, recorded)
    # same weights: old_logp = the engine's logprobs, with or without replay
    assert logprob_gap(model, rows, replay=True) < 1e-5
    assert logprob_gap(model, rows, replay=False) < 1e-5


def test_replay_forces_recorded_experts_after_router_drift(tokenizer, chat_prompts, vocab, tmp_path):
    """A small drift of a soft router (top-2 of 4): some tokens get other experts without replay, none
    with it; what replay leaves is the drift of the gate values and of the (free) prompt positions."""
    model = moe_model(vocab, top_k=2, router_std=0.15)
    rows = shard_rows(rollout(model, tokenizer, chat_prompts[:2], n=2, max_tokens=16), tmp_path)
    drift_routers(model, 0.005)
    free, recorded = trainer_choices(model, rows, replay=False)
    changed = float(rerouted(free, recorded).float().mean())
    assert changed > 0  # the drifted router picks other experts for some response positions
    forced, recorded = trainer_choices(model, rows, replay=True)
    assert torch.equal(forced, recorded)
    gap_free, gap_replay = logprob_gap(model, rows, False), logprob_gap(model, rows, True)
    print(
        f"top-2: {changed:.1%} of replayed positions rerouted without replay; max |old_logp - rollout_logp| "
        f"free {gap_free:.3g}, replay {gap_replay:.3g}"
    )
    assert gap_free > 0.05
    assert gap_replay < gap_free / 3


def test_replay_is_exact_when_every_read_position_is_pinned(tokenizer, vocab, tmp_path):
    """One-token prompts (the last prompt position is replayed) and top-1 routing (gate weight ≡ 1
    after renormalisation): replay reproduces the rollout's forward exactly, whatever the drift."""
    model = moe_model(vocab, top_k=1)
    rows = shard_rows(rollout(model, tokenizer, [[1], [17]], n=3, max_tokens=10), tmp_path)
    drift_routers(model, 1.0)
    free, recorded = trainer_choices(model, rows, replay=False)
    assert (free != recorded).any()
    gap_free, gap_replay = logprob_gap(model, rows, False), logprob_gap(model, rows, True)
    print(f"top-1, 1-token prompts: max |old_logp - rollout_logp| free {gap_free:.3g}, replay {gap_replay:.3g}")
    assert gap_free > 0.05
    assert gap_replay < 1e-5


def test_replay_holds_through_backward_with_gradient_checkpointing(tokenizer, chat_prompts, vocab, tmp_path):
    model = moe_model(vocab, top_k=2)
    rows = shard_rows(rollout(model, tokenizer, chat_prompts[:2], n=2, max_tokens=6), tmp_path)
    drift_routers(model, 0.5)
    model.train()

    def grads(replay: bool, checkpointing: bool) -> torch.Tensor:
        if checkpointing:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
        model.zero_grad(set_to_none=True)
        for mb, logp, _ in compute_logprobs(model, rows, list(range(len(rows))), trainer_cfg(replay), False, True):
            (logp * mb.mask).sum().backward()  # backward runs while the generator holds the replay
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    plain = grads(True, False)
    assert torch.allclose(grads(True, True), plain, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(grads(False, False), plain, atol=1e-5, rtol=1e-4)
    router_grad = sum(float(r.weight.grad.abs().sum()) for r in moe_routers(model))
    assert router_grad > 0  # gate values still come from the router


def test_bad_routing_is_a_user_error(tokenizer, vocab, tmp_path):
    model = moe_model(vocab)
    rows = shard_rows(rollout(model, tokenizer, [[1, 5]], n=1, max_tokens=3), tmp_path)
    mb = make_microbatch(rows, [0])
    with pytest.raises(UserError, match="expert ids per token"):
        forced_routing(mb, 3, 2)
    mb.routing = [mb.routing[0][:-1]]
    with pytest.raises(UserError, match="response token"):
        forced_routing(mb, LAYERS, 2)
    mb.routing = None
    with pytest.raises(UserError, match="carry no routing"):
        forced_routing(mb, LAYERS, 2)
    bad = torch.full((1, 2, LAYERS * 2), EXPERTS, dtype=torch.int32)
    with pytest.raises(UserError, match="out of range"):
        with replay_routing(model, bad):
            pass


def test_dense_model_and_vllm_engine_are_refused(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from vespo_cli.train.loop import train

    dense = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with pytest.raises(UserError, match="no MoE router"):
        HFEngine.from_module(dense, tokenizer, record_routing=True)
    HFEngine.from_module(dense, tokenizer)  # recording off: fine
    cfg = load_config("tiny", overrides=["rollout.engine=vllm", "model.moe=true", "algorithm.routing_replay=true"])
    with pytest.raises(UserError, match="routing_replay.*rollout.engine=hf"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
