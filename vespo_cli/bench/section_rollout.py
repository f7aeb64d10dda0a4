"""The rollout section: vLLM vs the HF engine on the same prompts (paired rounds), and the time to
push trainer weights into the vLLM engine."""

from __future__ import annotations

import os
import statistics
import time

from ..rollout.sampling import encode_prompts
from .machine import GiB
from .sizes import sizes


def section_rollout(quick: bool) -> dict:
    """vLLM vs HF engine (both bf16) on the same prompts and sampling, in paired rounds; then the
    time to push an fp32 trainer state dict into the vLLM engine."""
    import torch

    from ..config import PAPER_TEMPLATE
    from ..data import load_problems
    from ..models import load_model, load_tokenizer, resolve_model
    from ..rollout import make_engine
    from ..rollout.base import Sampling
    from ..train import dist

    sz = sizes(quick)
    path = resolve_model(sz["model"])
    tok = load_tokenizer(path)
    problems = load_problems("gsm8k", limit=sz["rollout_prompts"])
    prompts = encode_prompts(tok, problems, PAPER_TEMPLATE, 1024)
    n, max_tokens = sz["rollout_n"], sz["rollout_tokens"]
    kv = max(n * len(prompts) * (max(map(len, prompts)) + max_tokens) * 64 * 1024, 256 * 2**20)  # generous
    engines = {
        "vllm": make_engine(
            "vllm",
            path,
            dtype="bfloat16",
            seed=0,
            kv_cache_bytes=min(kv, 2 * GiB),
            max_model_len=max(map(len, prompts)) + max_tokens + 16,
        ),
        "hf": make_engine("hf", path, dtype="bfloat16", seed=0),
    }
    warm = Sampling(max_tokens=4, seed=1)
    for e in engines.values():
        e.generate(prompts[:1], 2, warm)
    rounds = []
    for i in range(sz["rollout_rounds"]):
        rec = {"load_avg": os.getloadavg()[0]}
        for name, e in engines.items():
            t = time.perf_counter()
            out = e.generate(prompts, n, Sampling(temperature=1.0, max_tokens=max_tokens, seed=100 + i))
            dt = time.perf_counter() - t
            toks = sum(len(c.response_token_ids) for c in out)
            rec[name] = {"s": dt, "tokens": toks, "tokens_per_s": toks / dt}
        rec["speedup"] = rec["vllm"]["tokens_per_s"] / rec["hf"]["tokens_per_s"]
        rounds.append(rec)
    engines["hf"].close()
    trainer = load_model(path, "float32")
    publish = []
    for _ in range(sz["publish_repeats"] + 1):
        t = time.perf_counter()
        engines["vllm"].load_state_dict(dist.full_state_dict(trainer))
        publish.append(time.perf_counter() - t)
    engines["vllm"].close()
    return {
        "prompts": len(prompts),
        "n": n,
        "max_tokens": max_tokens,
        "source": "gsm8k (paper template)",
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "vllm_tokens_per_s": statistics.median(r["vllm"]["tokens_per_s"] for r in rounds),
        "hf_tokens_per_s": statistics.median(r["hf"]["tokens_per_s"] for r in rounds),
        "speedup": statistics.median(r["speedup"] for r in rounds),
        "publish_s": publish,
        "publish_s_median": statistics.median(publish[1:]),
    }
