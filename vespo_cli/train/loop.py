"""`vespo train`: rollout batches → N minibatch updates, in three regimes (DESIGN.md).

* sync (default): sample gbs prompts × n with the current weights (written as shards), recompute
  old_logp once for the whole batch, take N = gbs/mbs optimizer steps, publish the weights.
* replay (`--replay DIR`): the same, from existing shards, no sampling.
* async (`--async`): `vespo rollout --follow` workers sample with the newest published weights;
  the trainer consumes complete shards, dropping those older than `max_staleness` steps.

Checkpoints are taken at rollout-batch boundaries (old_logp of a batch belongs to the weights at its
start), so a resumed run replays exactly: the rollout batch i is the same shard, minibatch order
and sampling seed derive from (seed, i), and the optimizer/RNG state is restored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import Config, save_config, to_dict
from ..errors import UserError
from ..fsio import atomic_write_json, atomic_write_text, read_jsonl
from ..lock import hold
from ..objectives import group_advantages, policy_loss
from ..routing import replay_microbatch
from ..shards import ShardError, follow, list_shards, read_shard, shard_hash, shard_name
from . import dist, precision
from .batch import Rows, make_microbatch, padded, plan_microbatches, reward_failures, rows_from_table, split_minibatches
from .checkpoint import latest_checkpoint, load_optimizer, load_trainer_state, publish_weights, save_checkpoint
from .forward import token_logprobs
from .metrics import MetricsWriter

console = Console(stderr=True)
SUMMED = {"loss", "n_tokens", "n_seqs", "rollout_missing_tokens", "_entropy", "_tokens"}  # add up over microbatches


@dataclass
class RolloutBatch:
    iteration: int
    rows: Rows
    shards: list[str]
    rollout_s: float = 0.0
    dropped: list[str] = field(default_factory=list)  # async: shards older than max_staleness
    quarantined: list[str] = field(default_factory=list)  # shards that failed validation
    duplicates: list[str] = field(default_factory=list)  # shards whose rows were already used (a renamed copy)
    digests: dict[str, str] = field(default_factory=dict)  # shard → content hash (its identity in the ledger)


# --------------------------------------------------------------------------- batch sources


def _concat(tables: list[pa.Table]) -> Rows:
    return rows_from_table(pa.concat_tables(tables))


def sync_batches(cfg: Config, run_dir: Path, state: dict, sampler, vocab_size: int) -> Iterator[RolloutBatch]:
    """Sample rollout batch i with the current weights (or reuse its shard after a resume)."""
    from ..rollout.run import prompt_chunk

    out = run_dir / "rollouts"
    gbs = cfg.trainer.rollout_batch_prompts
    while True:
        i = state["iteration"]
        version = state["step"]
        path = out / shard_name(version, "sync", i)
        t0 = time.perf_counter()
        if dist.is_main() and not path.exists():
            sampler(prompt_chunk(cfg, i * gbs, gbs), version, path, cfg.trainer.seed * 100003 + i, i)
        dist.barrier()
        table = read_shard(path, vocab_size)
        yield RolloutBatch(
            i, rows_from_table(table), [path.name], time.perf_counter() - t0, digests={path.name: shard_hash(table)}
        )


def _groups_in_order(rows: Rows) -> list[str]:
    seen: dict[str, None] = {}
    for g in rows.group_ids:
        seen.setdefault(g, None)
    return list(seen)


def replay_batches(cfg: Config, replay: Path, state: dict, vocab_size: int) -> Iterator[RolloutBatch]:
    """Existing shards, in name order, cut into rollout batches of gbs whole prompt groups; a shard
    with the same rows as an earlier one (a renamed copy) is skipped."""
    files = list_shards(replay)
    if not files:
        raise UserError(f"--replay {replay}: no shards (*.parquet) found")
    tables, bad, dup, digests, first = [], [], [], {}, {}
    for f in files:
        try:
            table = read_shard(f, vocab_size)
        except ShardError as e:
            bad.append(f.name)
            console.print(f"[yellow]skipping bad shard[/] {e}", highlight=False)
            continue
        d = shard_hash(table)
        if d in first:
            dup.append(f.name)
            console.print(f"[yellow]skipping duplicate shard[/] {f}: the same rows as {first[d]}", highlight=False)
            continue
        first[d] = f.name
        digests.update(dict.fromkeys(table.column("shard_id").unique().to_pylist(), d))
        tables.append(table)
    if not tables:
        raise UserError(f"--replay {replay}: every shard is invalid")
    rows = _concat(tables)
    groups = _groups_in_order(rows)
    gbs = cfg.trainer.rollout_batch_prompts
    index: dict[str, list[int]] = {}
    for r, g in enumerate(rows.group_ids):
        index.setdefault(g, []).append(r)
    num_batches = len(groups) // gbs
    if num_batches == 0:
        raise UserError(
            f"--replay {replay}: {len(groups)} prompt groups < one rollout batch of "
            f"{gbs} (trainer.minibatch_prompts × trainer.staleness)"
        )
    once = state["iteration"] == 0  # counted once per run: a resumed run does not count them again
    while True:
        i = state["iteration"]
        epoch_i = i % num_batches  # replay more steps than data: another epoch over the same shards
        chosen = [r for g in groups[epoch_i * gbs : (epoch_i + 1) * gbs] for r in index[g]]
        batch_rows = rows.select(chosen)
        shards = sorted(set(batch_rows.shard_ids))
        yield RolloutBatch(
            i,
            batch_rows,
            shards,
            quarantined=bad if once else [],
            duplicates=dup if once else [],
            digests={s: digests[s] for s in shards},
        )
        once = False


def async_batches(cfg: Config, run_dir: Path, state: dict, workers_alive, vocab_size: int) -> Iterator[RolloutBatch]:
    """Complete shards from async workers; too-stale shards are dropped, bad ones quarantined, and one
    whose rows were already used (a renamed copy) skipped."""
    out = run_dir / "rollouts"
    out.mkdir(parents=True, exist_ok=True)
    quarantine = out / "quarantine"
    seen = {e["shard"] for e in state["ledger"]} | set(state.get("dropped", [])) | set(state.get("duplicates", []))
    used = {e["sha256"] for e in state["ledger"] if e.get("sha256")}
    gbs = cfg.trainer.rollout_batch_prompts
    stream = follow(out, seen=seen, poll_s=0.2, stop=lambda: not workers_alive())
    while True:
        tables, names, dropped, bad, dup, digests = [], [], [], [], [], {}
        groups: set[str] = set()
        t0 = time.perf_counter()
        while len(groups) < gbs:
            path = next(stream, None)
            if path is None:
                raise UserError(f"{run_dir}: every async rollout worker exited; see {run_dir / 'logs'}/worker-*.log")
            try:
                t = read_shard(path, vocab_size)
            except ShardError as e:
                console.print(f"[yellow]quarantined[/] {e}", highlight=False)
                quarantine.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    os.replace(path, quarantine / path.name)
                bad.append(path.name)
                continue
            version = int(t.column("policy_version")[0].as_py())
            if state["step"] - version > cfg.trainer.max_staleness:
                dropped.append(path.name)
                continue
            if shard_hash(t) in used:
                dup.append(path.name)
                console.print(
                    f"[yellow]skipping duplicate shard[/] {path}: its rows were already used", highlight=False
                )
                continue
            used.add(shard_hash(t))
            digests[path.name] = shard_hash(t)
            tables.append(t)
            names.append(path.name)
            groups.update(t.column("group_id").to_pylist())
        rows = _concat(tables)
        yield RolloutBatch(state["iteration"], rows, names, time.perf_counter() - t0, dropped, bad, dup, digests)


# --------------------------------------------------------------------------- optimisation


def compute_logprobs(model, rows: Rows, idx: list[int], cfg: Config, with_entropy: bool, grad: bool):
    """Yield (microbatch, logp [b,T], entropy) over `idx` in token-budget microbatches, on the
    model's device."""
    device = next(model.parameters()).device
    ctx = precision.autocast(model, cfg.trainer.bf16_autocast)
    for mb_idx in plan_microbatches(rows, idx, cfg.trainer.micro_token_budget):
        mb = make_microbatch(rows, mb_idx).to(device)
        # R2 (routing.py): response positions replay the rollout's experts, the prompt routes freely; the
        # replay spans the yield so the caller's backward (gradient checkpointing re-runs forwards) sees it
        with replay_microbatch(model, mb) if cfg.algorithm.routing_replay else contextlib.nullcontext():
            with ctx, contextlib.nullcontext() if grad else torch.no_grad():
                logp, ent = token_logprobs(model, mb, cfg.rollout.temperature, with_entropy)
            yield mb, logp, ent


