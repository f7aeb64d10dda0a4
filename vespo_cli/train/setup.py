"""Starting or resuming a training run: its regime, the run directory (lock, config.yaml, run.json),
the model, optimizer and trainer state, restored from the newest verified checkpoint
(docs/training.md "Checkpoints and resume").

Behaviour on resume: a run is what its run.json and config.yaml say; metrics lines past the restored
step are dropped (they are recomputed)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from ..config import Config, load_run_config, save_config, to_dict
from ..errors import UserError
from ..fsio import atomic_write_json, atomic_write_text, read_jsonl, remove_temporaries
from ..inputs import check_inputs, prompt_chunk, record_inputs
from ..lock import hold
from ..progress import announce
from ..rundir import RunDir
from ..runid import code_commit, ensure_run_id, new_run_id, record_start
from ..runtime import set_threads
from ..seeds import seed_all
from . import dist
from .checkpoint import latest_checkpoint, load_optimizer, load_trainer_state
from .compile import compile_decoder_blocks
from .metrics import MetricsWriter, check_trackers
from .step import make_optimizer, make_scheduler

console = Console(stderr=True)


@dataclass
class Trainer:
    """What one training process holds: the config, the run, the model and its optimizer state."""

    cfg: Config
    run: RunDir
    mode: str  # sync | replay | async
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: dict  # step, iteration, consumed-shard ledger (checkpointed as trainer_state.json)
    writer: MetricsWriter
    vocab_size: int
    engine_path: str  # the weights the run started from (a sync engine of its own opens them)
    run_id: str  # run.json's, minted once (runid.py): the prefix of the run's group ids
    timing: dict = field(default_factory=lambda: {"publish_s": 0.0, "last_record": time.perf_counter()})


def run_mode(cfg: Config, run: RunDir, replay: Path | None, async_: bool, resume: bool) -> tuple[Path | None, str]:
    """The run's regime (a resumed run keeps the one its run.json records) and replay directory."""
    _check_run_dir(run, resume)
    if replay is not None and not Path(replay).is_dir():
        raise UserError(f"--replay {replay}: no such directory")
    if resume and run.info.is_file():
        info = _read_run_info(run.info)
        replay = Path(info["replay"]) if info.get("replay") else None
        async_ = info.get("mode") == "async"
    mode = "replay" if replay is not None else "async" if async_ else "sync"
    if cfg.algorithm.routing_replay and mode != "replay" and cfg.rollout.engine != "hf":
        raise UserError(
            f"algorithm.routing_replay: true needs rollout.engine=hf (only the HF engine records "
            f"MoE routing, see vespo_cli/routing.py; got rollout.engine={cfg.rollout.engine})"
        )
    return replay, mode


def start_run(
    cfg: Config, run: RunDir, mode: str, replay: Path | None, resume: bool, stack: contextlib.ExitStack
) -> Trainer | None:
    """Join the process group, lock and set up the run directory, load the model and restore the last
    checkpoint; None when the run is already complete."""
    from ..models import resolve_model

    check_trackers(cfg.trainer.loggers)  # a requested tracker that is missing fails before anything loads
    device = dist.init()
    set_threads(cfg.trainer.threads)
    seed_all(cfg.trainer.seed)  # torch, NumPy and Python's random
    if mode != "replay":
        from ..rollout.sampling import warn_biased_sampling

        warn_biased_sampling(cfg)
        prompt_chunk(cfg, 0, 1)  # a missing or bad data source fails here, before the run dir is written
    base_path = resolve_model(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    if dist.is_main():
        stack.enter_context(hold(run.root, "vespo train"))
        _check_run_dir(run, resume)  # again, now under the lock: a run may have started meanwhile
        _remove_stale_temporaries(run, mode)
    ckpt = _latest_checkpoint(run) if resume else None
    if dist.is_main():
        run.root.mkdir(parents=True, exist_ok=True)
        if not resume or load_run_config(run.root).trainer.steps != cfg.trainer.steps:
            save_config(cfg, run.root)  # on resume: `--set trainer.steps=N` extended it, and the record says so
        if not resume:
            info = {"mode": mode, "replay": str(replay) if replay else None, "base_model": base_path}
            info = {**info, "world_size": dist.world_size(), "run_id": new_run_id(), "commit": code_commit()}
            atomic_write_json(run.info, info)
        settle_inputs(run.root, cfg, mode=mode, replay=replay, resume=resume, checkpoint=ckpt)
    run_id = dist.broadcast_object(ensure_run_id(run.root) if dist.is_main() else None)  # runid.py
    tr = _load(cfg, run, mode, resume, ckpt, base_path, device, run_id)
    stack.callback(tr.writer.close)
    if tr.state["step"] >= cfg.trainer.steps:
        console.print(f"{run.root}: already complete ({tr.state['step']}/{cfg.trainer.steps} steps)")
        return None
    if dist.is_main():
        record_start(run.root, tr.state["step"], dist.world_size())
    return tr


def settle_inputs(
    run_dir: str | os.PathLike,
    cfg: Config,
    *,
    mode: str,
    replay: str | os.PathLike | None,
    resume: bool,
    checkpoint: str | os.PathLike | None = None,
) -> None:
    """The one call of the trainer (rank 0, after config.yaml and run.json): record the inputs of a
    new run; on resume compare them, and the ledger of `checkpoint` (the one resumed from), first."""
    if not resume:
        record_inputs(run_dir, cfg, mode, replay)
        return
    ledger = None
    if checkpoint is not None:
        ledger = load_trainer_state(Path(checkpoint))["ledger"]
    check_inputs(run_dir, cfg, mode, replay, ledger)


def _remove_stale_temporaries(run: RunDir, mode: str) -> None:
    """Half-written files of a killed process (fsio.py temporaries, up to a checkpoint's size), now that
    this process holds the run's lock; rollouts/ only when the trainer is its one writer (async
    workers write there without the lock)."""
    dirs = [run.root, run.checkpoints, run.published] + ([run.rollouts] if mode != "async" else [])
    stale = [p for d in dirs for p in remove_temporaries(d)]
    if stale:
        console.print(f"removed {len(stale)} temporaries of an interrupted write (e.g. {stale[0]})", highlight=False)


def _latest_checkpoint(run: RunDir) -> Path | None:
    """Rank 0 verifies the checkpoints' manifests (a corrupt one is named, an older one used); every
    rank gets its answer."""
    if not dist.is_main():
        return dist.broadcast_object(None)
    warn = lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)  # noqa: E731
    return dist.broadcast_object(latest_checkpoint(run.root, warn=warn))


