"""train/forward.py: the chunked LM-head log-softmax gather gives the same log-probs, entropies and
gradients as a plain `log_softmax(model(...).logits)` gather, in fp32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from tolerance import U_BF16, chain_rtol, gamma, llama_roundings

from vespo_cli.train import forward
from vespo_cli.train.batch import Rows, make_microbatch
from vespo_cli.train.forward import head_logprobs, token_logprobs

VOCAB = 300


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 16 rows, ∂W blocks of 32 (fp32) / 80 (bf16) rows: every test below spans several
    chunks and blocks, with ragged last ones."""
    monkeypatch.setattr(forward, "CHUNK_BYTES", 16 * 4 * VOCAB)
    monkeypatch.setattr(forward, "GRAD_BLOCK_BYTES", 40 * 4 * VOCAB)  # ∂W in blocks of 32 rows (fp32)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama(tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float()


def rows(seed: int = 0, n: int = 6) -> Rows:
    g = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(3, VOCAB, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]
    responses = [
        torch.randint(3, VOCAB, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]
    return Rows(
        prompts,
        responses,
        [None] * n,
        torch.zeros(n),
        torch.zeros(n, dtype=torch.bool),
        [str(i) for i in range(n)],
        torch.zeros(n, dtype=torch.long),
        ["s"] * n,
    )


def reference(model, mb, temperature=1.0):
    """Plain full-vocabulary log_softmax of the model's own logits, gathered at response tokens."""
    logits = (
        model(
            input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids, use_cache=False
        ).logits.float()
        / temperature
    )
    logp_all = torch.log_softmax(logits[:, :-1], dim=-1)
    predict = mb.response_mask[:, 1:]
    targets = mb.input_ids[:, 1:][predict]
    flat = logp_all[predict].gather(-1, targets[:, None]).squeeze(-1)
    ent = -(logp_all[predict].exp() * logp_all[predict]).sum(-1)
    return mb.unflatten(flat), mb.unflatten(ent.detach())


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tie", [True, False])
def test_fp32_matches_plain_log_softmax(temperature, tie):
    model = tiny_llama(tie)
    r = rows()
    mb = make_microbatch(r, list(range(len(r))))
    assert mb.num_tokens > 3 * 16  # several chunks
    weights = torch.randn(mb.mask.shape, generator=torch.Generator().manual_seed(1)) * mb.mask

    logp, ent = token_logprobs(model, mb, temperature, with_entropy=True)
    g = grads(model, (logp * weights).sum())
    ref_logp, ref_ent = reference(model, mb, temperature)
    g_ref = grads(model, (ref_logp * weights).sum())

    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    assert (logp[~mb.mask] == 0).all() and (ent[~mb.mask] == 0).all()
    assert set(g) == set(g_ref)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-4, atol=1e-6, msg=k)


def test_bf16_autocast_matches_plain_log_softmax():
    """Under autocast the head matmul is bf16 like nn.Linear's; log-probs agree to bf16 precision and
    gradients keep the parameters' fp32 dtype. Both paths run the same trunk and round the head's
    inputs alike; each logit is then off by at most its output rounding and fp32 summation order,
    (u + γ_n) Σ|h_i W_ji| (tests/tolerance.py), and a log-softmax by twice the largest logit error,
    so the two paths' log-probs differ by at most 4 (u + γ_n) max_j Σ|h_i W_ji|. Gradients: the
    backward's bf16 roundings in sequence (`chain_rtol`), normwise."""
    model = tiny_llama()
    r = rows(seed=3)
    mb = make_microbatch(r, list(range(len(r))))
    weights = torch.randn(mb.mask.shape, generator=torch.Generator().manual_seed(2)) * mb.mask
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = token_logprobs(model, mb)
        g = grads(model, (logp * weights).sum())
        ref_logp, _ = reference(model, mb)
        g_ref = grads(model, (ref_logp * weights).sum())
        with torch.no_grad():
            kw = dict(attention_mask=mb.attention_mask, position_ids=mb.position_ids, use_cache=False)
            h = model.model(input_ids=mb.input_ids, **kw).last_hidden_state.float()
    abs_dot = (h.abs() @ model.lm_head.weight.abs().T).max().item()
    n = model.config.hidden_size
    atol = 4 * (U_BF16 + gamma(n)) * (1 + U_BF16) ** 3 * abs_dot  # (1 + u)³: Σ|ĥŵ| of the rounded inputs
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=atol)
    rtol = chain_rtol(llama_roundings(model.config.num_hidden_layers, passes=1))
    for k in g_ref:
        assert g[k].dtype == torch.float32
        rel = (g[k] - g_ref[k]).norm() / g_ref[k].norm().clamp_min(1e-12)
        assert rel < rtol, k