def old_logprobs(model, rows: Rows, cfg: Config, minibatches: list[list[int]] | None = None) -> list[torch.Tensor]:
    """The proximal policy's log-probs of every response token, once per rollout batch.

    With the rollout batch's `minibatches`, each is planned into microbatches as its optimizer step
    will plan it: the same shapes give the same bf16 numerics, so Δ is exactly 0 on the first
    minibatch and the drift later minibatches show is the policy's, not the batch layout's. Rows in
    no minibatch get an empty tensor."""
    out: list[torch.Tensor] = [torch.zeros(0)] * len(rows)
    model.eval()
    with precision.compute(model, cfg):  # the training forward's numerics
        for idx in minibatches if minibatches is not None else [list(range(len(rows)))]:
            for mb, logp, _ in compute_logprobs(model, rows, idx, cfg, False, grad=False):
                for r, i in enumerate(mb.rows):
                    out[i] = logp[r, : len(rows.response_ids[i])].float().cpu()
    return out


def optimizer_step(
    model,
    optimizer,
    scheduler,
    rows: Rows,
    idx: list[int],
    advantages: torch.Tensor,
    old_lp: list[torch.Tensor] | None,
    cfg: Config,
) -> dict:
    """One optimizer step on minibatch `idx` with exact gradient accumulation over microbatches.
    `old_lp` None: on-policy, the proximal log-probs are this forward's own, detached."""
    model.train()
    algo = cfg.algorithm
    totals = torch.tensor([sum(len(rows.response_ids[i]) for i in idx), len(idx)], dtype=torch.float64)
    dist.all_reduce_sum(totals)
    num_tokens, num_seqs = max(float(totals[0]), 1.0), float(totals[1])
    sums: dict[str, float] = {}
    ent_sum = tok = 0.0
    with precision.compute(model, cfg):
        for mb, logp, ent in compute_logprobs(model, rows, idx, cfg, with_entropy=True, grad=True):
            T = mb.mask.shape[1]
            old = logp.detach() if old_lp is None else padded(old_lp, mb.rows, T).to(logp.device)
            roll = padded(rows.rollout_logprobs, mb.rows, T).to(logp.device)
            roll = torch.where(mb.mask, roll, torch.zeros_like(roll))  # NaN (engine gave none) only on tokens
            adv = advantages[mb.rows].to(logp.device)
            loss, metrics = policy_loss(
                algo.params,
                logp,
                old,
                adv,
                mb.mask,
                rollout_logp=roll,
                correction=algo.correction,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                correction_cap=algo.correction_cap,
            )
            (loss * dist.world_size()).backward()  # FSDP averages gradients over ranks; we want the sum
            n = mb.num_tokens
            for k, v in metrics.items():
                if k.endswith("_max"):
                    sums[k] = max(sums.get(k, -math.inf), v)
                else:  # loss and counts add up over microbatches; the rest are token-weighted means
                    sums[k] = sums.get(k, 0.0) + (v if k in SUMMED else v * n)
            ent_sum += float((ent * mb.mask).sum())
            tok += n
    sums["_entropy"], sums["_tokens"] = ent_sum, tok
    sums = _all_reduce_metrics(sums)
    tok = sums.pop("_tokens")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    skipped = not math.isfinite(grad_norm)
    if not skipped:  # a non-finite gradient would corrupt the weights: drop this step
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # the schedule advances over a skipped step too, deliberately
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()
    out = {
        k: (v if k in SUMMED or k.endswith("_max") else v / max(tok, 1))
        for k, v in sums.items()
        if not k.startswith("_")
    }
    out.update(
        entropy=sums["_entropy"] / max(tok, 1),
        grad_norm=grad_norm,
        skipped_nonfinite=int(skipped),
        train_tokens=tok,
    )
    return out