def _load(
    cfg: Config, run: RunDir, mode: str, resume: bool, ckpt: Path | None, base_path: str, device, run_id: str
) -> Trainer:
    """The model (sharded under torchrun), optimizer, schedule and trainer state, from `ckpt` if any."""
    from ..models import load_model, load_tokenizer

    t = cfg.trainer
    if dist.is_main():
        announce(f"loading model {ckpt or base_path} …")
    tokenizer = load_tokenizer(base_path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(str(ckpt) if ckpt else base_path, cfg.model.dtype, cfg.model.trust_remote_code).to(device)
    model.config.use_cache = False
    vocab_size = model.get_input_embeddings().num_embeddings  # shards' token ids must index it
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if t.compile:
        compile_decoder_blocks(model)
    model = dist.shard_model(model, t.bf16_params)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    state = {"step": 0, "iteration": 0, "ledger": [], "dropped": []}
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        load_optimizer(ckpt, model, optimizer, scheduler)
        if dist.is_main():
            console.print(f"resuming {run.root} from {ckpt.name} (step {state['step']})")
    elif resume and dist.is_main():
        console.print(f"resuming {run.root}: no checkpoint yet, starting from step 0")
    if dist.is_main():
        _truncate_metrics(run.metrics, state["step"])
    writer = MetricsWriter(run.root, t.loggers, config=to_dict(cfg), enabled=dist.is_main())
    engine_path = str(ckpt) if ckpt else base_path  # the weights a sync engine of its own opens
    return Trainer(
        cfg, run, mode, model, tokenizer, optimizer, scheduler, state, writer, vocab_size, engine_path, run_id
    )


def _check_run_dir(run: RunDir, resume: bool) -> None:
    if resume:
        if not run.is_run():
            raise UserError(f"--resume {run.root}: not a run directory (no config.yaml)")
        return
    if run.has_started():
        raise UserError(
            f"{run.root}: already holds a run; continue it with --resume {run.root}, or pick another --run-dir"
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
    """After a resume from step K, drop metric lines of steps > K (they are recomputed); lines of steps
    1..K that are gone (a deleted, emptied or overwritten file) are named in a warning: training
    continues, since no state comes from them."""
    records = [r for r in read_jsonl(path) if isinstance(r.get("step", 0), int)]
    keep = [r for r in records if r.get("step", 0) <= step]
    have = {r["step"] for r in keep if r.get("kind", "train") == "train" and "step" in r}
    missing = [s for s in range(1, step + 1) if s not in have]
    if missing:
        console.print(
            f"[yellow]warning:[/] {path}: the lines of {len(missing)} of steps 1..{step} are missing or unreadable "
            f"(e.g. step {missing[0]}); the run continues from its checkpoint without them",
            highlight=False,
            soft_wrap=True,
        )
    if path.exists():
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
