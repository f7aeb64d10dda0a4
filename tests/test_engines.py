"""Rollout engines: the logprobs they report are the model's raw logprobs of the sampled tokens,
they stop at EOS / max_tokens, are deterministic under a seed, and really use reloaded weights.

Measured on the tiny model (fp32 HF reference, teacher-forced):
  HF engine fp32: max |gap| ~1e-6 nats          → asserted < 1e-4
  vLLM bf16:      mean |gap| ~0.002, max ~0.01 nats (0.015 / 0.07 with the EOS-heavy weights)
                                                → asserted mean < 0.05, max < 0.25
"""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from vespo_cli.errors import UserError
from vespo_cli.models import load_model
from vespo_cli.rollout import make_engine
from vespo_cli.rollout.base import Sampling
from vespo_cli.rollout.hf import HFEngine, process_logits

EOS = 2
HF_TOL = 1e-4
VLLM_MEAN_TOL, VLLM_MAX_TOL = 0.05, 0.25


def teacher_forced(model, completion) -> torch.Tensor:
    """Raw (temperature-1) logprobs of the response tokens under `model`, one unpadded fp32 forward."""
    ids = torch.tensor([completion.prompt_token_ids + completion.response_token_ids])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)
    start = len(completion.prompt_token_ids)
    return logp[start - 1 : -1].gather(-1, ids[0, start:, None]).squeeze(-1)


def logprob_gaps(model, completions) -> torch.Tensor:
    gaps = []
    for c in completions:
        assert len(c.rollout_logprobs) == len(c.response_token_ids) > 0
        gaps.append((teacher_forced(model, c) - torch.tensor(c.rollout_logprobs)).abs())
    return torch.cat(gaps)


def check_layout(completions, prompts, n, max_tokens):
    assert [(c.prompt_index, c.sample_idx) for c in completions] == [
        (p, i) for p in range(len(prompts)) for i in range(n)
    ]
    for c in completions:
        assert c.prompt_token_ids == prompts[c.prompt_index]
        assert 1 <= len(c.response_token_ids) <= max_tokens
        eos_at = [t for t, tok in enumerate(c.response_token_ids) if tok == EOS]
        if c.finish_reason == "stop":
            assert eos_at == [len(c.response_token_ids) - 1]  # EOS included, last, once
        else:
            assert c.finish_reason == "length" and not eos_at and len(c.response_token_ids) == max_tokens


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model gains nothing from 2 threads, and OpenMP spin-waits badly on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref_model(tiny_model_path):
    return load_model(tiny_model_path, "float32")


@pytest.fixture(scope="module")
def eos_heavy(tiny_model_path, tmp_path_factory):
    """(checkpoint dir, fp32 model) of the tiny model with every weight perturbed and EOS made likely
    (~30% per step): the residual stream gets a constant direction (embedding dim 0) that the tied
    head maps onto EOS. Used to test stopping and weight reloads (embeddings + tied head change)."""
    model = load_model(tiny_model_path, "float32")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "norm" not in name:
                w.add_(0.01 * torch.randn(w.shape, generator=g))
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        emb[EOS, 0] = 13.0
        model.model.norm.weight[0] = 0.1
    out = tmp_path_factory.mktemp("eos_heavy")
    model.save_pretrained(str(out))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{tiny_model_path}/{f}", out / f)
    return str(out), model.eval()


# ---------------------------------------------------------------------------------------------
# HF engine


@pytest.fixture(scope="module")
def hf_engine(tiny_model_path):
    return HFEngine(tiny_model_path, dtype="float32")


def test_hf_logprobs_are_raw_model_logprobs(hf_engine, ref_model, chat_prompts):
    # processed sampling (temperature, top-p, top-k) must not leak into the reported logprobs
    for sampling in (
        Sampling(max_tokens=12, seed=3),
        Sampling(temperature=0.7, top_p=0.8, top_k=20, max_tokens=12, seed=4),
    ):
        out = hf_engine.generate(chat_prompts, 2, sampling)
        check_layout(out, chat_prompts, 2, 12)
        assert logprob_gaps(ref_model, out).max().item() < HF_TOL


def test_hf_deterministic_and_leaves_global_rng(hf_engine, chat_prompts):
    s = Sampling(max_tokens=8, seed=11)
    state = torch.get_rng_state()
    a = hf_engine.generate(chat_prompts, 3, s)
    b = hf_engine.generate(chat_prompts, 3, s)
    assert torch.equal(state, torch.get_rng_state())
    assert [c.response_token_ids for c in a] == [c.response_token_ids for c in b]
    assert [c.rollout_logprobs for c in a] == [c.rollout_logprobs for c in b]
    # the n samples of a prompt differ, and so does another seed
    assert len({tuple(c.response_token_ids) for c in a[:3]}) == 3
    other = hf_engine.generate(chat_prompts, 3, Sampling(max_tokens=8, seed=12))
    assert [c.response_token_ids for c in a] != [c.response_token_ids for c in other]
    # seed=None: successive calls differ
    x, y = (hf_engine.generate(chat_prompts[:1], 1, Sampling(max_tokens=8, seed=None)) for _ in range(2))
    assert x[0].response_token_ids != y[0].response_token_ids