def _count_nonfinite(state: dict, rec: dict, limit: int) -> None:
    """Count skipped (non-finite) steps in a row in `state`; stop the run at `limit` of them."""
    state["nonfinite_in_a_row"] = state.get("nonfinite_in_a_row", 0) + 1 if rec["skipped_nonfinite"] else 0
    if state["nonfinite_in_a_row"] >= limit:
        raise UserError(
            f"step {rec['step']}: {limit} optimizer steps in a row had a non-finite gradient (loss "
            f"{rec['loss']}), none applied (trainer.max_nonfinite_steps={limit}); lower trainer.lr "
            f"or check the data"
        )


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over the model's parameters; torch's fused kernel where it has one for them (one pass
    per tensor: 0.20 → 0.06 s per step for SmolLM2-135M on CPU, reports/bench/micro.json), else foreach."""
    t = cfg.trainer
    kwargs = dict(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(model.parameters(), **kwargs)


def _all_reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Combine per-rank metric sums (maxima for *_max keys); every rank holds the same keys."""
    if dist.world_size() == 1:
        return sums
    keys = sorted(sums)
    is_max = torch.tensor([k.endswith("_max") for k in keys])
    vals = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    total = dist.all_reduce_sum(torch.where(is_max, 0.0, vals))
    peak = dist.all_reduce_max(torch.where(is_max, vals, -math.inf))
    return dict(zip(keys, torch.where(is_max, peak, total).tolist()))


