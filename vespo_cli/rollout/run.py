"""The rollout stage: prompts → engine samples → math-verify rewards → parquet shards.

Used by `vespo rollout` (one-off sampling), by its `--follow` mode (async worker that tracks a
training run's published checkpoints) and by the trainer's synchronous loop (`sample_to_shard`).
"""

from __future__ import annotations

import functools
import os
import time
import uuid
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import Config, load_run_config, save_config
from ..data import Problem, arith_problem, encode_prompt, load_problems
from ..errors import UserError
from ..lock import hold
from ..rewards import failure_counts
from ..rundir import WEIGHTS_META, RunDir, parse_shard_name, shard_id, shard_name
from ..shards import list_shards, write_shard
from .base import Sampling

console = Console(stderr=True)


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


@functools.lru_cache(maxsize=4)
def _problem_pool(source: str, seed: int, difficulty: int, shuffle: bool) -> tuple[Problem, ...]:
    return tuple(load_problems(source, seed=seed, difficulty=difficulty, shuffle=shuffle))


def prompt_chunk(cfg: Config, start: int, size: int) -> list[Problem]:
    """Problems start..start+size of the run's prompt stream (a finite dataset wraps around: epochs)."""
    d = cfg.data
    if d.train == "arith":  # procedural: an endless deterministic stream, random access by index
        return [arith_problem(cfg.trainer.seed, d.difficulty, i) for i in range(start, start + size)]
    pool = _problem_pool(d.train, cfg.trainer.seed, d.difficulty, d.shuffle)
    if not pool:
        raise UserError(f"data.train={d.train}: no problems")
    return [pool[(start + i) % len(pool)] for i in range(size)]


def encode_prompts(tokenizer, problems: list[Problem], template: str, max_prompt_tokens: int) -> list[list[int]]:
    return [encode_prompt(tokenizer, p, template, max_prompt_tokens) for p in problems]


def sample_to_shard(
    engine,
    tokenizer,
    scorer,
    problems: list[Problem],
    cfg: Config,
    *,
    policy_version: int,
    run_id: str,
    path: str | os.PathLike,
    seed: int,
    group_prefix: str,
) -> dict:
    """Sample cfg.rollout.n responses per problem, score them, write one shard. Returns stats."""
    t0 = time.perf_counter()
    prompt_ids = encode_prompts(tokenizer, problems, cfg.data.template, cfg.data.max_prompt_tokens)
    sampling = sampling_from(cfg, seed)
    completions = engine.generate(prompt_ids, cfg.rollout.n, sampling)
    t_gen = time.perf_counter() - t0
    texts = [c.text or tokenizer.decode(c.response_token_ids, skip_special_tokens=True) for c in completions]
    scores = scorer.score(
        texts,
        [problems[c.prompt_index].answer for c in completions],
        [problems[c.prompt_index].problem for c in completions],
    )
    failures = failure_counts(scores, where=f"{path}: reward scoring")
    cols = {
        "run_id": [run_id] * len(completions),
        "shard_id": [shard_id(path)] * len(completions),
        "policy_version": [policy_version] * len(completions),
        "engine": [engine.name] * len(completions),
        "engine_dtype": [engine.dtype] * len(completions),
        "temperature": [sampling.temperature] * len(completions),
        "top_p": [sampling.top_p] * len(completions),
        "top_k": [sampling.top_k] * len(completions),
        "prompt_id": [problems[c.prompt_index].id for c in completions],
        "group_id": [f"{group_prefix}/{c.prompt_index}" for c in completions],
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
    write_shard(cols, path)
    tokens = sum(len(c.response_token_ids) for c in completions)
    return {
        "rows": len(completions),
        "tokens": tokens,
        "reward_mean": sum(s.reward for s in scores) / max(len(scores), 1),
        **failures,
        "gen_s": t_gen,
        "total_s": time.perf_counter() - t0,
    }


def open_engine(cfg: Config, model_path: str):
    """The configured engine over `model_path`, with the options that engine takes."""
    from . import make_engine

    r = cfg.rollout
    opts = dict(dtype=r.dtype, seed=cfg.trainer.seed, trust_remote_code=cfg.model.trust_remote_code)
    if r.engine == "vllm":
        opts.update(
            max_model_len=cfg.data.max_prompt_tokens + r.max_tokens,
            kv_cache_bytes=int(r.kv_cache_gib * 2**30),
            gpu_memory_utilization=r.gpu_memory_utilization,
            tensor_parallel_size=r.tensor_parallel_size,
        )
    if r.engine == "hf" and cfg.algorithm.routing_replay:  # MoE routing replay: record per-token experts
        opts["record_routing"] = True
    return make_engine(r.engine, model_path, **opts)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def rollout_once(
    cfg: Config, run_dir: Path, *, model: str | None, num_prompts: int, out: Path | None, worker: str = "w0"
) -> Path:
    """`vespo rollout`: sample `num_prompts` prompts in shards of trainer.minibatch_prompts prompts.

    Resumable: shards already in the output directory are kept and their prompts skipped."""
    from ..models import resolve_model

    if num_prompts < 1:
        raise UserError(f"--num-prompts {num_prompts}: expected a positive integer")
    model_spec = model or cfg.model.path
    model_path = resolve_model(model_spec, trust_remote_code=cfg.model.trust_remote_code)
    policy_version = checkpoint_version(model_path)
    problems = load_problems(
        cfg.data.train,
        limit=num_prompts,
        seed=cfg.trainer.seed,
        difficulty=cfg.data.difficulty,
        shuffle=cfg.data.shuffle,
    )
    out = Path(out) if out else RunDir(run_dir).rollouts
    with hold(run_dir, "vespo rollout"), hold(out, "vespo rollout"):  # config.yaml; shard names
        return _rollout_locked(cfg, run_dir, model_path, policy_version, problems, out, worker)


def _rollout_locked(
    cfg: Config, run_dir: Path, model_path: str, policy_version: int, problems: list[Problem], out: Path, worker: str
) -> Path:
    from ..models import load_tokenizer
    from ..rewards import scorer_for

    save_config(cfg, run_dir)
    per_shard = cfg.trainer.minibatch_prompts
    chunks = [problems[i : i + per_shard] for i in range(0, len(problems), per_shard)]
    done = {p.name for p in list_shards(out)}
    todo = [(i, c) for i, c in enumerate(chunks) if shard_name(policy_version, worker, i) not in done]
    if not todo:
        console.print(f"all {len(chunks)} shards already in {out}")
        return out
    if cfg.trainer.threads:
        import torch

        torch.set_num_threads(cfg.trainer.threads)  # before the engine: vLLM binds threads at start
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    engine = open_engine(cfg, model_path)
    run_id = Path(run_dir).name
    t_start, tokens, rewards = time.perf_counter(), 0, []
    try:
        with scorer_for(cfg) as scorer, _progress() as progress:
            task = progress.add_task(
                "rollout", total=len(problems), completed=(len(chunks) - len(todo)) * per_shard, info=""
            )
            for i, chunk in todo:
                stats = sample_to_shard(
                    engine,
                    tokenizer,
                    scorer,
                    chunk,
                    cfg,
                    policy_version=policy_version,
                    run_id=run_id,
                    path=out / shard_name(policy_version, worker, i),
                    seed=cfg.trainer.seed * 100003 + i,
                    group_prefix=f"{run_id}/{worker}/{i}",
                )
                tokens += stats["tokens"]
                rewards.append(stats["reward_mean"])
                tps = tokens / (time.perf_counter() - t_start)
                progress.update(
                    task, advance=len(chunk), info=f"{tps:,.0f} tok/s  reward {sum(rewards) / len(rewards):.3f}"
                )
    finally:
        engine.close()
    console.print(f"shards: {out}")
    return out


# --------------------------------------------------------------------------- async worker


def checkpoint_version(model_path: str | os.PathLike) -> int:
    """The trainer step of a checkpoint (vespo.json next to the weights), 0 for a base model."""
    import json

    meta = Path(model_path) / WEIGHTS_META
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text()).get("step", 0))
        except (ValueError, json.JSONDecodeError):
            return 0
    return 0


