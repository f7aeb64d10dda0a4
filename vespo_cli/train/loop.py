"""`vespo train`: rollout batches → N minibatch updates, in three regimes (docs/training.md).

* sync (default): sample gbs prompts × n with the current weights (written as shards), recompute
  old_logp once for the whole batch, take N = gbs/mbs optimizer steps, publish the weights.
* replay (`--replay DIR`): the same, from existing shards, no sampling.
* async (`--async`): `vespo rollout --follow` workers sample with the newest published weights;
  the trainer consumes complete shards, dropping those older than `max_staleness` steps.

The batches come from `sources.py`, the optimizer step from `step.py`, the sync engine from
`sampler.py`; evaluation is the caller's `evaluate` callback. Checkpoints are taken at rollout-batch
boundaries (old_logp of a batch belongs to the weights at its start), so a resumed run replays
exactly: the rollout batch i is the same shard, minibatch order and sampling seed derive from (seed, i),
and the optimizer/RNG state is restored.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.console import Console

from ..config import Config
from ..errors import UserError
from ..interrupt import interruptible
from ..malloc import release_heap
from ..objectives import group_advantages
from ..progress import progress_bar
from ..rundir import RunDir
from ..seeds import stream_seed
from . import dist
from .batch import Rows, reward_failures, split_minibatches
from .checkpoint import publish_weights, save_checkpoint
from .sampler import Sampler, sync_sampler
from .setup import Trainer, run_mode, start_run
from .sources import RolloutBatch, async_batches, replay_batches, sync_batches
from .step import count_nonfinite, old_logprobs, optimizer_step

console = Console(stderr=True)

# evaluate(engine, tokenizer, step) → metrics records ("kind": "eval") of the weights the engine holds at `step`
Evaluate = Callable[[object, object, int], list[dict]]


def train(
    cfg: Config,
    run_dir: Path,
    *,
    replay: Path | None = None,
    async_: bool = False,
    resume: bool = False,
    evaluate: Evaluate | None = None,
) -> dict:
    """Run (or resume) a training run in `run_dir`. Returns the last metrics record.

    Rank 0 locks `run_dir` (vespo_cli/lock.py) from its first write until the run returns; `evaluate`
    is called every cfg.eval.every steps and at the end (vespo_cli/evaluate/training.py builds it)."""
    run = RunDir(run_dir)
    replay, mode = run_mode(cfg, run, replay, async_, resume)
    started: list[Trainer] = []  # SIGTERM/SIGINT: one line naming the step (interrupt.py)
    line = lambda: interrupted_line(run, started[0].state["step"] if started else 0)  # noqa: E731
    with interruptible(line), contextlib.ExitStack() as stack:
        tr = start_run(cfg, run, mode, replay, resume, stack)
        if tr is None:
            return {}
        started.append(tr)
        batches, engine, publish = _batches(tr, replay, stack)
        last = _loop(tr, batches, engine, publish, evaluate)
    if dist.is_main():
        console.print(f"run: {run.root}  (metrics.jsonl, checkpoints/, rollouts/)")
    return last


def interrupted_line(run: RunDir, step: int) -> str:
    """What an interrupted `vespo train` says last."""
    if not run.is_run():
        return f"interrupted before {run.root} was written"
    return f"interrupted at step {step}; `vespo train --resume {run.root}` continues"


def _batches(
    tr: Trainer, replay: Path | None, stack: contextlib.ExitStack
) -> tuple[Iterator[RolloutBatch], object, Callable]:
    """The run's batch source, the engine that samples it (sync; None otherwise: eval then shares the
    trainer's module) and the weight publish after each batch; engines and workers close with `stack`."""
    cfg, run, state = tr.cfg, tr.run, tr.state
    if tr.mode == "sync":
        sampler: Sampler = stack.enter_context(sync_sampler(cfg, tr.run_id, tr.model, tr.tokenizer, tr.engine_path))
        return sync_batches(cfg, run.root, state, sampler.sample, tr.vocab_size), sampler.engine, sampler.publish
    if tr.mode == "replay":
        return replay_batches(cfg, Path(replay), state, tr.vocab_size), None, lambda: None
    workers: list[subprocess.Popen] = []
    if dist.is_main():
        publish_weights(tr.model, tr.tokenizer, run.root, state["step"])
        run.done.unlink(missing_ok=True)
        workers = _start_workers(cfg, run)
        stack.callback(_stop_workers, run, workers)
    external = cfg.trainer.async_workers == 0  # workers on other machines: the trainer waits for their shards
    alive = lambda: external or dist.broadcast_object(any(p.poll() is None for p in workers))  # noqa: E731
    publish = lambda: publish_weights(tr.model, tr.tokenizer, run.root, state["step"])  # noqa: E731
    return async_batches(cfg, run.root, state, alive, tr.vocab_size), None, publish