# --------------------------------------------------------------------------- the run


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        return
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise UserError(
            f"{run_dir}: already holds a run; continue it with --resume {run_dir}, or pick another --run-dir"
        )


def _read_run_info(path: Path) -> dict:
    """run.json: the run's mode and replay directory, as `train` wrote it."""
    try:
        info = json.loads(path.read_bytes())
    except ValueError as e:  # not JSON, not UTF-8
        raise UserError(f"{path}: unreadable run file ({str(e).splitlines()[0][:120]})") from None
    if not (
        isinstance(info, dict)
        and info.get("mode") in ("sync", "replay", "async")
        and isinstance(info.get("replay"), (str, type(None)))
    ):
        raise UserError(f"{path}: not a vespo run file (expected mode sync, replay or async and a replay path)")
    return info


def _truncate_metrics(path: Path, step: int) -> None:
    """After a resume from step K, drop metric lines of steps > K (they are recomputed)."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not dist.is_main(),
    )


def _spawn_workers(cfg: Config, run_dir: Path) -> list[subprocess.Popen]:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(cfg.trainer.async_workers):
        log = open(logs / f"worker-w{k}.log", "ab")
        cmd = [sys.executable, "-m", "vespo_cli.cli", "rollout", "--follow", str(run_dir), "--worker", f"w{k}"]
        env = {**os.environ, "VESPO_TRAINER_PID": str(os.getpid())}  # the worker exits if this process dies
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def train(
    cfg: Config, run_dir: Path, *, replay: Path | None = None, async_: bool = False, resume: bool = False
) -> dict:
    """Run (or resume) a training run in `run_dir`. Returns the last metrics record.

    Rank 0 locks `run_dir` (vespo_cli/lock.py) from its first write until the run returns."""
    with contextlib.ExitStack() as lock:
        return _train(cfg, run_dir, lock, replay=replay, async_=async_, resume=resume)


def _train(
    cfg: Config, run_dir: Path, lock: contextlib.ExitStack, *, replay: Path | None, async_: bool, resume: bool
) -> dict:
    from ..models import load_model, load_tokenizer, resolve_model

    run_dir = Path(run_dir)
    _check_run_dir(run_dir, resume)
    if replay is not None and not Path(replay).is_dir():
        raise UserError(f"--replay {replay}: no such directory")
    info_path = run_dir / "run.json"
    if resume and info_path.is_file():
        info = _read_run_info(info_path)
        replay = Path(info["replay"]) if info.get("replay") else None
        async_ = info.get("mode") == "async"
    mode = "replay" if replay is not None else "async" if async_ else "sync"
    if cfg.algorithm.routing_replay and mode != "replay" and cfg.rollout.engine != "hf":
        raise UserError(
            f"algorithm.routing_replay: true needs rollout.engine=hf (only the HF engine records "
            f"MoE routing, see vespo_cli/routing.py; got rollout.engine={cfg.rollout.engine})"
        )
    device = dist.init()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.trainer.seed)
    if mode != "replay":
        from ..rollout.run import prompt_chunk, warn_biased_sampling

        warn_biased_sampling(cfg)
        prompt_chunk(cfg, 0, 1)  # a missing or bad data source fails here, before the run dir is written

    base_path = resolve_model(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    if dist.is_main():
        lock.enter_context(hold(run_dir, "vespo train"))
        _check_run_dir(run_dir, resume)  # again, now under the lock: a run may have started meanwhile
    ckpt = None
    if resume:  # rank 0 verifies the checkpoints' manifests; a corrupt one is named, an older one used
        ckpt = dist.broadcast_object(
            latest_checkpoint(
                run_dir, warn=lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)
            )
            if dist.is_main()
            else None
        )
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            save_config(cfg, run_dir)
            atomic_write_json(
                info_path,
                {
                    "mode": mode,
                    "replay": str(replay) if replay else None,
                    "base_model": base_path,
                    "world_size": dist.world_size(),
                },
            )
    tokenizer = load_tokenizer(base_path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(str(ckpt) if ckpt else base_path, cfg.model.dtype, cfg.model.trust_remote_code).to(device)
    model.config.use_cache = False
    vocab_size = model.get_input_embeddings().num_embeddings  # shards' token ids must index it
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = dist.shard_model(model, cfg.trainer.bf16_params)
    t = cfg.trainer
    optimizer = make_optimizer(model, cfg)
    warmup = max(t.lr_warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    state = {"step": 0, "iteration": 0, "ledger": [], "dropped": []}
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        load_optimizer(ckpt, model, optimizer, scheduler)
        if dist.is_main():
            console.print(f"resuming {run_dir} from {ckpt.name} (step {state['step']})")
    elif resume and dist.is_main():
        console.print(f"resuming {run_dir}: no checkpoint yet, starting from step 0")
    metrics_path = run_dir / "metrics.jsonl"
    if dist.is_main():
        _truncate_metrics(metrics_path, state["step"])
    writer = MetricsWriter(run_dir, t.loggers, config=to_dict(cfg), enabled=dist.is_main())
    if state["step"] >= t.steps:
        console.print(f"{run_dir}: already complete ({state['step']}/{t.steps} steps)")
        return {}

    workers = None
    holder: dict = {}  # sync: the engine's publish/close callbacks
    if mode == "sync":
        batches = sync_batches(
            cfg, run_dir, state, _make_sampler(cfg, run_dir, model, tokenizer, ckpt, base_path, holder), vocab_size
        )
    elif mode == "replay":
        batches = replay_batches(cfg, Path(replay), state, vocab_size)
    else:
        if dist.is_main():
            publish_weights(model, tokenizer, run_dir, state["step"])
            (run_dir / "DONE").unlink(missing_ok=True)
            workers = _spawn_workers(cfg, run_dir)
        batches = async_batches(
            cfg, run_dir, state, lambda: dist.broadcast_object(any(p.poll() is None for p in workers or [])), vocab_size
        )

    last: dict = {}
    last_saved = last_eval = state["step"]
    sync_s = 0.0
    try:
        with _progress() as progress:
            task = progress.add_task(
                f"train {cfg.algorithm.objective} N={t.staleness}", total=t.steps, completed=state["step"], info=""
            )
            for batch in batches:
                last = _train_on_batch(cfg, model, optimizer, scheduler, batch, state, writer, progress, task, sync_s)
                state["iteration"] += 1
                done = state["step"] >= t.steps
                t_sync = time.perf_counter()
                if mode == "sync" and not done:
                    holder["publish"]()
                elif mode == "async" and not done:
                    publish_weights(model, tokenizer, run_dir, state["step"])
                sync_s = time.perf_counter() - t_sync  # reported with the next batch, which it served
                if cfg.eval.benchmarks and ((cfg.eval.every and state["step"] - last_eval >= cfg.eval.every) or done):
                    _eval_during_training(cfg, run_dir, model, tokenizer, holder.get("engine"), state["step"], writer)
                    last_eval = state["step"]
                if done or state["step"] - last_saved >= t.save_every:
                    save_checkpoint(run_dir, model, tokenizer, optimizer, scheduler, state, t.keep_checkpoints)
                    last_saved = state["step"]
                if done:
                    break
    finally:
        if workers is not None:
            (run_dir / "DONE").touch()
            for p in workers:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        if mode == "sync" and holder.get("close"):
            holder["close"]()
        writer.close()
    if dist.is_main():
        console.print(f"run: {run_dir}  (metrics.jsonl, checkpoints/, rollouts/)")
    return last


def _eval_during_training(
    cfg: Config, run_dir: Path, model, tokenizer, engine, step: int, writer: MetricsWriter
) -> None:
    """Evaluate the current weights on cfg.eval.benchmarks; one `kind: eval` metrics line each.

    Sync runs use the rollout engine (it holds the current weights after publishing); otherwise an
    HF engine shares the trainer's module. Under FSDP without an engine, eval is left to `vespo eval`."""
    from ..evaluate import metrics_record, run_eval
    from ..rewards import scorer_for
    from ..rollout.base import Sampling

    if engine is None and dist.world_size() > 1:
        if dist.is_main():
            console.print(
                "[yellow]eval during sharded replay/async training is skipped; run `vespo eval` on a checkpoint[/]"
            )
        return
    if dist.is_main():
        if engine is None:
            from ..rollout.hf import HFEngine

            engine = HFEngine.from_module(model, tokenizer, seed=cfg.trainer.seed)
        e = cfg.eval
        sampling = Sampling(
            temperature=e.temperature, top_p=e.top_p, top_k=-1, max_tokens=e.max_tokens, seed=cfg.trainer.seed
        )
        was_training = model.training
        model.eval()
        with scorer_for(cfg) as scorer:
            results = run_eval(
                engine,
                tokenizer,
                e.benchmarks,
                e.k,
                e.limit,
                sampling,
                cfg.data.template,
                run_dir / "eval" / f"step-{step}",
                scorer,
                max_prompt_tokens=cfg.data.max_prompt_tokens,
            )
        model.train(was_training)
        for summary in results.values():
            writer.write({"kind": "eval", "step": step, "time": time.time(), **metrics_record(summary)})
    dist.barrier()