def _trainer_gone() -> bool:
    """A worker spawned by `vespo train --async` (VESPO_TRAINER_PID) stops once that trainer has died
    (killed: it never writes DONE); a resumed trainer starts its own workers."""
    pid = os.environ.get("VESPO_TRAINER_PID", "")
    return pid.isdigit() and os.getppid() != int(pid)


def rollout_follow(
    train_run: Path,
    *,
    worker: str = "w0",
    overrides: list[str] = (),
    poll_s: float = 0.5,
    max_shards: int | None = None,
) -> None:
    """Async worker: sample with the newest published checkpoint of `train_run`, forever.

    Worker `w<k>` of K = trainer.async_workers takes prompt chunks k, k+K, k+2K, ... of the data
    stream; it stops when the run writes `DONE`, and resumes after its last written shard."""
    from ..models import load_tokenizer
    from ..rewards import scorer_for

    cfg = load_run_config(train_run, overrides)
    try:
        k = int(worker.lstrip("w"))
    except ValueError:
        raise UserError(f"--worker {worker}: expected w<index>, e.g. w0") from None
    K = cfg.trainer.async_workers
    if not 0 <= k < K:
        raise UserError(f"--worker {worker}: expected w0..w{K - 1} (trainer.async_workers={K})")
    run = RunDir(train_run)
    out = run.rollouts
    out.mkdir(parents=True, exist_ok=True)
    while (path := run.latest_published()) is None:
        if run.done.exists() or _trainer_gone():
            return
        time.sleep(poll_s)
    tokenizer = load_tokenizer(str(path), trust_remote_code=cfg.model.trust_remote_code)
    engine = open_engine(cfg, str(path))
    version = checkpoint_version(path)
    per_shard = cfg.trainer.minibatch_prompts
    names = [parse_shard_name(p.name) for p in list_shards(out)]
    mine = [n.seq for n in names if n is not None and n.worker == worker]
    seq = max(mine) + K if mine else k
    run_id = Path(train_run).name
    written = 0
    try:
        with scorer_for(cfg) as scorer:
            while not run.done.exists() and not _trainer_gone():
                newest = run.latest_published()
                if newest is not None and newest != path:
                    engine.load_weights(str(newest))
                    path, version = newest, checkpoint_version(newest)
                problems = prompt_chunk(cfg, seq * per_shard, per_shard)
                stats = sample_to_shard(
                    engine,
                    tokenizer,
                    scorer,
                    problems,
                    cfg,
                    policy_version=version,
                    run_id=run_id,
                    path=out / shard_name(version, worker, seq),
                    seed=cfg.trainer.seed * 100003 + seq,
                    group_prefix=f"{run_id}/{worker}/{seq}",
                )
                console.print(
                    f"{worker}: shard {seq} v{version} reward {stats['reward_mean']:.3f} "
                    f"{stats['tokens'] / stats['gen_s']:,.0f} tok/s",
                    highlight=False,
                )
                seq += K
                written += 1
                if max_shards is not None and written >= max_shards:
                    break
    finally:
        engine.close()


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]