def test_hf_a_prompts_samples_do_not_depend_on_the_split(hf_engine, chat_prompts):
    """Per-prompt seeds (request_seed of the seed and the prompt's index in its batch): sampling the
    prompts in two calls, the second with prompt_offset, gives the one call's tokens (a data-parallel
    rollout's parts are the one-process rows); logprobs agree to fp32 batching noise."""
    s = Sampling(max_tokens=10, seed=7)
    whole = hf_engine.generate(chat_prompts, 3, s)
    parts = hf_engine.generate(chat_prompts[:1], 3, s) + hf_engine.generate(
        chat_prompts[1:], 3, Sampling(max_tokens=10, seed=7, prompt_offset=1)
    )
    assert [c.response_token_ids for c in parts] == [c.response_token_ids for c in whole]
    gaps = [abs(a - b) for x, y in zip(parts, whole) for a, b in zip(x.rollout_logprobs, y.rollout_logprobs)]
    assert max(gaps) < 1e-5


def test_hf_batching_does_not_change_samples(tiny_model_path, chat_prompts):
    """Left padding / chunking is invisible: prompt-by-prompt equals all-at-once (greedy)."""
    s = Sampling(temperature=0, max_tokens=10)
    big = HFEngine(tiny_model_path).generate(chat_prompts, 2, s)
    small = HFEngine(tiny_model_path, max_batch_size=1)
    for p, prompt in enumerate(chat_prompts):
        single = small.generate([prompt], 2, s)
        assert [c.response_token_ids for c in single] == [c.response_token_ids for c in big[2 * p : 2 * p + 2]]
        for c, d in zip(single, big[2 * p : 2 * p + 2]):
            assert max(abs(u - v) for u, v in zip(c.rollout_logprobs, d.rollout_logprobs)) < HF_TOL


def test_hf_greedy_and_top_k_1_agree(hf_engine, ref_model, chat_prompts):
    greedy = hf_engine.generate(chat_prompts, 1, Sampling(temperature=0, max_tokens=6))
    topk1 = hf_engine.generate(chat_prompts, 1, Sampling(top_k=1, max_tokens=6, seed=5))
    assert [c.response_token_ids for c in greedy] == [c.response_token_ids for c in topk1]
    for c in greedy:  # greedy really takes the argmax of the model
        ids = torch.tensor([c.prompt_token_ids + c.response_token_ids])
        with torch.no_grad():
            logits = ref_model(ids).logits[0]
        start = len(c.prompt_token_ids)
        assert logits[start - 1 : -1].argmax(-1).tolist() == c.response_token_ids


def test_process_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    kept = lambda s: torch.isfinite(process_logits(logits, s))[0].tolist()  # noqa: E731
    assert kept(Sampling(top_k=2)) == [True, True, False, False]
    assert kept(Sampling(top_p=0.5)) == [True, False, False, False]
    assert kept(Sampling(top_p=0.6)) == [True, True, False, False]
    assert kept(Sampling(top_p=0.75)) == [True, True, False, False]
    assert kept(Sampling(top_p=0.8)) == [True, True, True, False]
    assert kept(Sampling(top_p=0.01, top_k=3)) == [True, False, False, False]


def test_hf_reload_stop_and_length(tiny_model_path, eos_heavy, ref_model, chat_prompts):
    ckpt, heavy = eos_heavy
    engine = HFEngine(tiny_model_path)
    s = Sampling(max_tokens=4, seed=0)
    before = engine.generate(chat_prompts, 4, s)
    assert all(c.finish_reason == "length" for c in before)  # the random model (almost) never stops
    engine.load_weights(ckpt)
    out = engine.generate(chat_prompts, 4, s)
    check_layout(out, chat_prompts, 4, 4)
    assert {c.finish_reason for c in out} == {"stop", "length"}
    assert logprob_gaps(heavy, out).max().item() < HF_TOL
    engine.load_state_dict(ref_model.state_dict())  # and back, from tensors
    assert logprob_gaps(ref_model, engine.generate(chat_prompts, 2, s)).max().item() < HF_TOL
    with pytest.raises(UserError, match="unexpected"):
        engine.load_state_dict({"bogus.weight": torch.zeros(1)})


def test_hf_from_module_shares_weights(tiny_model_path, tokenizer, chat_prompts):
    model = load_model(tiny_model_path)
    engine = HFEngine.from_module(model, tokenizer)
    s = Sampling(max_tokens=5, seed=2)
    model.train()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # the trainer updates in place
    out = engine.generate(chat_prompts, 2, s)
    assert model.training  # generation ran in eval mode, then restored the trainer's mode
    assert logprob_gaps(model.eval(), out).max().item() < HF_TOL


