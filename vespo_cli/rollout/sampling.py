"""Prompts → samples → a shard: the rollout step shared by `vespo rollout`, its `--follow` workers and
the trainer's synchronous loop, and the engine the trainer samples with (`trainer_engine`)."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path

from ..config import Config
from ..data import Problem, encode_prompt
from ..rewards import failure_counts
from ..rundir import shard_id, shard_name
from ..seeds import chunk_seed
from ..shards import write_shard
from .base import Engine, Sampling


def sampling_from(cfg: Config, seed: int) -> Sampling:
    r = cfg.rollout
    return Sampling(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=r.max_tokens, seed=seed)


def warn_biased_sampling(cfg: Config) -> None:
    """top_p/top_k < 1 renormalise the engine's distribution: every importance ratio is biased."""
    r = cfg.rollout
    if r.top_p < 1.0 or r.top_k > 0:
        warnings.warn(
            f"rollout.top_p={r.top_p}, rollout.top_k={r.top_k}: truncated sampling biases every importance "
            "ratio (the engine's logprobs are of a renormalised distribution); training runs have collapsed "
            "this way. Use 1.0 / -1 for training; other values are fine for eval.",
            stacklevel=2,
        )


def encode_prompts(tokenizer, problems: list[Problem], template: str, max_prompt_tokens: int) -> list[list[int]]:
    return [encode_prompt(tokenizer, p, template, max_prompt_tokens) for p in problems]


def _score(tokenizer, scorer, problems: list[Problem], completions) -> tuple[list[str], list]:
    """Each completion's response text (the engine's, or decoded) and its score against its problem."""
    texts = [c.text or tokenizer.decode(c.response_token_ids, skip_special_tokens=True) for c in completions]
    scores = scorer.score(
        texts,
        [problems[c.prompt_index].answer for c in completions],
        [problems[c.prompt_index].problem for c in completions],
    )
    return texts, scores


def _shard_columns(
    engine,
    sampling: Sampling,
    problems: list[Problem],
    completions,
    texts: list[str],
    scores,
    *,
    run_id: str,
    shard: str,
    policy_version: int,
    group_prefix: str,
    first_prompt: int,
) -> dict[str, list]:
    """The shard's columns (shards.SCHEMA), one row per completion; routing only where the engine recorded it."""
    k = len(completions)
    cols = {
        "run_id": [run_id] * k,
        "shard_id": [shard] * k,
        "policy_version": [policy_version] * k,
        "engine": [engine.name] * k,
        "engine_dtype": [engine.dtype] * k,
        "temperature": [sampling.temperature] * k,
        "top_p": [sampling.top_p] * k,
        "top_k": [sampling.top_k] * k,
        "prompt_id": [problems[c.prompt_index].id for c in completions],
        "group_id": [f"{group_prefix}/{first_prompt + c.prompt_index}" for c in completions],
        "sample_idx": [c.sample_idx for c in completions],
        "prompt_token_ids": [c.prompt_token_ids for c in completions],
        "response_token_ids": [c.response_token_ids for c in completions],
        "rollout_logprobs": [c.rollout_logprobs for c in completions],
        "reward": [s.reward for s in scores],
        "correct": [s.correct for s in scores],
        "extracted_answer": [s.extracted_answer for s in scores],
        "reward_error": [("timeout" if s.timed_out else s.error) or None for s in scores],
        "finish_reason": [c.finish_reason for c in completions],
        "response_text": texts,
    }
    if any(c.routing is not None for c in completions):
        cols["routing"] = [c.routing for c in completions]
    return cols


def sample_to_shard(
    engine,
    tokenizer,
    scorer,
    problems: list[Problem],
    cfg: Config,
    *,
    policy_version: int,
    run_id: str,
    path: str | os.PathLike | None,
    seed: int,
    group_prefix: str,
    first_prompt: int = 0,
) -> dict:
    """Sample cfg.rollout.n responses per problem, score them, write one shard. Returns stats.

    `first_prompt`: the index of problems[0] in its rollout batch (a rank's share of a sync batch): it
    names the prompt groups and seeds each prompt's samples, so the rows do not depend on the split.
    `path` None: generate only (a tensor-parallel engine's rank other than its group's leader, which
    writes the shard: rollout/groups.py)."""
    t0 = time.perf_counter()
    prompt_ids = encode_prompts(tokenizer, problems, cfg.data.template, cfg.data.max_prompt_tokens)
    sampling = dataclasses.replace(sampling_from(cfg, seed), prompt_offset=first_prompt)
    completions = engine.generate(prompt_ids, cfg.rollout.n, sampling)
    t_gen = time.perf_counter() - t0
    if path is None:
        return {"rows": len(completions), "gen_s": t_gen, "write_s": 0.0, "total_s": t_gen}
    texts, scores = _score(tokenizer, scorer, problems, completions)
    failures = failure_counts(scores, where=f"{path}: reward scoring")
    cols = _shard_columns(
        engine,
        sampling,
        problems,
        completions,
        texts,
        scores,
        run_id=run_id,
        shard=shard_id(path),
        policy_version=policy_version,
        group_prefix=group_prefix,
        first_prompt=first_prompt,
    )
    t_write = time.perf_counter()
    write_shard(cols, path)
    write_s = time.perf_counter() - t_write
    tokens = sum(len(c.response_token_ids) for c in completions)
    return {
        "rows": len(completions),
        "tokens": tokens,
        "reward_mean": sum(s.reward for s in scores) / max(len(scores), 1),
        **failures,
        "gen_s": t_gen,
        "write_s": write_s,
        "total_s": time.perf_counter() - t0,
    }