def _start_workers(cfg: Config, run: RunDir) -> list[subprocess.Popen]:
    """trainer.async_workers worker processes on this machine; with 0, a note on how to start them elsewhere."""
    from ..rollout.worker import start_worker
    from ..rundir import worker_name

    if cfg.trainer.async_workers == 0:
        console.print(
            f"waiting for shards from external workers: vespo rollout --follow {run.root} --worker w<k> "
            f"--set trainer.async_workers=<K>",
            highlight=False,
            soft_wrap=True,
        )
    return [start_worker(run.root, worker_name(k)) for k in range(cfg.trainer.async_workers)]


def _stop_workers(run: RunDir, workers: list[subprocess.Popen]) -> None:
    """DONE tells the workers to stop after their current shard; one still running a minute later is killed."""
    run.done.touch()
    for p in workers:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def _loop(tr: Trainer, batches: Iterator[RolloutBatch], engine, publish: Callable, evaluate: Evaluate | None) -> dict:
    """Train on each rollout batch; then publish the weights, evaluate and checkpoint as due."""
    cfg, t, state = tr.cfg, tr.cfg.trainer, tr.state
    last: dict = {}
    last_saved = last_eval = state["step"]
    with progress_bar(console, disable=not dist.is_main()) as progress:
        desc = f"train {cfg.algorithm.objective} N={t.staleness}"
        task = progress.add_task(desc, total=t.steps, completed=state["step"], info="")
        for batch in batches:
            last = _train_on_batch(tr, batch, progress, task)
            state["iteration"] += 1
            done = state["step"] >= t.steps
            eval_due = bool(
                evaluate
                and cfg.eval.benchmarks
                and (done or (cfg.eval.every and state["step"] - last_eval >= cfg.eval.every))
            )
            t_publish = time.perf_counter()
            if not done or eval_due:  # the last batch's weights are published only for the final eval
                publish()
            tr.timing["publish_s"] = time.perf_counter() - t_publish  # reported with the next batch, which it served
            if eval_due:
                _evaluate(tr, engine, evaluate)
                last_eval = state["step"]
            if done or state["step"] - last_saved >= t.save_every:
                save_checkpoint(
                    tr.run.root, tr.model, tr.tokenizer, tr.optimizer, tr.scheduler, state, t.keep_checkpoints
                )
                last_saved = state["step"]
            if eval_due or last_saved == state["step"]:
                release_heap()  # what the eval's generations and the checkpoint's buffers freed, back to the kernel
            if done:
                break
    return last


def _evaluate(tr: Trainer, engine, evaluate: Evaluate) -> None:
    """Evaluate the current weights; one `kind: eval` metrics line per benchmark.

    Sync runs use the rollout engine (it holds the current weights after publishing); otherwise an
    HF engine shares the trainer's module. Under FSDP without an engine, or with a tensor-parallel
    engine (its group's ranks generate in lockstep, eval runs on rank 0), eval is left to `vespo eval`."""
    tp = tr.cfg.rollout.tensor_parallel_size > 1
    if (tr.mode != "sync" or tp) and dist.world_size() > 1:  # no engine: sharing the module needs it whole
        if dist.is_main():
            what = "with tensor-parallel engines" if tr.mode == "sync" else "during sharded replay/async training"
            console.print(f"[yellow]eval {what} is skipped; run `vespo eval` on a checkpoint[/]")
        return
    if dist.is_main():
        if engine is None:
            from ..rollout import share_engine

            engine = share_engine("hf", tr.model, tr.tokenizer, seed=tr.cfg.trainer.seed)
        was_training = tr.model.training
        tr.model.eval()
        records = evaluate(engine, tr.tokenizer, tr.state["step"])
        tr.model.train(was_training)
        for rec in records:
            tr.writer.write(rec)
    dist.barrier()


def _proximal_logprobs(tr: Trainer, rows: Rows, minibatches: list[list[int]], mine: list[list[int]]):
    """old_logp of this rank's rows (None: on-policy, the training forward's own), once per batch."""
    t = tr.cfg.trainer
    owned = sorted({i for mb in mine for i in mb})
    if t.old_logp == "rollout":  # decoupled: the engine's logprobs are the proximal policy
        if any(rows.rollout_logprobs[i] is None for i in owned):
            raise UserError("trainer.old_logp=rollout: a shard has no rollout_logprobs (engine gave none)")
        old_lp_owned = [torch.tensor(rows.rollout_logprobs[i], dtype=torch.float32) for i in owned]
    elif len(minibatches) == 1:  # on-policy (N = 1): the weights being trained are the proximal policy, so
        return None  # its log-probs come from the training forward itself (no second forward)
    else:
        old_lp_all = old_logprobs(tr.model, rows, tr.cfg, minibatches=mine)
        old_lp_owned = [old_lp_all[i] for i in owned]
    old_lp: list[torch.Tensor] = [torch.zeros(0)] * len(rows)
    for j, i in enumerate(owned):
        old_lp[i] = old_lp_owned[j]
    return old_lp


