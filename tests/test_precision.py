"""train/precision.py: bf16 compute weights with fp32 masters and fp32 gradient accumulation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_shard_rows
from tolerance import chain_rtol
from torch import nn
from torch.utils.checkpoint import checkpoint

from vespo_cli.train.precision import bf16_params


def _net(tied: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 11, bias=False))
    if tied:
        net[3].weight = net[0].weight
    return net


def _loss(net: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return net(ids).float().log_softmax(-1).mean()


def _bf16_grads_by_hand(net: nn.Module, batches) -> dict[str, torch.Tensor]:
    """What bf16_params must give: each microbatch's gradient from a bf16 copy, summed in fp32."""
    copy = _net(tied=net[3].weight is net[0].weight)
    copy.load_state_dict(net.state_dict())
    copy.to(torch.bfloat16)
    total: dict[str, torch.Tensor] = {}
    for ids in batches:
        copy.zero_grad(set_to_none=True)
        _loss(copy, ids).backward()
        for name, p in copy.named_parameters():
            total[name] = total.get(name, 0) + p.grad.float()
    return total


@pytest.mark.parametrize("tied", [False, True])
def test_gradients_are_the_fp32_sum_of_bf16_microbatch_gradients(tied):
    net = _net(tied)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7, 8, 9, 10]])]
    expected = _bf16_grads_by_hand(net, batches)
    with bf16_params(net):
        assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
        for ids in batches:
            _loss(net, ids).backward()
            assert all(p.grad is None for p in net.parameters())  # moved into the fp32 accumulators
    for name, p in net.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, expected[name], rtol=0, atol=0)
        assert torch.equal(p.detach(), before[name])  # the fp32 masters come back bit for bit


def test_gradients_are_close_to_fp32_and_add_to_an_existing_grad():
    net, ref = _net(), _net()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    _loss(ref, ids).backward()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    with bf16_params(net):
        _loss(net, ids).backward()
    # bf16 roundings in sequence: embedding, Linear, tanh, Linear forward and their four backwards;
    # elementwise on the scale of each gradient (a small entry is the sum of larger terms)
    rtol = chain_rtol(8)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad - 1.0, q.grad, rtol=rtol, atol=rtol * q.grad.abs().max().item())


def test_gradient_checkpointing_recomputes_in_bf16_inside():
    net, ref = _net(), _net()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with bf16_params(net):
        h = net[0](ids)
        out = checkpoint(lambda x: net[2](net[1](x)), h, use_reentrant=False)
        net[3](out).float().log_softmax(-1).mean().backward()
    with bf16_params(ref):
        _loss(ref, ids).backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_non_fp32_models_are_left_alone():
    net = _net().to(torch.bfloat16)
    with bf16_params(net):
        _loss(net, torch.tensor([[1, 2]])).backward()
    assert all(p.grad.dtype == torch.bfloat16 for p in net.parameters())


def test_exceptions_restore_the_fp32_weights():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with bf16_params(net):
            raise RuntimeError("boom")
    for k, v in net.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k])


def test_hf_gradient_checkpointing_gives_the_same_bf16_gradients(tiny_model_path):
    """The paper presets combine bf16 params with HF gradient checkpointing: the recomputed
    forwards run inside the context, so the gradients equal those of a plain backward."""
    from vespo_cli.models import load_model

    ids = torch.tensor([[5, 17, 3, 99, 42, 7, 8, 1000]])
    grads = []
    for checkpointing in (False, True):
        model = load_model(tiny_model_path, "float32")
        model.config.use_cache = False
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        with bf16_params(model):
            model(input_ids=ids).logits.float().log_softmax(-1).mean().backward()
        grads.append([p.grad for p in model.parameters()])
        assert all(p.dtype == torch.float32 for p in model.parameters())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_old_logprobs_equal_the_first_minibatch_training_forward_bit_for_bit(tiny_model_path):
    """Old log-probs are planned minibatch by minibatch as the optimizer steps plan them, so under bf16
    params the first minibatch's Δ is exactly 0 (planning them over the whole rollout batch gave other
    microbatch shapes and |Δ| ~ 0.01 per token before any update)."""
    import numpy as np

    from vespo_cli.config import load_config
    from vespo_cli.models import load_model
    from vespo_cli.shards import to_table
    from vespo_cli.train import precision
    from vespo_cli.train.batch import rows_from_table
    from vespo_cli.train.step import compute_logprobs, old_logprobs

    cfg = load_config("tiny", None, ["trainer.bf16_params=true", "trainer.micro_token_budget=64"])
    model = load_model(tiny_model_path, "float32")
    rng = np.random.default_rng(0)
    lens = [3, 9, 5, 12, 7, 4, 11, 6]
    n = len(lens)
    rows = rows_from_table(
        to_table(
            make_shard_rows(
                n,
                group_id=[f"g{i // 2}" for i in range(n)],
                prompt_token_ids=[rng.integers(5, 200, 6).tolist()] * n,
                response_token_ids=[rng.integers(5, 200, k).tolist() for k in lens],
                rollout_logprobs=[[-1.0] * k for k in lens],
                reward=[1.0, 0.0] * (n // 2),
            )
        )
    )
    minibatches = [[0, 1, 4, 5], [2, 3, 6, 7]]
    old = old_logprobs(model, rows, cfg, minibatches=minibatches)
    model.train()
    with precision.compute(model, cfg):
        for mb, logp, _ in compute_logprobs(model, rows, minibatches[0], cfg, False, grad=True):
            for r, i in enumerate(mb.rows):
                assert torch.equal(logp[r, : lens[i]].detach().float(), old[i])
    assert all(old[i].numel() == lens[i] for i in range(n))