def _make_sampler(cfg: Config, run_dir: Path, model, tokenizer, ckpt, base_path: str, holder: dict):
    """The sync loop's sampler (rank 0): an engine that follows the trainer's weights.

    HF engine in the trainer's dtype on one process shares the trainer's module (no copy, no publish);
    otherwise the engine (vLLM, or HF in another dtype) gets the weights after every rollout batch."""
    from ..rewards import scorer_for
    from ..rollout.run import open_engine, sample_to_shard

    if not dist.is_main():
        holder["publish"] = lambda: dist.full_state_dict(model)  # collective: every rank takes part
        return None
    share = cfg.rollout.engine == "hf" and cfg.rollout.dtype == cfg.model.dtype and dist.world_size() == 1
    if share:
        from ..rollout.hf import HFEngine

        engine = HFEngine.from_module(
            model, tokenizer, seed=cfg.trainer.seed, record_routing=cfg.algorithm.routing_replay
        )
        holder["publish"] = lambda: None
    else:
        engine = open_engine(cfg, str(ckpt) if ckpt else base_path)
        holder["publish"] = lambda: engine.load_state_dict(dist.full_state_dict(model))
    scorer = scorer_for(cfg)
    scorer.__enter__()

    def close():
        scorer.__exit__(None, None, None)
        engine.close()

    holder["close"] = close
    holder["engine"] = engine
    run_id = run_dir.name

    def sampler(problems, version, path, seed, iteration):
        was_training = model.training
        model.eval()
        stats = sample_to_shard(
            engine,
            tokenizer,
            scorer,
            problems,
            cfg,
            policy_version=version,
            run_id=run_id,
            path=path,
            seed=seed,
            group_prefix=f"{run_id}/{iteration}",
        )
        model.train(was_training)
        return stats

    return sampler