def _record_ledger(state: dict, batch: RolloutBatch) -> None:
    """The consumed-shard ledger: every row used once, at these steps. Replay names a shard by its rows'
    shard id, sync and async by its file name (the shard id and .parquet)."""
    counts: dict[str, int] = {}
    for name in batch.rows.shard_ids:
        counts[name] = counts.get(name, 0) + 1
    for name in batch.shards:
        state["ledger"].append(
            {
                "shard": name,
                "iteration": batch.iteration,
                "rows": counts[name] if name in counts else counts.get(Path(name).stem, 0),
                "first_step": state["step"] + 1,
                "sha256": batch.digests.get(name),
            }
        )
    state.setdefault("dropped", []).extend(batch.dropped)
    state.setdefault("duplicates", []).extend(batch.duplicates)


def _train_on_batch(tr: Trainer, batch: RolloutBatch, progress, task) -> dict:
    """old_logp once, then N optimizer steps on whole-group minibatches; log one line per step."""
    t, state, rows = tr.cfg.trainer, tr.state, batch.rows
    advantages = group_advantages(rows.rewards, rows.group_ids).float()
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(stream_seed(t.seed, batch.iteration))
    minibatches = split_minibatches(rows.group_ids, t.staleness, gen)
    world, rank = dist.world_size(), dist.rank()
    mine = [mb[rank::world] for mb in minibatches]  # data parallel: each rank a slice of every minibatch
    old_lp = _proximal_logprobs(tr, rows, minibatches, mine)
    logprob_s = time.perf_counter() - t0
    _record_ledger(state, batch)
    last: dict = {}
    for j, idx in enumerate(mine):
        if state["step"] >= t.steps:
            break
        t1 = time.perf_counter()
        m = optimizer_step(tr.model, tr.optimizer, tr.scheduler, rows, idx, advantages, old_lp, tr.cfg)
        train_s = time.perf_counter() - t1
        state["step"] += 1
        rec = _step_record(tr, batch, j, minibatches[j], m, train_s, logprob_s)
        tr.writer.write(rec)
        count_nonfinite(state, rec, t.max_nonfinite_steps)
        if dist.is_main():
            info = f"reward {rec['reward']:.3f}  loss {rec['loss']:+.4f}  |g| {rec['grad_norm']:.3f}"
            progress.update(task, completed=state["step"], info=info)
        last = rec
    return last


def _step_record(
    tr: Trainer, batch: RolloutBatch, j: int, full: list[int], m: dict, train_s: float, logprob_s: float
) -> dict:
    """The metrics line of minibatch j of `batch`; batch-level times go on its first step's line."""
    rows, state, first = batch.rows, tr.state, j == 0
    resp_len = [len(rows.response_ids[i]) for i in full]
    now = time.perf_counter()
    rec = {
        "kind": "train",
        "step": state["step"],
        "iteration": batch.iteration,
        "minibatch": j,
        "lr": tr.scheduler.get_last_lr()[0],
        "reward": float(rows.rewards[full].double().mean()),  # reductions in float64
        "accuracy": float(rows.correct[full].float().mean()),
        **reward_failures(rows, full),
        "response_length": sum(resp_len) / len(resp_len),
        "staleness": float((state["step"] - 1 - rows.policy_versions[full].float()).mean()),
        "policy_version_min": int(rows.policy_versions[full].min()),
        "rollout_s": batch.rollout_s if first else 0.0,
        "rollout_s_max": batch.rollout_s_max if first else 0.0,
        "rollout_workers": batch.rollout_workers,
        "logprob_s": logprob_s if first else 0.0,
        "sync_s": tr.timing["publish_s"] if first else 0.0,
        "train_s": train_s,
        "tokens_per_s": m["train_tokens"] * dist.world_size() / max(train_s, 1e-9),
        "shards_dropped": len(batch.dropped) if first else 0,
        "shards_quarantined": len(batch.quarantined) if first else 0,
        "shards_duplicate": len(batch.duplicates) if first else 0,
        "objective": tr.cfg.algorithm.objective,
        "time": time.time(),
        # per-phase seconds (forward/backward/optimizer from step.py); time_step_s: wall time since the
        # previous step's line (its checkpoint and eval included), so the steps' sum is the run's time
        "time_rollout_s": batch.rollout_wall_s if first else 0.0,
        "time_old_logprob_s": logprob_s if first else 0.0,
        "time_publish_s": tr.timing["publish_s"] if first else 0.0,
        "time_shard_io_s": batch.shard_io_s if first else 0.0,
        "time_step_s": now - tr.timing["last_record"],
    }
    tr.timing["last_record"] = now
    rec.update({k: v for k, v in m.items() if k != "train_tokens"})
    return rec