@dataclasses.dataclass(frozen=True)
class ShardWriter:
    """What every shard a stage writes shares: its engine, tokenizer, reward scorer, config and run id."""

    engine: Engine
    tokenizer: object
    scorer: object
    cfg: Config
    run_id: str

    def write(self, problems: list[Problem], *, version: int, path, seed: int, group: str, first: int = 0) -> dict:
        """`sample_to_shard` of `problems` sampled by weights `version` into `path`; the prompt groups are
        named `<run_id>/<group>/...`."""
        return sample_to_shard(
            self.engine,
            self.tokenizer,
            self.scorer,
            problems,
            self.cfg,
            policy_version=version,
            run_id=self.run_id,
            path=path,
            seed=seed,
            group_prefix=f"{self.run_id}/{group}",
            first_prompt=first,
        )

    def chunk(self, problems: list[Problem], out: Path, version: int, worker: str, k: int) -> dict:
        """Chunk `k` of the prompt stream, sampled by `worker`, as shard `out/<shard_name>` (seed: chunk_seed)."""
        path = out / shard_name(version, worker, k)
        return self.write(
            problems, version=version, path=path, seed=chunk_seed(self.cfg.trainer.seed, k), group=f"{worker}/{k}"
        )


def is_moe(model_path: str, trust_remote_code: bool = False) -> bool:
    """Whether the model's config declares routed experts (then a TP group splits experts: EP)."""
    from ..models import hf_config, routed_experts

    return routed_experts(hf_config(model_path, trust_remote_code)[0]) > 0


def open_engine(cfg: Config, model_path: str, world_size: int = 1):
    """The configured engine over `model_path`, with the options that engine takes; in a
    `world_size`-rank torchrun job with rollout.tensor_parallel_size > 1, one rank's share of its
    group's engine (rollout/groups.py)."""
    from . import make_engine
    from .groups import vllm_parallel_args

    r = cfg.rollout
    opts = dict(dtype=r.dtype, seed=cfg.trainer.seed, trust_remote_code=cfg.model.trust_remote_code)
    if r.engine == "vllm":
        opts.update(
            max_model_len=cfg.data.max_prompt_tokens + r.max_tokens,
            kv_cache_bytes=int(r.kv_cache_gib * 2**30),
            gpu_memory_utilization=r.gpu_memory_utilization,
            tensor_parallel_size=r.tensor_parallel_size,
        )
        if r.tensor_parallel_size > 1:
            moe = is_moe(model_path, cfg.model.trust_remote_code)
            opts.update(vllm_parallel_args(r.tensor_parallel_size, world_size, moe=moe))
    if r.engine == "hf" and cfg.algorithm.routing_replay:  # MoE routing replay: record per-token experts
        opts["record_routing"] = True
    return make_engine(r.engine, model_path, **opts)


def trainer_engine(cfg: Config, model, tokenizer, model_path: str, world_size: int) -> tuple[Engine, bool]:
    """The engine a training process samples with, and whether it shares the trainer's module.

    The HF engine in the trainer's dtype on one process shares the module (no copy, nothing to publish);
    otherwise (vLLM, HF in another dtype, FSDP-sharded modules) the engine holds its own weights and
    takes the trainer's after every rollout batch."""
    from . import share_engine

    if cfg.rollout.engine == "hf" and cfg.rollout.dtype == cfg.model.dtype and world_size == 1:
        engine = share_engine(
            "hf", model, tokenizer, seed=cfg.trainer.seed, record_routing=cfg.algorithm.routing_replay
        )
        return engine, True
    return open_engine(cfg, model_path, world_size), False