def _train_on_batch(
    cfg: Config,
    model,
    optimizer,
    scheduler,
    batch: RolloutBatch,
    state: dict,
    writer: MetricsWriter,
    progress,
    task,
    sync_s: float,
) -> dict:
    """old_logp once, then N optimizer steps on whole-group minibatches; log one line per step."""
    t = cfg.trainer
    rows = batch.rows
    advantages = group_advantages(rows.rewards, rows.group_ids).float()
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(t.seed * 1_000_003 + batch.iteration)
    minibatches = split_minibatches(rows.group_ids, t.staleness, gen)
    world, rank = dist.world_size(), dist.rank()
    mine = [mb[rank::world] for mb in minibatches]  # data parallel: each rank a slice of every minibatch
    owned = sorted({i for mb in mine for i in mb})
    if t.old_logp == "rollout":  # decoupled: the engine's logprobs are the proximal policy
        if any(rows.rollout_logprobs[i] is None for i in owned):
            raise UserError("trainer.old_logp=rollout: a shard has no rollout_logprobs (engine gave none)")
        old_lp_owned = [torch.tensor(rows.rollout_logprobs[i], dtype=torch.float32) for i in owned]
    elif len(minibatches) == 1:  # on-policy (N = 1): the weights being trained are the proximal policy, so
        old_lp_owned = None  # its log-probs come from the training forward itself (no second forward)
    else:
        old_lp_all = old_logprobs(model, rows, cfg, minibatches=mine)
        old_lp_owned = [old_lp_all[i] for i in owned]
    old_lp: list[torch.Tensor] | None = None if old_lp_owned is None else [torch.zeros(0)] * len(rows)
    for j, i in enumerate(owned if old_lp is not None else []):
        old_lp[i] = old_lp_owned[j]
    logprob_s = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for name in rows.shard_ids:
        counts[name] = counts.get(name, 0) + 1
    for name in batch.shards:  # the consumed-shard ledger: every row used once, at these steps
        state["ledger"].append(
            {
                "shard": name,
                "iteration": batch.iteration,
                "rows": counts.get(Path(name).stem, 0),
                "first_step": state["step"] + 1,
                "sha256": batch.digests.get(name),
            }
        )
    state.setdefault("dropped", []).extend(batch.dropped)
    state.setdefault("duplicates", []).extend(batch.duplicates)
    last: dict = {}
    for j, idx in enumerate(mine):
        if state["step"] >= t.steps:
            break
        t1 = time.perf_counter()
        m = optimizer_step(model, optimizer, scheduler, rows, idx, advantages, old_lp, cfg)
        train_s = time.perf_counter() - t1
        full = minibatches[j]
        resp_len = [len(rows.response_ids[i]) for i in full]
        state["step"] += 1
        rec = {
            "kind": "train",
            "step": state["step"],
            "iteration": batch.iteration,
            "minibatch": j,
            "lr": scheduler.get_last_lr()[0],
            "reward": float(rows.rewards[full].mean()),
            "accuracy": float(rows.correct[full].float().mean()),
            **reward_failures(rows, full),
            "response_length": sum(resp_len) / len(resp_len),
            "staleness": float((state["step"] - 1 - rows.policy_versions[full].float()).mean()),
            "policy_version_min": int(rows.policy_versions[full].min()),
            "rollout_s": batch.rollout_s if j == 0 else 0.0,
            "logprob_s": logprob_s if j == 0 else 0.0,
            "sync_s": sync_s if j == 0 else 0.0,
            "train_s": train_s,
            "tokens_per_s": m["train_tokens"] * world / max(train_s, 1e-9),
            "shards_dropped": len(batch.dropped) if j == 0 else 0,
            "shards_quarantined": len(batch.quarantined) if j == 0 else 0,
            "shards_duplicate": len(batch.duplicates) if j == 0 else 0,
            "objective": cfg.algorithm.objective,
            "time": time.time(),
        }
        rec.update({k: v for k, v in m.items() if k != "train_tokens"})
        writer.write(rec)
        _count_nonfinite(state, rec, t.max_nonfinite_steps)
        if dist.is_main():
            progress.update(
                task,
                completed=state["step"],
                info=f"reward {rec['reward']:.3f}  loss {rec['loss']:+.4f}  |g| {rec['grad_norm']:.3f}",
            )
        last = rec
    return last