def test_make_engine(tiny_model_path, monkeypatch):
    assert make_engine("hf", tiny_model_path).name == "hf"
    with pytest.raises(UserError, match="rollout.engine='sglang'"):
        make_engine("sglang", tiny_model_path)
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vllm were not installed
    with pytest.raises(UserError, match="rollout.engine=hf"):
        make_engine("vllm", tiny_model_path)


def test_bad_sampling_is_user_error(hf_engine, chat_prompts):
    for bad in (Sampling(top_p=0.0), Sampling(temperature=-1.0), Sampling(max_tokens=0)):
        with pytest.raises(UserError):
            hf_engine.generate(chat_prompts, 1, bad)
    with pytest.raises(UserError):
        hf_engine.generate(chat_prompts, 0, Sampling())
    with pytest.raises(UserError):
        hf_engine.generate([[]], 1, Sampling())


# ---------------------------------------------------------------------------------------------
# vLLM engine (one engine for the module: starting one takes 5-20 s)


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_path):
    pytest.importorskip("vllm")
    from vespo_cli.rollout.vllm import VLLMEngine

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    engine = VLLMEngine(tiny_model_path, dtype="bfloat16", max_model_len=512, kv_cache_bytes=64 * 2**20)
    assert torch.equal(state, torch.get_rng_state()), "engine creation reseeded the caller's RNG"
    yield engine
    engine.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine(vllm_engine, ref_model, eos_heavy, chat_prompts, tokenizer):
    """Parity, layout, determinism, then the stale-weights trap (both reload paths), on one engine.
    Without the tied-head repack the reloaded engine never stops and its logprobs are off by ~0.4
    nats; without the prefix-cache reset the long prompt (> one KV block, so its prefix is cached)
    is off by up to ~1.2 nats."""
    engine = vllm_engine
    long = tokenizer.apply_chat_template(
        [{"role": "user", "content": " ".join(["count the sheep"] * 100)}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    chat_prompts = chat_prompts + [list(long)]
    s = Sampling(temperature=0.9, top_p=0.95, max_tokens=16, seed=7)

    # parity with an fp32 teacher-forced forward; layout; determinism; caller RNG untouched
    state = torch.get_rng_state()
    out = engine.generate(chat_prompts, 3, s)
    again = engine.generate(chat_prompts, 3, s)
    assert torch.equal(state, torch.get_rng_state())
    check_layout(out, chat_prompts, 3, 16)
    gaps = logprob_gaps(ref_model, out)
    assert gaps.mean().item() < VLLM_MEAN_TOL and gaps.max().item() < VLLM_MAX_TOL
    assert [c.response_token_ids for c in out] == [c.response_token_ids for c in again]
    assert len({tuple(c.response_token_ids) for c in out}) == len(out)  # samples and prompts differ
    other = engine.generate(chat_prompts, 3, Sampling(temperature=0.9, top_p=0.95, max_tokens=16, seed=8))
    assert [c.response_token_ids for c in out] != [c.response_token_ids for c in other]

    # reload from a checkpoint dir: same prompts (their prefixes are cached with the old weights)
    ckpt, heavy = eos_heavy
    engine.load_weights(ckpt)
    short = Sampling(max_tokens=4, seed=0)
    out = engine.generate(chat_prompts, 4, short)
    check_layout(out, chat_prompts, 4, 4)
    assert {c.finish_reason for c in out} == {"stop", "length"}
    gaps = logprob_gaps(heavy, out)
    assert gaps.mean().item() < VLLM_MEAN_TOL and gaps.max().item() < VLLM_MAX_TOL

    # reload from in-memory tensors (the trainer's path): back to the original weights
    engine.load_state_dict(ref_model.state_dict())
    out = engine.generate(chat_prompts, 2, s)
    assert all(c.finish_reason == "length" for c in out)
    gaps = logprob_gaps(ref_model, out)
    assert gaps.mean().item() < VLLM_MEAN_TOL and gaps.max().item() < VLLM_MAX_TOL


@pytest.mark.vllm
def test_vllm_rejects_too_long_prompt(vllm_engine):
    with pytest.raises(UserError, match="max_model_len"):
        vllm_engine.generate([[5] * 600], 1, Sampling(max_tokens=4))


def test_engine_registry_is_the_one_list_of_engines():
    """A new engine is one file and one registry line: every registered class implements the whole
    `base.Engine` interface, and an unknown name is one line listing the registered ones."""
    import importlib

    from vespo_cli.rollout import ENGINES, REGISTRY, make_engine
    from vespo_cli.rollout.base import Engine

    assert ENGINES == tuple(REGISTRY) == ("vllm", "hf")
    wanted = {n for n in vars(Engine) if not n.startswith("_")} - {"name", "dtype"}
    assert wanted == {"generate", "load_weights", "load_state_dict", "close"}
    for target in REGISTRY.values():
        module, _, cls = target.partition(":")
        engine_cls = getattr(importlib.import_module(module), cls)
        assert all(callable(getattr(engine_cls, m, None)) for m in wanted), target
    with pytest.raises(UserError, match=r"rollout.engine='sglang': expected one of vllm, hf"):
        make_engine("sglang", "unused")
