"""The rollout stage: prompts → engine samples → math-verify rewards → parquet shards.

Used by `vespo rollout` (one-off sampling), by its `--follow` mode (async worker that tracks a
training run's published checkpoints) and by the trainer's synchronous loop (`sample_to_shard`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from ..config import Config, load_run_config, save_config
from ..data import Problem, load_problems
from ..errors import UserError
from ..inputs import check_rollout_inputs, prompt_chunk
from ..lock import hold
from ..progress import announce, progress_bar
from ..rundir import WEIGHTS_META, RunDir, parse_shard_name, shard_name
from ..runid import ensure_run_id, recorded_run_id
from ..shards import list_shards
from .sampling import ShardWriter, open_engine

console = Console(stderr=True)


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

    check_rollout_inputs(out, cfg)  # another batch size, n or prompt stream would sample prompts twice
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
    announce(f"loading model {model_path} ({cfg.rollout.engine} engine) …")
    engine = open_engine(cfg, model_path)
    run_id = ensure_run_id(run_dir)  # under the lock; minted once (runid.py)
    t_start, tokens, rewards = time.perf_counter(), 0, []
    try:
        with scorer_for(cfg) as scorer, progress_bar(console) as progress:
            writer = ShardWriter(engine, tokenizer, scorer, cfg, run_id)
            task = progress.add_task(
                "rollout", total=len(problems), completed=(len(chunks) - len(todo)) * per_shard, info=""
            )
            for i, chunk in todo:
                stats = writer.chunk(chunk, out, policy_version, worker, i)
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


def _worker_index(train_run: Path, worker: str, K: int) -> int:
    """k of worker `w<k>`, one of the K = trainer.async_workers workers that share the prompt stream."""
    try:
        k = int(worker.lstrip("w"))
    except ValueError:
        raise UserError(f"--worker {worker}: expected w<index>, e.g. w0") from None
    if K == 0:  # the trainer starts none: external workers say how many of them share the prompt stream
        raise UserError(
            f"{train_run}: trainer.async_workers=0 (the trainer starts no workers); tell each external worker "
            f"how many there are, e.g. --set trainer.async_workers=2"
        )
    if not 0 <= k < K:
        raise UserError(f"--worker {worker}: expected w0..w{K - 1} (trainer.async_workers={K})")
    return k


def _first_checkpoint(run: RunDir, poll_s: float) -> Path | None:
    """The run's newest published checkpoint, once there is one; None if the run ends (or its trainer dies) first."""
    while (path := run.latest_published()) is None:
        if run.done.exists() or _trainer_gone():
            return None
        time.sleep(poll_s)
    return path


def _resume_seq(out: Path, worker: str, k: int, K: int) -> int:
    """The prompt chunk worker `w<k>` samples next: K after its last shard in `out`, or k for its first."""
    names = [parse_shard_name(p.name) for p in list_shards(out)]
    mine = [n.seq for n in names if n is not None and n.worker == worker]
    return max(mine) + K if mine else k


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
    stream; it stops when the run writes `DONE`, and resumes after its last written shard. Workers on
    other machines (the run's trainer.async_workers = 0) give K with `overrides`."""
    from ..models import load_tokenizer
    from ..rewards import scorer_for

    cfg = load_run_config(train_run, overrides)
    K = cfg.trainer.async_workers
    k = _worker_index(train_run, worker, K)
    run = RunDir(train_run)
    out = run.rollouts
    out.mkdir(parents=True, exist_ok=True)
    path = _first_checkpoint(run, poll_s)
    if path is None:
        return
    tokenizer = load_tokenizer(str(path), trust_remote_code=cfg.model.trust_remote_code)
    engine = open_engine(cfg, str(path))
    version = checkpoint_version(path)
    per_shard = cfg.trainer.minibatch_prompts
    seq = _resume_seq(out, worker, k, K)
    run_id = recorded_run_id(train_run)  # the trainer's (runid.py)
    written = 0
    try:
        with scorer_for(cfg) as scorer:
            writer = ShardWriter(engine, tokenizer, scorer, cfg, run_id)
            while not run.done.exists() and not _trainer_gone():
                newest = run.latest_published()
                if newest is not None and newest != path:
                    engine.load_weights(str(newest))
                    path, version = newest, checkpoint_version(newest)
                problems = prompt_chunk(cfg, seq * per_shard, per_shard)
                stats = writer.chunk(problems, out, version, worker, seq)
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