def test_head_logprobs_with_bias_and_no_grad():
    torch.manual_seed(0)
    head = torch.nn.Linear(24, VOCAB, bias=True)
    hidden = torch.randn(70, 24, requires_grad=True)
    targets = torch.randint(0, VOCAB, (70,))
    logp, ent = head_logprobs(hidden, head, targets, temperature=1.3, with_entropy=True)
    g = torch.autograd.grad(logp.sum(), [hidden, head.weight, head.bias])
    ref_all = torch.log_softmax(head(hidden) / 1.3, -1)
    ref = ref_all.gather(-1, targets[:, None]).squeeze(-1)
    g_ref = torch.autograd.grad(ref.sum(), [hidden, head.weight, head.bias])
    torch.testing.assert_close(logp, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, -(ref_all.exp() * ref_all).sum(-1).detach(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        again, none = head_logprobs(hidden, head, targets, temperature=1.3)
    assert none is None and torch.equal(again, logp.detach())


def test_decoder_inputs_drop_the_mask_only_for_right_padding():
    r = rows(seed=5)
    mb = make_microbatch(r, list(range(len(r))))
    inputs = forward.decoder_inputs(mb)
    assert inputs["attention_mask"] is None
    L = mb.input_ids.shape[1]
    assert torch.equal(inputs["position_ids"][mb.attention_mask.bool()], mb.position_ids[mb.attention_mask.bool()])
    assert torch.equal(inputs["position_ids"][0], torch.arange(L))
    left = torch.ones_like(mb.attention_mask)
    left[0, 0] = 0  # a left-padded row keeps the mask and the caller's positions
    mb.attention_mask = left
    inputs = forward.decoder_inputs(mb)
    assert inputs["attention_mask"] is left and inputs["position_ids"] is mb.position_ids


def _fsdp_worker(rank: int, world: int, init_file: str) -> None:
    """One gloo rank: FSDP2-sharded tiny models, chunked vs materialised-logits log-probs and grads."""
    import torch.distributed as tdist

    torch.set_num_threads(1)
    forward.CHUNK_BYTES, forward.GRAD_BLOCK_BYTES = 16 * 4 * VOCAB, 40 * 4 * VOCAB  # several chunks and blocks
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for tie, bf16 in [(True, False), (False, False), (False, True)]:
            _fsdp_check(rank, world, tie, bf16)
    finally:
        tdist.destroy_process_group()


def _fsdp_check(rank: int, world: int, tie: bool, bf16: bool) -> None:
    from vespo_cli.train import dist

    model = dist.shard_model(tiny_llama(tie), bf16_params=bf16)
    assert forward._is_sharded(model)
    # the weights an engine takes (dist.full_state_dict, every rank): streamed pairs = the unsharded model's
    full = dist.full_state_dict(model, every_rank=True)
    assert not isinstance(full, dict)
    full = dict(full)
    plain_sd = tiny_llama(tie).state_dict()
    assert full.keys() == plain_sd.keys() and all(torch.equal(full[k], plain_sd[k]) for k in plain_sd)

    def data(r: int):  # each rank its own rows: the gradients are averaged over ranks
        rw = rows(seed=10 + r)
        mb = make_microbatch(rw, list(range(len(rw))))
        return mb, torch.randn(mb.mask.shape, generator=torch.Generator().manual_seed(r)) * mb.mask

    def full_grads(loss):  # zeroed after the backward, as the trainer does (not between forward and backward)
        loss.backward()
        out = {k: p.grad.full_tensor() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    mb, weights = data(rank)
    targets = mb.input_ids[:, 1:][mb.response_mask[:, 1:]]
    logp, ent = token_logprobs(model, mb, 0.7, with_entropy=True)
    g = full_grads((logp * weights).sum())
    ref_flat, ref_ent = forward.logits_logprobs(forward.response_logits(model, mb, 0.7), targets, True)
    ref_logp = mb.unflatten(ref_flat)
    g_ref = full_grads((ref_logp * weights).sum())
    tol = dict(rtol=0, atol=2e-2) if bf16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp, ref_logp, **tol)
    torch.testing.assert_close(ent, mb.unflatten(ref_ent), **tol)
    assert set(g) == set(g_ref) and len(g) == len(list(model.parameters()))
    for k in g_ref:
        if bf16:  # the backward's bf16 roundings in sequence (tests/tolerance.py), normwise
            rtol = chain_rtol(llama_roundings(len(model.model.layers), passes=1))
            assert (g[k] - g_ref[k]).norm() <= rtol * g_ref[k].norm().clamp_min(1e-12), k
        else:
            torch.testing.assert_close(g[k], g_ref[k], rtol=1e-4, atol=1e-6, msg=k)
    if not bf16:  # and the unsharded model: the same log-probs, gradients the mean of every rank's
        plain = tiny_llama(tie)
        torch.testing.assert_close(logp, reference(plain, mb, 0.7)[0], rtol=1e-5, atol=1e-5)
        for r in range(world):
            mb_r, w_r = data(r)
            ((reference(plain, mb_r, 0.7)[0] * w_r).sum() / world).backward()
        for k, p in plain.named_parameters():
            torch.testing.assert_close(g[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow
def test_fsdp2_chunked_matches_materialised_logits(tmp_path):
    """2 gloo ranks, FSDP2 (dist.shard_model), tied and untied heads, fp32 and bf16 params: the chunked
    head inside the root's registered forward method gives the log-probs, entropies and gathered
    gradients of the materialised-logits path (fp32: 1e-5 / 1e-4 relative, and the unsharded model's;
    bf16 params: 2e-2, bf16 rounding)."""
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
